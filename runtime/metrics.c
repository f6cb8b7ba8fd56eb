/* metrics: what a run measures, reduced to rank 0.
 *
 * Per batch and layer, each rank times its stages (its backend's timeline: host clocks for cpu, CUDA
 * events on the GPU's streams for cuda; for dispatch and combine, the time spent waiting for the
 * transfer, i.e. what compute did not hide) and counts the rows it sent
 * and received and the (token, expert) pairs it computed. At each batch end rank 0 receives the
 * maximum over ranks of every time and each rank's load, appends one JSON line per layer to
 * outputs.metrics (flushed at every batch: the log streams) and, with --json, a line per batch to
 * stdout, and accumulates the summary: tokens/s over the batches after run.warmup_batches,
 * the time of each stage (per batch, summed over layers) and its share of the layer time, and the
 * per-layer max/mean load over ranks. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime-impl.h"

struct moe_metrics_s {
    const moe_config_t *config;
    moe_ctl_h ctl;                  /* borrowed: the engine's, over the world */
    int rank, size, layers;
    moe_layer_metrics_t *layer;     /* [L] this batch, this rank */
    double *reduce_buf;             /* [L][STAGE_COUNT + 1] */
    int64_t *gather_buf;            /* [P][L][NV] on rank 0 */
    int64_t *send_buf;              /* [L][NV] */
    FILE *jsonl;                    /* outputs.metrics, streamed (rank 0), or NULL */
    bool json;                      /* rank 0: JSON lines on stdout (header, batches, summary), no table */
    /* summary (rank 0), over measured batches */
    int batches, measured;
    int64_t tokens;
    double time, stage[MOE_STAGE_COUNT], layer_time;
    double imbalance_sum, imbalance_worst;
    int imbalance_n;
    int64_t rows_sent;
    int64_t copies[2];              /* intra, inter: over measured batches */
    int64_t *layer_copies;          /* [L][2] intra, inter: over every batch, warm-up included */
    int64_t *read_bytes;            /* [P][2] checkpoint bytes read (all, experts) */
    bool have_read_bytes;
    int64_t *memory;                /* [P][3] host RSS peak, weight bytes in the store, GPU bytes used */
    bool have_memory, weights_on_device;
    double startup;                 /* this rank's engine creation, s (reduced to the max at commit) */
    const char *dispatch;           /* "flat" or "hierarchical" (moe_metrics_set_dispatch) */
};

/* Values per layer each rank sends rank 0: load, rows sent, rows received, tokens, copies intra-node,
 * copies inter-node. */
#define NV 6

static const char *stage_names[MOE_STAGE_COUNT] = {"route", "plan", "permute", "dispatch",
                                                    "experts", "shared", "combine", "unpermute"};

const char *moe_stage_name(moe_stage_t stage) { return stage_names[stage]; }

moe_status_t moe_metrics_create(const moe_config_t *config, moe_ctl_h ctl, moe_metrics_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_metrics_s *m = calloc(1, sizeof *m);
    MOE_CHECK_ALLOC(m, fail);
    m->config = config;
    m->ctl = ctl;
    m->rank = moe_ctl_rank(ctl);
    m->size = moe_ctl_size(ctl);
    m->layers = config->model.layers;
    m->dispatch = "flat";
    m->layer = calloc((size_t)m->layers, sizeof(moe_layer_metrics_t));
    m->reduce_buf = calloc((size_t)m->layers * (MOE_STAGE_COUNT + 1), sizeof(double));
    m->send_buf = calloc((size_t)m->layers * NV, sizeof(int64_t));
    m->gather_buf = calloc((size_t)m->size * m->layers * NV, sizeof(int64_t));
    m->layer_copies = calloc((size_t)m->layers * 2, sizeof(int64_t));
    m->read_bytes = calloc((size_t)m->size * 2, sizeof(int64_t));
    m->memory = calloc((size_t)m->size * 3, sizeof(int64_t));
    m->weights_on_device = config->run.backend == MOE_BACKEND_CUDA;
    if (!m->layer || !m->reduce_buf || !m->send_buf || !m->gather_buf || !m->read_bytes || !m->memory ||
        !m->layer_copies) {
        moe_metrics_destroy(m);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "metrics: out of memory");
    }
    if (m->rank == 0 && config->outputs.metrics[0]) {
        status = moe_json_stream_open(config->outputs.metrics, &m->jsonl);
        if (status != MOE_STATUS_OK) {
            moe_metrics_destroy(m);
            goto fail;
        }
    }
    *out = m;
