/* launcher: rank, size and the launcher's node number (see launcher.h). This is the one place
 * outside the config loader that reads the environment, because the launcher speaks only through it. */
#include "launch/launcher.h"

#include <mpi.h>
#include <stdlib.h>

static int env_int(const char *name, int *out)
{
    const char *v = getenv(name);
    char *end = NULL;
    if (!v || !*v) return 0;
    long x = strtol(v, &end, 10);
    if (*end || x < 0 || x > 1 << 30) return 0;
    *out = (int)x;
    return 1;
}

int moe_launch_info(moe_launch_info_t *out)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &out->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &out->size);
    if (!env_int("SLURM_NODEID", &out->node_id)) out->node_id = -1;
    return 0;
}
