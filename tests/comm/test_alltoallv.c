/* test_alltoallv: the MPI transport moves every row to the right place. Run under mpirun at 1, 2
 * and 4 ranks. Rank s sends count(s, p) rows to peer p, some counts zero (and one rank sends
 * nothing at all); row i to p holds (s, p, i, checksum) so the receiver verifies where each row came
 * from, where it was meant to go, and its order. Three operations are in flight at once, with
 * different row sizes, as the pipeline does. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm/comm.h"

static int count(int s, int p, int size, int round)
{
    if (size > 1 && s == size - 1) return 0;           /* a rank that sends nothing */
    return (int)((s * 7 + p * 3 + round) % 5) * (round + 1); /* includes zeros */
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    moe_comm_h comm;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    moe_log_init(rank, MOE_LOG_WARN);
    moe_ctl_h world;
    CHECK_STATUS(moe_ctl_create(MPI_COMM_WORLD, NULL, &world), MOE_STATUS_OK);
    CHECK_STATUS(moe_comm_create_mpi(world, &comm), MOE_STATUS_OK);
    CHECK_EQ_INT(moe_comm_rank(comm), rank);
    CHECK_EQ_INT(moe_comm_size(comm), size);

    enum { ROUNDS = 3 };
    const int words[ROUNDS] = {4, 16, 9}; /* row sizes in int32 words */
    int *send_rows[ROUNDS], *recv_rows[ROUNDS];
    int32_t *send[ROUNDS], *recv[ROUNDS];
    moe_comm_op_h op[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        send_rows[r] = calloc(size, sizeof(int));
        recv_rows[r] = calloc(size, sizeof(int));
        int n_send = 0;
        for (int p = 0; p < size; p++) n_send += send_rows[r][p] = count(rank, p, size, r);
        int *ones = calloc(size, sizeof(int));
        for (int p = 0; p < size; p++) ones[p] = 1;
        CHECK_STATUS(moe_comm_exchange_ints(comm, send_rows[r], ones, recv_rows[r], ones), MOE_STATUS_OK);
        free(ones);
        int n_recv = 0;
        for (int p = 0; p < size; p++) {
            CHECK_EQ_INT(recv_rows[r][p], count(p, rank, size, r));
            n_recv += recv_rows[r][p];
        }
        send[r] = calloc((size_t)n_send * words[r] + 1, sizeof(int32_t));
        recv[r] = malloc(((size_t)n_recv * words[r] + 1) * sizeof(int32_t));
        memset(recv[r], 0xff, ((size_t)n_recv * words[r] + 1) * sizeof(int32_t)); /* poison */
        int32_t *row = send[r];
        for (int p = 0; p < size; p++)
            for (int i = 0; i < send_rows[r][p]; i++, row += words[r]) {
                row[0] = rank, row[1] = p, row[2] = i;
                for (int w = 3; w < words[r]; w++) row[w] = rank * 1000003 + p * 1009 + i * 31 + w;
            }
        CHECK_STATUS(moe_comm_alltoallv_start(comm, send[r], send_rows[r], recv[r], recv_rows[r],
                                              sizeof(int32_t) * words[r], &op[r]), MOE_STATUS_OK);
    }
    moe_comm_progress(comm);
    for (int r = ROUNDS - 1; r >= 0; r--) { /* complete out of order */
        bool done = false;
        CHECK_STATUS(moe_comm_op_test(op[r], &done), MOE_STATUS_OK);
        CHECK_STATUS(moe_comm_op_wait(op[r]), MOE_STATUS_OK);
        const int32_t *row = recv[r];
        for (int s = 0; s < size; s++)
            for (int i = 0; i < recv_rows[r][s]; i++, row += words[r]) {
                CHECK_EQ_INT(row[0], s);
                CHECK_EQ_INT(row[1], rank);
                CHECK_EQ_INT(row[2], i);
                for (int w = 3; w < words[r]; w++) CHECK_EQ_INT(row[w], s * 1000003 + rank * 1009 + i * 31 + w);
            }
        free(send[r]), free(recv[r]), free(send_rows[r]), free(recv_rows[r]);
    }
    moe_comm_destroy(comm);
    moe_ctl_destroy(world);
    int failures = moe_test_failures, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return failures ? 1 : 0;
    moe_test_failures = total;
    return moe_test_result("alltoallv");
}