fail:
    return status;
}

void moe_metrics_destroy(moe_metrics_h m)
{
    if (!m) return;
    if (m->jsonl) fclose(m->jsonl);
    free(m->layer);
    free(m->reduce_buf);
    free(m->send_buf);
    free(m->gather_buf);
    free(m->read_bytes);
    free(m->memory);
    free(m->layer_copies);
    free(m);
}

moe_layer_metrics_t *moe_metrics_layer(moe_metrics_h m, int layer) { return &m->layer[layer]; }

moe_status_t moe_metrics_end_batch(moe_metrics_h m, int batch, int64_t batch_tokens,
                                   double batch_time, bool warmup, int serving,
                                   double *load_max_mean)
{
    double imbalance_batch = 0;
    moe_status_t status = MOE_STATUS_OK;
    const int L = m->layers, S = MOE_STAGE_COUNT;
    double *local = malloc(sizeof(double) * (size_t)L * (S + 1));
    MOE_CHECK_ALLOC(local, fail);
    for (int l = 0; l < L; l++) {
        memcpy(local + (size_t)l * (S + 1), m->layer[l].time, sizeof(double) * S);
        local[(size_t)l * (S + 1) + S] = m->layer[l].layer_time;
        int64_t *v = m->send_buf + (size_t)l * NV;
        v[0] = m->layer[l].load;
        v[1] = m->layer[l].rows_sent;
        v[2] = m->layer[l].rows_received;
        v[3] = m->layer[l].tokens;
        v[4] = m->layer[l].copies_intra;
        v[5] = m->layer[l].copies_inter;
    }
    double batch_time_max = batch_time;
    const size_t gather_bytes = sizeof(int64_t) * (size_t)L * NV;
    status = moe_ctl_reduce(m->ctl, 0, MOE_CTL_DOUBLE, MOE_CTL_MAX, local, L * (S + 1), "the metrics reduction");
    if (status == MOE_STATUS_OK) memcpy(m->reduce_buf, local, sizeof(double) * (size_t)L * (S + 1));
    if (status == MOE_STATUS_OK)
        status = moe_ctl_gather(m->ctl, 0, m->send_buf, gather_bytes, m->gather_buf, "the metrics reduction");
    if (status == MOE_STATUS_OK)
        status = moe_ctl_reduce(m->ctl, 0, MOE_CTL_DOUBLE, MOE_CTL_MAX, &batch_time_max, 1, "the metrics reduction");
    /* after a timeout the requests may still write into local: the job is ending, keep it */
    if (status != MOE_STATUS_TIMEOUT) free(local);
    if (status != MOE_STATUS_OK) goto fail;
    memset(m->layer, 0, sizeof(moe_layer_metrics_t) * (size_t)L);
    if (m->rank != 0) return MOE_STATUS_OK;

    m->batches++;
    if (!warmup) {
        m->measured++;
        m->tokens += batch_tokens;
        m->time += batch_time_max;
    }
    for (int l = 0; l < L; l++) {
        const double *t = m->reduce_buf + (size_t)l * (S + 1);
        int64_t total = 0, max = 0, sent = 0, copies[2] = {0, 0};
        for (int p = 0; p < serving; p++) {
            const int64_t *v = m->gather_buf + ((size_t)p * L + l) * NV;
            total += v[0];
            if (v[0] > max) max = v[0];
            sent += v[1];
            copies[0] += v[4], copies[1] += v[5];
        }
        m->layer_copies[2 * l] += copies[0];
        m->layer_copies[2 * l + 1] += copies[1];
        double mean = (double)total / serving;
        double imbalance = mean > 0 ? (double)max / mean : 1.0;
        imbalance_batch += imbalance / L;
        if (!warmup) {
            for (int s = 0; s < S; s++) m->stage[s] += t[s];
            m->layer_time += t[S];
            m->imbalance_sum += imbalance;
            m->imbalance_n++;
            if (imbalance > m->imbalance_worst) m->imbalance_worst = imbalance;
            m->rows_sent += sent;
            m->copies[0] += copies[0], m->copies[1] += copies[1];
        }
        if (m->jsonl) {
            json_t *r = moe_json_record("layer");
            json_object_set_new(r, "batch", json_integer(batch));
            json_object_set_new(r, "layer", json_integer(l));
            json_object_set_new(r, "warmup", json_boolean(warmup));
            json_object_set_new(r, "tokens", json_integer(batch_tokens));
            json_object_set_new(r, "serving", json_integer(serving));
            json_t *times = json_object();
            for (int s = 0; s < S; s++) json_object_set_new(times, stage_names[s], moe_json_number(t[s]));
            json_object_set_new(times, "layer", moe_json_number(t[S]));
            json_object_set_new(r, "time_s", times);
            static const char *const columns[4] = {"load", "tokens_per_rank", "rows_sent", "rows_received"};
            static const int column_of[4] = {0, 3, 1, 2};
            for (int c = 0; c < 4; c++) {
                json_t *a = json_array();
                for (int p = 0; p < serving; p++)
                    json_array_append_new(a, json_integer(m->gather_buf[((size_t)p * L + l) * NV + column_of[c]]));
                json_object_set_new(r, columns[c], a);
            }
            json_object_set_new(r, "copies_intra", json_integer(copies[0]));
            json_object_set_new(r, "copies_inter", json_integer(copies[1]));
            json_object_set_new(r, "load_max_mean", moe_json_number(imbalance));
            if (status == MOE_STATUS_OK) status = moe_json_line_write(m->jsonl, m->config->outputs.metrics, true, r);
            else json_decref(r);
        }
    }
    if (m->json) {
        json_t *r = moe_json_record("batch");
        json_object_set_new(r, "batch", json_integer(batch));
        json_object_set_new(r, "warmup", json_boolean(warmup));
        json_object_set_new(r, "tokens", json_integer(batch_tokens));
        json_object_set_new(r, "serving", json_integer(serving));
        json_object_set_new(r, "time_s", moe_json_number(batch_time_max));
        json_object_set_new(r, "load_max_mean", moe_json_number(imbalance_batch));
        json_object_set_new(r, "tokens_per_s", moe_json_number(moe_metrics_tokens_per_s(m)));
        if (status == MOE_STATUS_OK) status = moe_json_line_write(stdout, NULL, true, r);
        else json_decref(r);
    }
    if (load_max_mean) *load_max_mean = imbalance_batch;
fail:
    return status;
}

