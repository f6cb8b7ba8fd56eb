/* cmd_place: `moerun place`, expert-to-GPU plans from routing statistics, and `moerun place
 * --evaluate`, the replay of a trace against a plan (cost model: placement/cost.c, plan format:
 * placement/plan_yaml.c, docs/placement.md).
 *
 * Several sources (--stats, --trace, --loads-csv) are several workloads that the plan must serve at
 * once. For each source the command reports, for traces, the replayed figures (what the runtime
 * sends) first, then the modelled ones (what the solver optimises); --score TRACE replays the new
 * plan (and the baselines) on traces it was not built from. --cross-validate chooses the hedged
 * solver's weights across the sources first and prints the table.
 * Output: a short table for people, or one JSON object with --json. Exit status: 0 done, 1 error,
 * 2 usage. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "placement/placement.h"

#define MAX_SOURCES 32

static void place_usage(FILE *out)
{
    fprintf(
        out,
        "usage: moerun place (--stats S.safetensors | --trace IDS.npy[@A:B] |\n"
        "                     --loads-csv F.csv[@LABEL] --tokens N)... --ranks N --ranks-per-node "
        "G\n"
        "                    [--replicas R] [--solver hedged|greedy|ilp|incremental|contiguous|"
        "round-robin]\n"
        "                    [--exact] [--cross-validate] [--current PLAN] [--time-limit SEC]\n"
        "                    -o PLAN.yaml [--json]\n"
        "       moerun place --evaluate --plan PLAN.yaml --trace IDS.npy[@A:B]... [--json]\n"
        "\n"
        "  sources (repeat: each is a workload the plan must keep balanced):\n"
        "  --stats FILE          statistics written by moerun stats / moerun infer\n"
        "  --trace IDS[@A:B]     a trace (ids [layers, tokens, top_k]); @A:B keeps tokens A..B-1\n"
        "  --loads-csv F[@LABEL] per-layer load fractions (Layer,<label>,Expert_0..); --tokens N\n"
        "                        tokens per row (give --tokens before --loads-csv)\n"
        "  --ranks N, --ranks-per-node G   world: N ranks, G per node\n"
        "  --replicas R          redundant expert slots per layer (default 0)\n"
        "  --slots-per-rank S    experts one rank can hold (default: no limit)\n"
        "  --solver NAME         default hedged: for routing the sources do not show (balance over\n"
        "                        the sources and over shifted domains, copies counted from the\n"
        "                        traces' routes); greedy: DeepSeek EPLB; ilp: the decomposed GLPK\n"
        "                        model; incremental: from --current (which may have another number\n"
        "                        of ranks: a scale event), moving few experts, balance only\n"
        "  --exact               the cost model solved to optimality over replica counts and hosts\n"
        "                        with equal shares (small instances)\n"
        "  --hedge X             hedged: weight in [0, 1] of the shifted domains (default 0.75)\n"
        "  --traffic-weight X    hedged: weight of the copies against balance (default 0.25)\n"
        "  --cross-validate      hedged: choose --hedge and --traffic-weight by building on some\n"
        "                        sources and scoring on the others (one trace: its halves)\n"
        "  --time-limit SEC      for hedged / ilp / exact, per solve (default 60)\n"
        "  --current PLAN        plan in service: moving an expert costs --move-cost (default "
        "0.05;\n"
        "                        max/mean per layer); required by --solver incremental\n"
        "  --expert-bytes B      weight bytes of one expert (reported bytes moved)\n"
        "  --node-slack X        ilp: node balance within 1 + X of the warm start's (default 0.01)\n"
        "  --no-share-lp         ilp: keep equal replica shares (no share LP)\n"
        "  --verbose             per-layer progress of the solver\n"
        "  --copy-cost X         intra-node copy vs one token-expert FFN (default 1)\n"
        "  --inter-factor X      inter-node vs intra-node copy (default 3.2)\n"
        "  --hierarchical        model hierarchical dispatch in the objective (run.dispatch:\n"
        "                        hierarchical); --evaluate replays both dispatches' copies, per\n"
        "                        layer with --json (the runtime's metrics count the same)\n"
        "  --residency home|stay tokens go home between layers (the runtime), or stay on the rank "
        "of\n"
        "                        their last expert (modelled, --solver ilp: transitions count);\n"
        "                        default home\n"
        "  --tokens-per-rank N   replay: home rank of token t is (t / N) %% ranks (default 512)\n"
        "  --score IDS[@A:B]     also replay the plan on this trace (repeatable)\n"
        "  --no-baselines        skip the contiguous / round-robin / greedy figures\n"
        "  --experts E           experts per layer of traces (default: largest id + 1, to x8)\n"
        "  --model NAME          model name written into the plan / checked by --evaluate\n"
        "  -o PLAN.yaml          the plan; --json: one JSON object on stdout\n");
}

/* A plan's figures on one workload, as JSON (jansson). */
static json_t *figures_json(const moe_place_figures_t *g)
{
    json_t *o = json_object();
    json_object_set_new(o, "replayed", json_boolean(g->replayed));
    json_object_set_new(o, "tokens", moe_json_number(g->tokens));
    json_object_set_new(o, "max_mean_worst", moe_json_number(g->worst_imbalance));
    json_object_set_new(o, "max_mean_mean", moe_json_number(g->mean_imbalance));
    const char *names[] = {"inter", "intra", "inter_hier", "intra_hier", "inter_stay", "intra_stay", "cost"};
    const double vals[] = {g->inter_total,      g->intra_total,      g->inter_hier_total, g->intra_hier_total,
                           g->inter_stay_total, g->intra_stay_total, g->cost};
    for (int i = 0; i < 7; i++) json_object_set_new(o, names[i], moe_json_number(vals[i]));
    json_t *imb = json_array(), *inter = json_array();
    for (int l = 0; l < g->layers; l++) {
        json_array_append_new(imb, moe_json_number(g->imbalance[l]));
        json_array_append_new(inter, moe_json_number(g->inter[l]));
    }
    json_object_set_new(o, "per_layer_max_mean", imb);
    json_object_set_new(o, "per_layer_inter", inter);
    /* per layer, hierarchical too (the runtime's metrics count the same copies, per layer) */
    const char *layer_names[] = {"per_layer_intra", "per_layer_inter_hier", "per_layer_intra_hier"};
    const double *layer_vals[] = {g->intra, g->inter_hier, g->intra_hier};
    for (int i = 0; i < 3; i++) {
        json_t *a = json_array();
        for (int l = 0; l < g->layers; l++) json_array_append_new(a, moe_json_number(layer_vals[i][l]));
        json_object_set_new(o, layer_names[i], a);
    }
    return o;
}

