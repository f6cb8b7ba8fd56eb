/* plan: the placement table (see placement.h).
 *
 * Storage: per (layer, expert) a short list of replicas (rank, share), kept in fixed-capacity arrays
 * of `ranks` entries (a rank hosts an expert at most once, so no expert can have more replicas), and
 * per (layer, rank) the ascending list of experts it hosts, rebuilt lazily after edits. */
#include "placement/placement.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct moe_plan_s {
    int layers, experts, ranks, ranks_per_node;
    int *replica_count;   /* [L][E] */
    int *replica_rank;    /* [L][E][ranks] */
    float *replica_share; /* [L][E][ranks] */
    bool local_valid;
    int *local_count;     /* [L][ranks] */
    int *local_offset;    /* [L][ranks]: into local_expert */
    int *local_expert;    /* [L][sum of replicas], grouped by rank */
    int *local_slot;      /* [L][ranks][E]: slot or -1 */
};

moe_status_t moe_plan_create_empty(int layers, int experts, int ranks, int ranks_per_node,
                                   moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (layers < 1 || experts < 1 || ranks < 1 || ranks_per_node < 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "plan: layers (%d), experts (%d), ranks (%d) and "
                 "ranks per node (%d) must be positive", layers, experts, ranks, ranks_per_node);
    struct moe_plan_s *plan = calloc(1, sizeof *plan);
    MOE_CHECK_ALLOC(plan, fail);
    plan->layers = layers;
    plan->experts = experts;
    plan->ranks = ranks;
    plan->ranks_per_node = ranks_per_node;
    size_t le = (size_t)layers * experts, ler = le * ranks, lr = (size_t)layers * ranks;
    plan->replica_count = moe_calloc(le, sizeof(int));
    plan->replica_rank = moe_calloc(ler, sizeof(int));
    plan->replica_share = moe_calloc(ler, sizeof(float));
    plan->local_count = moe_calloc(lr, sizeof(int));
    plan->local_offset = moe_calloc(lr, sizeof(int));
    plan->local_expert = moe_calloc(ler, sizeof(int));
    plan->local_slot = moe_calloc(ler, sizeof(int));
    if (!plan->replica_count || !plan->replica_rank || !plan->replica_share || !plan->local_count ||
        !plan->local_offset || !plan->local_expert || !plan->local_slot) {
        moe_plan_destroy(plan);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "plan: out of memory for %d x %d x %d", layers, experts,
                 ranks);
    }
    *out = plan;
fail:
    return status;
}

moe_status_t moe_plan_add_replica(moe_plan_h plan, int layer, int expert, int rank, float share)
{
    if (layer < 0 || layer >= plan->layers || expert < 0 || expert >= plan->experts || rank < 0 ||
        rank >= plan->ranks) {
        moe_error("plan: replica (layer %d, expert %d, rank %d) out of range (%d layers, %d experts, "
                  "%d ranks)", layer, expert, rank, plan->layers, plan->experts, plan->ranks);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    size_t le = (size_t)layer * plan->experts + expert;
    int n = plan->replica_count[le];
    for (int i = 0; i < n; i++) {
        if (plan->replica_rank[le * plan->ranks + i] == rank) {
            moe_error("plan: rank %d hosts expert %d of layer %d twice", rank, expert, layer);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
    }
    /* Keep replicas sorted by rank so that the plan, and so replica picking, is canonical. */
    int pos = n;
    while (pos > 0 && plan->replica_rank[le * plan->ranks + pos - 1] > rank) {
        plan->replica_rank[le * plan->ranks + pos] = plan->replica_rank[le * plan->ranks + pos - 1];
        plan->replica_share[le * plan->ranks + pos] = plan->replica_share[le * plan->ranks + pos - 1];
        pos--;
    }
    plan->replica_rank[le * plan->ranks + pos] = rank;
    plan->replica_share[le * plan->ranks + pos] = share;
    plan->replica_count[le] = n + 1;
    plan->local_valid = false;
    return MOE_STATUS_OK;
}

moe_status_t moe_plan_create_contiguous(int layers, int experts, int ranks, int ranks_per_node,
                                        moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_plan_h plan = NULL;
    if (ranks < 1 || experts % ranks != 0)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "experts (%d) cannot be split evenly over %d ranks; give a plan", experts, ranks);
    MOE_CHECK(moe_plan_create_empty(layers, experts, ranks, ranks_per_node, &plan), fail);
    int per_rank = experts / ranks;
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < experts; e++)
            MOE_CHECK(moe_plan_add_replica(plan, l, e, e / per_rank, 1.0f), fail);
    *out = plan;
    return MOE_STATUS_OK;
fail:
    moe_plan_destroy(plan);
    return status;
}