int64_t *moe_metrics_read_bytes(moe_metrics_h m)
{
    m->have_read_bytes = true;
    return m->read_bytes;
}

void moe_metrics_set_startup(moe_metrics_h m, double seconds) { m->startup = seconds; }

void moe_metrics_set_dispatch(moe_metrics_h m, bool hierarchical) { m->dispatch = hierarchical ? "hierarchical" : "flat"; }

int64_t *moe_metrics_memory(moe_metrics_h m)
{
    m->have_memory = true;
    return m->memory;
}

/* The largest of column `col` of the [P][3] memory table, in GiB. */
static double memory_max_gib(const moe_metrics_h m, int col)
{
    int64_t most = 0;
    for (int p = 0; p < m->size; p++) most = m->memory[3 * p + col] > most ? m->memory[3 * p + col] : most;
    return (double)most / (1 << 30);
}

double moe_metrics_tokens_per_s(const moe_metrics_h m) { return m->time > 0 ? (double)m->tokens / m->time : 0.0; }

void moe_metrics_print_summary(moe_metrics_h m, const char *command, FILE *out)
{
    if (m->rank != 0 || m->json) return; /* with --json the summary is a JSON line (commit) */
    const moe_config_t *c = m->config;
    fprintf(out, "\nmoerun %s: %s, %d ranks, backend %s, transport %s, chunks %d, %s dispatch\n",
            command ? command : "infer", c->model.name, m->size, c->run.backend == MOE_BACKEND_CPU ? "cpu" : "cuda",
            c->run.transport == MOE_TRANSPORT_MPI ? "mpi" : "nccl", c->run.chunks, m->dispatch);
    fprintf(out, "  tokens     %lld in %d measured batches (%d warm-up)\n", (long long)m->tokens,
            m->measured, m->batches - m->measured);
    fprintf(out, "  time       %.4f s\n", m->time);
    fprintf(out, "  tokens/s   %.1f (tokens over the measured batches' time, each batch the slowest rank's;\n"
                 "             the progress line shows the same)\n", moe_metrics_tokens_per_s(m));
    if (m->measured > 0) {
        static const moe_table_column_t columns[] = {
            {"stage", 10, 's', 0}, {"ms/batch", 8, 'f', 3}, {"share %", 8, 'f', 1}};
        const moe_table_t table = {.out = out, .indent = "  ", .columns = columns, .n = 3};
        moe_table_header(&table);
        for (int s = 0; s < MOE_STAGE_COUNT; s++)
            moe_table_row(&table, stage_names[s], 1e3 * m->stage[s] / m->measured,
                          m->layer_time > 0 ? 100.0 * m->stage[s] / m->layer_time : 0.0);
        fprintf(out, "  %-10s %8.3f\n", "layers", 1e3 * m->layer_time / m->measured);
        fprintf(out, "  (share: of the layers' time. The stages overlap: with chunks > 1 a chunk's experts run\n"
                     "   while the next is dispatched, and each stage is the slowest rank's, so the shares can\n"
                     "   add up past 100%%; dispatch and combine count only the waiting compute did not hide)\n");
        fprintf(out, "  load max/mean over ranks: mean %.3f, worst %.3f (over layers and batches)\n",
                m->imbalance_n ? m->imbalance_sum / m->imbalance_n : 0.0, m->imbalance_worst);
        fprintf(out, "  token copies sent per batch: %.1f (rows; to other ranks: %.1f intra-node, %.1f inter-node)\n",
                (double)m->rows_sent / m->measured, (double)m->copies[0] / m->measured,
                (double)m->copies[1] / m->measured);
    }
    fprintf(out, "  start-up   %.2f s (engine creation on rank 0: weights, buffers, communicators)\n", m->startup);
    if (m->have_memory)
        fprintf(out, "  memory     max over ranks: host RSS peak %.2f GiB, weights %.2f GiB (%s), GPU used %.2f GiB\n",
                memory_max_gib(m, 0), memory_max_gib(m, 1), m->weights_on_device ? "on the GPU" : "host",
                memory_max_gib(m, 2));
    if (m->have_read_bytes) {
        fprintf(out, "  checkpoint bytes read per rank (routed experts):");
        for (int p = 0; p < m->size; p++)
            fprintf(out, " %lld (%lld)", (long long)m->read_bytes[2 * p],
                    (long long)m->read_bytes[2 * p + 1]);
        fputc('\n', out);
    }
}