static const moe_table_column_t figure_columns[] = {
    {"plan", 12, 's', 0},    {"workload", 40, 's', 0}, {"figures", 8, 's', 0},      {"max/mean", 9, 'f', 3},
    {"worst", 9, 'f', 3},    {"inter", 12, 'f', 0},    {"intra", 12, 'f', 0},       {"inter(hier)", 12, 'f', 0},
    {"intra(hier)", 12, 'f', 0},
};
static const moe_table_t figure_table = {.columns = figure_columns, .n = 9};

static void table_header(void)
{
    moe_table_t t = figure_table;
    t.out = stdout;
    moe_table_header(&t);
}

static void table_row(const char *plan, const char *workload, const moe_place_figures_t *g)
{
    moe_table_t t = figure_table;
    t.out = stdout;
    moe_table_row(&t, plan, workload, g->replayed ? "replay" : "model", g->mean_imbalance, g->worst_imbalance,
                  g->inter_total, g->intra_total, g->inter_hier_total, g->intra_hier_total);
}

/* Figures of a plan on every source (modelled, and replayed where there are routes) and on every
 * scored trace: table rows, or with into the "sources" and "scored" arrays set on it. */
static int report_plan(json_t *into, const char *label, moe_plan_h plan, moe_workload_h *src, int n_src,
                       moe_workload_h *scored, int n_scored, const moe_place_options_t *o)
{
    moe_place_figures_t g;
    json_t *sources = into ? json_array() : NULL, *scores = into ? json_array() : NULL;
    if (into) {
        json_object_set_new(into, "sources", sources);
        json_object_set_new(into, "scored", scores);
    }
    for (int i = 0; i < n_src; i++) {
        /* the replay (what the runtime sends) first, then the model the solvers optimise */
        json_t *entry = NULL;
        if (into) {
            entry = json_object();
            json_object_set_new(entry, "name", json_string(moe_workload_name(src[i])));
            json_array_append_new(sources, entry);
        }
        if (moe_workload_has_routes(src[i])) {
            if (moe_place_evaluate(plan, src[i], o, &g) != MOE_STATUS_OK) return 1;
            if (entry)
                json_object_set_new(entry, "replayed", figures_json(&g));
            else
                table_row(label, moe_workload_name(src[i]), &g);
            moe_place_figures_free(&g);
        }
        if (moe_place_model(plan, src[i], o, &g) != MOE_STATUS_OK) return 1;
        if (entry)
            json_object_set_new(entry, "modelled", figures_json(&g));
        else
            table_row(label, moe_workload_name(src[i]), &g);
        moe_place_figures_free(&g);
    }
    for (int i = 0; i < n_scored; i++) {
        if (moe_place_evaluate(plan, scored[i], o, &g) != MOE_STATUS_OK) return 1;
        if (into) {
            json_t *entry = json_object();
            json_object_set_new(entry, "name", json_string(moe_workload_name(scored[i])));
            json_object_set_new(entry, "replayed", figures_json(&g));
            json_array_append_new(scores, entry);
        } else {
            char l2[64];
            snprintf(l2, sizeof(l2), "%s*", label);
            table_row(l2, moe_workload_name(scored[i]), &g);
        }
        moe_place_figures_free(&g);
    }
    return 0;
}

