/* cmd_bench: `moerun bench a2a`, under mpirun with one GPU per rank: the layer's dispatch and combine
 * alone over the NCCL transport, beside ncclAlltoAll at equal bytes (runtime/bench.c). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/launcher.h"
#include "moe_build_config.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

#define MAX_SIZES 32

static void usage(FILE *out)
{
    fprintf(out, "usage: mpirun -np N moerun bench a2a [--d-model D] [--top-k K] [--rows R1,R2,...] [--iters N]\n"
                 "                                    [--json]\n\n"
                 "  dispatch + combine of R wire rows to every rank (one GPU per rank, NCCL), beside\n"
                 "  ncclAlltoAll at equal bytes; nccl-tests' columns (algbw, busbw per GPU); then the\n"
                 "  point-to-point rate from rank 0 to rank 1 (1 GiB as 16 sends in one group).\n"
                 "  --d-model D     hidden size (default 7168, DeepSeek-V3)\n"
                 "  --top-k K       choices per token carried in a row's metadata (default 8)\n"
                 "  --rows LIST     rows to each peer (default 128,512,1024,2048,4096)\n"
                 "  --iters N       timed iterations per size, after 3 warm-up (default 20)\n"
                 "  --json          JSON lines on stdout (a bench_a2a line per size, a bench_p2p line)\n");
}

typedef struct {
    int d, k, iters, rows[MAX_SIZES], n_sizes;
    bool a2a;
} bench_args_t;

static int bench_option(void *ctx, int id, const char *arg)
{
    bench_args_t *a = ctx;
    long long x;
    switch (id) {
    case 1:
        if (strcmp(arg, "a2a") != 0 || a->a2a) return -1;
        a->a2a = true;
        return 0;
    case 'd': return moe_cli_int(arg, 1, 1 << 20, &x) ? (a->d = (int)x, 0) : -1;
    case 'k': return moe_cli_int(arg, 1, 32, &x) ? (a->k = (int)x, 0) : -1;
    case 'i': return moe_cli_int(arg, 1, 100000, &x) ? (a->iters = (int)x, 0) : -1;
    case 'r': {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", arg);
        a->n_sizes = 0;
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            if (a->n_sizes == MAX_SIZES || !moe_cli_int(tok, 1, 1 << 24, &x)) {
                fprintf(stderr, "moerun bench a2a: --rows: '%s' is not a list of up to %d row counts\n", arg,
                        MAX_SIZES);
                return 2;
            }
            a->rows[a->n_sizes++] = (int)x;
        }
        return 0;
    }
    default: return -1;
    }
}

int moe_cmd_bench(int argc, char **argv)
{
    static const struct option options[] = {
        {"d-model", required_argument, NULL, 'd'}, {"top-k", required_argument, NULL, 'k'},
        {"iters", required_argument, NULL, 'i'}, {"rows", required_argument, NULL, 'r'}, {0}};
    bench_args_t a = {.d = 7168, .k = 8, .iters = 20, .rows = {128, 512, 1024, 2048, 4096}, .n_sizes = 5};
    moe_cli_t cli = MOE_CLI_INIT("bench");
    int rc = moe_cli_parse(&cli, argc, argv, "", options, bench_option, &a);
    if (rc != 0) return rc;
    if (cli.help || cli.version) {
        if (cli.version) moe_cli_print_version(stdout);
        else usage(stdout);
        return 0;
    }
    if (!a.a2a) {
        usage(stderr);
        return 2;
    }
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    moe_log_init(rank, cli.level);
    /* a failure every rank meets alike (no CUDA in this build) is printed once */
    moe_log_hold(true);
    int device = -1;
    moe_ctl_h world = NULL; /* waits without a deadline, as the bench has no watch */
    moe_status_t status = moe_ctl_create(MPI_COMM_WORLD, NULL, &world);
#if MOE_HAVE_CUDA
    if (status == MOE_STATUS_OK) status = moe_launch_device(&device);
#endif
    if (status == MOE_STATUS_OK)
        status = moe_bench_a2a(world, device, a.d, a.k, a.rows, a.n_sizes, a.iters, cli.json, stdout);
    bool said = false;
    int any = moe_cli_agree(NULL, status != MOE_STATUS_OK, false, &said);
    moe_ctl_destroy(world);
    MPI_Finalize();
    return any ? 1 : 0;
}
