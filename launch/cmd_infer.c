/* cmd_infer: `moerun infer`, the expert-parallel run under mpirun, and `moerun elastic`, the same
 * run with a serving set that grows and shrinks on a schedule (runtime/elastic.c).
 *
 * Failure policy: a configuration error is seen by every rank alike, so each returns and the job
 * ends cleanly with one message from rank 0; any other error may be one rank's alone, so that rank
 * calls MPI_Abort, which ends every rank rather than leaving them waiting in a collective. A rank
 * that stops answering is found by the watch (comm.h, run.timeout) of the ranks waiting for it, and
 * they end the job the same way. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/commands.h"
#include "launch/launcher.h"
#include "comm/comm.h"
#include "io/io.h"
#include "runtime/runtime.h"

static void infer_usage(FILE *out, bool elastic)
{
    if (elastic)
        fprintf(out,
                "usage: mpirun -np NMAX moerun elastic -c CONFIG --schedule SPEC [options]\n"
                "\n"
                "The job is launched at its largest size; ranks 0..P-1 serve and the others wait. SPEC\n"
                "gives P over batches or seconds: POSITION:RANKS entries, the first at 0, e.g.\n"
                "0:2,20:4,40:2 (batches) or 0s:2,30s:4 (seconds). At each change a plan for the new\n"
                "size is made from the live routing of the last rebalance.window batches, moving few\n"
                "experts; the experts move point to point while the old set serves; the switch is at\n"
                "a batch boundary.\n"
                "\n"
                "  --schedule SPEC        the serving size over batches or seconds (required)\n");
    else
        fprintf(out, "usage: mpirun -np N moerun infer -c CONFIG [options]\n\n");
    fprintf(out,
            "  -c, --config FILE      model and run configuration (YAML); see configs/\n"
            "  --plan PLAN            placement plan (YAML, from `moerun place`); default: contiguous\n"
            "  --set KEY=VALUE        override one setting (repeatable), e.g. --set run.chunks=4\n"
            "  --output OUT.npy       final hidden states [tokens, d_model] float32\n"
            "  --metrics M.jsonl      per batch and layer: stage times, loads (JSON lines)\n"
            "  --stats S.safetensors  routing statistics of the run (loads, co-activation, transitions)\n"
            "  --timeline T.csv       elastic or re-balancing runs: a row per batch (time, tokens/s,\n"
            "                         serving ranks, bytes in flight, load), see docs/elastic.md\n"
            "  --events E.csv         ... a row per scale or re-balance event (latency, stall, bytes)\n"
            "  --plans DIR            ... each plan put in service, DIR/plan-N.yaml\n"
            "  --trace-events FILE    one batch's stages on every rank's streams as Chrome trace JSON\n"
            "                         (chrome://tracing, Perfetto)\n"
            "  --trace-batch N        the batch to trace (default: the first after run.warmup_batches)\n"
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

/* Rank 0 reads the configuration (file, flags, checks) and broadcasts its verdict and the result:
 * the other ranks neither read the file nor print, so a bad config costs one parse and gives one
 * message. The broadcast is waited under the watch, with the default timeout. */
static int share_config(int rank, moe_watch_h watch, int *rc, moe_config_t *config)
{
    MPI_Request requests[2];
    if (MPI_Ibcast(rc, 1, MPI_INT, 0, MPI_COMM_WORLD, &requests[0]) != MPI_SUCCESS ||
        MPI_Ibcast(config, (int)sizeof *config, MPI_BYTE, 0, MPI_COMM_WORLD, &requests[1]) != MPI_SUCCESS)
        return -1;
    if (moe_watch_wait(watch, -1, NULL, "the configuration broadcast", 2, requests) != MOE_STATUS_OK)
        return -1;
    (void)rank;
    return 0;
}

/* Whether any rank failed (an all-reduce under the watch); -1 if that itself failed. */
static int any_failed(moe_watch_h watch, int failed)
{
    int any = failed;
    MPI_Request request;
    if (MPI_Iallreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD, &request) != MPI_SUCCESS ||
        moe_watch_wait(watch, -1, NULL, "the start of the run", 1, &request) != MOE_STATUS_OK)
        return -1;
    return any;
}