moe_status_t moe_plan_check(const moe_plan_h plan, const char *what)
{
    for (int l = 0; l < plan->layers; l++) {
        for (int e = 0; e < plan->experts; e++) {
            size_t le = (size_t)l * plan->experts + e;
            int n = plan->replica_count[le];
            if (n == 0) {
                moe_error("%s: expert %d of layer %d has no host rank", what, e, l);
                return MOE_STATUS_INVALID_ARGUMENT;
            }
            double sum = 0;
            for (int i = 0; i < n; i++) {
                float s = plan->replica_share[le * plan->ranks + i];
                if (!(s > 0.0f) || !isfinite(s)) {
                    moe_error("%s: expert %d of layer %d: share %g on rank %d must be positive", what,
                              e, l, s, plan->replica_rank[le * plan->ranks + i]);
                    return MOE_STATUS_INVALID_ARGUMENT;
                }
                sum += s;
            }
            if (fabs(sum - 1.0) > 1e-4) {
                moe_error("%s: expert %d of layer %d: shares sum to %g, not 1", what, e, l, sum);
                return MOE_STATUS_INVALID_ARGUMENT;
            }
        }
    }
    return MOE_STATUS_OK;
}

moe_status_t moe_plan_check_fits(const moe_plan_h plan, int layers, int experts, int ranks,
                                 const char *what)
{
    if (plan->layers != layers || plan->experts != experts || plan->ranks != ranks) {
        moe_error("%s: the plan is for %d layers x %d experts on %d ranks, but the run has %d layers "
                  "x %d experts on %d ranks", what, plan->layers, plan->experts, plan->ranks, layers,
                  experts, ranks);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    return MOE_STATUS_OK;
}

void moe_plan_destroy(moe_plan_h plan)
{
    if (!plan) return;
    moe_free(plan->replica_count);
    moe_free(plan->replica_rank);
    moe_free(plan->replica_share);
    moe_free(plan->local_count);
    moe_free(plan->local_offset);
    moe_free(plan->local_expert);
    moe_free(plan->local_slot);
    free(plan);
}

int moe_plan_layers(const moe_plan_h plan) { return plan->layers; }
int moe_plan_experts(const moe_plan_h plan) { return plan->experts; }
int moe_plan_ranks(const moe_plan_h plan) { return plan->ranks; }
int moe_plan_ranks_per_node(const moe_plan_h plan) { return plan->ranks_per_node; }

int moe_plan_replicas(const moe_plan_h plan, int layer, int expert, const int **ranks,
                      const float **shares)
{
    size_t le = (size_t)layer * plan->experts + expert;
    if (ranks) *ranks = plan->replica_rank + le * plan->ranks;
    if (shares) *shares = plan->replica_share + le * plan->ranks;
    return plan->replica_count[le];
}

/* Rebuild the per-rank lists; the plan is logically const (a cache fill). */
static void plan_build_local(struct moe_plan_s *plan)
{
    int R = plan->ranks, E = plan->experts;
    for (int l = 0; l < plan->layers; l++) {
        int *count = plan->local_count + (size_t)l * R;
        int *offset = plan->local_offset + (size_t)l * R;
        int *slot = plan->local_slot + (size_t)l * R * E;
        int *list = plan->local_expert + (size_t)l * E * R;
        memset(count, 0, sizeof(int) * R);
        for (int e = 0; e < E; e++) {
            size_t le = (size_t)l * E + e;
            for (int i = 0; i < plan->replica_count[le]; i++) count[plan->replica_rank[le * R + i]]++;
        }
        for (int r = 0, acc = 0; r < R; r++) {
            offset[r] = acc;
            acc += count[r];
            count[r] = 0;
        }
        for (size_t i = 0; i < (size_t)R * E; i++) slot[i] = -1;
        for (int e = 0; e < E; e++) { /* ascending e gives ascending local lists */
            size_t le = (size_t)l * E + e;
            for (int i = 0; i < plan->replica_count[le]; i++) {
                int r = plan->replica_rank[le * R + i];
                slot[(size_t)r * E + e] = count[r];
                list[offset[r] + count[r]++] = e;
            }
        }
    }
    plan->local_valid = true;
}

int moe_plan_local_experts(const moe_plan_h plan, int layer, int rank, const int **experts)
{
    if (rank >= plan->ranks) { /* a rank the plan does not have (standby in an elastic run) */
        if (experts) *experts = NULL;
        return 0;
    }
    if (!plan->local_valid) plan_build_local(plan);
    size_t lr = (size_t)layer * plan->ranks + rank;
    if (experts) *experts = plan->local_expert + (size_t)layer * plan->experts * plan->ranks +
                            plan->local_offset[lr];
    return plan->local_count[lr];
}

int moe_plan_local_slot(const moe_plan_h plan, int layer, int rank, int expert)
{
    if (rank >= plan->ranks) return -1;
    if (!plan->local_valid) plan_build_local(plan);
    return plan->local_slot[((size_t)layer * plan->ranks + rank) * plan->experts + expert];
}

int64_t moe_plan_new_hosts(const moe_plan_h from, const moe_plan_h to)
{
    int64_t n = 0;
    for (int l = 0; l < to->layers; l++)
        for (int e = 0; e < to->experts; e++) {
            const int *rk, *ck;
            int nr = moe_plan_replicas(to, l, e, &rk, NULL);
            int nc = moe_plan_replicas(from, l, e, &ck, NULL);
            for (int i = 0; i < nr; i++) {
                bool hosted = false;
                for (int j = 0; j < nc; j++) hosted |= ck[j] == rk[i];
                n += !hosted;
            }
        }
    return n;
}

int moe_plan_pick_replica(const moe_plan_h plan, int layer, int expert, int64_t token)
{
    const int *ranks;
    const float *shares;
    int n = moe_plan_replicas(plan, layer, expert, &ranks, &shares);
    if (n == 1) return ranks[0];
    double u = moe_hash_to_unit(moe_hash(0x706c616eULL, (uint64_t)layer, (uint64_t)expert,
                                         (uint64_t)token, 0));
    double acc = 0;
    for (int i = 0; i < n - 1; i++) {
        acc += shares[i];
        if (u < acc) return ranks[i];
    }
    return ranks[n - 1];
}

/* ---------------------------------------------------------------- packing
 * Bytes: int32 magic, layers, experts, ranks, ranks_per_node, replicas in all; int32 replica count
 * per (layer, expert); then per replica, in (layer, expert) order, int32 rank and float32 share. Host
 * byte order: the bytes go between ranks of one job, not into files. */

#define PLAN_PACK_MAGIC 0x4d4f4550 /* "PEOM" */

moe_status_t moe_plan_pack(const moe_plan_h plan, void **out, size_t *bytes)
{
    const int L = moe_plan_layers(plan), E = moe_plan_experts(plan);
    int32_t total = 0;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) total += moe_plan_replicas(plan, l, e, NULL, NULL);
    const size_t n = 6 * sizeof(int32_t) + (size_t)L * E * sizeof(int32_t) + (size_t)total * 8;
    char *buf = malloc(n);
    if (!buf) {
        moe_error("plan: out of memory to pack %d layers x %d experts", L, E);
        return MOE_STATUS_NO_MEMORY;
    }
    int32_t head[6] = {PLAN_PACK_MAGIC, L, E, moe_plan_ranks(plan), moe_plan_ranks_per_node(plan), total};
    memcpy(buf, head, sizeof head);
    int32_t *counts = (int32_t *)(buf + sizeof head);
    char *rep = buf + sizeof head + (size_t)L * E * sizeof(int32_t);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            const int *rk;
            const float *sh;
            const int r = moe_plan_replicas(plan, l, e, &rk, &sh);
            counts[(size_t)l * E + e] = r;
            for (int i = 0; i < r; i++, rep += 8) {
                const int32_t rank = rk[i];
                memcpy(rep, &rank, 4);
                memcpy(rep + 4, &sh[i], 4);
            }
        }
    *out = buf;
    *bytes = n;
    return MOE_STATUS_OK;
}

