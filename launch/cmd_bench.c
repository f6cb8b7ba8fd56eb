/* cmd_bench: `moerun bench a2a`, under mpirun with one GPU per rank: the layer's dispatch and combine
 * alone over the NCCL transport, beside ncclAlltoAll at equal bytes (runtime/bench.c). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/commands.h"
#include "runtime/runtime.h"

#define MAX_SIZES 32

static void usage(FILE *out)
{
    fprintf(out, "usage: mpirun -np N moerun bench a2a [--d-model D] [--top-k K] [--rows R1,R2,...] [--iters N]\n\n"
                 "  dispatch + combine of R wire rows to every rank (one GPU per rank, NCCL), beside\n"
                 "  ncclAlltoAll at equal bytes; nccl-tests' columns (algbw, busbw per GPU); then the\n"
                 "  point-to-point rate from rank 0 to rank 1 (1 GiB as 16 sends in one group).\n"
                 "  --d-model D     hidden size (default 7168, DeepSeek-V3)\n"
                 "  --top-k K       choices per token carried in a row's metadata (default 8)\n"
                 "  --rows LIST     rows to each peer (default 128,512,1024,2048,4096)\n"
                 "  --iters N       timed iterations per size, after 3 warm-up (default 20)\n");
}

/* A positive int within [1, max], or -1. */
static long parse_count(const char *s, long max)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 1 && v <= max ? v : -1;
}

int moe_cmd_bench(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "a2a") != 0) {
        usage(argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr);
        return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
    }
    int d = 7168, k = 8, iters = 20, rows[MAX_SIZES] = {128, 512, 1024, 2048, 4096}, n_sizes = 5;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = -1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--d-model") && v && (x = parse_count(v, 1 << 20)) > 0) {
            d = (int)x, i++;
        } else if (!strcmp(a, "--top-k") && v && (x = parse_count(v, 32)) > 0) {
            k = (int)x, i++;
        } else if (!strcmp(a, "--iters") && v && (x = parse_count(v, 100000)) > 0) {
            iters = (int)x, i++;
        } else if (!strcmp(a, "--rows") && v) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            n_sizes = 0;
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (n_sizes == MAX_SIZES || (x = parse_count(tok, 1 << 24)) < 0) {
                    fprintf(stderr, "moerun bench a2a: --rows: '%s' is not a list of up to %d row counts\n", v,
                            MAX_SIZES);
                    return 2;
                }
                rows[n_sizes++] = (int)x;
            }
            i++;
        } else {
            fprintf(stderr, "moerun bench a2a: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    moe_log_init(rank, MOE_LOG_WARN);
    moe_status_t status = moe_bench_a2a(MPI_COMM_WORLD, d, k, rows, n_sizes, iters, stdout);
    int failed = status != MOE_STATUS_OK, any = failed;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
