/* nodes: which node each rank runs on, and its index among that node's ranks (see comm.h,
 * moe_comm_nodes_create). Hierarchical dispatch (runtime/hier.c) sends a token once per remote node,
 * to the rank there with the sender's own local index (its rail), so it needs the whole map on every
 * rank; the copies the metrics count as intra- or inter-node use it too.
 *
 * Sources, first that answers: simulated nodes of run.ranks_per_node consecutive ranks (tests, one
 * host); the launcher's node number (Slurm's SLURM_NODEID, read by launch/launcher.c and passed in);
 * MPI's shared-memory split, which is the host Open MPI's launcher started the rank on (namespaces on
 * one machine with a hostfile count as different hosts, as they should); the processor name. Nodes
 * are numbered in the order of their lowest rank, local indices in rank order. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm-impl.h"

void moe_comm_nodes_destroy(moe_comm_nodes_t *n)
{
    if (!n) return;
    free(n->node);
    free(n->local);
    free(n->rank_at);
    free(n);
}

/* Collective over comm: every rank's value of `mine`, under the watch. */
static moe_status_t allgather_int(MPI_Comm comm, moe_watch_h watch, int mine, int *all)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Iallgather(&mine, 1, MPI_INT, all, 1, MPI_INT, comm, &request), fail);
    MOE_CHECK(moe_watch_wait(watch, -1, NULL, "the node map", 1, &request), fail);
fail:
    return status;
}

/* This rank's node key (equal keys: one node) from MPI: the lowest rank of its shared-memory
 * group, or, where MPI cannot split so, the lowest rank with the same processor name. */
static moe_status_t node_key_mpi(MPI_Comm comm, moe_watch_h watch, int rank, int size, int *key, const char **source)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm shared = MPI_COMM_NULL;
    char *names = NULL;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &shared) == MPI_SUCCESS &&
        shared != MPI_COMM_NULL) {
        MPI_Request request;
        MOE_CHECK_MPI(MPI_Iallreduce(&rank, key, 1, MPI_INT, MPI_MIN, shared, &request), fail);
        MOE_CHECK(moe_watch_wait(watch, -1, NULL, "the node map", 1, &request), fail);
        *source = "MPI_COMM_TYPE_SHARED";
        goto fail; /* done */
    }
    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MOE_CHECK_MPI(MPI_Get_processor_name(name, &len), fail);
    names = calloc((size_t)size, MPI_MAX_PROCESSOR_NAME);
    MOE_CHECK_ALLOC(names, fail);
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Iallgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                                 comm, &request), fail);
    MOE_CHECK(moe_watch_wait(watch, -1, NULL, "the node map", 1, &request), fail);
    *key = rank;
    for (int r = 0; r < size; r++)
        if (!strncmp(names + (size_t)r * MPI_MAX_PROCESSOR_NAME, name, MPI_MAX_PROCESSOR_NAME)) {
            *key = r;
            break;
        }
    *source = "the processor name";
fail:
    free(names);
    if (shared != MPI_COMM_NULL) MPI_Comm_free(&shared);
    return status;
}

moe_status_t moe_comm_nodes_create(const moe_ctl_h ctl, int simulate, int node_hint, moe_comm_nodes_t **out)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm comm = moe_ctl_mpi(ctl);
    moe_watch_h watch = moe_ctl_watch(ctl);
    int rank, size;
    MOE_CHECK_MPI(MPI_Comm_rank(comm, &rank), fail);
    MOE_CHECK_MPI(MPI_Comm_size(comm, &size), fail);
    moe_comm_nodes_t *n = calloc(1, sizeof *n);
    MOE_CHECK_ALLOC(n, fail);
    n->ranks = size;
    n->node = calloc((size_t)size, sizeof(int));
    n->local = calloc((size_t)size, sizeof(int));
    int *key = calloc((size_t)size, sizeof(int)), *count = calloc((size_t)size, sizeof(int));
    if (!n->node || !n->local || !key || !count) {
        free(key), free(count);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_free, "node map: out of memory for %d ranks", size);
    }
    if (simulate > 0) { /* the same on every rank: no communication */
        for (int r = 0; r < size; r++) key[r] = r / simulate;
        n->source = "run.ranks_per_node";
    } else {
        status = allgather_int(comm, watch, node_hint, key);
        bool hinted = status == MOE_STATUS_OK;
        for (int r = 0; hinted && r < size; r++) hinted = key[r] >= 0;
        if (status == MOE_STATUS_OK && hinted) {
            n->source = "SLURM_NODEID";
        } else if (status == MOE_STATUS_OK) {
            int mine = rank;
            status = node_key_mpi(comm, watch, rank, size, &mine, &n->source);
            if (status == MOE_STATUS_OK) status = allgather_int(comm, watch, mine, key);
        }
        if (status != MOE_STATUS_OK) {
            free(key), free(count);
            goto fail_free;
        }
    }
    /* nodes numbered by their lowest rank; local index in rank order */
    int nodes = 0;
    for (int r = 0; r < size; r++) {
        int q = 0;
        while (q < r && key[q] != key[r]) q++;
        n->node[r] = q < r ? n->node[q] : nodes++;
        n->local[r] = count[n->node[r]]++;
    }
    n->nodes = nodes;
    n->per_node = count[0];
    for (int i = 1; i < nodes; i++)
        if (count[i] != n->per_node) n->per_node = 0;
    free(key), free(count);
    if (n->per_node > 0) {
        n->rank_at = malloc(sizeof(int) * (size_t)size);
        MOE_CHECK_ALLOC(n->rank_at, fail_free);
        for (int r = 0; r < size; r++) n->rank_at[n->node[r] * n->per_node + n->local[r]] = r;
    }
    *out = n;
    return MOE_STATUS_OK;
fail_free:
    moe_comm_nodes_destroy(n);
fail:
    return status;
}
