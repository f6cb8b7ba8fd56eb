/* cli: the one command-line parser of every `moerun` command (getopt_long underneath, so `--opt
 * value`, `--opt=value` and unambiguous prefixes all work), the options every command shares
 * (--help, --version, --log-level, --json), and what the launcher knows about its terminal. */
#ifndef MOE_LAUNCH_CLI_H
#define MOE_LAUNCH_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/common.h"

/* Ids the parser hands to no command: the shared options. Commands use ids below 256 (a letter for
 * a short option) or from MOE_CLI_ID_FIRST on. */
enum {
    MOE_CLI_ID_HELP = 'h',
    MOE_CLI_ID_VERSION = 1000,
    MOE_CLI_ID_LOG_LEVEL,
    MOE_CLI_ID_JSON,
    MOE_CLI_ID_FIRST = 1100,
};

typedef struct {
    const char *command;   /* "infer": messages read "moerun infer: ..." */
    bool quiet;            /* print no errors (ranks other than 0 parse too) */
    bool help, version, json;
    moe_log_level_t level; /* --log-level, default warn */
} moe_cli_t;

#define MOE_CLI_INIT(name) {.command = (name), .level = MOE_LOG_WARN}

/* One option or argument: id is the option's (1 for an argument that is no option), arg its value
 * or NULL. Return 0 if taken, -1 if the value is invalid (the parser says so), 2 when the handler
 * printed its own message. */
typedef int (*moe_cli_handler_t)(void *ctx, int id, const char *arg);

/* Parses argv[1..argc-1] in order (argv[0] is the command's name) with the command's options
 * (terminated by a zero entry; the shared ones are added) and short options (getopt syntax, may be
 * ""). Returns 0 when parsed (look at cli->help and cli->version first), 2 on a usage error, with
 * one message on stderr unless cli->quiet. */
int moe_cli_parse(moe_cli_t *cli, int argc, char **argv, const char *shortopts, const struct option *options,
                  moe_cli_handler_t handle, void *ctx);

/* `moerun VERSION (commit C)`, for --version. */
void moe_cli_print_version(FILE *out);

/* A whole number in [min, max] / a finite number; false otherwise. */
bool moe_cli_int(const char *s, long long min, long long max, long long *out);
bool moe_cli_double(const char *s, double *out);

/* Whether this process's standard output reaches a person: a terminal; under mpirun (whose ranks
 * write to a pipe or a pseudo-terminal of mpirun's whatever mpirun's own output is) mpirun's. */
bool moe_cli_stdout_is_terminal(void);

/* ---------------------------------------------------------------- collective messages */

typedef struct moe_watch_s *moe_watch_h; /* comm.h */

/* Collective over MPI_COMM_WORLD, after a step that every rank took with its log held
 * (moe_log_hold(true)): ends the hold and agrees whether any rank failed. The ranks compare what they
 * held (rank numbers in the line prefixes aside): rank 0 prints its own, every other rank only what
 * differs from rank 0's, so that an error every rank meets alike is printed once. *said: this rank's
 * failure has been told (an error line of its own printed, or the same as rank 0's). Waits under the
 * watch when given. Returns 1 if any rank failed, 0 if none, -1 if the agreement itself failed or
 * stalled is true (this rank timed out: no collective; it prints what it held). */
int moe_cli_agree(moe_watch_h watch, bool failed, bool stalled, bool *said);

#endif
