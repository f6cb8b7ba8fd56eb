/* launcher: what moerun learns from the process launcher (mpirun, srun) about where it runs. */
#ifndef MOE_LAUNCH_LAUNCHER_H
#define MOE_LAUNCH_LAUNCHER_H

#include "common/common.h"

typedef struct {
    int rank, size; /* in MPI_COMM_WORLD */
    int node_id;    /* the launcher's node number (Slurm's SLURM_NODEID), or -1 */
} moe_launch_info_t;

/* After MPI_Init: rank and size from MPI; the node number where the launcher gives one (under srun).
 * Which ranks share a node is decided from it, or else from MPI, by moe_comm_nodes_create (comm.h);
 * which GPU a rank drives, by moe_launch_device below. */
int moe_launch_info(moe_launch_info_t *out);

/* device.c. Collective over the world: this rank's place among the ranks of its node. */
moe_status_t moe_launch_node(int *local_rank, int *local_size);
/* Collective over the world, for cuda runs: this rank's GPU (its place on the node modulo the node's
 * GPUs) and, with a GPU per rank, the process bound to the cores near it. The engine makes it
 * current (moe_engine_options_t.device). */
moe_status_t moe_launch_device(int *device);

#endif
