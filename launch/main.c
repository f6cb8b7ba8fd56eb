/* moerun: the command-line entry point. Picks the subcommand; each lives in its own cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"

static void usage(FILE *out)
{
    fprintf(out,
            "moerun: an expert-parallel Mixture-of-Experts runtime\n"
            "\n"
            "usage: moerun COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  infer   run an MoE model expert-parallel under mpirun (mpirun -np N moerun infer -c C)\n"
            "  elastic the same with a serving set that grows and shrinks on a schedule, experts\n"
            "          moving while it serves (mpirun -np NMAX moerun elastic -c C --schedule 0:2,20:4)\n"
            "  stats   derive routing statistics from a trace (moerun stats --trace IDS.npy -o S)\n"
            "  place   compute an expert placement plan, or evaluate one against a trace\n"
            "  config  write the configuration of a Hugging Face checkpoint (--from-hf DIR)\n"
            "  bench   micro-benchmarks on GPUs: `bench a2a`, dispatch + combine beside ncclAlltoAll\n"
            "\n"
            "`moerun COMMAND --help` describes each; `moerun --version` says the version and commit.\n"
            "Options take their value as --opt VALUE or --opt=VALUE; --json gives JSON lines on stdout.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        moe_cli_print_version(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "infer")) return moe_cmd_infer(argc - 1, argv + 1);
    if (!strcmp(argv[1], "elastic")) return moe_cmd_elastic(argc - 1, argv + 1);
    if (!strcmp(argv[1], "stats")) return moe_cmd_stats(argc - 1, argv + 1);
    if (!strcmp(argv[1], "place")) return moe_cmd_place(argc - 1, argv + 1);
    if (!strcmp(argv[1], "config")) return moe_cmd_config(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench")) return moe_cmd_bench(argc - 1, argv + 1);
    fprintf(stderr, "moerun: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
