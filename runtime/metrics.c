/* metrics: what a run measures, reduced to rank 0.
 *
 * Per batch and layer, each rank times its stages (its backend's timeline: host clocks for cpu, CUDA
 * events on the GPU's streams for cuda; for dispatch and combine, the time spent waiting for the
 * transfer, i.e. what compute did not hide) and counts the rows it sent
 * and received and the (token, expert) pairs it computed. At each batch end rank 0 receives the
 * maximum over ranks of every time and each rank's load, writes one JSON line per layer to
 * outputs.metrics, and accumulates the summary: tokens/s over the batches after run.warmup_batches,
 * the time of each stage (per batch, summed over layers) and its share of the layer time, and the
 * per-layer max/mean load over ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime-impl.h"

struct moe_metrics_s {
    const moe_config_t *config;
    MPI_Comm comm;
    moe_watch_h watch;
    int rank, size, layers;
    moe_layer_metrics_t *layer;     /* [L] this batch, this rank */
    double *reduce_buf;             /* [L][STAGE_COUNT + 1] */
    int64_t *gather_buf;            /* [P][L][4] on rank 0 */
    int64_t *send_buf;              /* [L][4] */
    moe_atomic_file_t jsonl;
    bool jsonl_open;
    /* summary (rank 0), over measured batches */
    int batches, measured;
    int64_t tokens;
    double time, stage[MOE_STAGE_COUNT], layer_time;
    double imbalance_sum, imbalance_worst;
    int imbalance_n;
    int64_t rows_sent;
    int64_t *read_bytes;            /* [P][2] checkpoint bytes read (all, experts) */
    bool have_read_bytes;
    int64_t *memory;                /* [P][3] host RSS peak, weight bytes in the store, GPU bytes used */
    bool have_memory, weights_on_device;
    double startup;                 /* this rank's engine creation, s (reduced to the max at commit) */
};

static const char *stage_names[MOE_STAGE_COUNT] = {"route", "plan", "permute", "dispatch",
                                                    "experts", "shared", "combine", "unpermute"};

const char *moe_stage_name(moe_stage_t stage) { return stage_names[stage]; }

moe_status_t moe_metrics_create(const moe_config_t *config, MPI_Comm comm, moe_watch_h watch,
                                moe_metrics_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_metrics_s *m = calloc(1, sizeof *m);
    MOE_CHECK_ALLOC(m, fail);
    m->config = config;
    m->comm = comm;
    m->watch = watch;
    MPI_Comm_rank(comm, &m->rank);
    MPI_Comm_size(comm, &m->size);
    m->layers = config->model.layers;
    m->layer = calloc((size_t)m->layers, sizeof(moe_layer_metrics_t));
    m->reduce_buf = calloc((size_t)m->layers * (MOE_STAGE_COUNT + 1), sizeof(double));
    m->send_buf = calloc((size_t)m->layers * 4, sizeof(int64_t));
    m->gather_buf = calloc((size_t)m->size * m->layers * 4, sizeof(int64_t));
    m->read_bytes = calloc((size_t)m->size * 2, sizeof(int64_t));
    m->memory = calloc((size_t)m->size * 3, sizeof(int64_t));
    m->weights_on_device = config->run.backend == MOE_BACKEND_CUDA;
    if (!m->layer || !m->reduce_buf || !m->send_buf || !m->gather_buf || !m->read_bytes || !m->memory) {
        moe_metrics_destroy(m);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "metrics: out of memory");
    }
    if (m->rank == 0 && config->outputs.metrics[0]) {
        status = moe_atomic_file_open(config->outputs.metrics, &m->jsonl);
        if (status != MOE_STATUS_OK) {
            moe_metrics_destroy(m);
            goto fail;
        }
        m->jsonl_open = true;
    }
    *out = m;
fail:
    return status;
}

