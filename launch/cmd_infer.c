/* cmd_infer: `moerun infer`, the expert-parallel run under mpirun, and `moerun elastic`, the same
 * run with a serving set that grows and shrinks on a schedule (runtime/elastic/elastic.c).
 *
 * Failure policy: a configuration error is seen by every rank alike, so each returns and the job
 * ends cleanly with one message from rank 0; any other error may be one rank's alone, so that rank
 * calls MPI_Abort, which ends every rank rather than leaving them waiting in a collective. A rank
 * that stops answering is found by the watch (comm.h, run.timeout) of the ranks waiting for it, and
 * they end the job the same way. */
#include <jansson.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/launcher.h"
#include "moe_build_config.h"
#include "comm/comm.h"
#include "io/io.h"
#include "runtime/runtime.h"
#include "runtime/elastic/elastic.h"

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
            "  --dry-run              per rank: experts, weight bytes, host and device memory, checkpoint\n"
            "                         bytes to read; then exit, nothing allocated\n"
            "  --json                 the summary (or the dry run) as JSON lines on stdout\n"
            "  --log-level LEVEL      error | warn | info | debug (default warn)\n"
            "  --version              moerun's version and git commit\n"
            "  -h, --help             this text, and the settings with their defaults\n"
            "Options take their value as --opt VALUE or --opt=VALUE.\n");
}

static void print_settings(FILE *out)
{
    fprintf(out, "\nsettings (KEY, default, meaning):\n");
    for (const moe_config_setting_info_t *s = moe_config_settings(); s->name; s++)
        fprintf(out, "  %-24s %-10s %s\n", s->name, s->default_value, s->meaning);
}

/* The flags of a run, parsed alike on every rank. Settings (--set, --plan, --output, --metrics,
 * --stats) keep their order: rank 0 applies them over the file in the order given. */
#define MAX_SETTINGS 256
enum {
    OPT_PLAN = MOE_CLI_ID_FIRST, OPT_SET, OPT_OUTPUT, OPT_METRICS, OPT_STATS, OPT_SCHEDULE, OPT_TIMELINE,
    OPT_EVENTS, OPT_PLANS, OPT_TRACE_EVENTS, OPT_TRACE_BATCH, OPT_REFERENCE, OPT_PRINT_CONFIG, OPT_DRY_RUN,
};
static const struct option infer_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"plan", required_argument, NULL, OPT_PLAN},
    {"set", required_argument, NULL, OPT_SET},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"stats", required_argument, NULL, OPT_STATS},
    {"schedule", required_argument, NULL, OPT_SCHEDULE},
    {"timeline", required_argument, NULL, OPT_TIMELINE},
    {"events", required_argument, NULL, OPT_EVENTS},
    {"plans", required_argument, NULL, OPT_PLANS},
    {"trace-events", required_argument, NULL, OPT_TRACE_EVENTS},
    {"trace-batch", required_argument, NULL, OPT_TRACE_BATCH},
    {"reference", no_argument, NULL, OPT_REFERENCE},
    {"print-config", no_argument, NULL, OPT_PRINT_CONFIG},
    {"dry-run", no_argument, NULL, OPT_DRY_RUN},
    {0},
};

typedef struct {
    bool elastic;
    const char *config_path, *schedule, *timeline, *events, *plans, *trace_events;
    int trace_batch;
    bool print_config, reference, dry_run;
    int n_settings;
    struct {
        const char *key; /* NULL: a --set KEY=VALUE */
        const char *value;
    } settings[MAX_SETTINGS];
} infer_args_t;

