/* test_config: the configuration loader (runtime/model/config.c).
 *
 * Usage: test_config CONFIGS_DIR BAD_CONFIGS_DIR
 * Checks the defaults, that every .yaml in CONFIGS_DIR loads and validates at world size 1, that
 * print -> load gives back the same settings, --set, and a corpus of broken configs in BAD_CONFIGS_DIR,
 * each with the status it must return and the words its message must hold (stderr is captured). */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/model/model.h"
#include "check.h"

/* ---------------------------------------------------------------- capturing stderr */

static int saved_stderr = -1;
static FILE *capture_file = NULL;

static void capture_begin(void)
{
    fflush(stderr);
    capture_file = tmpfile();
    saved_stderr = dup(fileno(stderr));
    dup2(fileno(capture_file), fileno(stderr));
}

/* Restores stderr and returns what was written meanwhile (static buffer). */
static const char *capture_end(void)
{
    static char text[16384];
    fflush(stderr);
    dup2(saved_stderr, fileno(stderr));
    close(saved_stderr);
    rewind(capture_file);
    size_t n = fread(text, 1, sizeof text - 1, capture_file);
    text[n] = '\0';
    fclose(capture_file);
    return text;
}

#define CHECK_HAS(text, word)                                                                     \
    do {                                                                                          \
        CHECK(strstr((text), (word)) != NULL);                                                    \
        if (strstr((text), (word)) == NULL)                                                       \
            fprintf(stderr, "  expected \"%s\" in: %s\n", (word), (text));                        \
    } while (0)

/* ---------------------------------------------------------------- helpers */

/* The settings proper: everything but source_path and the line array. */
static bool same_settings(const moe_config_t *a, const moe_config_t *b)
{
    return memcmp(&a->model, &b->model, sizeof a->model) == 0 && memcmp(&a->run, &b->run, sizeof a->run) == 0 &&
           memcmp(&a->routing, &b->routing, sizeof a->routing) == 0 &&
           memcmp(&a->input, &b->input, sizeof a->input) == 0 &&
           memcmp(&a->weights, &b->weights, sizeof a->weights) == 0 &&
           memcmp(&a->placement, &b->placement, sizeof a->placement) == 0 &&
           memcmp(&a->outputs, &b->outputs, sizeof a->outputs) == 0;
}

static int setting_index(const char *name)
{
    const moe_config_setting_info_t *info = moe_config_settings();
    for (int i = 0; info[i].name; i++)
        if (strcmp(info[i].name, name) == 0) return i;
    return -1;
}

/* Prints config into a file in the working directory (so relative paths mean the same), loads it back
 * and compares. */
static void check_round_trip(const moe_config_t *config, const char *what)
{
    const char *tmp_path = "test_config_round_trip.yaml";
    FILE *f = fopen(tmp_path, "w");
    CHECK(f != NULL);
    if (!f) return;
    moe_config_print(config, f);
    fclose(f);
    moe_config_t *back = malloc(sizeof *back);
    CHECK_STATUS(moe_config_load(tmp_path, back), MOE_STATUS_OK);
    bool same = same_settings(config, back);
    CHECK(same);
    if (!same) {
        fprintf(stderr, "round trip of %s differs; printed:\n", what);
        moe_config_print(config, stderr);
        fprintf(stderr, "read back:\n");
        moe_config_print(back, stderr);
    }
    free(back);
    remove(tmp_path);
}

/* ---------------------------------------------------------------- tests */

