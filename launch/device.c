/* device: which GPU a rank drives and the cores it runs on, chosen where the launcher's knowledge is
 * (see launcher.h): the rank's place among the ranks of its node (an MPI shared-memory split), modulo
 * the node's GPUs; with a GPU per rank, the process bound to the cores near its GPU (hwloc). Ranks
 * that share a GPU (tests over the MPI transport) keep the launcher's binding. */
#include "launch/launcher.h"

#include <mpi.h>

#include "moe_build_config.h"
#include "runtime/runtime.h"

#if MOE_HAVE_CUDA
#include <hwloc.h>
#include <hwloc/cudart.h>
#endif

moe_status_t moe_launch_node(int *local_rank, int *local_size)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm node = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), fail);
    MPI_Comm_rank(node, local_rank);
    MPI_Comm_size(node, local_size);
    MPI_Comm_free(&node);
fail:
    return status;
}

moe_status_t moe_launch_device(int *device)
{
    moe_status_t status = MOE_STATUS_OK;
#if MOE_HAVE_CUDA
    int local_rank = 0, local_size = 1;
    MOE_CHECK(moe_launch_node(&local_rank, &local_size), fail);
    const int count = moe_cuda_device_count();
    if (count < 1) MOE_FAIL(MOE_STATUS_CUDA_ERROR, fail, "no CUDA device on this node");
    *device = local_rank % count;
    /* One rank per GPU: bind it to the cores near its GPU. A failed binding costs speed, not
     * correctness: warn and go on. */
    if (local_size <= count) {
        hwloc_topology_t topo;
        if (hwloc_topology_init(&topo) == 0) {
            hwloc_cpuset_t set = hwloc_bitmap_alloc();
            if (hwloc_topology_load(topo) != 0 || !set || hwloc_cudart_get_device_cpuset(topo, *device, set) != 0 ||
                hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0)
                moe_warn("could not bind to the cores near GPU %d", *device);
            hwloc_bitmap_free(set);
            hwloc_topology_destroy(topo);
        }
    }
    moe_debug("local rank %d of %d on GPU %d of %d", local_rank, local_size, *device, count);
fail:
#else
    *device = -1;
    moe_error("run.backend cuda: this build has no CUDA");
    status = MOE_STATUS_UNSUPPORTED;
#endif
    return status;
}