moe_status_t moe_plan_unpack(const void *data, size_t bytes, const char *what, moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    int32_t head[6];
    moe_plan_h plan = NULL;
    if (bytes < sizeof head) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail, "%s: %zu bytes are no packed plan", what, bytes);
    memcpy(head, data, sizeof head);
    const int64_t L = head[1], E = head[2], total = head[5];
    if (head[0] != PLAN_PACK_MAGIC || L < 1 || L > MOE_MAX_LAYERS || E < 1 || E > MOE_MAX_EXPERTS || total < 0 ||
        bytes != sizeof head + (size_t)(L * E) * 4 + (size_t)total * 8)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail, "%s: %zu bytes are no packed plan", what, bytes);
    MOE_CHECK(moe_plan_create_empty((int)L, (int)E, head[3], head[4], &plan), fail);
    const char *counts = (const char *)data + sizeof head, *rep = counts + (size_t)(L * E) * 4;
    int64_t seen = 0;
    for (int64_t i = 0; i < L * E; i++) {
        int32_t r;
        memcpy(&r, counts + i * 4, 4);
        if (r < 0 || seen + r > total) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail_plan, "%s: replica counts do not add up", what);
        for (int32_t j = 0; j < r; j++, seen++, rep += 8) {
            int32_t rank;
            float share;
            memcpy(&rank, rep, 4);
            memcpy(&share, rep + 4, 4);
            MOE_CHECK(moe_plan_add_replica(plan, (int)(i / E), (int)(i % E), rank, share), fail_plan);
        }
    }
    if (seen != total) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail_plan, "%s: replica counts do not add up", what);
    MOE_CHECK(moe_plan_check(plan, what), fail_plan);
    *out = plan;
    return MOE_STATUS_OK;
fail_plan:
    moe_plan_destroy(plan);
fail:
    return status;
}
