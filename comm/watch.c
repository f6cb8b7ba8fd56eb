/* watch: no rank waits forever for another (see comm.h, "liveness").
 *
 * Every blocking wait of the runtime polls its requests here, backing off as it goes (a short spin,
 * then sleeps of a 32nd of the time waited so far, at most WATCH_MAX_SLEEP), so a rank waiting for a
 * slow or stopped peer costs next to no CPU, and a wait ends at most about 3% late (the GPU path's
 * host waits for a whole batch on the device are timed this way). Its deadline is about
 * silence, not length: a wait longer than the beat interval sends small "ask" messages, on a
 * communicator of the watch's own, to the ranks it waits on, and every rank answers asks from its
 * own waits and from moe_watch_poll, which compute loops call between pieces of work. Every message
 * carries the sender's step and a progress counter (bumped by each completed wait and each poll).
 * A wait fails with MOE_STATUS_TIMEOUT when
 *   - a rank it waits on has not been heard from for `timeout` seconds (stopped, or in a call that
 *     never polls for that long), the message naming the rank and the step it was last seen in; or
 *   - it has lasted `timeout` seconds and no rank heard from has made progress meanwhile: every
 *     one waits for another (a deadlock), the message naming where each one is.
 * So a long batch is not a hang as long as its ranks keep calling into the runtime, and a healthy
 * run whose waits are shorter than the interval sends no message at all. Each rank keeps at most
 * one message in flight per peer, so a stopped peer's queue does not grow.
 * After one wait has failed every later one fails at once without a message: the caller is ending
 * the job, and its cleanup must not wait a second deadline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"

#define WATCH_TAG 7
#define WATCH_SPIN 5e-4        /* seconds of plain polling before the first sleep */
#define WATCH_MAX_SLEEP 1e-3
#define WATCH_POLL_EVERY 1e-3  /* moe_watch_poll looks for asks at most this often */

typedef enum { BEAT_ASK = 1, BEAT_ANSWER = 2 } beat_kind_t;

/* What travels: the sender's state. */
typedef struct {
    int32_t kind;
    uint32_t progress;
    int32_t batch, layer;
    char phase[24];
    char what[40]; /* the wait the sender is in, or "" */
} beat_t;

struct moe_watch_s {
    MPI_Comm comm;
    int rank, size;
    double timeout, interval;
    bool expired;
    /* this rank */
    const char *phase, *wait_what;
    int batch, layer;
    uint32_t progress;
    double last_poll;
    /* per peer */
    double *heard;        /* [P] when last heard from, 0 = never */
    double *moved;        /* [P] when its progress counter last changed */
    double *asked_until;  /* [P] answers due to p (it waits) until then */
    double *answered;     /* [P] when we last sent to p */
    beat_t *last;         /* [P] its last message */
    beat_t *send_buf;     /* [P] one message in flight per peer */
    MPI_Request *send_req;
};

static double clamp(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

moe_status_t moe_watch_create(MPI_Comm comm, double timeout, moe_watch_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_watch_s *w = calloc(1, sizeof *w);
    MOE_CHECK_ALLOC(w, fail);
    w->comm = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(comm, &w->comm), fail_free);
    MPI_Comm_rank(w->comm, &w->rank);
    MPI_Comm_size(w->comm, &w->size);
    const size_t P = (size_t)w->size;
    w->heard = calloc(P, sizeof(double));
    w->moved = calloc(P, sizeof(double));
    w->asked_until = calloc(P, sizeof(double));
    w->answered = calloc(P, sizeof(double));
    w->last = calloc(P, sizeof(beat_t));
    w->send_buf = calloc(P, sizeof(beat_t));
    w->send_req = malloc(P * sizeof(MPI_Request));
    if (!w->heard || !w->moved || !w->asked_until || !w->answered || !w->last || !w->send_buf ||
        !w->send_req)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_free, "watch: out of memory for %d ranks", w->size);
    for (size_t p = 0; p < P; p++) w->send_req[p] = MPI_REQUEST_NULL;
    w->phase = "start";
    w->batch = w->layer = -1;
    moe_watch_set_timeout(w, timeout);
    *out = w;
    return MOE_STATUS_OK;
fail_free:
    moe_watch_destroy(w);
fail:
    return status;
}

void moe_watch_set_timeout(moe_watch_h w, double timeout)
{
    if (!w) return;
    w->timeout = timeout > 0 ? timeout : 0;
    w->interval = clamp(w->timeout / 8, 0.05, 2.0);
}

double moe_watch_timeout(const moe_watch_h w) { return w ? w->timeout : 0; }
MPI_Comm moe_watch_comm(const moe_watch_h w) { return w->comm; }

