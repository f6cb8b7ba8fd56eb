/* launcher: rank and size (see launcher.h). */
#include "launch/launcher.h"

#include <mpi.h>

int moe_launch_info(moe_launch_info_t *out)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &out->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &out->size);
    return 0;
}
