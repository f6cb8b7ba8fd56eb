/* dispatch_cpu: the dispatch layout of one layer on the host (kernels.h, "the dispatch layout"): the
 * cpu backend's stages and the references of the GPU kernels in dispatch.cu. Written for clarity:
 * rows in token order, entries in row order. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kernels/dispatch_rules.h"
#include "kernels/kernels.h"

void moe_grouped_gemm_cpu(const float *x, const float *const *w, size_t w_offset, const int *offset,
                          int groups, int n_out, int k, const float *gate, float *y)
{
    for (int e = 0; e < groups; e++) {
        const int rows = offset[e + 1] - offset[e];
        if (rows <= 0) continue;
        float *ye = y + (size_t)offset[e] * n_out;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_out, k, 1.0f, x + (size_t)offset[e] * k, k,
                    w[e] + w_offset, k, 0.0f, ye, n_out);
        if (!gate) continue;
        const float *ge = gate + (size_t)offset[e] * n_out;
        for (size_t i = 0; i < (size_t)rows * n_out; i++) ye[i] *= ge[i] / (1.0f + expf(-ge[i]));
    }
}

/* The rank a replica's row goes to first: the rail with hierarchical dispatch, else its host. */
static inline int first_hop(const moe_dispatch_table_t *t, int r) { return t->hop ? t->hop[r] : t->rank[r]; }

void moe_dispatch_count_cpu(const int32_t *ids, int n, int k, int64_t g0, const moe_dispatch_table_t *t,
                            int chunks, int32_t *rep, int *rows, int *entries)
{
    const int P = t->ranks, R = t->replicas;
    memset(rows, 0, sizeof(int) * (size_t)chunks * P);
    memset(entries, 0, sizeof(int) * (size_t)chunks * R);
    for (int tok = 0; tok < n; tok++) {
        const int c = moe_rules_chunk(tok, n, chunks);
        for (int j = 0; j < k; j++) {
            const int e = ids[(size_t)tok * k + j];
            int r = -1;
            if (e >= 0 && e < t->experts)
                r = moe_rules_pick(t->layer, e, g0 + tok, t->first[e], t->first[e + 1] - t->first[e], t->share);
            rep[(size_t)tok * k + j] = r;
            if (r < 0) continue;
            entries[(size_t)c * R + r]++;
            bool first = true;
            for (int i = 0; i < j; i++) {
                const int ri = rep[(size_t)tok * k + i];
                first &= ri < 0 || first_hop(t, ri) != first_hop(t, r);
            }
            if (first) rows[(size_t)c * P + first_hop(t, r)]++;
        }
    }
}

void moe_dispatch_final_rows_cpu(const int32_t *rep, int n, int k, const moe_dispatch_table_t *t, int chunks,
                                 int *rows)
{
    memset(rows, 0, sizeof(int) * (size_t)chunks * t->ranks);
    for (int tok = 0; tok < n; tok++) {
        const int c = moe_rules_chunk(tok, n, chunks);
        for (int j = 0; j < k; j++) {
            const int32_t r = rep[(size_t)tok * k + j];
            bool first = r >= 0;
            for (int i = 0; first && i < j; i++) {
                const int32_t ri = rep[(size_t)tok * k + i];
                first = ri < 0 || t->rank[ri] != t->rank[r];
            }
            if (first) rows[(size_t)c * t->ranks + t->rank[r]]++;
        }
    }
}

void moe_dispatch_offsets_cpu(const int *rows, int chunks, int ranks, int capacity, int *offset)
{
    int at = 0;
    for (int i = 0; i < chunks * ranks; i++) {
        offset[i] = capacity > 0 ? i * capacity : at;
        at += rows[i];
    }
    offset[chunks * ranks] = at;
}

/* The metadata of the row token `tok` sends to `rank`: its choices served there, the others -1. */
static void write_meta(char *meta, const int32_t *ids, const float *weights, const int32_t *rep, int tok, int k,
                       const moe_dispatch_table_t *t, int rank)
{
    for (int i = 0; i < k; i++) {
        const int32_t r = rep[(size_t)tok * k + i];
        const bool here = r >= 0 && first_hop(t, r) == rank;
        const int32_t e = here ? ids[(size_t)tok * k + i] + (t->code ? t->experts * t->code[r] : 0) : -1;
        const float w = here ? weights[(size_t)tok * k + i] : 0.0f;
        memcpy(meta + 4 * (size_t)i, &e, 4);
        memcpy(meta + 4 * ((size_t)k + i), &w, 4);
    }
}

void moe_dispatch_pack_cpu(const float *h, const int32_t *ids, const float *weights, const int32_t *rep, int n,
                           int k, int d, const moe_dispatch_table_t *t, int chunks, const int *offset,
                           void *send, size_t row_bytes, size_t meta_offset, int32_t *token_row)
{
    const int P = t->ranks;
    int fill[chunks * P > 0 ? chunks * P : 1]; /* a few chunks times the ranks */
    memset(fill, 0, sizeof fill);
    for (int tok = 0; tok < n; tok++) {
        const int c = moe_rules_chunk(tok, n, chunks);
        for (int j = 0; j < k; j++) {
            const int32_t r = rep[(size_t)tok * k + j];
            int32_t row = -1;
            bool first = r >= 0;
            for (int i = 0; first && i < j; i++) {
                const int32_t ri = rep[(size_t)tok * k + i];
                first = ri < 0 || first_hop(t, ri) != first_hop(t, r);
            }
            if (first) {
                const int p = first_hop(t, r);
                row = offset[c * P + p] + fill[c * P + p]++;
                char *dst = (char *)send + (size_t)row * row_bytes;
                memcpy(dst, h + (size_t)tok * d, sizeof(float) * (size_t)d);
                write_meta(dst + meta_offset, ids, weights, rep, tok, k, t, p);
            }
            token_row[(size_t)tok * k + j] = row;
        }
    }
}