/* The YAML block with the solver's figures that goes into the plan file, written by libyaml's
 * emitter (malloc'd text; NULL when out of memory). */
static char *predicted_yaml(const char *solver, moe_plan_h plan, moe_workload_h *src, int n_src,
                            const moe_place_report_t *rep, const moe_place_options_t *o)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    moe_yaml_out_h w = NULL;
    if (!mem) return NULL;
    if (moe_yaml_out_open(mem, "the plan's annotations", &w) != MOE_STATUS_OK) {
        fclose(mem);
        free(text);
        return NULL;
    }
    moe_yaml_out_map(w, false);
    moe_yaml_out_key(w, "solver");
    moe_yaml_out_string(w, solver);
    moe_yaml_out_key(w, "sources");
    moe_yaml_out_seq(w, false);
    for (int i = 0; i < n_src; i++) moe_yaml_out_string(w, moe_workload_name(src[i]));
    moe_yaml_out_end_seq(w);
    /* no solve time here: the same input gives the same file */
    moe_yaml_out_key(w, "predicted");
    moe_yaml_out_map(w, false);
    moe_yaml_out_key(w, "objective");
    moe_yaml_out_number(w, rep->objective, "%.6g");
    if (isfinite(rep->mip_gap)) {
        moe_yaml_out_key(w, "mip_gap");
        moe_yaml_out_number(w, rep->mip_gap, "%.4g");
    }
    moe_yaml_out_key(w, "per_source");
    moe_yaml_out_seq(w, false);
    for (int i = 0; i < n_src; i++) {
        moe_place_figures_t g;
        if (moe_place_model(plan, src[i], o, &g) != MOE_STATUS_OK) continue;
        moe_yaml_out_map(w, true);
        const char *keys[4] = {"max_mean_mean", "max_mean_worst", "inter_modelled", "intra_modelled"};
        const double vals[4] = {g.mean_imbalance, g.worst_imbalance, g.inter_total, g.intra_total};
        for (int k = 0; k < 4; k++) {
            moe_yaml_out_key(w, keys[k]);
            moe_yaml_out_number(w, vals[k], k < 2 ? "%.4f" : "%.0f");
        }
        moe_yaml_out_end_map(w);
        moe_place_figures_free(&g);
    }
    moe_yaml_out_end_seq(w);
    moe_yaml_out_end_map(w);
    moe_yaml_out_end_map(w);
    const moe_status_t status = moe_yaml_out_close(w);
    fclose(mem);
    if (status != MOE_STATUS_OK) {
        free(text);
        return NULL;
    }
    return text;
}

/* The cross-validation table: held-out figures per grid point, averaged over folds. */
static void print_cv(const moe_place_cv_t *cv)
{
    double gm = 0, gw = 0, gc = 0;
    for (int f = 0; f < cv->folds; f++)
        gm += cv->greedy_mean[f] / cv->folds, gw = fmax(gw, cv->greedy_worst[f]),
            gc += cv->greedy_copies[f] / cv->folds;
    printf("cross-validation over %d folds (held-out figures; greedy: max/mean %.3f, worst %.3f, "
           "copies %.4f):\n",
           cv->folds, gm, gw, gc);
    printf("  %6s %8s %9s %9s %9s %9s %s\n", "hedge", "traffic", "max/mean", "worst", "copies",
           "cost", "no worse than greedy");
    for (int i = 0; i < cv->n_points; i++) {
        const moe_place_cv_point_t *p = &cv->points[i];
        double m = 0, w = 0, c = 0;
        for (int f = 0; f < cv->folds; f++)
            m += p->mean[f] / cv->folds, w = fmax(w, p->worst[f]), c += p->copies[f] / cv->folds;
        printf("  %6g %8g %9.3f %9.3f %9.4f %9.4f %s%s\n", p->hedge, p->traffic_weight, m, w, c,
               p->cost, p->feasible ? "yes" : "no", i == cv->chosen ? "  <- chosen" : "");
    }
}

static json_t *cv_json(const moe_place_cv_t *cv)
{
    json_t *o = json_object(), *greedy = json_array(), *points = json_array();
    json_object_set_new(o, "folds", json_integer(cv->folds));
    json_object_set_new(o, "chosen", json_integer(cv->chosen));
    for (int f = 0; f < cv->folds; f++) {
        json_t *g = json_object();
        json_object_set_new(g, "max_mean_mean", moe_json_number(cv->greedy_mean[f]));
        json_object_set_new(g, "max_mean_worst", moe_json_number(cv->greedy_worst[f]));
        json_object_set_new(g, "copies", moe_json_number(cv->greedy_copies[f]));
        json_array_append_new(greedy, g);
    }
    json_object_set_new(o, "greedy", greedy);
    for (int i = 0; i < cv->n_points; i++) {
        const moe_place_cv_point_t *p = &cv->points[i];
        json_t *pt = json_object(), *folds = json_array();
        json_object_set_new(pt, "hedge", moe_json_number(p->hedge));
        json_object_set_new(pt, "traffic_weight", moe_json_number(p->traffic_weight));
        json_object_set_new(pt, "feasible", json_boolean(p->feasible));
        json_object_set_new(pt, "cost", moe_json_number(p->cost));
        for (int f = 0; f < cv->folds; f++) {
            json_t *fo = json_object();
            json_object_set_new(fo, "max_mean_mean", moe_json_number(p->mean[f]));
            json_object_set_new(fo, "max_mean_worst", moe_json_number(p->worst[f]));
            json_object_set_new(fo, "copies", moe_json_number(p->copies[f]));
            json_array_append_new(folds, fo);
        }
        json_object_set_new(pt, "folds", folds);
        json_array_append_new(points, pt);
    }
    json_object_set_new(o, "points", points);
    return o;
}