static int infer_option(void *ctx, int id, const char *arg)
{
    infer_args_t *a = ctx;
    const char *key = NULL;
    switch (id) {
    case 'c': a->config_path = arg; return 0;
    case OPT_SCHEDULE:
        if (!a->elastic) return -1;
        a->schedule = arg;
        return 0;
    case OPT_TIMELINE: a->timeline = arg; return 0;
    case OPT_EVENTS: a->events = arg; return 0;
    case OPT_PLANS: a->plans = arg; return 0;
    case OPT_TRACE_EVENTS: a->trace_events = arg; return 0;
    case OPT_TRACE_BATCH: {
        long long b;
        if (!moe_cli_int(arg, 0, 1000000000, &b)) return -1;
        a->trace_batch = (int)b;
        return 0;
    }
    case OPT_REFERENCE: a->reference = true; return 0;
    case OPT_PRINT_CONFIG: a->print_config = true; return 0;
    case OPT_DRY_RUN: a->dry_run = true; return 0;
    case OPT_SET: key = NULL; break;
    case OPT_PLAN: key = "placement.plan"; break;
    case OPT_OUTPUT: key = "outputs.output"; break;
    case OPT_METRICS: key = "outputs.metrics"; break;
    case OPT_STATS: key = "outputs.stats"; break;
    default: return -1;
    }
    if (a->n_settings == MAX_SETTINGS) return -1;
    a->settings[a->n_settings].key = key;
    a->settings[a->n_settings++].value = arg;
    return 0;
}

/* The world rank the launcher gives this process, before MPI is up (0 when not launched). */
static int launcher_rank(void)
{
    const char *names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
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

/* The job cannot end cleanly (a rank failed alone, or stopped answering): end every rank. */
static void abort_job(int size)
{
    moe_atomic_file_remove_all(); /* MPI_Abort ends this process too: no temporary left behind */
    fflush(stderr);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
}

/* --dry-run: every rank's figures to rank 0, printed as a table (or JSON lines with --json). */
static int print_estimates(moe_engine_h engine, const moe_launch_info_t *launch, bool json)
{
    moe_estimate_t mine;
    moe_engine_estimate(engine, &mine);
    moe_estimate_t *all = launch->rank == 0 ? calloc((size_t)launch->size, sizeof *all) : NULL;
    if (launch->rank == 0 && !all) return -1;
    if (MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD) !=
        MPI_SUCCESS) {
        free(all);
        return -1;
    }
    int rc = 0;
    if (launch->rank == 0 && json) {
        for (int p = 0; p < launch->size && rc == 0; p++) {
            json_t *r = moe_json_record("dry_run");
            json_object_set_new(r, "rank", json_integer(p));
            json_object_set_new(r, "experts", json_integer(all[p].experts));
            json_object_set_new(r, "weight_bytes", json_integer(all[p].weight_bytes));
            json_object_set_new(r, "host_bytes", json_integer(all[p].host_bytes));
            json_object_set_new(r, "device_bytes", json_integer(all[p].device_bytes));
            json_object_set_new(r, "checkpoint_bytes", json_integer(all[p].checkpoint_bytes));
            json_object_set_new(r, "checkpoint_expert_bytes", json_integer(all[p].checkpoint_expert_bytes));
            rc = moe_json_line_write(stdout, NULL, false, r) == MOE_STATUS_OK ? 0 : -1;
        }
    } else if (launch->rank == 0) {
        const double G = 1 << 30;
        printf("moerun infer --dry-run: %d ranks; nothing allocated (figures the run would report)\n", launch->size);
        static const moe_table_column_t columns[] = {
            {"rank", 5, 'i', 0},     {"experts", 8, 'i', 0},          {"weights GiB", 12, 'f', 3},
            {"host GiB", 12, 'f', 3}, {"device GiB", 12, 'f', 3},     {"checkpoint read", 16, 'i', 0},
            {"(routed experts)", 16, 'i', 0}};
        const moe_table_t table = {.out = stdout, .indent = "  ", .columns = columns, .n = 7};
        moe_table_header(&table);
        for (int p = 0; p < launch->size; p++)
            moe_table_row(&table, (long long)p, (long long)all[p].experts, all[p].weight_bytes / G,
                          all[p].host_bytes / G, all[p].device_bytes / G, (long long)all[p].checkpoint_bytes,
                          (long long)all[p].checkpoint_expert_bytes);
        printf("  (weights and checkpoint bytes: the run's own layout and reads, exact; host: what the process\n"
               "   holds now plus the weights and buffers, the run's peak resident set; device: an estimate)\n");
    }
    free(all);
    return rc;
}

