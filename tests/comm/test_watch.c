/* test_watch: the liveness rules of comm/watch.c at 3 ranks (run.timeout 1 s here).
 *   1. a rank busy without polling for 3 s: the others' wait fails after about 1 s (a silent rank),
 *      and the busy one's own wait, begun late, completes;
 *   2. a rank busy for 3 s that polls as it works: the others wait the 3 s and succeed (a long wait
 *      is not a hang);
 *   3. every rank waits for a message nobody sends: each wait fails after about 1 s (no progress
 *      anywhere: a deadlock), although every rank keeps answering;
 *   4. after a failure every wait fails at once; a NULL watch waits without a deadline;
 *   5. the waiting ranks use little CPU (the waits back off). */
#include <mpi.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "check.h"
#include "comm/comm.h"

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * ru.ru_stime.tv_usec;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* A watch of its own per case: a failed one stays failed. */
static moe_watch_h fresh(moe_watch_h *w)
{
    moe_watch_destroy(*w);
    CHECK_STATUS(moe_watch_create(MPI_COMM_WORLD, 1.0, w), MOE_STATUS_OK);
    return *w;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    moe_log_init(rank, MOE_LOG_ERROR);
    if (size != 3) {
        if (rank == 0) fprintf(stderr, "test_watch: run at 3 ranks\n");
        MPI_Finalize();
        return 2;
    }
    moe_watch_h w = NULL;

    /* 1. rank 2 silent for 3 s */
    fresh(&w);
    moe_watch_step(w, "case 1", 1, -1);
    MPI_Request r;
    if (rank == 2) sleep_s(3.0);
    double t0 = moe_now(), cpu0 = cpu_seconds();
    MPI_Ibarrier(MPI_COMM_WORLD, &r);
    moe_status_t s = moe_watch_wait(w, -1, NULL, "case 1's barrier", 1, &r);
    double took = moe_now() - t0, cpu = cpu_seconds() - cpu0;
    if (rank == 2) {
        CHECK_STATUS(s, MOE_STATUS_OK); /* the others had all arrived */
    } else {
        CHECK_STATUS(s, MOE_STATUS_TIMEOUT);
        CHECK(took > 0.9 && took < 2.0);
        CHECK(cpu < 0.2 * took); /* 5. backed off, not spinning */
        printf("rank %d: case 1: timed out after %.2f s using %.3f s of CPU\n", rank, took, cpu);
        /* 4. sticky: the next wait fails at once */
        MPI_Request r2;
        MPI_Ibarrier(MPI_COMM_WORLD, &r2);
        double t1 = moe_now();
        CHECK_STATUS(moe_watch_wait(w, -1, NULL, "after", 1, &r2), MOE_STATUS_TIMEOUT);
        CHECK(moe_now() - t1 < 0.1);
        MPI_Wait(&r, MPI_STATUS_IGNORE); /* rank 2 arrives: the barriers complete */
        MPI_Wait(&r2, MPI_STATUS_IGNORE);
    }
    if (rank == 2) { /* the second barrier of the others */
        MPI_Ibarrier(MPI_COMM_WORLD, &r);
        MPI_Wait(&r, MPI_STATUS_IGNORE);
    }

    /* 2. rank 0 busy for 3 s, polling every 10 ms */
    fresh(&w);
    moe_watch_step(w, "case 2", 2, -1);
    if (rank == 0)
        for (double t = moe_now(); moe_now() - t < 3.0;) {
            sleep_s(0.01);
            moe_watch_poll(w);
        }
    t0 = moe_now();
    MPI_Ibarrier(MPI_COMM_WORLD, &r);
    s = moe_watch_wait(w, -1, NULL, "case 2's barrier", 1, &r);
    took = moe_now() - t0;
    CHECK_STATUS(s, MOE_STATUS_OK);
    if (rank != 0) {
        CHECK(took > 2.5);
        printf("rank %d: case 2: waited %.2f s for a rank that polls\n", rank, took);
    }

    /* 3. a deadlock: each rank waits for a message from the next, which nobody sends */
    fresh(&w);
    moe_watch_step(w, "case 3", 3, -1);
    int box = 0;
    MPI_Irecv(&box, 1, MPI_INT, (rank + 1) % size, 99, MPI_COMM_WORLD, &r);
    t0 = moe_now();
    s = moe_watch_wait(w, -1, NULL, "case 3's receive", 1, &r);
    took = moe_now() - t0;
    CHECK_STATUS(s, MOE_STATUS_TIMEOUT);
    CHECK(took > 0.9 && took < 2.5);
    printf("rank %d: case 3: a deadlock found after %.2f s\n", rank, took);
    MPI_Cancel(&r);
    MPI_Wait(&r, MPI_STATUS_IGNORE);

    /* 4. no watch: no deadline */
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) sleep_s(1.5);
    MPI_Ibarrier(MPI_COMM_WORLD, &r);
    CHECK_STATUS(moe_watch_wait(NULL, -1, NULL, "no watch", 1, &r), MOE_STATUS_OK);

    moe_watch_destroy(w);
    int failures = moe_test_failures, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("test_watch: %d checks failed\n", total);
    MPI_Finalize();
    return total ? 1 : 0;
}
