/* cmd_infer: `moerun infer`, the expert-parallel run under mpirun.
 *
 * Failure policy: a configuration error is seen by every rank alike, so each returns and the job
 * ends cleanly with one message from rank 0; any other error may be one rank's alone, so that rank
 * calls MPI_Abort, which ends every rank rather than leaving them waiting in a collective. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/commands.h"
#include "launch/launcher.h"
#include "runtime/runtime.h"

static void infer_usage(FILE *out)
{
    fprintf(out,
            "usage: mpirun -np N moerun infer -c CONFIG [options]\n"
            "\n"
            "  -c, --config FILE      model and run configuration (YAML); see configs/\n"
            "  --plan PLAN            placement plan (YAML, from `moerun place`); default: contiguous\n"
            "  --set KEY=VALUE        override one setting (repeatable), e.g. --set run.chunks=4\n"
            "  --output OUT.npy       final hidden states [tokens, d_model] float32\n"
            "  --metrics M.jsonl      per batch and layer: stage times, loads (JSON lines)\n"
            "  --stats S.safetensors  routing statistics of the run (loads, co-activation, transitions)\n"
            "  --reference            run the single-process dense reference instead (-np 1)\n"
            "  --print-config         print the effective configuration and exit\n"
            "  --log-level LEVEL      error | warn | info | debug (default warn)\n"
            "  -h, --help             this text, and the settings with their defaults\n");
}

static void print_settings(FILE *out)
{
    fprintf(out, "\nsettings (KEY, default, meaning):\n");
    for (const moe_config_setting_info_t *s = moe_config_settings(); s->name; s++)
        fprintf(out, "  %-24s %-10s %s\n", s->name, s->default_value, s->meaning);
}

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

/* Set a path setting from a flag through the same table as --set. */
static moe_status_t set_path(moe_config_t *config, const char *key, const char *value)
{
    char buf[MOE_PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s=%s", key, value);
    return moe_config_set(config, buf);
}

int moe_cmd_infer(int argc, char **argv)
{
    const char *config_path = NULL;
    bool print_config = false, reference = false;
    moe_log_level_t level = MOE_LOG_WARN;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            infer_usage(stdout);
            print_settings(stdout);
            return 0;
        }
    }

    MPI_Init(&argc, &argv);
    moe_launch_info_t launch;
    moe_launch_info(&launch);
    /* Until the configuration is known good, only rank 0 speaks: every rank reads the same file. */
    moe_log_init(launch.rank, launch.rank == 0 ? level : MOE_LOG_SILENT);

    moe_config_t config;
    moe_config_defaults(&config);
    int rc = 0;
    moe_status_t status = MOE_STATUS_OK;
    /* First pass: the config file, so that flags override it whatever their order. */
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
            config_path = argv[++i];
        else if (!strcmp(argv[i], "--log-level") && i + 1 < argc) {
            if (parse_level(argv[++i], &level) != 0) {
                if (launch.rank == 0) fprintf(stderr, "moerun infer: --log-level: unknown level '%s'\n", argv[i]);
                rc = 2;
                goto done;
            }
        }
    }
    if (!config_path) {
        if (launch.rank == 0) {
            fprintf(stderr, "moerun infer: missing -c CONFIG\n\n");
            infer_usage(stderr);
        }
        rc = 2;
        goto done;
    }
    moe_log_init(launch.rank, launch.rank == 0 ? level : MOE_LOG_SILENT);
    status = moe_config_load(config_path, &config);
    for (int i = 1; i < argc && status == MOE_STATUS_OK; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "--log-level")) i++;
        else if (!strcmp(a, "--set") && v) status = moe_config_set(&config, v), i++;
        else if (!strcmp(a, "--plan") && v) status = set_path(&config, "placement.plan", v), i++;
        else if (!strcmp(a, "--output") && v) status = set_path(&config, "outputs.output", v), i++;
        else if (!strcmp(a, "--metrics") && v) status = set_path(&config, "outputs.metrics", v), i++;
        else if (!strcmp(a, "--stats") && v) status = set_path(&config, "outputs.stats", v), i++;
        else if (!strcmp(a, "--print-config")) print_config = true;
        else if (!strcmp(a, "--reference")) reference = true;
        else {
            if (launch.rank == 0)
                fprintf(stderr, "moerun infer: unknown or incomplete option '%s' (see --help)\n", a);
            rc = 2;
            goto done;
        }
    }
    if (status == MOE_STATUS_OK) status = moe_config_validate(&config, launch.size);
    if (status != MOE_STATUS_OK) {
        rc = 1;
        goto done;
    }
    if (print_config) {
        if (launch.rank == 0) moe_config_print(&config, stdout);
        goto done;
    }

    /* From here errors may be one rank's own: every rank logs, and a failure aborts the job. */
    moe_log_init(launch.rank, level);
    moe_engine_options_t options = MOE_ENGINE_OPTIONS_INIT;
    options.reference = reference;
    moe_engine_h engine = NULL;
    status = moe_engine_create(&config, &options, MPI_COMM_WORLD, &engine);
    /* Bad input files fail create on every rank alike: agree, and end cleanly without an abort. */
    int failed = status != MOE_STATUS_OK, any_failed = failed;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any_failed) {
        if (launch.rank == 0 || failed)
            fprintf(stderr, "moerun[%d]: infer could not start: %s\n", launch.rank,
                    failed ? moe_status_string(status) : "another rank failed");
        moe_engine_destroy(engine);
        rc = 1;
        goto done;
    }
    status = moe_engine_run(engine);
    if (status == MOE_STATUS_OK) status = moe_engine_finalize(engine);
    if (status != MOE_STATUS_OK) {
        fprintf(stderr, "moerun[%d]: infer failed: %s; ending the job\n", launch.rank,
                moe_status_string(status));
        fflush(stderr);
        if (launch.size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
        rc = 1;
    }
    moe_engine_destroy(engine);
done:
    MPI_Finalize();
    return rc;
}