static int run_command(int argc, char **argv, bool elastic)
{
    const char *name = elastic ? "elastic" : "infer";
    infer_args_t *args = calloc(1, sizeof *args);
    if (!args) return 1;
    args->elastic = elastic;
    args->trace_batch = -1;
    /* --help and --version need no MPI: answered before it, by the launcher's rank 0 alone */
    moe_cli_t cli = MOE_CLI_INIT(name);
    cli.quiet = true;
    if (moe_cli_parse(&cli, argc, argv, "c:", infer_options, infer_option, args) == 0 && (cli.help || cli.version)) {
        if (launcher_rank() == 0 && cli.version) moe_cli_print_version(stdout);
        else if (launcher_rank() == 0) {
            infer_usage(stdout, elastic);
            print_settings(stdout);
        }
        free(args);
        return 0;
    }

    /* Elastic runs use threads (the placement solver, the next backend state) that never call MPI. */
    int provided = MPI_THREAD_SINGLE;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    moe_launch_info_t launch;
    moe_launch_info(&launch);
    moe_config_t *config = malloc(sizeof *config);
    moe_watch_h watch = NULL;
    moe_ctl_h world = NULL; /* the control plane over the world, under the watch: the engine's ranks */
    moe_engine_h engine = NULL;
    int rc = 0;
    moe_status_t status = MOE_STATUS_OK;

    /* Every rank parses alike and reaches the same verdict; rank 0 alone says what is wrong. */
    memset(args, 0, sizeof *args);
    args->elastic = elastic;
    args->trace_batch = -1;
    cli = (moe_cli_t)MOE_CLI_INIT(name);
    cli.quiet = launch.rank != 0;
    rc = moe_cli_parse(&cli, argc, argv, "c:", infer_options, infer_option, args);
    const moe_log_level_t level = cli.level;
    /* Until the configuration is known good, only rank 0 speaks: it alone reads the file. */
    moe_log_init(launch.rank, launch.rank == 0 ? level : MOE_LOG_SILENT);
    if (rc != 0) goto done;
    if (!config) {
        fprintf(stderr, "moerun[%d]: out of memory\n", launch.rank);
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    moe_config_defaults(config);
    if (moe_watch_create(MPI_COMM_WORLD, config->run.timeout, &watch) != MOE_STATUS_OK ||
        moe_ctl_create(MPI_COMM_WORLD, watch, &world) != MOE_STATUS_OK) {
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    if (!args->config_path) {
        if (launch.rank == 0) {
            fprintf(stderr, "moerun %s: missing -c CONFIG\n\n", name);
            infer_usage(stderr, elastic);
        }
        rc = 2;
    } else if (elastic && !args->schedule) {
        if (launch.rank == 0) fprintf(stderr, "moerun elastic: missing --schedule SPEC (see --help)\n");
        rc = 2;
    } else if (args->dry_run && (args->reference || args->print_config)) {
        if (launch.rank == 0) fprintf(stderr, "moerun %s: --dry-run goes with neither --reference nor --print-config\n", name);
        rc = 2;
    }
    if (rc != 0) goto done;
    if (launch.rank == 0) {
        status = moe_config_load(args->config_path, config);
        for (int i = 0; i < args->n_settings && status == MOE_STATUS_OK; i++)
            status = args->settings[i].key ? set_path(config, args->settings[i].key, args->settings[i].value)
                                           : moe_config_set(config, args->settings[i].value);
        if (status == MOE_STATUS_OK && args->schedule) status = moe_schedule_check(args->schedule, launch.size);
        /* an elastic run's experts are split over the schedule's first size; the engine checks that */
        if (status == MOE_STATUS_OK) status = moe_config_validate(config, args->schedule ? 0 : launch.size);
        if (status != MOE_STATUS_OK) rc = 1;
    }
    if (share_config(launch.rank, watch, &rc, config) != 0) {
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    if (rc != 0) goto done;
    moe_watch_set_timeout(watch, config->run.timeout);
    if (args->print_config) {
        if (launch.rank == 0) moe_config_print(config, stdout);
        goto done;
    }

    /* From here errors may be one rank's own: every rank logs, and a failure aborts the job. */
    moe_log_init(launch.rank, level);
    moe_engine_options_t options = MOE_ENGINE_OPTIONS_INIT;
    options.command = name;
    options.reference = args->reference;
    options.schedule = args->schedule;
    options.timeline = args->timeline;
    options.events = args->events;
    options.plans_dir = args->plans;
    options.trace_events = args->trace_events;
    options.trace_batch = args->trace_batch;
    options.watch = watch;
    options.node_hint = launch.node_id;
    options.dry_run = args->dry_run;
    options.json = cli.json;
    const moe_progress_t mode = config->outputs.progress;
#if MOE_HAVE_CUDA
    /* the GPU and the cores: collective, every rank alike (the configuration is shared); a failure
     * every rank meets (no GPU on the node) is told once */
    if (config->run.backend == MOE_BACKEND_CUDA && !args->reference) {
        moe_log_hold(true);
        bool told = false;
        const int any = moe_cli_agree(watch, moe_launch_device(&options.device) != MOE_STATUS_OK, false, &told);
        if (any != 0) {
            if (any < 0) abort_job(launch.size);
            rc = 1;
            goto done;
        }
    }
#endif
    options.progress = launch.rank == 0 && !cli.json &&
                       (mode == MOE_PROGRESS_ON ||
                        ((mode == MOE_PROGRESS_AUTO || mode == MOE_PROGRESS_TRUE) && moe_cli_stdout_is_terminal()));
    /* Bad input files fail create on every rank alike: its messages are held until the ranks have
     * compared them, then printed once (rank 0's), and the job ends cleanly without an abort. A rank
     * that stopped answering ends the job at once. */
    moe_log_hold(true);
    status = moe_engine_create(config, &options, world, &engine);
    const bool failed = status != MOE_STATUS_OK;
    bool said = false; /* an error line was printed for this failure */
    int any = moe_cli_agree(watch, failed, status == MOE_STATUS_TIMEOUT, &said);
    if (any < 0) {
        fprintf(stderr, "moerun[%d]: %s could not start: %s; ending the job\n", launch.rank, name,
                moe_status_string(status == MOE_STATUS_OK ? MOE_STATUS_TIMEOUT : status));
        abort_job(launch.size);
        rc = 1;
        goto done;
    }
    if (any) { /* one line says why when the messages printed did not */
        if (launch.rank == 0 && !failed)
            fprintf(stderr, "moerun: %s could not start: another rank failed\n", name);
        else if (failed && !said && launch.rank == 0)
            fprintf(stderr, "moerun: %s could not start: %s\n", name, moe_status_string(status));
        else if (failed && !said)
            fprintf(stderr, "moerun[%d]: %s could not start: %s\n", launch.rank, name, moe_status_string(status));
        rc = 1;
        goto done;
    }
    if (args->dry_run) {
        if (print_estimates(engine, &launch, cli.json) != 0) {
            abort_job(launch.size);
            rc = 1;
        }
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
    moe_ctl_destroy(world);
    moe_watch_destroy(watch);
    free(config);
    free(args);
    MPI_Finalize();
    return rc;
}

int moe_cmd_infer(int argc, char **argv) { return run_command(argc, argv, false); }
int moe_cmd_elastic(int argc, char **argv) { return run_command(argc, argv, true); }