static void test_defaults(void)
{
    moe_config_t *c = malloc(sizeof *c);
    moe_config_defaults(c);
    CHECK(strcmp(c->model.name, "tiny") == 0);
    CHECK_EQ_INT(c->model.layers, 4);
    CHECK_EQ_INT(c->model.d_model, 64);
    CHECK_EQ_INT(c->model.d_ff, 128);
    CHECK_EQ_INT(c->model.experts, 8);
    CHECK_EQ_INT(c->model.top_k, 2);
    CHECK_EQ_INT(c->model.shared_experts, 0);
    CHECK_EQ_INT(c->model.shared_d_ff, 0);
    CHECK_EQ_INT(c->model.scoring, MOE_SCORING_SOFTMAX);
    CHECK(c->model.renormalize);
    CHECK_EQ_INT(c->model.groups, 1);
    CHECK_EQ_INT(c->model.groups_kept, 1);
    CHECK(c->model.routed_scaling == 1.0f);
    CHECK(!c->model.score_bias);
    CHECK(c->model.norm_eps == 1e-6f);
    CHECK_EQ_INT(c->run.backend, MOE_BACKEND_CPU);
    CHECK_EQ_INT(c->run.transport, MOE_TRANSPORT_MPI);
    CHECK_EQ_INT(c->run.chunks, 1);
    CHECK_EQ_INT(c->run.tokens_per_rank, 64);
    CHECK_EQ_INT(c->run.batches, 4);
    CHECK(c->run.seed == 1);
    CHECK_EQ_INT(c->run.warmup_batches, 0);
    CHECK_EQ_INT(c->routing.source, MOE_ROUTING_ROUTER);
    CHECK(c->routing.trace_ids[0] == '\0' && c->routing.trace_weights[0] == '\0');
    CHECK(c->routing.skew == 1.0f);
    CHECK(c->routing.affinity == 0.5f);
    CHECK_EQ_INT(c->input.kind, MOE_INPUT_SYNTHETIC);
    CHECK(c->input.path[0] == '\0');
    CHECK_EQ_INT(c->weights.kind, MOE_WEIGHTS_RANDOM);
    CHECK(c->weights.scale == 1.0f);
    CHECK(c->placement.plan[0] == '\0');
    CHECK_EQ_INT(c->placement.ranks_per_node, 8);
    CHECK(c->outputs.output[0] == '\0' && c->outputs.metrics[0] == '\0' && c->outputs.stats[0] == '\0');
    CHECK(c->outputs.progress);
    CHECK(c->source_path[0] == '\0');
    for (int i = 0; i < MOE_CONFIG_SETTINGS_MAX; i++) CHECK_EQ_INT(c->line[i], 0);
    CHECK_STATUS(moe_config_validate(c, 1), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 8), MOE_STATUS_OK);
    check_round_trip(c, "the defaults");
    free(c);
}

/* The --help table: every row named, defaulted and explained, names unique and dotted, and each default
 * accepted by --set (so the table and the parser agree). */