static int cmd_evaluate(const char *plan_path, const char **traces, int n_traces, int experts,
                        int ranks, const char *model, bool json, const moe_place_options_t *opt)
{
    moe_plan_h plan = NULL;
    moe_workload_h w[MAX_SOURCES] = {0};
    char plan_model[256];
    json_t *record = NULL;
    int rc = 1;
    if (moe_plan_load_annotated(plan_path, plan_model, sizeof(plan_model), &plan) != MOE_STATUS_OK)
        goto done;
    if (ranks > 0 && ranks != moe_plan_ranks(plan)) {
        moe_error("%s: the plan is for %d ranks, not %d", plan_path, moe_plan_ranks(plan), ranks);
        goto done;
    }
    if (model && plan_model[0] && strcmp(model, plan_model) != 0) {
        moe_error("%s: the plan is for model '%s', not '%s'", plan_path, plan_model, model);
        goto done;
    }
    moe_place_options_t o = *opt;
    o.ranks = moe_plan_ranks(plan);
    o.ranks_per_node = moe_plan_ranks_per_node(plan);
    for (int i = 0; i < n_traces; i++) {
        /* first as the trace says (to name a plan for another model plainly), then with the
         * plan's expert count */
        if (moe_workload_load_trace(traces[i], experts, &w[i]) != MOE_STATUS_OK) goto done;
        int te = moe_workload_experts(w[i]), pe = moe_plan_experts(plan);
        if (moe_workload_layers(w[i]) != moe_plan_layers(plan) || te > (pe + 7) / 8 * 8) {
            moe_error("%s: %d layers x %d experts, but the plan %s is for %d layers x %d experts "
                      "(a plan for another model)",
                      traces[i], moe_workload_layers(w[i]), te, plan_path, moe_plan_layers(plan),
                      pe);
            goto done;
        }
        if (te != pe) {
            moe_workload_destroy(w[i]);
            w[i] = NULL;
            if (moe_workload_load_trace(traces[i], pe, &w[i]) != MOE_STATUS_OK) goto done;
        }
    }
    if (json) {
        record = moe_json_record("place");
        json_object_set_new(record, "command", json_string("evaluate"));
        json_object_set_new(record, "plan", json_string(plan_path));
        json_object_set_new(record, "ranks", json_integer(o.ranks));
        json_object_set_new(record, "ranks_per_node", json_integer(o.ranks_per_node));
        json_object_set_new(record, "tokens_per_rank", json_integer(o.tokens_per_rank));
    } else {
        printf("plan %s: %d layers x %d experts on %d ranks (%d per node)\n", plan_path,
               moe_plan_layers(plan), moe_plan_experts(plan), o.ranks, o.ranks_per_node);
        table_header();
    }
    if (report_plan(record, "plan", plan, NULL, 0, w, n_traces, &o)) goto done;
    if (record && moe_json_line_write(stdout, NULL, false, record) != MOE_STATUS_OK) {
        record = NULL;
        goto done;
    }
    record = NULL;
    rc = 0;
done:
    json_decref(record);
    for (int i = 0; i < n_traces; i++) moe_workload_destroy(w[i]);
    moe_plan_destroy(plan);
    return rc;
}

typedef struct place_args_s place_args_t;
static int place_run(place_args_t *args, bool json);

