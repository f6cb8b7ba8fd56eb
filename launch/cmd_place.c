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
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
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

typedef struct {
    bool json;
    FILE *out;
} printer_t;

static void json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fprintf(f, "null");
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void json_figures(FILE *f, const moe_place_figures_t *g)
{
    fprintf(f, "{\"replayed\": %s, \"tokens\": ", g->replayed ? "true" : "false");
    json_num(f, g->tokens);
    fprintf(f, ", \"max_mean_worst\": ");
    json_num(f, g->worst_imbalance);
    fprintf(f, ", \"max_mean_mean\": ");
    json_num(f, g->mean_imbalance);
    const char *names[] = {"inter",      "intra",      "inter_hier", "intra_hier",
                           "inter_stay", "intra_stay", "cost"};
    double vals[] = {g->inter_total,
                     g->intra_total,
                     g->inter_hier_total,
                     g->intra_hier_total,
                     g->inter_stay_total,
                     g->intra_stay_total,
                     g->cost};
    for (int i = 0; i < 7; i++) {
        fprintf(f, ", \"%s\": ", names[i]);
        json_num(f, vals[i]);
    }
    fprintf(f, ", \"per_layer_max_mean\": [");
    for (int l = 0; l < g->layers; l++) {
        if (l) fputs(", ", f);
        json_num(f, g->imbalance[l]);
    }
    /* per layer: flat and hierarchical copies (the runtime's metrics count the same, per layer) */
    const char *layer_names[] = {"per_layer_inter", "per_layer_intra", "per_layer_inter_hier",
                                 "per_layer_intra_hier"};
    const double *layer_vals[] = {g->inter, g->intra, g->inter_hier, g->intra_hier};
    for (int i = 0; i < 4; i++) {
        fprintf(f, "], \"%s\": [", layer_names[i]);
        for (int l = 0; l < g->layers; l++) {
            if (l) fputs(", ", f);
            json_num(f, layer_vals[i][l]);
        }
    }
    fprintf(f, "]}");
}

static void table_header(void)
{
    printf("%-12s %-40s %-8s %9s %9s %12s %12s %12s %12s\n", "plan", "workload", "figures", "max/mean",
           "worst", "inter", "intra", "inter(hier)", "intra(hier)");
}

static void table_row(const char *plan, const char *workload, const moe_place_figures_t *g)
{
    const char *w = workload;
    size_t n = strlen(w);
    if (n > 40) w += n - 40;
    printf("%-12s %-40s %-8s %9.3f %9.3f %12.0f %12.0f %12.0f %12.0f\n", plan, w,
           g->replayed ? "replay" : "model", g->mean_imbalance, g->worst_imbalance, g->inter_total,
           g->intra_total, g->inter_hier_total, g->intra_hier_total);
}

/* Figures of a plan on every source (modelled, and replayed where there are routes) and on every
 * scored trace; JSON fragments or table rows. */
static int report_plan(const printer_t *p, const char *label, moe_plan_h plan, moe_workload_h *src,
                       int n_src, moe_workload_h *scored, int n_scored,
                       const moe_place_options_t *o)
{
    moe_place_figures_t g;
    if (p->json) fprintf(p->out, "\"sources\": [");
    for (int i = 0; i < n_src; i++) {
        /* the replay (what the runtime sends) first, then the model the solvers optimise */
        if (p->json) {
            fprintf(p->out, "%s{\"name\": ", i ? ", " : "");
            json_str(p->out, moe_workload_name(src[i]));
        }
        if (moe_workload_has_routes(src[i])) {
            if (moe_place_evaluate(plan, src[i], o, &g) != MOE_STATUS_OK) return 1;
            if (p->json) {
                fprintf(p->out, ", \"replayed\": ");
                json_figures(p->out, &g);
            } else {
                table_row(label, moe_workload_name(src[i]), &g);
            }
            moe_place_figures_free(&g);
        }
        if (moe_place_model(plan, src[i], o, &g) != MOE_STATUS_OK) return 1;
        if (p->json) {
            fprintf(p->out, ", \"modelled\": ");
            json_figures(p->out, &g);
            fprintf(p->out, "}");
        } else {
            table_row(label, moe_workload_name(src[i]), &g);
        }
        moe_place_figures_free(&g);
    }
    if (p->json) fprintf(p->out, "], \"scored\": [");
    for (int i = 0; i < n_scored; i++) {
        if (moe_place_evaluate(plan, scored[i], o, &g) != MOE_STATUS_OK) return 1;
        if (p->json) {
            fprintf(p->out, "%s{\"name\": ", i ? ", " : "");
            json_str(p->out, moe_workload_name(scored[i]));
            fprintf(p->out, ", \"replayed\": ");
            json_figures(p->out, &g);
            fprintf(p->out, "}");
        } else {
            char l2[64];
            snprintf(l2, sizeof(l2), "%s*", label);
            table_row(l2, moe_workload_name(scored[i]), &g);
        }
        moe_place_figures_free(&g);
    }
    if (p->json) fprintf(p->out, "]");
    return 0;
}