static void test_settings_table(void)
{
    const moe_config_setting_info_t *info = moe_config_settings();
    moe_config_t *c = malloc(sizeof *c), *d = malloc(sizeof *d);
    moe_config_defaults(c);
    moe_config_defaults(d);
    int n = 0;
    for (; info[n].name; n++) {
        CHECK(info[n].default_value != NULL);
        CHECK(info[n].meaning != NULL && info[n].meaning[0] != '\0');
        CHECK(strchr(info[n].name, '.') != NULL);
        for (int j = 0; j < n; j++) CHECK(strcmp(info[j].name, info[n].name) != 0);
        char assignment[256];
        snprintf(assignment, sizeof assignment, "%s=%s", info[n].name, info[n].default_value);
        CHECK_STATUS(moe_config_set(c, assignment), MOE_STATUS_OK);
        CHECK_EQ_INT(c->line[n], -1);
    }
    CHECK_EQ_INT(n, 49); /* every field of moe_config_t but source_path and line */
    CHECK(n <= MOE_CONFIG_SETTINGS_MAX);
    CHECK(same_settings(c, d));
    free(c);
    free(d);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void test_shipped_configs(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    if (!d) return;
    int loaded = 0;
    moe_config_t *c = malloc(sizeof *c);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with(e->d_name, ".yaml")) continue;
        char path[MOE_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        moe_status_t s = moe_config_load(path, c);
        CHECK_STATUS(s, MOE_STATUS_OK);
        if (s != MOE_STATUS_OK) continue;
        CHECK_STATUS(moe_config_validate(c, 1), MOE_STATUS_OK);
        CHECK(strcmp(c->source_path, path) == 0);
        check_round_trip(c, path);
        loaded++;

        if (strcmp(e->d_name, "tiny.yaml") == 0) {
            moe_config_t *def = malloc(sizeof *def);
            moe_config_defaults(def);
            def->run.chunks = 2;
            CHECK(same_settings(c, def)); /* tiny.yaml is the defaults written out, with 2 chunks */
            free(def);
            CHECK_EQ_INT(c->line[setting_index("model.name")], 3);
        }
        if (strcmp(e->d_name, "deepseek-v3.yaml") == 0) {
            CHECK_EQ_INT(c->model.experts, 256);
            CHECK_EQ_INT(c->model.scoring, MOE_SCORING_SIGMOID);
            CHECK(c->model.routed_scaling == 2.5f);
            CHECK_STATUS(moe_config_validate(c, 8), MOE_STATUS_OK);
        }
        if (strcmp(e->d_name, "deepseek-v2-lite-trace.yaml") == 0) {
            /* Relative paths in a file are joined to the file's folder. */
            char want[MOE_PATH_MAX];
            snprintf(want, sizeof want, "%s/../../shared/data/routing/deepseek-v2-lite-esft/intent.topk_ids.npy",
                     dir);
            CHECK(strcmp(c->routing.trace_ids, want) == 0);
            CHECK(ends_with(c->routing.trace_weights, "/intent.topk_weights.npy"));
            CHECK_EQ_INT(c->routing.source, MOE_ROUTING_TRACE);
            CHECK_EQ_INT(c->run.batches, 0);
            if (access(c->routing.trace_ids, R_OK) != 0)
                printf("note: %s is not there (expected when the shared data is absent)\n", c->routing.trace_ids);
        }
    }
    closedir(d);
    free(c);
    CHECK(loaded >= 7); /* tiny, five real models, the trace replay */
}

