/* launcher: what moerun learns from the process launcher (mpirun, srun) about where it runs. */
#ifndef MOE_LAUNCH_LAUNCHER_H
#define MOE_LAUNCH_LAUNCHER_H

typedef struct {
    int rank, size;          /* in MPI_COMM_WORLD */
    int local_rank;          /* among the ranks of this node: picks the GPU and the cores */
    int local_size;
    int node_id;             /* the launcher's node number (Slurm's SLURM_NODEID), or -1 */
    const char *local_source; /* where local_rank came from: OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID
                                 or an MPI shared-memory split */
} moe_launch_info_t;

/* After MPI_Init: rank and size from MPI; the local rank from Open MPI's or Slurm's variables when
 * the launcher sets them, else from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED); the node number
 * where the launcher gives one (under srun). Which ranks share a node is decided from these by
 * moe_comm_nodes_create (comm.h). */
int moe_launch_info(moe_launch_info_t *out);

#endif