/* The YAML block with the solver's figures that goes into the plan file. */
static char *predicted_yaml(const char *solver, moe_plan_h plan, moe_workload_h *src, int n_src,
                            const moe_place_report_t *rep, const moe_place_options_t *o)
{
    size_t cap = 4096 + (size_t)n_src * 1024;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    size_t len = 0;
#define APPEND(...) len += (size_t)snprintf(buf + len, len < cap ? cap - len : 0, __VA_ARGS__)
    APPEND("solver: %s\nsources:\n", solver);
    for (int i = 0; i < n_src; i++) {
        APPEND("  - \"");
        for (const char *s = moe_workload_name(src[i]); *s; s++) {
            if ((unsigned char)*s < 0x20 || *s == 0x7f)
                APPEND("\\x%02x", (unsigned char)*s); /* a newline must not end the value */
            else
                APPEND("%s%c", (*s == '"' || *s == '\\') ? "\\" : "", *s);
        }
        APPEND("\"\n");
    }
    /* no solve time here: the same input gives the same file */
    APPEND("predicted:\n  objective: %.6g\n", rep->objective);
    if (isfinite(rep->mip_gap)) APPEND("  mip_gap: %.4g\n", rep->mip_gap);
    APPEND("  per_source:\n");
    for (int i = 0; i < n_src; i++) {
        moe_place_figures_t g;
        if (moe_place_model(plan, src[i], o, &g) != MOE_STATUS_OK) continue;
        APPEND("    - {max_mean_mean: %.4f, max_mean_worst: %.4f, inter_modelled: %.0f, "
               "intra_modelled: %.0f}\n",
               g.mean_imbalance, g.worst_imbalance, g.inter_total, g.intra_total);
        moe_place_figures_free(&g);
    }
#undef APPEND
    if (len >= cap) buf[cap - 1] = '\0';
    return buf;
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

static void json_cv(const moe_place_cv_t *cv)
{
    printf("\"cross_validation\": {\"folds\": %d, \"chosen\": %d, \"greedy\": [", cv->folds,
           cv->chosen);
    for (int f = 0; f < cv->folds; f++) {
        printf("%s{\"max_mean_mean\": ", f ? ", " : "");
        json_num(stdout, cv->greedy_mean[f]);
        printf(", \"max_mean_worst\": ");
        json_num(stdout, cv->greedy_worst[f]);
        printf(", \"copies\": ");
        json_num(stdout, cv->greedy_copies[f]);
        printf("}");
    }
    printf("], \"points\": [");
    for (int i = 0; i < cv->n_points; i++) {
        const moe_place_cv_point_t *p = &cv->points[i];
        printf("%s{\"hedge\": %g, \"traffic_weight\": %g, \"feasible\": %s, \"cost\": ",
               i ? ", " : "", p->hedge, p->traffic_weight, p->feasible ? "true" : "false");
        json_num(stdout, p->cost);
        printf(", \"folds\": [");
        for (int f = 0; f < cv->folds; f++) {
            printf("%s{\"max_mean_mean\": ", f ? ", " : "");
            json_num(stdout, p->mean[f]);
            printf(", \"max_mean_worst\": ");
            json_num(stdout, p->worst[f]);
            printf(", \"copies\": ");
            json_num(stdout, p->copies[f]);
            printf("}");
        }
        printf("]}");
    }
    printf("]}, ");
}

static int cmd_evaluate(const char *plan_path, const char **traces, int n_traces, int experts,
                        int ranks, const char *model, bool json, const moe_place_options_t *opt)
{
    moe_plan_h plan = NULL;
    moe_workload_h w[MAX_SOURCES] = {0};
    char plan_model[256];
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
    printer_t p = {json, stdout};
    if (json) {
        printf("{\"command\": \"evaluate\", \"plan\": ");
        json_str(stdout, plan_path);
        printf(", \"ranks\": %d, \"ranks_per_node\": %d, \"tokens_per_rank\": %lld, ", o.ranks,
               o.ranks_per_node, (long long)o.tokens_per_rank);
    } else {
        printf("plan %s: %d layers x %d experts on %d ranks (%d per node)\n", plan_path,
               moe_plan_layers(plan), moe_plan_experts(plan), o.ranks, o.ranks_per_node);
        table_header();
    }
    if (report_plan(&p, "plan", plan, NULL, 0, w, n_traces, &o)) goto done;
    if (json) printf("}\n");
    rc = 0;
done:
    for (int i = 0; i < n_traces; i++) moe_workload_destroy(w[i]);
    moe_plan_destroy(plan);
    return rc;
}

static bool parse_double(const char *s, double *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* A whole number that fits an int (every option it reads is one): 4294967298 is not 2. */
static bool parse_long(const char *s, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < INT_MIN || v > INT_MAX) return false;
    *out = v;
    return true;
}

int moe_cmd_place(int argc, char **argv)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    const char *kinds[MAX_SOURCES], *specs[MAX_SOURCES], *scores[MAX_SOURCES];
    double csv_tokens[MAX_SOURCES];
    int n_src = 0, n_scores = 0;
    const char *output = NULL, *current_path = NULL, *plan_path = NULL, *model = NULL;
    bool json = false, evaluate = false, baselines = true, exact = false, cross_validate = false;
    double tokens = 0;
    long ranks = 0, rpn = 0, experts = 0;
    moe_log_init(0, MOE_LOG_WARN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long lv = 0;
        double dv = 0;
        bool ok = true;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            place_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json"))
            json = true;
        else if (!strcmp(a, "--evaluate"))
            evaluate = true;
        else if (!strcmp(a, "--exact"))
            exact = true;
        else if (!strcmp(a, "--cross-validate"))
            cross_validate = true;
        else if (!strcmp(a, "--hierarchical"))
            o.hierarchical = true;
        else if (!strcmp(a, "--verbose"))
            o.verbose = 1, moe_log_init(0, MOE_LOG_INFO);
        else if (!strcmp(a, "--no-baselines"))
            baselines = false;
        else if (!strcmp(a, "--no-share-lp"))
            o.share_lp = false;
        else if (!v)
            ok = false;
        else if (!strcmp(a, "--stats") || !strcmp(a, "--trace") || !strcmp(a, "--loads-csv")) {
            if (n_src == MAX_SOURCES) {
                fprintf(stderr, "moerun place: at most %d sources\n", MAX_SOURCES);
                return 2;
            }
            if (!strcmp(a, "--loads-csv") && !(tokens > 0)) {
                fprintf(stderr, "moerun place: --loads-csv %s needs --tokens N before it\n", v);
                return 2;
            }
            csv_tokens[n_src] = tokens;
            kinds[n_src] = a;
            specs[n_src++] = v;
            i++;
        } else if (!strcmp(a, "--score")) {
            if (n_scores == MAX_SOURCES) return 2;
            scores[n_scores++] = v, i++;
        } else if (!strcmp(a, "-o"))
            output = v, i++;
        else if (!strcmp(a, "--plan"))
            plan_path = v, i++;
        else if (!strcmp(a, "--current"))
            current_path = v, i++;
        else if (!strcmp(a, "--model"))
            model = v, i++;
        else if (!strcmp(a, "--residency")) {
            ok = !strcmp(v, "home") || !strcmp(v, "stay");
            o.stay = !strcmp(v, "stay");
            i++;
        } else if (!strcmp(a, "--solver")) {
            if (moe_place_solver_parse(v, &o.solver) != MOE_STATUS_OK) return 2;
            i++;
        } else if (!strcmp(a, "--tokens"))
            ok = parse_double(v, &tokens) && tokens > 0, i++;
        else if (!strcmp(a, "--ranks"))
            ok = parse_long(v, &ranks) && ranks > 0 && ranks <= MOE_MAX_RANKS, i++;
        else if (!strcmp(a, "--ranks-per-node"))
            ok = parse_long(v, &rpn) && rpn > 0, i++;
        else if (!strcmp(a, "--experts"))
            ok = parse_long(v, &experts) && experts > 0 && experts <= MOE_MAX_EXPERTS, i++;
        else if (!strcmp(a, "--replicas"))
            ok = parse_long(v, &lv) && lv >= 0, o.replicas = (int)lv, i++;
        else if (!strcmp(a, "--slots-per-rank"))
            ok = parse_long(v, &lv) && lv > 0, o.slots_per_rank = (int)lv, i++;
        else if (!strcmp(a, "--tokens-per-rank"))
            ok = parse_long(v, &lv) && lv > 0, o.tokens_per_rank = lv, i++;
        else if (!strcmp(a, "--time-limit"))
            ok = parse_double(v, &dv) && dv > 0, o.time_limit = dv, i++;
        else if (!strcmp(a, "--hedge"))
            ok = parse_double(v, &dv) && dv >= 0 && dv <= 1, o.hedge = dv, i++;
        else if (!strcmp(a, "--traffic-weight"))
            ok = parse_double(v, &dv) && dv >= 0, o.traffic_weight = dv, i++;
        else if (!strcmp(a, "--copy-cost"))
            ok = parse_double(v, &dv) && dv >= 0, o.copy_cost = dv, i++;
        else if (!strcmp(a, "--inter-factor"))
            ok = parse_double(v, &dv) && dv >= 0, o.inter_factor = dv, i++;
        else if (!strcmp(a, "--node-slack"))
            ok = parse_double(v, &dv) && dv >= 0, o.node_slack = dv, i++;
        else if (!strcmp(a, "--move-cost"))
            ok = parse_double(v, &dv) && dv >= 0, o.move_cost = dv, i++;
        else if (!strcmp(a, "--expert-bytes"))
            ok = parse_double(v, &dv) && dv >= 0, o.expert_bytes = dv, i++;
        else
            ok = false;
        if (!ok) {
            fprintf(stderr, "moerun place: unknown, incomplete or invalid option '%s'%s%s\n\n", a,
                    v ? " " : "", v ? v : "");
            place_usage(stderr);
            return 2;
        }
    }
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
            moe_error("%s: %d experts, not %ld (--experts)", specs[i], moe_workload_experts(src[i]),
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

    printer_t p = {json, stdout};
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
        printf("{\"command\": \"place\", \"plan\": ");
        json_str(stdout, output);
        printf(", \"solver\": \"%s\", \"layers\": %d, \"experts\": %d, \"ranks\": %d, "
               "\"ranks_per_node\": %d, \"replicas\": %d, \"tokens_per_rank\": %lld, "
               "\"solve_seconds\": ",
               solver, L, E, o.ranks, o.ranks_per_node, redundant, (long long)o.tokens_per_rank);
        json_num(stdout, rep.solve_seconds);
        printf(", \"objective\": ");
        json_num(stdout, rep.objective);
        printf(", \"warm_objective\": ");
        json_num(stdout, rep.warm_objective);
        printf(", \"mip_gap\": ");
        json_num(stdout, rep.mip_gap);
        printf(", \"balance_gap\": ");
        json_num(stdout, rep.balance_gap);
        printf(", \"subproblems\": %d, \"subproblems_proven\": %d, \"subproblems_unsolved\": %d, "
               "\"layers_kept_warm\": %d, \"experts_moved\": %d, \"bytes_moved\": %.0f, ",
               rep.subproblems, rep.subproblems_proven, rep.subproblems_unsolved,
               rep.layers_kept_warm, rep.experts_moved, rep.bytes_moved);
        if (o.solver == MOE_PLACE_SOLVER_HEDGED) {
            printf("\"hedge\": ");
            json_num(stdout, o.hedge);
            printf(", \"traffic_weight\": ");
            json_num(stdout, o.traffic_weight);
            printf(", ");
        }
        if (cross_validate) json_cv(&cv);
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
    if (report_plan(&p, solver, plan, src, n_src, scored, n_scores, &o)) goto done;
    if (baselines) {
        if (json) printf(", \"baselines\": [");
        moe_place_solver_t base[3] = {MOE_PLACE_SOLVER_CONTIGUOUS, MOE_PLACE_SOLVER_ROUND_ROBIN,
                                      MOE_PLACE_SOLVER_GREEDY};
        for (int b = 0; b < 3; b++) {
            moe_place_options_t ob = o;
            ob.solver = base[b];
            moe_plan_h bp = NULL;
            moe_place_report_t br;
            if (moe_place_solve(src, n_src, &ob, NULL, &bp, &br) != MOE_STATUS_OK) goto done;
            if (json) {
                printf("%s{\"solver\": \"%s\", \"solve_seconds\": ", b ? ", " : "",
                       moe_place_solver_name(base[b]));
                json_num(stdout, br.solve_seconds);
                printf(", \"objective\": ");
                json_num(stdout, br.objective);
                printf(", ");
            }
            int r = report_plan(&p, moe_place_solver_name(base[b]), bp, src, n_src, scored,
                                n_scores, &o);
            moe_plan_destroy(bp);
            if (r) goto done;
            if (json) printf("}");
        }
        if (json) printf("]");
    }
    if (json)
        printf("}\n");
    else
        printf("(replay: the runtime's sends; model: what the solver optimises, copies counted from "
               "the routes of traces, second-order estimates from statistics files; * = scored "
               "trace)\n");
    rc = 0;
done:
    free(extra);
    moe_plan_destroy(current);
    moe_plan_destroy(plan);
    for (int i = 0; i < n_src; i++) moe_workload_destroy(src[i]);
    for (int i = 0; i < n_scores; i++) moe_workload_destroy(scored[i]);
    return rc;
}
