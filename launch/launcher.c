/* launcher: rank, size and local rank (see launcher.h). This is the one place outside the config
 * loader that reads the environment, because the launcher speaks only through it. */
#include "launch/launcher.h"

#include <mpi.h>
#include <stdlib.h>

static int env_int(const char *name, int *out)
{
    const char *v = getenv(name);
    char *end = NULL;
    if (!v || !*v) return 0;
    long x = strtol(v, &end, 10);
    if (*end || x < 0) return 0;
    *out = (int)x;
    return 1;
}

int moe_launch_info(moe_launch_info_t *out)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &out->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &out->size);
    if (!env_int("SLURM_NODEID", &out->node_id)) out->node_id = -1;
    if (env_int("OMPI_COMM_WORLD_LOCAL_RANK", &out->local_rank) &&
        env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &out->local_size)) {
        out->local_source = "OMPI_COMM_WORLD_LOCAL_RANK";
        return 0;
    }
    if (env_int("SLURM_LOCALID", &out->local_rank) &&
        (env_int("SLURM_NTASKS_PER_NODE", &out->local_size) || env_int("SLURM_TASKS_PER_NODE", &out->local_size))) {
        out->local_source = "SLURM_LOCALID";
        return 0;
    }
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return -1;
    MPI_Comm_rank(node, &out->local_rank);
    MPI_Comm_size(node, &out->local_size);
    MPI_Comm_free(&node);
    out->local_source = "MPI_COMM_TYPE_SHARED";
    return 0;
}