/* Take what peers sent. */
static void watch_drain(moe_watch_h w, double now)
{
    for (int i = 0; i < 4 * w->size; i++) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, WATCH_TAG, w->comm, &flag, &st) != MPI_SUCCESS || !flag) return;
        beat_t b;
        if (MPI_Recv(&b, (int)sizeof b, MPI_BYTE, st.MPI_SOURCE, WATCH_TAG, w->comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return;
        const int p = st.MPI_SOURCE;
        b.phase[sizeof b.phase - 1] = b.what[sizeof b.what - 1] = '\0';
        if (w->heard[p] == 0 || b.progress != w->last[p].progress) w->moved[p] = now;
        w->heard[p] = now;
        w->last[p] = b;
        if (b.kind == BEAT_ASK) w->asked_until[p] = now + 3 * w->interval;
    }
}

/* Send our state to p unless the previous message to p is still in flight. */
static void watch_send(moe_watch_h w, int p, beat_kind_t kind, double now)
{
    if (p == w->rank) return;
    if (w->send_req[p] != MPI_REQUEST_NULL) {
        int flag = 0;
        MPI_Test(&w->send_req[p], &flag, MPI_STATUS_IGNORE);
        if (!flag) return;
    }
    beat_t *b = &w->send_buf[p];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->progress = w->progress;
    b->batch = w->batch;
    b->layer = w->layer;
    snprintf(b->phase, sizeof b->phase, "%s", w->phase);
    snprintf(b->what, sizeof b->what, "%s", w->wait_what ? w->wait_what : "");
    if (MPI_Isend(b, (int)sizeof *b, MPI_BYTE, p, WATCH_TAG, w->comm, &w->send_req[p]) == MPI_SUCCESS)
        w->answered[p] = now;
}

/* Answer the ranks that wait and asked. */
static void watch_answer(moe_watch_h w, double now)
{
    for (int p = 0; p < w->size; p++)
        if (w->asked_until[p] > now && now - w->answered[p] >= w->interval / 2)
            watch_send(w, p, BEAT_ANSWER, now);
}

void moe_watch_poll(moe_watch_h w)
{
    if (!w) return;
    w->progress++;
    double now = moe_now();
    if (now - w->last_poll < WATCH_POLL_EVERY) return;
    w->last_poll = now;
    watch_drain(w, now);
    watch_answer(w, now);
}

void moe_watch_step(moe_watch_h w, const char *phase, int batch, int layer)
{
    if (!w) return;
    w->phase = phase;
    w->batch = batch;
    w->layer = layer;
}

/* "waiting in WHAT (PHASE, batch B, layer L)", or "PHASE, batch B, layer L" outside a wait. */
static void describe(char *buf, size_t size, const char *what, const char *phase, int batch, int layer)
{
    char where[96];
    int n = snprintf(where, sizeof where, "%s", phase);
    if (batch >= 0 && n >= 0 && (size_t)n < sizeof where)
        n += snprintf(where + n, sizeof where - (size_t)n, ", batch %d", batch);
    if (layer >= 0 && n >= 0 && (size_t)n < sizeof where)
        snprintf(where + n, sizeof where - (size_t)n, ", layer %d", layer);
    if (what && what[0])
        snprintf(buf, size, "waiting in %s (%s)", what, where);
    else
        snprintf(buf, size, "%s", where);
}

static int peer_at(int n_peers, const int *peers, int i) { return peers ? peers[i] : i; }

/* The verdict on a wait that has lasted past the timeout: true (and the message logged) when it
 * must fail. */
static bool watch_verdict(moe_watch_h w, int n_peers, const int *peers, const char *what, double t0,
                          double now)
{
    char mine[192], theirs[192];
    describe(mine, sizeof mine, what, w->phase, w->batch, w->layer);
    for (int i = 0; i < n_peers; i++) {
        int p = peer_at(n_peers, peers, i);
        if (p == w->rank || p < 0 || p >= w->size) continue;
        double since = w->heard[p] > t0 ? w->heard[p] : t0;
        if (now - since <= w->timeout) continue;
        if (w->heard[p] > 0) {
            const beat_t *b = &w->last[p];
            describe(theirs, sizeof theirs, b->what, b->phase, b->batch, b->layer);
            moe_error("timeout: rank %d has not answered for %.1f s (run.timeout %g s) while this rank "
                      "was %s; it was last heard %.1f s ago, %s; ending the job", p, now - since,
                      w->timeout, mine, now - w->heard[p], theirs);
        } else {
            moe_error("timeout: rank %d has not answered for %.1f s (run.timeout %g s) while this rank "
                      "was %s; ending the job", p, now - since, w->timeout, mine);
        }
        return true;
    }
    if (now - t0 <= w->timeout) return false;
    for (int p = 0; p < w->size; p++)
        if (p != w->rank && w->heard[p] > 0 && now - (w->moved[p] > t0 ? w->moved[p] : t0) <= w->timeout)
            return false; /* someone is getting on: this wait may yet end */
    char all[1024];
    size_t used = 0;
    all[0] = '\0';
    for (int p = 0; p < w->size && used < sizeof all; p++) {
        if (p == w->rank || w->heard[p] == 0) continue;
        const beat_t *b = &w->last[p];
        describe(theirs, sizeof theirs, b->what, b->phase, b->batch, b->layer);
        int n = snprintf(all + used, sizeof all - used, "; rank %d %s", p, theirs);
        if (n > 0) used += (size_t)n;
    }
    moe_error("timeout: no rank has made progress for %g s (run.timeout) while this rank was %s: "
              "every rank waits for another%s; ending the job", w->timeout, mine, all);
    return true;
}