static void test_set(void)
{
    moe_config_t *c = malloc(sizeof *c);
    moe_config_defaults(c);
    CHECK_STATUS(moe_config_set(c, "model.top_k=4"), MOE_STATUS_OK);
    CHECK_EQ_INT(c->model.top_k, 4);
    CHECK_EQ_INT(c->line[setting_index("model.top_k")], -1);
    CHECK_STATUS(moe_config_set(c, "model.scoring=sigmoid"), MOE_STATUS_OK);
    CHECK_EQ_INT(c->model.scoring, MOE_SCORING_SIGMOID);
    CHECK_STATUS(moe_config_set(c, "model.renormalize=no"), MOE_STATUS_OK);
    CHECK(!c->model.renormalize);
    CHECK_STATUS(moe_config_set(c, "model.norm_eps=1e-5"), MOE_STATUS_OK);
    CHECK(c->model.norm_eps == 1e-5f);
    CHECK_STATUS(moe_config_set(c, "run.seed=18446744073709551615"), MOE_STATUS_OK);
    CHECK(c->run.seed == UINT64_MAX);
    CHECK_STATUS(moe_config_set(c, "placement.plan=plans/p.yaml"), MOE_STATUS_OK);
    CHECK(strcmp(c->placement.plan, "plans/p.yaml") == 0); /* --set paths stay relative to the cwd */
    CHECK_STATUS(moe_config_set(c, "outputs.metrics = m.jsonl"), MOE_STATUS_OK);
    CHECK(strcmp(c->outputs.metrics, "m.jsonl") == 0);
    CHECK_STATUS(moe_config_set(c, "placement.plan="), MOE_STATUS_OK);
    CHECK(c->placement.plan[0] == '\0');

    /* Rejected values leave the setting as it was, and the message names --set and the key. */
    static const struct {
        const char *assignment;
        const char *words[2];
    } bad[] = {
        {"model.top_k=two", {"--set model.top_k", "expected an integer, got \"two\""}},
        {"model.top_k=0", {"--set model.top_k", ">= 1"}},
        {"model.top_k=4.5", {"--set model.top_k", "expected an integer"}},
        {"model.top_k=", {"--set model.top_k", "expected an integer"}},
        {"model.layers=99999999999", {"--set model.layers", "overflow"}},
        {"run.seed=-1", {"--set run.seed", "expected an integer >= 0"}},
        {"run.seed=99999999999999999999", {"--set run.seed", "overflow"}},
        {"model.scoring=relu", {"--set model.scoring", "softmax, sigmoid"}},
        {"model.renormalize=maybe", {"--set model.renormalize", "true or false"}},
        {"model.norm_eps=0", {"--set model.norm_eps", "> 0"}},
        {"model.norm_eps=nan", {"--set model.norm_eps", "expected a number"}},
        {"model.norm_eps=1e99", {"--set model.norm_eps", "out of range"}},
        {"routing.affinity=1.5", {"--set routing.affinity", "between 0 and 1"}},
        {"model.topk=2", {"--set model.topk", "did you mean model.top_k"}},
        {"model.top_k", {"--set model.top_k", "KEY=VALUE"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_config_t *before = malloc(sizeof *before);
        memcpy(before, c, sizeof *c);
        capture_begin();
        moe_status_t s = moe_config_set(c, bad[i].assignment);
        const char *text = capture_end();
        CHECK_STATUS(s, MOE_STATUS_INVALID_ARGUMENT);
        CHECK(memcmp(before, c, sizeof *c) == 0);
        for (int w = 0; w < 2; w++) CHECK_HAS(text, bad[i].words[w]);
        free(before);
    }

    /* Validation names where a value came from: --set, or the default. */
    moe_config_defaults(c);
    CHECK_STATUS(moe_config_set(c, "model.top_k=9"), MOE_STATUS_OK);
    capture_begin();
    moe_status_t s = moe_config_validate(c, 1);
    const char *text = capture_end();
    CHECK_STATUS(s, MOE_STATUS_INVALID_ARGUMENT);
    CHECK_HAS(text, "--set model.top_k: 9 is larger than model.experts (8)");
    moe_config_defaults(c);
    capture_begin();
    s = moe_config_validate(c, 3);
    text = capture_end();
    CHECK_STATUS(s, MOE_STATUS_INVALID_ARGUMENT);
    CHECK_HAS(text, "model.experts (default): experts (8) cannot be split evenly over 3 ranks");
    CHECK_STATUS(moe_config_set(c, "placement.plan=p.yaml"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 3), MOE_STATUS_OK); /* a plan may place experts unevenly */
    CHECK_STATUS(moe_config_validate(c, 0), MOE_STATUS_OK);

    /* Group-limited routing: top_k must fit in the kept groups. */
    moe_config_defaults(c);
    CHECK_STATUS(moe_config_set(c, "model.groups=4"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "model.groups_kept=1"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "model.top_k=3"), MOE_STATUS_OK);
    capture_begin();
    s = moe_config_validate(c, 1);
    text = capture_end();
    CHECK_STATUS(s, MOE_STATUS_INVALID_ARGUMENT);
    CHECK_HAS(text, "--set model.top_k: 3 is more than the 2 experts in the 1 kept groups");
    free(c);
}

/* Strings that need quoting survive print -> load. */
static void test_round_trip_strings(void)
{
    static const char *const names[] = {
        "plain", "", "yes", "null", "~", "123", "1e5", "with space", "colon: here", "# not a comment",
        "quote\"and\\backslash", "-dash", "[bracket", "tab\there", "ünïcode", "'single'", "&anchor", "*alias",
    };
    moe_config_t *c = malloc(sizeof *c);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        moe_config_defaults(c);
        char assignment[256];
        snprintf(assignment, sizeof assignment, "model.name=%s", names[i]);
        /* --set trims spaces around the value; none of these start or end with one. */
        CHECK_STATUS(moe_config_set(c, assignment), MOE_STATUS_OK);
        CHECK(strcmp(c->model.name, names[i]) == 0);
        CHECK_STATUS(moe_config_set(c, "outputs.output=/abs/out dir/x.npy"), MOE_STATUS_OK);
        CHECK_STATUS(moe_config_set(c, "run.seed=12345678901234"), MOE_STATUS_OK);
        CHECK_STATUS(moe_config_set(c, "routing.skew=0.3333333"), MOE_STATUS_OK);
        check_round_trip(c, names[i]);
    }
    free(c);
}

/* Small files that are fine: empty, an empty section, nulls and quoted numbers, paths relative to the
 * file's folder. Written into the working directory and removed. */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_good_snippets(void)
{
    moe_config_t *c = malloc(sizeof *c), *def = malloc(sizeof *def);
    moe_config_defaults(def);

    write_file("test_config_empty.yaml", "# nothing but a comment\n");
    CHECK_STATUS(moe_config_load("test_config_empty.yaml", c), MOE_STATUS_OK);
    CHECK(same_settings(c, def));
    remove("test_config_empty.yaml");

    write_file("test_config_nulls.yaml", "outputs:\nplacement:\n  plan: ~\nmodel:\n  top_k: \"4\"\n"
                                         "  renormalize: No\n  name: \"null\"\n");
    CHECK_STATUS(moe_config_load("test_config_nulls.yaml", c), MOE_STATUS_OK);
    CHECK(c->placement.plan[0] == '\0');
    CHECK_EQ_INT(c->model.top_k, 4);
    CHECK(!c->model.renormalize);
    CHECK(strcmp(c->model.name, "null") == 0);
    CHECK_EQ_INT(c->line[setting_index("model.top_k")], 5);
    CHECK_EQ_INT(c->line[setting_index("model.layers")], 0);
    remove("test_config_nulls.yaml");

    /* A relative path is joined to the file's folder, an absolute one kept. */
    char dir[] = "test_config_dir_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], want[256];
    snprintf(path, sizeof path, "%s/c.yaml", dir);
    write_file(path, "placement:\n  plan: plans/p.yaml\noutputs:\n  metrics: /tmp/m.jsonl\n");
    CHECK_STATUS(moe_config_load(path, c), MOE_STATUS_OK);
    snprintf(want, sizeof want, "%s/plans/p.yaml", dir);
    CHECK(strcmp(c->placement.plan, want) == 0);
    CHECK(strcmp(c->outputs.metrics, "/tmp/m.jsonl") == 0);
    remove(path);
    rmdir(dir);

    /* A second document is refused rather than ignored. */
    write_file("test_config_two_docs.yaml", "model:\n  top_k: 2\n---\nmodel:\n  top_k: 3\n");
    capture_begin();
    moe_status_t s = moe_config_load("test_config_two_docs.yaml", c);
    const char *text = capture_end();
    CHECK_STATUS(s, MOE_STATUS_INVALID_ARGUMENT);
    CHECK_HAS(text, "test_config_two_docs.yaml:3: a second YAML document"); /* the "---" */
    remove("test_config_two_docs.yaml");
    free(c);
    free(def);
}

/* The broken configs: one file per case, the status it must give (from load, or else from validate at
 * world_size) and words its message must hold, the first being FILE:LINE. */
static const struct {
    const char *file;
    int world_size;
    moe_status_t load_status;
    moe_status_t validate_status;
    const char *words[3];
} bad_cases[] = {
    {"unknown_key.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"unknown_key.yaml:4:", "model.topk: unknown key", "did you mean model.top_k?"}},
    {"unknown_section.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"unknown_section.yaml:4:", "modle: unknown section", "model, run, routing"}},
    {"wrong_type.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"wrong_type.yaml:4:", "model.top_k: expected an integer, got \"two\"", NULL}},
    {"negative_size.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"negative_size.yaml:4:", "model.shared_d_ff: must be >= 0, got -128", NULL}},
    {"zero_size.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"zero_size.yaml:3:", "model.d_model: must be >= 1, got 0", NULL}},
    {"zero_float.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"zero_float.yaml:3:", "model.norm_eps: must be > 0, got 0", NULL}},
    {"integer_overflow.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"integer_overflow.yaml:3:", "model.layers: integer overflow", NULL}},
    {"bad_bool.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"bad_bool.yaml:3:", "model.renormalize: expected true or false, got \"maybe\"", NULL}},
    {"bad_enum.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"bad_enum.yaml:4:", "model.scoring: expected one of softmax, sigmoid; got \"relu\"", NULL}},
    {"syntax_error.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"syntax_error.yaml:", "YAML syntax error", "flow sequence on line 4"}},
    {"duplicate_key.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"duplicate_key.yaml:5:", "model.top_k: duplicate key (first set on line 3)", NULL}},
    {"duplicate_section.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"duplicate_section.yaml:6:", "model: duplicate section (first on line 2)", NULL}},
    {"non_mapping_section.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"non_mapping_section.yaml:3:", "model: expected a mapping of settings, got a list", NULL}},
    {"non_scalar_value.yaml", 1, MOE_STATUS_INVALID_ARGUMENT, 0,
     {"non_scalar_value.yaml:3:", "model.top_k: expected a single value, got a list", NULL}},
    {"top_k_too_large.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"top_k_too_large.yaml:4:", "model.top_k: 10 is larger than model.experts (8)", NULL}},
    {"experts_not_divisible.yaml", 3, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"experts_not_divisible.yaml:3:", "model.experts: experts (8) cannot be split evenly over 3 ranks",
      "give a plan"}},
    {"groups_not_dividing.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"groups_not_dividing.yaml:4:", "model.groups: 3 groups do not divide model.experts (8)", NULL}},
    {"groups_kept_too_large.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"groups_kept_too_large.yaml:5:", "model.groups_kept: 3 is larger than model.groups (2)", NULL}},
    {"score_bias_softmax.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"score_bias_softmax.yaml:4:", "model.score_bias: needs model.scoring: sigmoid", NULL}},
    {"trace_without_ids.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"trace_without_ids.yaml:3:", "routing.source: trace needs routing.trace_ids", NULL}},
    {"nccl_without_cuda.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"nccl_without_cuda.yaml:4:", "run.transport: nccl needs run.backend: cuda", NULL}},
    {"checkpoint_with_random_weights.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"checkpoint_with_random_weights.yaml:5:", "weights.checkpoint: given, but weights.kind is random",
      NULL}},
    {"shared_gate_without_shared.yaml", 1, MOE_STATUS_OK, MOE_STATUS_INVALID_ARGUMENT,
     {"shared_gate_without_shared.yaml:4:", "model.shared_gate: needs shared experts", NULL}},
};

static void test_bad_configs(const char *dir)
{
    moe_config_t *c = malloc(sizeof *c), *before = malloc(sizeof *before);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        char path[MOE_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, bad_cases[i].file);
        moe_config_defaults(c);
        c->model.top_k = 77; /* a marker: a failed load must leave the output alone */
        memcpy(before, c, sizeof *c);
        capture_begin();
        moe_status_t load = moe_config_load(path, c);
        moe_status_t valid = MOE_STATUS_OK;
        if (load == MOE_STATUS_OK) valid = moe_config_validate(c, bad_cases[i].world_size);
        const char *text = capture_end();
        CHECK_STATUS(load, bad_cases[i].load_status);
        CHECK_STATUS(valid, bad_cases[i].validate_status);
        if (load != MOE_STATUS_OK) CHECK(memcmp(before, c, sizeof *c) == 0);
        for (int w = 0; w < 3 && bad_cases[i].words[w]; w++) CHECK_HAS(text, bad_cases[i].words[w]);
        if (load != bad_cases[i].load_status || valid != bad_cases[i].validate_status)
            fprintf(stderr, "  case %s said: %s\n", bad_cases[i].file, text);
    }

    /* A file that is not there. */
    char path[MOE_PATH_MAX];
    snprintf(path, sizeof path, "%s/no_such_file.yaml", dir);
    capture_begin();
    moe_status_t s = moe_config_load(path, c);
    const char *text = capture_end();
    CHECK_STATUS(s, MOE_STATUS_IO_ERROR);
    CHECK_HAS(text, "no_such_file.yaml: cannot open");
    /* A folder where a file belongs. */
    capture_begin();
    s = moe_config_load(dir, c);
    text = capture_end();
    CHECK(s == MOE_STATUS_IO_ERROR || s == MOE_STATUS_INVALID_ARGUMENT);
    CHECK_HAS(text, dir);
    free(c);
    free(before);
}

/* weights.checkpoint alone means checkpoint weights; an explicit weights.kind: random contradicts it. */
static void test_checkpoint_implies_kind(void)
{
    moe_config_t *c = malloc(sizeof *c);
    moe_config_defaults(c);
    CHECK_STATUS(moe_config_set(c, "weights.checkpoint=/some/checkpoint"), MOE_STATUS_OK);
    CHECK_EQ_INT(c->weights.kind, MOE_WEIGHTS_CHECKPOINT);
    CHECK_STATUS(moe_config_validate(c, 1), MOE_STATUS_OK);
    moe_config_defaults(c);
    CHECK_STATUS(moe_config_set(c, "weights.kind=checkpoint"), MOE_STATUS_OK);
    capture_begin();
    moe_status_t st = moe_config_validate(c, 1);
    const char *text = capture_end();
    CHECK_HAS(text, "weights.kind: checkpoint needs weights.checkpoint");
    CHECK_STATUS(st, MOE_STATUS_INVALID_ARGUMENT);
    free(c);
}

/* run.dispatch and run.ranks_per_node: words, defaults, and the checks that name them. */
static void test_dispatch_settings(void)
{
    moe_config_t *c = malloc(sizeof *c);
    moe_config_defaults(c);
    CHECK_EQ_INT(c->run.dispatch, MOE_DISPATCH_AUTO);
    CHECK_EQ_INT(c->run.ranks_per_node, 0);
    CHECK_STATUS(moe_config_set(c, "run.dispatch=hierarchical"), MOE_STATUS_OK);
    CHECK_EQ_INT(c->run.dispatch, MOE_DISPATCH_HIERARCHICAL);
    CHECK_STATUS(moe_config_set(c, "run.dispatch=flat"), MOE_STATUS_OK);
    CHECK_EQ_INT(c->run.dispatch, MOE_DISPATCH_FLAT);
    CHECK(moe_config_set(c, "run.dispatch=nodes") != MOE_STATUS_OK);
    CHECK(moe_config_set(c, "run.ranks_per_node=-1") != MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "model.experts=24"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "run.ranks_per_node=2"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 4), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 6), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 3), MOE_STATUS_INVALID_ARGUMENT); /* 2 does not divide 3 */
    CHECK_STATUS(moe_config_validate(c, 1), MOE_STATUS_INVALID_ARGUMENT); /* more than the ranks */
    CHECK_STATUS(moe_config_set(c, "run.ranks_per_node=0"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "run.dispatch=hierarchical"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 3), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_set(c, "run.buffers=fixed"), MOE_STATUS_OK);
    CHECK_STATUS(moe_config_validate(c, 3), MOE_STATUS_INVALID_ARGUMENT);
    free(c);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONFIGS_DIR BAD_CONFIGS_DIR\n", argv[0]);
        return 2;
    }
    test_defaults();
    test_settings_table();
    test_shipped_configs(argv[1]);
    test_set();
    test_round_trip_strings();
    test_good_snippets();
    test_bad_configs(argv[2]);
    test_checkpoint_implies_kind();
    test_dispatch_settings();
    return moe_test_result("test_config");
}