enum {
    OPT_JSON_UNUSED = MOE_CLI_ID_FIRST, OPT_EVALUATE, OPT_EXACT, OPT_CROSS_VALIDATE, OPT_HIERARCHICAL, OPT_VERBOSE,
    OPT_NO_BASELINES, OPT_NO_SHARE_LP, OPT_STATS, OPT_TRACE, OPT_LOADS_CSV, OPT_SCORE, OPT_PLAN, OPT_CURRENT,
    OPT_MODEL, OPT_RESIDENCY, OPT_SOLVER, OPT_TOKENS, OPT_RANKS, OPT_RANKS_PER_NODE, OPT_EXPERTS, OPT_REPLICAS,
    OPT_SLOTS_PER_RANK, OPT_TOKENS_PER_RANK, OPT_TIME_LIMIT, OPT_HEDGE, OPT_TRAFFIC_WEIGHT, OPT_COPY_COST,
    OPT_INTER_FACTOR, OPT_NODE_SLACK, OPT_MOVE_COST, OPT_EXPERT_BYTES,
};
static const struct option place_options[] = {
    {"evaluate", no_argument, NULL, OPT_EVALUATE},
    {"exact", no_argument, NULL, OPT_EXACT},
    {"cross-validate", no_argument, NULL, OPT_CROSS_VALIDATE},
    {"hierarchical", no_argument, NULL, OPT_HIERARCHICAL},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"no-baselines", no_argument, NULL, OPT_NO_BASELINES},
    {"no-share-lp", no_argument, NULL, OPT_NO_SHARE_LP},
    {"stats", required_argument, NULL, OPT_STATS},
    {"trace", required_argument, NULL, OPT_TRACE},
    {"loads-csv", required_argument, NULL, OPT_LOADS_CSV},
    {"score", required_argument, NULL, OPT_SCORE},
    {"output", required_argument, NULL, 'o'},
    {"plan", required_argument, NULL, OPT_PLAN},
    {"current", required_argument, NULL, OPT_CURRENT},
    {"model", required_argument, NULL, OPT_MODEL},
    {"residency", required_argument, NULL, OPT_RESIDENCY},
    {"solver", required_argument, NULL, OPT_SOLVER},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"ranks", required_argument, NULL, OPT_RANKS},
    {"ranks-per-node", required_argument, NULL, OPT_RANKS_PER_NODE},
    {"experts", required_argument, NULL, OPT_EXPERTS},
    {"replicas", required_argument, NULL, OPT_REPLICAS},
    {"slots-per-rank", required_argument, NULL, OPT_SLOTS_PER_RANK},
    {"tokens-per-rank", required_argument, NULL, OPT_TOKENS_PER_RANK},
    {"time-limit", required_argument, NULL, OPT_TIME_LIMIT},
    {"hedge", required_argument, NULL, OPT_HEDGE},
    {"traffic-weight", required_argument, NULL, OPT_TRAFFIC_WEIGHT},
    {"copy-cost", required_argument, NULL, OPT_COPY_COST},
    {"inter-factor", required_argument, NULL, OPT_INTER_FACTOR},
    {"node-slack", required_argument, NULL, OPT_NODE_SLACK},
    {"move-cost", required_argument, NULL, OPT_MOVE_COST},
    {"expert-bytes", required_argument, NULL, OPT_EXPERT_BYTES},
    {0},
};

struct place_args_s {
    moe_place_options_t o;
    const char *kinds[MAX_SOURCES], *specs[MAX_SOURCES], *scores[MAX_SOURCES];
    double csv_tokens[MAX_SOURCES];
    int n_src, n_scores;
    const char *output, *current_path, *plan_path, *model;
    bool evaluate, baselines, exact, cross_validate;
    double tokens;
    long long ranks, rpn, experts;
};