static void backoff(double waited)
{
    if (waited < WATCH_SPIN) return;
    double s = clamp(waited / 32, 2e-5, WATCH_MAX_SLEEP);
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(s * 1e9)};
    nanosleep(&ts, NULL);
}

moe_status_t moe_watch_until(moe_watch_h w, int n_peers, const int *peers, const char *what,
                             moe_watch_test_fn test, void *arg)
{
    if (w && w->expired) return MOE_STATUS_TIMEOUT;
    if (w && n_peers < 0) n_peers = w->size, peers = NULL;
    const double t0 = moe_now();
    double last_ask = t0, last_look = 0;
    if (w) w->wait_what = what;
    moe_status_t status = MOE_STATUS_OK;
    for (;;) {
        bool done = false;
        status = test(arg, &done);
        if (status != MOE_STATUS_OK || done) break;
        const double now = moe_now(), waited = now - t0;
        if (w && w->timeout > 0 && now - last_look >= WATCH_POLL_EVERY) {
            last_look = now;
            watch_drain(w, now);
            if (waited >= w->interval && now - last_ask >= w->interval) {
                for (int i = 0; i < n_peers; i++) watch_send(w, peer_at(n_peers, peers, i), BEAT_ASK, now);
                last_ask = now;
            }
            watch_answer(w, now);
            if (waited > w->timeout && watch_verdict(w, n_peers, peers, what, t0, now)) {
                w->expired = true;
                status = MOE_STATUS_TIMEOUT;
                break;
            }
        }
        backoff(waited);
    }
    if (w) {
        double waited = moe_now() - t0;
        if (status == MOE_STATUS_OK && w->timeout > 0 && waited > w->timeout) {
            char mine[192];
            describe(mine, sizeof mine, what, w->phase, w->batch, w->layer);
            moe_info("a wait of %.2f s, longer than run.timeout (%g s), while %s: the ranks waited on "
                     "kept answering", waited, w->timeout, mine);
        }
        w->wait_what = NULL;
        w->progress++;
    }
    return status;
}

typedef struct {
    int n;
    MPI_Request *requests;
} requests_t;

static moe_status_t test_requests(void *arg, bool *done)
{
    requests_t *r = arg;
    int flag = 0;
    int rc = MPI_Testall(r->n, r->requests, &flag, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        moe_error("MPI_Testall failed: %s", msg);
        return MOE_STATUS_MPI_ERROR;
    }
    *done = flag != 0;
    return MOE_STATUS_OK;
}

moe_status_t moe_watch_wait(moe_watch_h w, int n_peers, const int *peers, const char *what, int n,
                            MPI_Request *requests)
{
    requests_t r = {n, requests};
    return moe_watch_until(w, n_peers, peers, what, test_requests, &r);
}

moe_status_t moe_watch_barrier(moe_watch_h w, MPI_Comm comm, int n_peers, const int *peers,
                               const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Ibarrier(comm, &request), fail);
    status = moe_watch_wait(w, n_peers, peers, what, 1, &request);
fail:
    return status;
}

void moe_watch_destroy(moe_watch_h w)
{
    if (!w) return;
    /* Messages in flight: give them a moment to leave; a peer that takes none (stopped) keeps its
     * buffer, which is then not freed under MPI. */
    bool pending = false;
    if (w->send_req) {
        double t0 = moe_now();
        do {
            pending = false;
            for (int p = 0; p < w->size; p++) {
                int flag = 1;
                if (w->send_req[p] != MPI_REQUEST_NULL) MPI_Test(&w->send_req[p], &flag, MPI_STATUS_IGNORE);
                pending |= !flag;
            }
            if (pending) {
                watch_drain(w, moe_now());
                backoff(moe_now() - t0);
            }
        } while (pending && moe_now() - t0 < 0.5);
        for (int p = 0; pending && p < w->size; p++)
            if (w->send_req[p] != MPI_REQUEST_NULL) MPI_Request_free(&w->send_req[p]);
    }
    if (w->comm != MPI_COMM_NULL) {
        watch_drain(w, moe_now());
        MPI_Comm_free(&w->comm);
    }
    free(w->heard);
    free(w->moved);
    free(w->asked_until);
    free(w->answered);
    free(w->last);
    if (!pending) free(w->send_buf);
    free(w->send_req);
    free(w);
}