/* The summary as a record: what the table says, per rank where ranks differ. */
static json_t *summary_record(const moe_metrics_h m, const char *command)
{
    json_t *r = moe_json_record("summary");
    json_object_set_new(r, "summary", json_true());
    json_object_set_new(r, "command", json_string(command ? command : "infer"));
    json_object_set_new(r, "ranks", json_integer(m->size));
    json_object_set_new(r, "tokens", json_integer(m->tokens));
    json_object_set_new(r, "measured_batches", json_integer(m->measured));
    json_object_set_new(r, "warmup_batches", json_integer(m->batches - m->measured));
    json_object_set_new(r, "time_s", moe_json_number(m->time));
    json_object_set_new(r, "tokens_per_s", moe_json_number(moe_metrics_tokens_per_s(m)));
    json_object_set_new(r, "load_max_mean_mean", moe_json_number(m->imbalance_n ? m->imbalance_sum / m->imbalance_n : 0.0));
    json_object_set_new(r, "load_max_mean_worst", moe_json_number(m->imbalance_worst));
    if (m->have_read_bytes)
        for (int i = 0; i < 2; i++) {
            json_t *a = json_array();
            for (int p = 0; p < m->size; p++) json_array_append_new(a, json_integer(m->read_bytes[2 * p + i]));
            json_object_set_new(r, i ? "checkpoint_expert_bytes_read" : "checkpoint_bytes_read", a);
        }
    json_object_set_new(r, "dispatch", json_string(m->dispatch));
    json_object_set_new(r, "copies_intra", json_integer(m->copies[0]));
    json_object_set_new(r, "copies_inter", json_integer(m->copies[1]));
    /* per layer over every batch, warm-up included: what `moerun place --evaluate` replays */
    for (int i = 0; i < 2; i++) {
        json_t *a = json_array();
        for (int l = 0; l < m->layers; l++) json_array_append_new(a, json_integer(m->layer_copies[2 * l + i]));
        json_object_set_new(r, i ? "copies_inter_per_layer_all_batches" : "copies_intra_per_layer_all_batches", a);
    }
    json_object_set_new(r, "startup_s", moe_json_number(m->startup));
    if (m->have_memory) {
        static const char *const keys[3] = {"host_rss_peak_bytes", "weight_bytes", "gpu_bytes_used"};
        for (int i = 0; i < 3; i++) {
            json_t *a = json_array();
            for (int p = 0; p < m->size; p++) json_array_append_new(a, json_integer(m->memory[3 * p + i]));
            json_object_set_new(r, keys[i], a);
        }
    }
    /* the stage breakdown of the summary table, per measured batch; the stages overlap (chunks),
     * so they need not add up to the layers' time */
    json_t *st = json_object();
    for (int s = 0; s < MOE_STAGE_COUNT; s++)
        json_object_set_new(st, stage_names[s], moe_json_number(m->measured ? 1e3 * m->stage[s] / m->measured : 0.0));
    json_object_set_new(st, "layers", moe_json_number(m->measured ? 1e3 * m->layer_time / m->measured : 0.0));
    json_object_set_new(r, "stage_ms_per_batch", st);
    return r;
}