/* One option, in order (--tokens applies to the --loads-csv after it). */
static int place_option(void *ctx, int id, const char *v)
{
    place_args_t *a = ctx;
    moe_place_options_t *o = &a->o;
    long long lv = 0;
    double dv = 0;
    switch (id) {
    case OPT_EVALUATE: a->evaluate = true; return 0;
    case OPT_EXACT: a->exact = true; return 0;
    case OPT_CROSS_VALIDATE: a->cross_validate = true; return 0;
    case OPT_HIERARCHICAL: o->hierarchical = true; return 0;
    case OPT_VERBOSE: o->verbose = 1; return 0;
    case OPT_NO_BASELINES: a->baselines = false; return 0;
    case OPT_NO_SHARE_LP: o->share_lp = false; return 0;
    case OPT_STATS:
    case OPT_TRACE:
    case OPT_LOADS_CSV:
        if (a->n_src == MAX_SOURCES) {
            fprintf(stderr, "moerun place: at most %d sources\n", MAX_SOURCES);
            return 2;
        }
        if (id == OPT_LOADS_CSV && !(a->tokens > 0)) {
            fprintf(stderr, "moerun place: --loads-csv %s needs --tokens N before it\n", v);
            return 2;
        }
        a->csv_tokens[a->n_src] = a->tokens;
        a->kinds[a->n_src] = id == OPT_STATS ? "--stats" : id == OPT_TRACE ? "--trace" : "--loads-csv";
        a->specs[a->n_src++] = v;
        return 0;
    case OPT_SCORE:
        if (a->n_scores == MAX_SOURCES) {
            fprintf(stderr, "moerun place: at most %d --score traces\n", MAX_SOURCES);
            return 2;
        }
        a->scores[a->n_scores++] = v;
        return 0;
    case 'o': a->output = v; return 0;
    case OPT_PLAN: a->plan_path = v; return 0;
    case OPT_CURRENT: a->current_path = v; return 0;
    case OPT_MODEL: a->model = v; return 0;
    case OPT_RESIDENCY:
        if (strcmp(v, "home") != 0 && strcmp(v, "stay") != 0) return -1;
        o->stay = !strcmp(v, "stay");
        return 0;
    case OPT_SOLVER: return moe_place_solver_parse(v, &o->solver) == MOE_STATUS_OK ? 0 : 2;
    case OPT_TOKENS: return moe_cli_double(v, &a->tokens) && a->tokens > 0 ? 0 : -1;
    case OPT_RANKS: return moe_cli_int(v, 1, MOE_MAX_RANKS, &a->ranks) ? 0 : -1;
    case OPT_RANKS_PER_NODE: return moe_cli_int(v, 1, INT_MAX, &a->rpn) ? 0 : -1;
    case OPT_EXPERTS: return moe_cli_int(v, 1, MOE_MAX_EXPERTS, &a->experts) ? 0 : -1;
    case OPT_REPLICAS: return moe_cli_int(v, 0, INT_MAX, &lv) ? (o->replicas = (int)lv, 0) : -1;
    case OPT_SLOTS_PER_RANK: return moe_cli_int(v, 1, INT_MAX, &lv) ? (o->slots_per_rank = (int)lv, 0) : -1;
    case OPT_TOKENS_PER_RANK: return moe_cli_int(v, 1, INT_MAX, &lv) ? (o->tokens_per_rank = lv, 0) : -1;
    case OPT_TIME_LIMIT: return moe_cli_double(v, &dv) && dv > 0 ? (o->time_limit = dv, 0) : -1;
    case OPT_HEDGE: return moe_cli_double(v, &dv) && dv >= 0 && dv <= 1 ? (o->hedge = dv, 0) : -1;
    case OPT_TRAFFIC_WEIGHT: return moe_cli_double(v, &dv) && dv >= 0 ? (o->traffic_weight = dv, 0) : -1;
    case OPT_COPY_COST: return moe_cli_double(v, &dv) && dv >= 0 ? (o->copy_cost = dv, 0) : -1;
    case OPT_INTER_FACTOR: return moe_cli_double(v, &dv) && dv >= 0 ? (o->inter_factor = dv, 0) : -1;
    case OPT_NODE_SLACK: return moe_cli_double(v, &dv) && dv >= 0 ? (o->node_slack = dv, 0) : -1;
    case OPT_MOVE_COST: return moe_cli_double(v, &dv) && dv >= 0 ? (o->move_cost = dv, 0) : -1;
    case OPT_EXPERT_BYTES: return moe_cli_double(v, &dv) && dv >= 0 ? (o->expert_bytes = dv, 0) : -1;
    default: return -1;
    }
}

int moe_cmd_place(int argc, char **argv)
{
    place_args_t *args = calloc(1, sizeof *args);
    if (!args) return 1;
    args->o = (moe_place_options_t)MOE_PLACE_OPTIONS_INIT;
    args->baselines = true;
    moe_cli_t cli = MOE_CLI_INIT("place");
    int prc = moe_cli_parse(&cli, argc, argv, "o:", place_options, place_option, args);
    if (prc != 0 || cli.help || cli.version) {
        if (prc == 2) place_usage(stderr);
        else if (cli.version) moe_cli_print_version(stdout);
        else place_usage(stdout);
        free(args);
        return prc;
    }
    moe_log_init(0, args->o.verbose ? MOE_LOG_INFO : cli.level);
    int rc = place_run(args, cli.json);
    free(args);
    return rc;
}

