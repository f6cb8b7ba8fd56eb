/* cli: the command-line parser shared by every command (see cli.h). */
#include "launch/cli.h"

#include <mpi.h>
#include <stdint.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"

#define MAX_OPTIONS 96

static const struct option shared[] = {
    {"help", no_argument, NULL, MOE_CLI_ID_HELP},
    {"version", no_argument, NULL, MOE_CLI_ID_VERSION},
    {"log-level", required_argument, NULL, MOE_CLI_ID_LOG_LEVEL},
    {"json", no_argument, NULL, MOE_CLI_ID_JSON},
};

static int parse_level(const char *s, moe_log_level_t *out)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = (moe_log_level_t)i;
            return 0;
        }
    return -1;
}

/* The name an option was given by, for messages: "--plan" or "-c". */
static void option_text(const struct option *all, int index, int id, char *buf, size_t size)
{
    if (index >= 0)
        snprintf(buf, size, "--%s", all[index].name);
    else
        snprintf(buf, size, "-%c", id);
}

int moe_cli_parse(moe_cli_t *cli, int argc, char **argv, const char *shortopts, const struct option *options,
                  moe_cli_handler_t handle, void *ctx)
{
    struct option all[MAX_OPTIONS + 1];
    int n = 0;
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) all[n++] = shared[i];
    for (int i = 0; options && options[i].name && n < MAX_OPTIONS; i++) all[n++] = options[i];
    memset(&all[n], 0, sizeof all[n]);
    /* "-": arguments in order (some commands care: place's --tokens before --loads-csv), non-options
     * handed over as id 1; ":": a missing value reported as ':' */
    char spec[128];
    snprintf(spec, sizeof spec, "-:h%s", shortopts ? shortopts : "");
    opterr = 0;
    optind = 0; /* glibc: a full re-initialisation (the parser may run twice in one process) */
    for (;;) {
        int index = -1;
        const int at = optind ? optind : 1;
        int id = getopt_long(argc, argv, spec, all, &index);
        if (id == -1) break;
        char name[96];
        if (id == '?' || id == ':') {
            const char *given = at < argc ? argv[at] : "?";
            if (!cli->quiet) {
                if (id == ':')
                    fprintf(stderr, "moerun %s: option '%s' needs a value (see --help)\n", cli->command, given);
                else if (optopt && optopt != '?' && given[0] == '-' && given[1] != '-')
                    fprintf(stderr, "moerun %s: unknown option '-%c' (see --help)\n", cli->command, optopt);
                else
                    fprintf(stderr, "moerun %s: unknown or ambiguous option '%s' (see --help)\n", cli->command, given);
            }
            return 2;
        }
        switch (id) {
        case MOE_CLI_ID_HELP: cli->help = true; continue;
        case MOE_CLI_ID_VERSION: cli->version = true; continue;
        case MOE_CLI_ID_JSON: cli->json = true; continue;
        case MOE_CLI_ID_LOG_LEVEL:
            if (parse_level(optarg, &cli->level) != 0) {
                if (!cli->quiet)
                    fprintf(stderr, "moerun %s: --log-level: unknown level '%s' (error, warn, info, debug)\n",
                            cli->command, optarg);
                return 2;
            }
            continue;
        default: break;
        }
        const int rc = handle ? handle(ctx, id, id == 1 ? optarg : optarg) : -1;
        if (rc == 0) continue;
        if (rc == -1 && !cli->quiet) {
            if (id == 1)
                fprintf(stderr, "moerun %s: unexpected argument '%s' (see --help)\n", cli->command, optarg);
            else {
                option_text(all, index, id, name, sizeof name);
                if (optarg)
                    fprintf(stderr, "moerun %s: option '%s' %s: invalid value (see --help)\n", cli->command, name,
                            optarg);
                else
                    fprintf(stderr, "moerun %s: %s is not an option here (see --help)\n", cli->command, name);
            }
        }
        return 2;
    }
    return 0;
}

void moe_cli_print_version(FILE *out) { fprintf(out, "moerun %s (commit %s)\n", moe_version(), moe_git_commit()); }

bool moe_cli_int(const char *s, long long min, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < min || v > max) return false;
    *out = v;
    return true;
}

bool moe_cli_double(const char *s, double *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* fd 1 of process pid is a terminal: its /proc link names a tty or a pseudo-terminal. */
static bool proc_stdout_is_tty(long pid)
{
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/%ld/fd/1", pid);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) return false;
    target[n] = '\0';
    return !strncmp(target, "/dev/pts/", 9) || !strncmp(target, "/dev/tty", 8) || !strcmp(target, "/dev/console");
}

bool moe_cli_stdout_is_terminal(void)
{
    /* Under Open MPI (OMPI_COMM_WORLD_SIZE set by mpirun) a rank's stdout is a pipe or a
     * pseudo-terminal of mpirun's (a pty even when mpirun's own output goes to a file), which mpirun
     * forwards to its own stdout: that one decides. The parent is mpirun, or on other nodes the
     * local daemon, whose stdout is no terminal: no progress there, and a log stays clean. */
    if (getenv("OMPI_COMM_WORLD_SIZE")) return proc_stdout_is_tty((long)getppid());
    return isatty(STDOUT_FILENO);
}

/* ---------------------------------------------------------------- collective messages */

/* A hash of the held text without the ranks of the line prefixes ("moerun[3] error: ..."). */
static uint64_t text_hash(const char *text)
{
    uint64_t h = 0;
    bool in_rank = false;
    for (const char *p = text; p && *p; p++) {
        if (in_rank && *p == ']') in_rank = false;
        if (in_rank) continue;
        if (*p == '[' && p - text >= 6 && !strncmp(p - 6, "moerun", 6)) in_rank = true;
        h = moe_hash(h, (unsigned char)*p, 0, 0, 0);
    }
    return h;
}

int moe_cli_agree(moe_watch_h watch, bool failed, bool stalled, bool *said)
{
    char *held = moe_log_hold(false);
    const bool has_error = held && strstr(held, "] error");
    *said = false;
    if (stalled) {
        if (held) fputs(held, stderr);
        *said = has_error;
        free(held);
        return -1;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int64_t local[2] = {failed, (int64_t)text_hash(held)};
    int64_t *all = calloc((size_t)size * 2, sizeof(int64_t));
    MPI_Request request;
    bool ok = all && MPI_Iallgather(local, 2, MPI_INT64_T, all, 2, MPI_INT64_T, MPI_COMM_WORLD, &request) == MPI_SUCCESS;
    if (ok && watch)
        ok = moe_watch_wait(watch, -1, NULL, "the start of the run", 1, &request) == MOE_STATUS_OK;
    else if (ok)
        ok = MPI_Wait(&request, MPI_STATUS_IGNORE) == MPI_SUCCESS;
    if (!ok) {
        if (held) fputs(held, stderr);
        *said = has_error;
        free(all);
        free(held);
        return -1;
    }
    int any = 0;
    for (int p = 0; p < size; p++) any |= all[2 * p] != 0;
    const bool same_as_0 = rank != 0 && all[0] != 0 && all[2 * rank + 1] == all[1];
    if (held && !same_as_0) fputs(held, stderr);
    *said = same_as_0 || has_error;
    free(all);
    free(held);
    return any;
}