/* The job cannot end cleanly (a rank failed alone, or stopped answering): end every rank. */
static void abort_job(int size)
{
    moe_atomic_file_remove_all(); /* MPI_Abort ends this process too: no temporary left behind */
    fflush(stderr);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
}

static int run_command(int argc, char **argv, bool elastic)
{
    const char *name = elastic ? "elastic" : "infer";
    const char *config_path = NULL, *schedule = NULL, *timeline = NULL, *events = NULL, *plans = NULL;
    const char *trace_events = NULL;
    int trace_batch = -1;
    bool print_config = false, reference = false;
    moe_log_level_t level = MOE_LOG_WARN;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            infer_usage(stdout, elastic);
            print_settings(stdout);
            return 0;
        }
    }

    /* Elastic runs use threads (the placement solver, the next backend state) that never call MPI. */
    int provided = MPI_THREAD_SINGLE;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    moe_launch_info_t launch;
    moe_launch_info(&launch);
    /* Until the configuration is known good, only rank 0 speaks: it alone reads the file. */
    moe_log_init(launch.rank, launch.rank == 0 ? level : MOE_LOG_SILENT);

    moe_config_t *config = malloc(sizeof *config);
    moe_watch_h watch = NULL;
    moe_engine_h engine = NULL;
    int rc = 0;
    moe_status_t status = MOE_STATUS_OK;
    if (!config) {
        fprintf(stderr, "moerun[%d]: out of memory\n", launch.rank);
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    moe_config_defaults(config);
    if (moe_watch_create(MPI_COMM_WORLD, config->run.timeout, &watch) != MOE_STATUS_OK) {
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    /* Flags every rank needs; the config file and --set are rank 0's alone. */
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && v) config_path = v, i++;
        else if (!strcmp(a, "--log-level") && v) {
            if (parse_level(v, &level) != 0) {
                if (launch.rank == 0) fprintf(stderr, "moerun %s: --log-level: unknown level '%s'\n", name, v);
                rc = 2;
            }
            i++;
        } else if ((!strcmp(a, "--set") || !strcmp(a, "--plan") || !strcmp(a, "--output") ||
                    !strcmp(a, "--metrics") || !strcmp(a, "--stats")) && v) i++;
        else if (!strcmp(a, "--schedule") && v && elastic) schedule = v, i++;
        else if (!strcmp(a, "--timeline") && v) timeline = v, i++;
        else if (!strcmp(a, "--events") && v) events = v, i++;
        else if (!strcmp(a, "--plans") && v) plans = v, i++;
        else if (!strcmp(a, "--trace-events") && v) trace_events = v, i++;
        else if (!strcmp(a, "--trace-batch") && v) {
            char *end;
            long b = strtol(v, &end, 10);
            if (*end || end == v || b < 0 || b > 1000000000) {
                if (launch.rank == 0) fprintf(stderr, "moerun %s: --trace-batch: '%s' is not a batch number\n", name, v);
                rc = 2;
                goto done;
            }
            trace_batch = (int)b, i++;
        }
        else if (!strcmp(a, "--print-config")) print_config = true;
        else if (!strcmp(a, "--reference")) reference = true;
        else {
            if (launch.rank == 0)
                fprintf(stderr, "moerun %s: unknown or incomplete option '%s' (see --help)\n", name, a);
            rc = 2;
        }
    }
    if (rc == 0 && !config_path) {
        if (launch.rank == 0) {
            fprintf(stderr, "moerun %s: missing -c CONFIG\n\n", name);
            infer_usage(stderr, elastic);
        }
        rc = 2;
    }
    if (rc == 0 && elastic && !schedule) {
        if (launch.rank == 0) fprintf(stderr, "moerun elastic: missing --schedule SPEC (see --help)\n");
        rc = 2;
    }
    if (rc != 0) goto done;
    moe_log_init(launch.rank, launch.rank == 0 ? level : MOE_LOG_SILENT);
    if (launch.rank == 0) {
        status = moe_config_load(config_path, config);
        for (int i = 1; i < argc && status == MOE_STATUS_OK; i++) {
            const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (!v) break;
            if (!strcmp(a, "--set")) status = moe_config_set(config, v), i++;
            else if (!strcmp(a, "--plan")) status = set_path(config, "placement.plan", v), i++;
            else if (!strcmp(a, "--output")) status = set_path(config, "outputs.output", v), i++;
            else if (!strcmp(a, "--metrics")) status = set_path(config, "outputs.metrics", v), i++;
            else if (!strcmp(a, "--stats")) status = set_path(config, "outputs.stats", v), i++;
            else if (!strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "--log-level") ||
                     !strcmp(a, "--schedule") || !strcmp(a, "--timeline") || !strcmp(a, "--events") ||
                     !strcmp(a, "--plans")) i++;
        }
        if (status == MOE_STATUS_OK && schedule) status = moe_schedule_check(schedule, launch.size);
        /* an elastic run's experts are split over the schedule's first size; the engine checks that */
        if (status == MOE_STATUS_OK) status = moe_config_validate(config, schedule ? 0 : launch.size);
        if (status != MOE_STATUS_OK) rc = 1;
    }
    if (share_config(launch.rank, watch, &rc, config) != 0) {
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    if (rc != 0) goto done;
    moe_watch_set_timeout(watch, config->run.timeout);
    if (print_config) {
        if (launch.rank == 0) moe_config_print(config, stdout);
        goto done;
    }

    /* From here errors may be one rank's own: every rank logs, and a failure aborts the job. */
    moe_log_init(launch.rank, level);
    moe_engine_options_t options = MOE_ENGINE_OPTIONS_INIT;
    options.reference = reference;
    options.schedule = schedule;
    options.timeline = timeline;
    options.events = events;
    options.plans_dir = plans;
    options.trace_events = trace_events;
    options.trace_batch = trace_batch;
    options.watch = watch;
    options.node_hint = launch.node_id;
    status = moe_engine_create(config, &options, MPI_COMM_WORLD, &engine);
    /* Bad input files fail create on every rank alike: agree, and end cleanly without an abort. A
     * rank that stopped answering ends the job at once. */
    int failed = status != MOE_STATUS_OK;
    int any = status == MOE_STATUS_TIMEOUT ? -1 : any_failed(watch, failed);
    if (any < 0) {
        fprintf(stderr, "moerun[%d]: %s could not start: %s; ending the job\n", launch.rank, name,
                moe_status_string(status == MOE_STATUS_OK ? MOE_STATUS_TIMEOUT : status));
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    if (any) {
        if (launch.rank == 0 || failed)
            fprintf(stderr, "moerun[%d]: %s could not start: %s\n", launch.rank, name,
                    failed ? moe_status_string(status) : "another rank failed");
        rc = 1;
        goto done;
    }
    status = moe_engine_run(engine);
    if (status == MOE_STATUS_OK) status = moe_engine_finalize(engine);
    /* the last wait: no rank leaves (MPI_Finalize waits for all) while another may hang */
    if (status == MOE_STATUS_OK) status = moe_watch_barrier(watch, MPI_COMM_WORLD, -1, NULL, "the end of the run");
    if (status != MOE_STATUS_OK) {
        fprintf(stderr, "moerun[%d]: %s failed: %s; ending the job\n", launch.rank, name,
                moe_status_string(status));
        moe_engine_abort(engine);
        abort_job(launch.size);
        rc = 1;
    }
done:
    moe_engine_destroy(engine);
    moe_watch_destroy(watch);
    free(config);
    MPI_Finalize();
    return rc;
}

int moe_cmd_infer(int argc, char **argv) { return run_command(argc, argv, false); }
int moe_cmd_elastic(int argc, char **argv) { return run_command(argc, argv, true); }