/* The command once parsed. */
static int place_run(place_args_t *args, bool json)
{
    moe_place_options_t o = args->o;
    const char **kinds = args->kinds, **specs = args->specs, **scores = args->scores;
    const double *csv_tokens = args->csv_tokens;
    const int n_src = args->n_src, n_scores = args->n_scores;
    const char *output = args->output, *current_path = args->current_path, *plan_path = args->plan_path,
               *model = args->model;
    const bool evaluate = args->evaluate, baselines = args->baselines, exact = args->exact,
               cross_validate = args->cross_validate;
    const long long ranks = args->ranks, rpn = args->rpn, experts = args->experts;
    json_t *record = NULL;
    if (exact) o.solver = MOE_PLACE_SOLVER_EXACT;
    if (evaluate) {
        const char *traces[MAX_SOURCES];
        int nt = 0;
        for (int i = 0; i < n_src; i++) {
            if (strcmp(kinds[i], "--trace") != 0) {
                fprintf(stderr, "moerun place --evaluate: replays traces only (%s %s)\n", kinds[i],
                        specs[i]);
                return 2;
            }
            traces[nt++] = specs[i];
        }
        if (n_src + n_scores > MAX_SOURCES) { /* traces[] and cmd_evaluate's workloads hold this many */
            fprintf(stderr, "moerun place --evaluate: at most %d traces (--trace and --score)\n",
                    MAX_SOURCES);
            return 2;
        }
        for (int i = 0; i < n_scores; i++) traces[nt++] = scores[i];
        if (!plan_path || nt == 0) {
            fprintf(stderr, "moerun place --evaluate: needs --plan and --trace\n\n");
            place_usage(stderr);
            return 2;
        }
        return cmd_evaluate(plan_path, traces, nt, (int)experts, (int)ranks, model, json, &o);
    }
    if (n_src == 0 || !output || ranks <= 0 || rpn <= 0) {
        fprintf(stderr,
                "moerun place: needs at least one source, --ranks, --ranks-per-node and -o\n\n");
        place_usage(stderr);
        return 2;
    }
    if (o.solver == MOE_PLACE_SOLVER_INCREMENTAL && !current_path) {
        fprintf(stderr, "moerun place: --solver incremental starts from the plan in service: give "
                        "it with --current PLAN\n\n");
        place_usage(stderr);
        return 2;
    }
    o.ranks = (int)ranks;
    o.ranks_per_node = (int)rpn;

    int rc = 1;
    moe_workload_h src[MAX_SOURCES] = {0}, scored[MAX_SOURCES] = {0};
    moe_plan_h plan = NULL, current = NULL;
    char *extra = NULL;
    if (moe_atomic_file_check(output) != MOE_STATUS_OK) goto done; /* before the solve, not after */
    for (int i = 0; i < n_src; i++) {
        moe_status_t s;
        if (!strcmp(kinds[i], "--stats"))
            s = moe_workload_load_stats(specs[i], &src[i]);
        else if (!strcmp(kinds[i], "--trace"))
            s = moe_workload_load_trace(specs[i], (int)experts, &src[i]);
        else
            s = moe_workload_load_csv(specs[i], csv_tokens[i], &src[i]);
        if (s != MOE_STATUS_OK) goto done;
        if (experts > 0 && moe_workload_experts(src[i]) != experts) {
            moe_error("%s: %d experts, not %lld (--experts)", specs[i], moe_workload_experts(src[i]),
                      experts);
            goto done;
        }
    }
    for (int i = 1; i < n_src; i++) {
        if (moe_workload_layers(src[i]) != moe_workload_layers(src[0]) ||
            moe_workload_experts(src[i]) != moe_workload_experts(src[0])) {
            moe_error("%s has %d layers x %d experts but %s has %d x %d: sources must describe one "
                      "model",
                      specs[i], moe_workload_layers(src[i]), moe_workload_experts(src[i]), specs[0],
                      moe_workload_layers(src[0]), moe_workload_experts(src[0]));
            goto done;
        }
    }
    int E = moe_workload_experts(src[0]), L = moe_workload_layers(src[0]);
    for (int i = 0; i < n_scores; i++) {
        if (moe_workload_load_trace(scores[i], E, &scored[i]) != MOE_STATUS_OK) goto done;
        if (moe_workload_layers(scored[i]) != L) {
            moe_error("%s: %d layers, the sources have %d", scores[i],
                      moe_workload_layers(scored[i]), L);
            goto done;
        }
    }
    if (current_path) {
        char cur_model[256];
        if (moe_plan_load_annotated(current_path, cur_model, sizeof(cur_model), &current) !=
            MOE_STATUS_OK)
            goto done;
        if (moe_plan_check_fits(current, L, E, moe_plan_ranks(current), current_path) !=
            MOE_STATUS_OK)
            goto done;
    }
    moe_place_cv_t cv;
    if (cross_validate) {
        if (o.solver != MOE_PLACE_SOLVER_HEDGED) {
            moe_error("--cross-validate chooses the hedged solver's weights; it needs --solver "
                      "hedged (the default)");
            goto done;
        }
        if (moe_place_cross_validate(src, n_src, &o, &cv) != MOE_STATUS_OK) goto done;
        o.hedge = cv.points[cv.chosen].hedge;
        o.traffic_weight = cv.points[cv.chosen].traffic_weight;
        if (!json) print_cv(&cv);
    }
    moe_place_report_t rep;
    if (moe_place_solve(src, n_src, &o, current, &plan, &rep) != MOE_STATUS_OK) goto done;
    extra = predicted_yaml(moe_place_solver_name(o.solver), plan, src, n_src, &rep, &o);
    if (moe_plan_save_annotated(plan, output, model, extra) != MOE_STATUS_OK) goto done;

    const char *solver = moe_place_solver_name(o.solver);
    /* the incremental solver keeps the current plan's replicas: report the most of any layer */
    int redundant = o.replicas;
    if (o.solver == MOE_PLACE_SOLVER_INCREMENTAL) {
        redundant = 0;
        for (int l = 0; l < L; l++) {
            int k = -E;
            for (int e = 0; e < E; e++) k += moe_plan_replicas(plan, l, e, NULL, NULL);
            redundant = k > redundant ? k : redundant;
        }
    }
    if (json) {
        record = moe_json_record("place");
        json_object_set_new(record, "command", json_string("place"));
        json_object_set_new(record, "plan", json_string(output));
        json_object_set_new(record, "solver", json_string(solver));
        json_object_set_new(record, "layers", json_integer(L));
        json_object_set_new(record, "experts", json_integer(E));
        json_object_set_new(record, "ranks", json_integer(o.ranks));
        json_object_set_new(record, "ranks_per_node", json_integer(o.ranks_per_node));
        json_object_set_new(record, "replicas", json_integer(redundant));
        json_object_set_new(record, "tokens_per_rank", json_integer(o.tokens_per_rank));
        json_object_set_new(record, "solve_seconds", moe_json_number(rep.solve_seconds));
        json_object_set_new(record, "objective", moe_json_number(rep.objective));
        json_object_set_new(record, "warm_objective", moe_json_number(rep.warm_objective));
        json_object_set_new(record, "mip_gap", moe_json_number(rep.mip_gap));
        json_object_set_new(record, "balance_gap", moe_json_number(rep.balance_gap));
        json_object_set_new(record, "subproblems", json_integer(rep.subproblems));
        json_object_set_new(record, "subproblems_proven", json_integer(rep.subproblems_proven));
        json_object_set_new(record, "subproblems_unsolved", json_integer(rep.subproblems_unsolved));
        json_object_set_new(record, "layers_kept_warm", json_integer(rep.layers_kept_warm));
        json_object_set_new(record, "experts_moved", json_integer(rep.experts_moved));
        json_object_set_new(record, "bytes_moved", json_integer((json_int_t)rep.bytes_moved));
        if (o.solver == MOE_PLACE_SOLVER_HEDGED) {
            json_object_set_new(record, "hedge", moe_json_number(o.hedge));
            json_object_set_new(record, "traffic_weight", moe_json_number(o.traffic_weight));
        }
        if (cross_validate) json_object_set_new(record, "cross_validation", cv_json(&cv));
    } else {
        printf("moerun place: %s plan for %d layers x %d experts on %d ranks (%d nodes x %d), %d "
               "redundant -> %s\n",
               solver, L, E, o.ranks, o.ranks / o.ranks_per_node, o.ranks_per_node, redundant,
               output);
        printf("  solve %.3f s, objective %.4f", rep.solve_seconds, rep.objective);
        if (o.solver == MOE_PLACE_SOLVER_HEDGED)
            printf(" (hedge %g, traffic weight %g)", o.hedge, o.traffic_weight);
        if (isfinite(rep.warm_objective)) printf(" (greedy warm start %.4f)", rep.warm_objective);
        if (isfinite(rep.mip_gap) && rep.subproblems > 0)
            printf(", MIP gap %.2f%% (%d of %d node subproblems proven, %d without a GLPK answer)",
                   100 * rep.mip_gap, rep.subproblems_proven, rep.subproblems,
                   rep.subproblems_unsolved);
        if (isfinite(rep.balance_gap)) printf(", balance gap %.2f%%", 100 * rep.balance_gap);
        printf("\n");
        if (current)
            printf("  moved %d experts (%.1f MB) from %s\n", rep.experts_moved,
                   rep.bytes_moved / 1e6, current_path);
        table_header();
    }
    if (report_plan(record, solver, plan, src, n_src, scored, n_scores, &o)) goto done;
    if (baselines) {
        json_t *list = NULL;
        if (record) {
            list = json_array();
            json_object_set_new(record, "baselines", list);
        }
        moe_place_solver_t base[3] = {MOE_PLACE_SOLVER_CONTIGUOUS, MOE_PLACE_SOLVER_ROUND_ROBIN,
                                      MOE_PLACE_SOLVER_GREEDY};
        for (int b = 0; b < 3; b++) {
            moe_place_options_t ob = o;
            ob.solver = base[b];
            moe_plan_h bp = NULL;
            moe_place_report_t br;
            if (moe_place_solve(src, n_src, &ob, NULL, &bp, &br) != MOE_STATUS_OK) goto done;
            json_t *entry = NULL;
            if (list) {
                entry = json_object();
                json_object_set_new(entry, "solver", json_string(moe_place_solver_name(base[b])));
                json_object_set_new(entry, "solve_seconds", moe_json_number(br.solve_seconds));
                json_object_set_new(entry, "objective", moe_json_number(br.objective));
                json_array_append_new(list, entry);
            }
            int r = report_plan(entry, moe_place_solver_name(base[b]), bp, src, n_src, scored,
                                n_scores, &o);
            moe_plan_destroy(bp);
            if (r) goto done;
        }
    }
    if (record) {
        moe_status_t written = moe_json_line_write(stdout, NULL, false, record);
        record = NULL;
        if (written != MOE_STATUS_OK) goto done;
    } else {
        printf("(replay: the runtime's sends; model: what the solver optimises, copies counted from "
               "the routes of traces, second-order estimates from statistics files; * = scored "
               "trace)\n");
    }
    rc = 0;
done:
    json_decref(record);
    free(extra);
    moe_plan_destroy(current);
    moe_plan_destroy(plan);
    for (int i = 0; i < n_src; i++) moe_workload_destroy(src[i]);
    for (int i = 0; i < n_scores; i++) moe_workload_destroy(scored[i]);
    return rc;
}