moe_status_t moe_relay_pack_cpu(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                int experts, const int *node_rank, int per_node, int *next, void *send,
                                int32_t *relay_row)
{
    for (int r = 0; r < n_rows; r++) {
        const char *row = (const char *)recv + (size_t)r * row_bytes;
        int32_t id[MOE_DISPATCH_MAX_K];
        memcpy(id, row + meta_offset, 4 * (size_t)k);
        for (int j = 0; j < k; j++) {
            relay_row[(size_t)r * k + j] = -1;
            if (id[j] < 0) continue;
            if (id[j] / experts >= per_node) {
                moe_error("relay: a first-hop row names local index %d of a node of %d ranks", id[j] / experts,
                          per_node);
                return MOE_STATUS_INTERNAL;
            }
            bool first = true;
            for (int i = 0; first && i < j; i++) first = id[i] < 0 || id[i] / experts != id[j] / experts;
            if (!first) continue;
            const int g = id[j] / experts, p = node_rank[g];
            const int at = next[p]++;
            char *dst = (char *)send + (size_t)at * row_bytes;
            memcpy(dst, row, meta_offset);
            for (int i = 0; i < k; i++) { /* the choices served by rank p, the others -1 */
                const bool here = id[i] >= 0 && id[i] / experts == g;
                const int32_t e = here ? id[i] % experts : -1;
                float w = 0.0f;
                if (here) memcpy(&w, row + meta_offset + 4 * ((size_t)k + i), 4);
                memcpy(dst + meta_offset + 4 * (size_t)i, &e, 4);
                memcpy(dst + meta_offset + 4 * ((size_t)k + i), &w, 4);
            }
            relay_row[(size_t)r * k + j] = at;
        }
    }
    return MOE_STATUS_OK;
}

void moe_dispatch_clear_meta_cpu(void *rows, int n_rows, size_t row_bytes, size_t meta_offset, int k)
{
    const int32_t none = -1;
    for (int r = 0; r < n_rows; r++)
        for (int i = 0; i < k; i++) memcpy((char *)rows + (size_t)r * row_bytes + meta_offset + 4 * (size_t)i, &none, 4);
}

moe_status_t moe_expert_group_cpu(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                  const int *local_slot, int experts, int slots, int d, int *offset,
                                  int32_t *entry_pos, float *x_e)
{
    memset(offset, 0, sizeof(int) * ((size_t)slots + 1));
    int *fill = moe_calloc((size_t)slots + 1, sizeof(int));
    if (!fill) {
        moe_error("expert grouping: out of memory for %d slots", slots);
        return MOE_STATUS_NO_MEMORY;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < n_rows; r++) {
            const char *row = (const char *)recv + (size_t)r * row_bytes;
            for (int j = 0; j < k; j++) {
                int32_t e;
                memcpy(&e, row + meta_offset + 4 * (size_t)j, 4);
                if (pass == 1) entry_pos[(size_t)r * k + j] = -1;
                if (e < 0) continue;
                const int s = e < experts ? local_slot[e] : -1;
                if (s < 0) {
                    moe_free(fill);
                    moe_error("expert grouping: a received row names expert %d, which this rank does not host", e);
                    return MOE_STATUS_INTERNAL;
                }
                if (pass == 0) {
                    offset[s + 1]++;
                    continue;
                }
                const int pos = offset[s] + fill[s]++;
                entry_pos[(size_t)r * k + j] = pos;
                memcpy(x_e + (size_t)pos * d, row, sizeof(float) * (size_t)d);
            }
        }
        if (pass == 0)
            for (int s = 0; s < slots; s++) offset[s + 1] += offset[s];
    }
    moe_free(fill);
    return MOE_STATUS_OK;
}

void moe_expert_combine_cpu(const float *y_e, const int32_t *entry_pos, const void *recv, int n_rows,
                            size_t row_bytes, size_t meta_offset, int k, int d, float *partial)
{
    for (int r = 0; r < n_rows; r++) {
        float *o = partial + (size_t)r * d;
        memset(o, 0, sizeof(float) * (size_t)d);
        const char *meta = (const char *)recv + (size_t)r * row_bytes + meta_offset;
        for (int j = 0; j < k; j++) {
            const int32_t pos = entry_pos[(size_t)r * k + j];
            if (pos < 0) continue;
            float w;
            memcpy(&w, meta + 4 * ((size_t)k + j), 4);
            const float *y = y_e + (size_t)pos * d;
            for (int c = 0; c < d; c++) o[c] += w * y[c];
        }
    }
}

void moe_unpermute_tokens_cpu(const float *back, const int32_t *token_row, int t_begin, int t_end, int k, int d,
                              float *out)
{
    for (int t = t_begin; t < t_end; t++) {
        float *o = out + (size_t)t * d;
        for (int j = 0; j < k; j++) {
            const int32_t row = token_row[(size_t)t * k + j];
            if (row < 0) continue;
            const float *b = back + (size_t)row * d;
            for (int c = 0; c < d; c++) o[c] += b[c];
        }
    }
}
