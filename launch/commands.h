/* launch: the `moerun` subcommands. Each takes the arguments after its name (argv[0] is the
 * subcommand) and returns the process exit code. Only `infer`, `elastic` and `bench` initialise MPI. */
#ifndef MOE_LAUNCH_COMMANDS_H
#define MOE_LAUNCH_COMMANDS_H

int moe_cmd_infer(int argc, char **argv);
int moe_cmd_elastic(int argc, char **argv);
int moe_cmd_stats(int argc, char **argv);
int moe_cmd_place(int argc, char **argv);
int moe_cmd_config(int argc, char **argv);
int moe_cmd_bench(int argc, char **argv);

#endif
