/* launcher: what moerun learns from the process launcher (mpirun, srun) about where it runs. */
#ifndef MOE_LAUNCH_LAUNCHER_H
#define MOE_LAUNCH_LAUNCHER_H

typedef struct {
    int rank, size; /* in MPI_COMM_WORLD */
} moe_launch_info_t;

/* After MPI_Init: rank and size from MPI. */
int moe_launch_info(moe_launch_info_t *out);

#endif