void moe_metrics_destroy(moe_metrics_h m)
{
    if (!m) return;
    if (m->jsonl_open) moe_atomic_file_abort(&m->jsonl);
    free(m->layer);
    free(m->reduce_buf);
    free(m->send_buf);
    free(m->gather_buf);
    free(m->read_bytes);
    free(m->memory);
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
        m->send_buf[l * 4 + 0] = m->layer[l].load;
        m->send_buf[l * 4 + 1] = m->layer[l].rows_sent;
        m->send_buf[l * 4 + 2] = m->layer[l].rows_received;
        m->send_buf[l * 4 + 3] = m->layer[l].tokens;
    }
    double batch_time_max = batch_time;
    MPI_Request requests[3];
    int rc = MPI_Ireduce(local, m->reduce_buf, L * (S + 1), MPI_DOUBLE, MPI_MAX, 0, m->comm, &requests[0]);
    if (rc == MPI_SUCCESS)
        rc = MPI_Igather(m->send_buf, L * 4, MPI_INT64_T, m->gather_buf, L * 4, MPI_INT64_T, 0, m->comm,
                         &requests[1]);
    if (rc == MPI_SUCCESS)
        rc = MPI_Ireduce(&batch_time, &batch_time_max, 1, MPI_DOUBLE, MPI_MAX, 0, m->comm, &requests[2]);
    if (rc == MPI_SUCCESS) status = moe_watch_wait(m->watch, -1, NULL, "the metrics reduction", 3, requests);
    /* after a timeout the requests may still write into local: the job is ending, keep it */
    if (status != MOE_STATUS_TIMEOUT) free(local);
    MOE_CHECK_MPI(rc, fail);
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
        int64_t total = 0, max = 0, sent = 0;
        for (int p = 0; p < serving; p++) {
            int64_t load = m->gather_buf[((size_t)p * L + l) * 4];
            total += load;
            if (load > max) max = load;
            sent += m->gather_buf[((size_t)p * L + l) * 4 + 1];
        }
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
        }
        if (m->jsonl_open) {
            FILE *fp = m->jsonl.fp;
            fprintf(fp, "{\"batch\":%d,\"layer\":%d,\"warmup\":%s,\"tokens\":%lld,\"serving\":%d,"
                    "\"time_s\":{", batch, l, warmup ? "true" : "false", (long long)batch_tokens, serving);
            for (int s = 0; s < S; s++) fprintf(fp, "\"%s\":%.9g,", stage_names[s], t[s]);
            fprintf(fp, "\"layer\":%.9g},\"load\":[", t[S]);
            for (int p = 0; p < serving; p++)
                fprintf(fp, "%s%lld", p ? "," : "", (long long)m->gather_buf[((size_t)p * L + l) * 4]);
            fprintf(fp, "],\"tokens_per_rank\":[");
            for (int p = 0; p < serving; p++)
                fprintf(fp, "%s%lld", p ? "," : "", (long long)m->gather_buf[((size_t)p * L + l) * 4 + 3]);
            fprintf(fp, "],\"rows_sent\":[");
            for (int p = 0; p < serving; p++)
                fprintf(fp, "%s%lld", p ? "," : "", (long long)m->gather_buf[((size_t)p * L + l) * 4 + 1]);
            fprintf(fp, "],\"rows_received\":[");
            for (int p = 0; p < serving; p++)
                fprintf(fp, "%s%lld", p ? "," : "", (long long)m->gather_buf[((size_t)p * L + l) * 4 + 2]);
            fprintf(fp, "],\"load_max_mean\":%.6g}\n", imbalance);
        }
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
    if (m->rank != 0) return;
    const moe_config_t *c = m->config;
    fprintf(out, "\nmoerun %s: %s, %d ranks, backend %s, transport %s, chunks %d\n",
            command ? command : "infer", c->model.name, m->size, c->run.backend == MOE_BACKEND_CPU ? "cpu" : "cuda",
            c->run.transport == MOE_TRANSPORT_MPI ? "mpi" : "nccl", c->run.chunks);
    fprintf(out, "  tokens     %lld in %d measured batches (%d warm-up)\n", (long long)m->tokens,
            m->measured, m->batches - m->measured);
    fprintf(out, "  time       %.4f s\n", m->time);
    fprintf(out, "  tokens/s   %.1f\n", m->time > 0 ? (double)m->tokens / m->time : 0.0);
    if (m->measured > 0) {
        fprintf(out, "  stage      ms/batch   share of layer time (each the max over ranks)\n");
        for (int s = 0; s < MOE_STAGE_COUNT; s++)
            fprintf(out, "  %-10s %8.3f   %5.1f%%\n", stage_names[s], 1e3 * m->stage[s] / m->measured,
                    m->layer_time > 0 ? 100.0 * m->stage[s] / m->layer_time : 0.0);
        fprintf(out, "  %-10s %8.3f\n", "layers", 1e3 * m->layer_time / m->measured);
        fprintf(out, "  (the stages overlap: with chunks > 1 a chunk's experts run while the next is\n"
                     "   dispatched, and each stage is the slowest rank's, so the shares can add up\n"
                     "   past 100%%; dispatch and combine count only the waiting that compute did not hide)\n");
        fprintf(out, "  load max/mean over ranks: mean %.3f, worst %.3f (over layers and batches)\n",
                m->imbalance_n ? m->imbalance_sum / m->imbalance_n : 0.0, m->imbalance_worst);
        fprintf(out, "  token copies sent per batch: %.1f\n", (double)m->rows_sent / m->measured);
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

moe_status_t moe_metrics_commit(moe_metrics_h m)
{
    if (!m->jsonl_open) return MOE_STATUS_OK;
    fprintf(m->jsonl.fp, "{\"summary\":true,\"ranks\":%d,\"tokens\":%lld,\"time_s\":%.9g,"
            "\"tokens_per_s\":%.9g,\"load_max_mean_mean\":%.6g,\"load_max_mean_worst\":%.6g,",
            m->size, (long long)m->tokens, m->time, m->time > 0 ? (double)m->tokens / m->time : 0.0,
            m->imbalance_n ? m->imbalance_sum / m->imbalance_n : 0.0, m->imbalance_worst);
    if (m->have_read_bytes)
        for (int i = 0; i < 2; i++) {
            fprintf(m->jsonl.fp, "\"checkpoint_%sbytes_read\":[", i ? "expert_" : "");
            for (int p = 0; p < m->size; p++)
                fprintf(m->jsonl.fp, "%s%lld", p ? "," : "", (long long)m->read_bytes[2 * p + i]);
            fprintf(m->jsonl.fp, "],");
        }
    fprintf(m->jsonl.fp, "\"startup_s\":%.6g,", m->startup);
    if (m->have_memory) {
        static const char *const keys[3] = {"host_rss_peak_bytes", "weight_bytes", "gpu_bytes_used"};
        for (int i = 0; i < 3; i++) {
            fprintf(m->jsonl.fp, "\"%s\":[", keys[i]);
            for (int p = 0; p < m->size; p++)
                fprintf(m->jsonl.fp, "%s%lld", p ? "," : "", (long long)m->memory[3 * p + i]);
            fprintf(m->jsonl.fp, "],");
        }
    }
    /* the stage breakdown of the summary table, per measured batch */
    fprintf(m->jsonl.fp, "\"stage_ms_per_batch\":{");
    for (int s = 0; s < MOE_STAGE_COUNT; s++)
        fprintf(m->jsonl.fp, "\"%s\":%.6g,", stage_names[s],
                m->measured ? 1e3 * m->stage[s] / m->measured : 0.0);
    fprintf(m->jsonl.fp, "\"layers\":%.6g}}\n", m->measured ? 1e3 * m->layer_time / m->measured : 0.0);
    m->jsonl_open = false;
    return moe_atomic_file_commit(&m->jsonl);
}