moe_status_t moe_metrics_commit(moe_metrics_h m, const char *command)
{
    moe_status_t status = MOE_STATUS_OK;
    if (m->rank != 0) return MOE_STATUS_OK;
    if (m->json) MOE_CHECK(moe_json_line_write(stdout, NULL, true, summary_record(m, command)), fail);
    if (!m->jsonl) return MOE_STATUS_OK;
    status = moe_json_line_write(m->jsonl, m->config->outputs.metrics, true, summary_record(m, command));
    if (fclose(m->jsonl) != 0 && status == MOE_STATUS_OK) {
        moe_error("%s: cannot write: %s", m->config->outputs.metrics, strerror(errno));
        status = MOE_STATUS_IO_ERROR;
    }
    m->jsonl = NULL;
fail:
    return status;
}

moe_status_t moe_metrics_start(moe_metrics_h m, const char *command, const char *device, bool json)
{
    moe_status_t status = MOE_STATUS_OK;
    enum { NAME = 256 };
    char mine[2 * NAME] = {0};
    moe_ctl_host(mine, NAME);
    snprintf(mine + NAME, NAME, "%s", device ? device : "");
    char *all = m->rank == 0 ? calloc((size_t)m->size, sizeof mine) : NULL;
    if (m->rank == 0) MOE_CHECK_ALLOC(all, fail);
    MOE_CHECK(moe_ctl_gather(m->ctl, 0, mine, sizeof mine, all, "the run header"), fail);
    m->json = json && m->rank == 0;
    if (m->rank != 0 || (!m->json && !m->jsonl)) goto fail;
    for (int copy = 0; copy < 2; copy++) {
        FILE *fp = copy ? m->jsonl : (m->json ? stdout : NULL);
        if (!fp) continue;
        json_t *r = moe_json_record("run");
        json_object_set_new(r, "command", json_string(command ? command : "infer"));
        json_object_set_new(r, "version", json_string(moe_version()));
        json_object_set_new(r, "commit", json_string(moe_git_commit()));
        json_object_set_new(r, "world", json_integer(m->size));
        json_t *hosts = json_array(), *devices = json_array();
        for (int p = 0; p < m->size; p++) {
            json_array_append_new(hosts, json_string(all + (size_t)p * sizeof mine));
            json_array_append_new(devices, json_string(all + (size_t)p * sizeof mine + NAME));
        }
        json_object_set_new(r, "hosts", hosts);
        json_object_set_new(r, "devices", devices);
        json_t *cfg = json_object();
        json_object_set_new(cfg, "path", json_string(m->config->source_path));
        char *text = NULL;
        size_t size = 0;
        FILE *mem = open_memstream(&text, &size);
        if (mem) {
            moe_config_print(m->config, mem);
            fclose(mem);
            json_object_set_new(cfg, "yaml", json_string(text ? text : ""));
            free(text);
        }
        json_object_set_new(r, "config", cfg);
        MOE_CHECK(moe_json_line_write(fp, copy ? m->config->outputs.metrics : NULL, true, r), fail);
    }
fail:
    free(all);
    return status;
}
