/* Back-pressure: the server stops reading (/pause?ms=N) so that the
 * client's writes back up past the kernel buffers.
 *  - 64 MiB queued in 1 MiB messages: every send returns at once, the
 *    buffered amount grows, and after the pause everything is echoed intact
 *    and in order and the buffered amount drains to 0;
 *  - with pj_websock_set_max_buffered(8 MiB) a send eventually returns
 *    PJ_EBUSY and queues nothing; smaller messages that still fit are
 *    accepted; the accepted ones all arrive afterwards;
 *  - with a 1000-byte mark and a peer that reads, a tight burst of small
 *    sends is all accepted: coalescing never holds the sender at the mark;
 *  - with the sender and the loop thread pinned to one CPU, a burst of
 *    50,000 small sends is all accepted and echoed intact and in order;
 *  - without pj_websock_set_max_buffered the mark is 64 MiB: 1 MiB sends
 *    are refused once more than 63 MiB are queued, never before, and the
 *    accepted ones all arrive afterwards;
 *  - pj_websock_wait_buffered: its arguments and states; on a paused peer
 *    it times out, returns once the peer reads again (not before) with the
 *    queue down to the level, and a sender that waits on each PJ_EBUSY
 *    gets every message through in order; from a callback it refuses to
 *    wait; destroy from another thread and the close timeout end the
 *    wait. */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MSG_SIZE MiB

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Message i: 4-byte sequence number + pattern with offset i. */
static void make_msg(unsigned char *buf, size_t len, uint32_t i)
{
    put_u32(buf, i);
    pat_fill(buf + 4, len - 4, i);
}

/* Checks that messages [0, n) are the echoes of make_msg(i) of length len[i]. */
static void check_echoes(t_case *tc, tctx *c, size_t n, const size_t *lens)
{
    for (size_t i = 0; i < n; ++i) {
        rx_msg m;
        if (!tctx_msg(c, i, &m)) {
            t_fail_at(tc, __FILE__, __LINE__, "echo %zu missing", i);
            return;
        }
        if (m.opcode != PJ_WEBSOCK_OP_BIN || m.len != lens[i]) {
            t_fail_at(tc, __FILE__, __LINE__, "echo %zu: op %d len %zu, want BIN %zu", i, m.opcode, m.len, lens[i]);
            return;
        }
        if (get_u32(m.data) != i) {
            t_fail_at(tc, __FILE__, __LINE__, "echo %zu carries sequence %u (order)", i, get_u32(m.data));
            return;
        }
        long bad = pat_check(m.data + 4, m.len - 4, i);
        if (bad >= 0) {
            t_fail_at(tc, __FILE__, __LINE__, "echo %zu differs at %ld", i, bad);
            return;
        }
    }
}

static int wait_drained(pj_websock *ws, int ms)
{
    double t0 = now_ms();
    while (pj_websock_get_buffered_amount(ws) != 0) {
        if (now_ms() - t0 > ms)
            return 0;
        sleep_ms(10);
    }
    return 1;
}

/* ---- 64 MiB on a paused peer ---------------------------------------- */

enum { N_BIG = 64 };

/* Opens c to the echo server's /pause?ms=pause_ms (it stops reading for
 * that long after the handshake), with room for 1 MiB echoes; *t_open is
 * when it opened. 0 when the case failed or was skipped. */
static int open_paused(t_case *tc, tctx *c, int pause_ms, double *t_open)
{
    char url[512];
    char path[64];
    pj_websock_param p;
    snprintf(path, sizeof(path), "/pause?ms=%d", pause_ms);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", path))
        return 0;
    tctx_param(c, &p);
    p.max_rx_msg_size = 2 * MiB;
    T_REQUIRE(tc, tctx_open(tc, c, &p, url, NULL), "open failed");
    *t_open = now_ms();
    return 1;
out:
    return 0;
}

static struct {
    int ran;
    double max_send_ms;
    int max_send_idx;
} g_big;

static void case_queue_64mib(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    unsigned char *buf = NULL;
    size_t lens[N_BIG];
    int pause_ms = under_valgrind() ? 15000 : 3000;
    double t_open = 0;
    tctx_init(&c);
    if (!open_paused(tc, &c, pause_ms, &t_open))
        goto out;
    pj_status_t rc = pj_websock_set_max_buffered(c.ws, 256 * MiB);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered(256 MiB): %s", st(rc));
    buf = malloc(MSG_SIZE);
    T_REQUIRE(tc, buf, "malloc");

    size_t buffered_first = 0, buffered_max = 0;
    g_big.max_send_ms = 0;
    for (uint32_t i = 0; i < N_BIG; ++i) {
        lens[i] = MSG_SIZE;
        make_msg(buf, MSG_SIZE, i);
        double t0 = now_ms();
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MSG_SIZE);
        double dt = now_ms() - t0;
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send #%u: %s", i, st(rc));
        if (dt > g_big.max_send_ms) {
            g_big.max_send_ms = dt;
            g_big.max_send_idx = (int)i;
        }
        size_t b = pj_websock_get_buffered_amount(c.ws);
        if (i == 0)
            buffered_first = b;
        if (b > buffered_max)
            buffered_max = b;
    }
    double t_queued = now_ms();
    size_t buffered_end = pj_websock_get_buffered_amount(c.ws);
    printf("# queued %d MiB in %.0f ms; buffered: after first %zu, at end %zu, max %zu; slowest send #%d %.2f ms\n",
           N_BIG, t_queued - t_open, buffered_first, buffered_end, buffered_max, g_big.max_send_idx,
           g_big.max_send_ms);
    g_big.ran = 1;
    if (t_queued - t_open < pause_ms - 200) {
        /* The peer is still paused: the kernel can hold only a few MiB. */
        T_CHECK(tc, buffered_end > 32 * MiB, "buffered amount %zu after queueing 64 MiB to a paused peer",
                buffered_end);
        T_CHECK(tc, buffered_end > buffered_first, "buffered amount did not grow (%zu -> %zu)", buffered_first,
                buffered_end);
    }
    T_CHECK(tc, buffered_max <= (size_t)N_BIG * (MSG_SIZE + 14), "buffered amount %zu exceeds what was sent",
            buffered_max);

    T_REQUIRE(tc, tctx_wait_rx(&c, N_BIG, tmo(60000) + pause_ms), "only %zu of %d echoes (state %s, close %u)",
              c.n_rx, N_BIG, state_name(pj_websock_get_state(c.ws)), c.close_code);
    T_CHECK(tc, c.n_close == 0, "on_close(%u) during the transfer", c.close_code);
    check_echoes(tc, &c, N_BIG, lens);
    T_CHECK(tc, wait_drained(c.ws, tmo(5000)), "buffered amount stays %zu after all echoes",
            pj_websock_get_buffered_amount(c.ws));
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    free(buf);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_sends_fast(t_case *tc, void *arg)
{
    (void)arg;
    if (skip_timing_under_valgrind(tc))
        return;
    T_REQUIRE(tc, g_big.ran, "the 64 MiB scenario did not run");
    T_CHECK(tc, g_big.max_send_ms < 50.0, "send #%d of 1 MiB took %.1f ms while the peer was paused",
            g_big.max_send_idx, g_big.max_send_ms);
out:;
}

/* ---- high-water mark ------------------------------------------------ */

#define HWM (8 * MiB)
enum { MAX_TRIES = 200 };
/* a 1 MiB binary frame on the wire: 2-byte header, 64-bit length, mask */
#define FRAME_LEN (MSG_SIZE + 2 + 8 + 4)

/* What sending 1 MiB messages to a paused peer until a send fails gave. */
typedef struct fill_result {
    uint32_t n_ok;       /* messages accepted */
    pj_status_t rc;      /* the first failure (PJ_SUCCESS if max_tries ran out) */
    size_t before;       /* buffered amount just before the refused send */
    size_t after;        /* ... and just after it */
    size_t max_accepted; /* largest buffered amount after an accepted send */
} fill_result;

static fill_result fill_until_refused(pj_websock *ws, unsigned char *buf, size_t *lens, uint32_t max_tries)
{
    fill_result r = {0, PJ_SUCCESS, 0, 0, 0};
    while (r.n_ok < max_tries) {
        make_msg(buf, MSG_SIZE, r.n_ok);
        r.before = pj_websock_get_buffered_amount(ws);
        r.rc = pj_websock_send(ws, PJ_WEBSOCK_OP_BIN, buf, MSG_SIZE);
        r.after = pj_websock_get_buffered_amount(ws);
        if (r.rc != PJ_SUCCESS)
            break;
        if (r.after > r.max_accepted)
            r.max_accepted = r.after;
        lens[r.n_ok++] = MSG_SIZE;
    }
    return r;
}

static struct {
    int ran;
    size_t buffered_before_busy;
    size_t frame_len;
} g_hwm;

static void case_ebusy(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    unsigned char *buf = NULL;
    size_t lens[MAX_TRIES + 2];
    int pause_ms = under_valgrind() ? 10000 : 2500;
    uint32_t n_ok = 0;
    pj_status_t rc = PJ_SUCCESS;
    double t_open = 0;
    tctx_init(&c);
    if (!open_paused(tc, &c, pause_ms, &t_open))
        goto out;
    rc = pj_websock_set_max_buffered(c.ws, HWM);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    buf = malloc(MSG_SIZE);
    T_REQUIRE(tc, buf, "malloc");

    fill_result f = fill_until_refused(c.ws, buf, lens, MAX_TRIES);
    size_t before = f.before, after = f.after;
    n_ok = f.n_ok;
    rc = f.rc;
    double t_busy = now_ms();
    printf("# %u MiB accepted before %s; buffered before the refused send %zu, after %zu\n", n_ok, st(rc), before,
           after);
    T_REQUIRE(tc, rc == PJ_EBUSY, "after %u MiB to a paused peer send returned %s, want PJ_EBUSY", n_ok, st(rc));
    T_REQUIRE(tc, t_busy - t_open < pause_ms, "peer pause expired before the mark was reached; inconclusive");
    T_CHECK(tc, n_ok >= 4, "PJ_EBUSY after only %u MiB with an 8 MiB mark", n_ok);
    T_CHECK(tc, after <= before, "refused send queued data: buffered %zu -> %zu", before, after);
    g_hwm.ran = 1;
    g_hwm.buffered_before_busy = before;
    g_hwm.frame_len = FRAME_LEN;

    /* a refused send is not a latch: refused again, and still OPEN */
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MSG_SIZE);
    T_CHECK(tc, rc == PJ_EBUSY, "second 1 MiB send: %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN, "state %s after PJ_EBUSY",
            state_name(pj_websock_get_state(c.ws)));

    /* after the pause everything accepted arrives, then sending works again */
    T_REQUIRE(tc, tctx_wait_rx(&c, n_ok, tmo(60000) + pause_ms), "only %zu of %u echoes", c.n_rx, n_ok);
    check_echoes(tc, &c, n_ok, lens);
    T_CHECK(tc, wait_drained(c.ws, tmo(5000)), "buffered amount stays %zu", pj_websock_get_buffered_amount(c.ws));
    make_msg(buf, MSG_SIZE, n_ok);
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MSG_SIZE);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send after drain: %s", st(rc));
    lens[n_ok] = MSG_SIZE;
    T_REQUIRE(tc, tctx_wait_rx(&c, n_ok + 1, tmo(10000)), "no echo after drain");
    check_echoes(tc, &c, n_ok + 1, lens);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    free(buf);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* EXTENSIONS.draft.h: "send returns PJ_EBUSY when buffered + new frame
 * would exceed it", i.e. the buffered amount never goes above the mark. */
static void case_ebusy_counts_new_frame(t_case *tc, void *arg)
{
    (void)arg;
    T_REQUIRE(tc, g_hwm.ran, "the PJ_EBUSY scenario did not run");
    T_CHECK(tc, g_hwm.buffered_before_busy + g_hwm.frame_len > HWM,
            "PJ_EBUSY although buffered %zu + frame %zu fits the %zu mark", g_hwm.buffered_before_busy,
            g_hwm.frame_len, (size_t)HWM);
    T_CHECK(tc, g_hwm.buffered_before_busy <= HWM,
            "buffered amount %zu went above the %zu mark (the new frame is not counted)",
            g_hwm.buffered_before_busy, (size_t)HWM);
out:;
}

/* ---- a small mark with a reading peer -------------------------------- */

enum { N_SMALL = 300, SMALL_LEN = 100, SMALL_MARK = 1000 };

/* A burst of small sends is coalesced into one write, but never held back
 * while the sender is at the mark: with a 1000-byte mark and a peer that
 * reads, every one of a tight burst of 300 sends is accepted (the burst
 * is written once half the mark is queued, and a send at the mark first
 * writes what waits for coalescing). */
static void case_small_mark_burst(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    char url[512];
    pj_websock_param p;
    unsigned char buf[SMALL_LEN];
    size_t lens[N_SMALL];
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    tctx_param(&c, &p);
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    pj_status_t rc = pj_websock_set_max_buffered(c.ws, SMALL_MARK);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    size_t max_seen = 0;
    for (uint32_t i = 0; i < N_SMALL; ++i) {
        make_msg(buf, SMALL_LEN, i);
        lens[i] = SMALL_LEN;
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, SMALL_LEN);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %u of a burst with a %d-byte mark: %s (buffered %zu)", i, SMALL_MARK,
                  st(rc), pj_websock_get_buffered_amount(c.ws));
        size_t b = pj_websock_get_buffered_amount(c.ws);
        if (b > max_seen)
            max_seen = b;
    }
    T_CHECK(tc, max_seen <= SMALL_MARK, "buffered amount reached %zu, above the %d mark", max_seen, SMALL_MARK);
    T_REQUIRE(tc, tctx_wait_rx(&c, N_SMALL, tmo(10000)), "only %zu of %d echoes", c.n_rx, N_SMALL);
    check_echoes(tc, &c, N_SMALL, lens);
    T_CHECK(tc, wait_drained(c.ws, tmo(2000)), "buffered amount stays %zu", pj_websock_get_buffered_amount(c.ws));
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- a burst sharing one core with the loop thread ------------------- */

enum { N_CORE = 50000, CORE_LEN = 640 };

/* Sets the mask of every thread of the process. 0 on failure. */
static int set_all_affinity(const cpu_set_t *set)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int ok = d != NULL;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (sched_setaffinity((pid_t)atoi(e->d_name), sizeof(*set), set) != 0)
            ok = 0;
    }
    if (d)
        closedir(d);
    return ok;
}

/* Pins every thread of the process, the library's loop thread included, to
 * the CPU the caller is on; *old gets the caller's mask. 0 on failure. */
static int pin_all(cpu_set_t *old)
{
    cpu_set_t one;
    int cpu = sched_getcpu();
    if (cpu < 0 || sched_getaffinity(0, sizeof(*old), old) != 0)
        return 0;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return set_all_affinity(&one);
}

/* The sender and the loop thread on one core, contending for it and for
 * the instance: 50,000 sends of 640 bytes as fast as they are accepted
 * (5,000 under valgrind). Every send is accepted and every echo arrives
 * intact and in order. (The sender's yield to a loop thread that falls
 * more than 1 MiB behind is tested in the library's own tests, where the
 * backlog can be made certain.) */
static void case_one_core_burst(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    char url[512];
    pj_websock_param p;
    unsigned char buf[CORE_LEN];
    size_t *lens = NULL;
    size_t n = under_valgrind() ? N_CORE / 10 : N_CORE;
    cpu_set_t old;
    int pinned = 0;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    lens = malloc(n * sizeof(*lens));
    T_REQUIRE(tc, lens, "malloc");
    tctx_param(&c, &p);
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    pinned = pin_all(&old);
    T_REQUIRE(tc, pinned, "cannot pin the threads to one CPU: %s", strerror(errno));
    for (uint32_t i = 0; i < n; ++i) {
        make_msg(buf, CORE_LEN, i);
        lens[i] = CORE_LEN;
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, CORE_LEN);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %u: %s", i, st(rc));
    }
    printf("# %zu of %zu echoes in when the burst ended\n", c.n_rx, n);
    T_REQUIRE(tc, tctx_wait_rx(&c, n, tmo(30000)), "only %zu of %zu echoes", c.n_rx, n);
    check_echoes(tc, &c, n, lens);
    T_CHECK(tc, c.n_close == 0, "on_close(%u) during the burst", c.close_code);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (pinned && !set_all_affinity(&old))
        t_fail_at(tc, __FILE__, __LINE__, "cannot restore the CPU mask: %s", strerror(errno));
    free(lens);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- default high-water mark ---------------------------------------- */

#define DEFAULT_HWM (64 * MiB)
enum { MAX_TRIES_DEFAULT = 100 };

/* No pj_websock_set_max_buffered: 1 MiB messages to a paused peer until
 * PJ_EBUSY. The refusal comes when the queue plus the new frame would
 * exceed 64 MiB, i.e. with more than 63 MiB queued, and the queue never
 * holds more than 64 MiB. */
static void case_default_mark(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    unsigned char *buf = NULL;
    size_t lens[MAX_TRIES_DEFAULT + 1];
    int pause_ms = under_valgrind() ? 15000 : 3000;
    uint32_t n_ok = 0;
    pj_status_t rc = PJ_SUCCESS;
    double t_open = 0;
    tctx_init(&c);
    if (!open_paused(tc, &c, pause_ms, &t_open))
        goto out;
    buf = malloc(MSG_SIZE);
    T_REQUIRE(tc, buf, "malloc");

    fill_result f = fill_until_refused(c.ws, buf, lens, MAX_TRIES_DEFAULT);
    size_t before = f.before, after = f.after, max_accepted = f.max_accepted;
    n_ok = f.n_ok;
    rc = f.rc;
    double t_busy = now_ms();
    printf("# %u MiB accepted in %.0f ms before %s; buffered before the refused send %zu (64 MiB - %ld), "
           "after %zu, largest %zu\n",
           n_ok, t_busy - t_open, st(rc), before, (long)DEFAULT_HWM - (long)before, after, max_accepted);
    T_REQUIRE(tc, rc == PJ_EBUSY, "after %u MiB to a paused peer send returned %s, want PJ_EBUSY", n_ok, st(rc));
    T_REQUIRE(tc, t_busy - t_open < pause_ms, "peer pause expired before the mark was reached; inconclusive");
    T_CHECK(tc, before + FRAME_LEN > DEFAULT_HWM, "PJ_EBUSY with %zu bytes queued: a 1 MiB frame more fits the 64 MiB mark",
            before);
    T_CHECK(tc, before <= DEFAULT_HWM, "%zu bytes queued when PJ_EBUSY came: above the 64 MiB mark", before);
    T_CHECK(tc, max_accepted <= DEFAULT_HWM, "the queue held %zu bytes: above the 64 MiB mark", max_accepted);
    T_CHECK(tc, after <= before, "refused send queued data: buffered %zu -> %zu", before, after);

    /* after the pause everything accepted arrives intact and in order */
    T_REQUIRE(tc, tctx_wait_rx(&c, n_ok, tmo(60000) + pause_ms), "only %zu of %u echoes", c.n_rx, n_ok);
    T_CHECK(tc, c.n_close == 0, "on_close(%u) during the transfer", c.close_code);
    check_echoes(tc, &c, n_ok, lens);
    T_CHECK(tc, wait_drained(c.ws, tmo(5000)), "buffered amount stays %zu", pj_websock_get_buffered_amount(c.ws));
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    free(buf);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- pj_websock_wait_buffered ------------------------------------------ */

static void case_wait_args(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    char url[512];
    tctx_init(&c);
    pj_status_t rc = pj_websock_wait_buffered(NULL, 0, 0);
    T_CHECK(tc, rc == PJ_EINVAL, "wait_buffered(NULL): %s", st(rc));
    rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_wait_buffered(c.ws, 0, 100);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "wait_buffered before connect: %s", st(rc));
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    rc = pj_websock_wait_buffered(c.ws, 0, 0);
    T_CHECK(tc, rc == PJ_SUCCESS, "wait_buffered(0, 0 ms) with nothing queued: %s", st(rc));
    T_REQUIRE(tc, tctx_close_wait(tc, &c, 1000, NULL), "close");
    rc = pj_websock_wait_buffered(c.ws, 0, 100);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "wait_buffered after close: %s", st(rc));
out:
    if (c.ws)
        tctx_destroy(&c);
    tctx_free(&c);
}

enum { N_WAIT = 40 };

static void case_wait_paused(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    unsigned char *buf = NULL;
    size_t lens[N_WAIT];
    int pause_ms = under_valgrind() ? 8000 : 2000;
    double t_open = 0;
    tctx_init(&c);
    if (!open_paused(tc, &c, pause_ms, &t_open))
        goto out;
    pj_status_t rc = pj_websock_set_max_buffered(c.ws, HWM);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    buf = malloc(MSG_SIZE);
    T_REQUIRE(tc, buf, "malloc");
    fill_result f = fill_until_refused(c.ws, buf, lens, N_WAIT);
    uint32_t n_ok = f.n_ok;
    T_REQUIRE(tc, f.rc == PJ_EBUSY, "after %u MiB to a paused peer send returned %s, want PJ_EBUSY", n_ok, st(f.rc));

    rc = pj_websock_wait_buffered(c.ws, 0, 0);
    T_CHECK(tc, rc == PJ_ETIMEDOUT, "wait_buffered(0, 0 ms) with %zu queued: %s", pj_websock_get_buffered_amount(c.ws),
            st(rc));
    double t0 = now_ms();
    rc = pj_websock_wait_buffered(c.ws, MiB, 200);
    double t1 = now_ms();
    T_REQUIRE(tc, t1 - t_open < pause_ms, "peer pause expired before the wait ended; inconclusive");
    T_CHECK(tc, rc == PJ_ETIMEDOUT, "wait_buffered(1 MiB, 200 ms) on a paused peer: %s", st(rc));
    T_CHECK(tc, t1 - t0 >= 195, "the 200 ms wait returned after %.0f ms", t1 - t0);

    rc = pj_websock_wait_buffered(c.ws, MiB, (unsigned)(tmo(60000) + pause_ms));
    double t2 = now_ms();
    size_t left = pj_websock_get_buffered_amount(c.ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "wait_buffered(1 MiB) after the pause: %s (buffered %zu)", st(rc), left);
    T_CHECK(tc, left <= MiB, "wait_buffered returned with %zu bytes queued, above 1 MiB", left);
    /* Until the peer reads again, 7 MiB cannot leave (kernel buffers are
     * full): the wait cannot have ended early. */
    T_CHECK(tc, t2 - t_open >= pause_ms - 20, "returned %.0f ms after the open, before the %d ms pause ended",
            t2 - t_open, pause_ms);
    printf("# %u MiB queued at PJ_EBUSY; down to %zu bytes %.0f ms after the pause ended\n", n_ok, left,
           t2 - t_open - pause_ms);

    /* A sender that waits for room on each PJ_EBUSY: all of it arrives. */
    int waits = 0;
    for (uint32_t i = n_ok; i < N_WAIT; ++i) {
        make_msg(buf, MSG_SIZE, i);
        while ((rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MSG_SIZE)) == PJ_EBUSY) {
            waits++;
            pj_status_t w = pj_websock_wait_buffered(c.ws, HWM / 2, (unsigned)tmo(20000));
            T_REQUIRE(tc, w == PJ_SUCCESS, "wait_buffered(HWM/2) before message %u: %s", i, st(w));
        }
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %u: %s", i, st(rc));
        lens[i] = MSG_SIZE;
    }
    rc = pj_websock_wait_buffered(c.ws, 0, (unsigned)tmo(20000));
    T_CHECK(tc, rc == PJ_SUCCESS && pj_websock_get_buffered_amount(c.ws) == 0, "wait_buffered(0): %s, %zu queued",
            st(rc), pj_websock_get_buffered_amount(c.ws));
    T_REQUIRE(tc, tctx_wait_rx(&c, N_WAIT, tmo(60000)), "only %zu of %d echoes", c.n_rx, N_WAIT);
    check_echoes(tc, &c, N_WAIT, lens);
    printf("# %d waits for room while sending %d more MiB\n", waits, N_WAIT - (int)n_ok);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    free(buf);
    if (c.ws)
        tctx_destroy(&c);
    tctx_free(&c);
}

/* Opens c to the echo server's /silent (never reads) and queues n MiB. */
static int open_silent_queued(t_case *tc, tctx *c, int n_mib)
{
    char url[512];
    int n_sent = 0;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/silent"))
        return 0;
    T_REQUIRE(tc, tctx_open(tc, c, NULL, url, NULL), "open failed");
    pj_status_t rc = send_mib(c->ws, n_mib, &n_sent);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send %d: %s", n_sent, st(rc));
    T_REQUIRE(tc, pj_websock_get_buffered_amount(c->ws) > 0, "nothing queued to a peer that never reads");
    return 1;
out:
    return 0;
}

typedef struct {
    int ran;
    pj_status_t empty; /* wait with nothing queued */
    pj_status_t full;  /* wait with data queued */
    size_t queued;
} cb_wait;

static void hook_connect_wait(tctx *c, pj_websock *ws, pj_status_t status)
{
    cb_wait *w = c->arg;
    if (status != PJ_SUCCESS)
        return;
    w->empty = pj_websock_wait_buffered(ws, 0, 1000);
    send_mib(ws, 16, NULL);
    w->queued = pj_websock_get_buffered_amount(ws);
    w->full = pj_websock_wait_buffered(ws, 0, 3000);
    __atomic_store_n(&w->ran, 1, __ATOMIC_RELEASE);
}

/* On the event thread nothing would drain the queue while the call
 * waited: it refuses (PJ_EINVALIDOP) rather than block the loop. */
static void case_wait_in_callback(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    char url[512];
    cb_wait w = {0, -1, -1, 0};
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/silent"))
        goto out;
    c.connect_hook = hook_connect_wait;
    c.arg = &w;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    /* The hook runs after on_connect was recorded: wait for it. */
    for (double end = now_ms() + tmo(10000); !__atomic_load_n(&w.ran, __ATOMIC_ACQUIRE) && now_ms() < end;)
        sleep_ms(5);
    T_REQUIRE(tc, __atomic_load_n(&w.ran, __ATOMIC_ACQUIRE), "the on_connect hook did not finish");
    T_CHECK(tc, w.empty == PJ_SUCCESS, "in on_connect, nothing queued: %s", st(w.empty));
    T_REQUIRE(tc, w.queued > 0, "16 MiB to a peer that never reads, yet nothing queued");
    T_CHECK(tc, w.full == PJ_EINVALIDOP, "in on_connect with %zu queued: %s, want PJ_EINVALIDOP", w.queued,
            st(w.full));
    /* The loop is alive: the connection closes (close timeout) normally. */
    pj_websock_set_close_timeout(c.ws, 200);
    pj_status_t rc = pj_websock_close(c.ws, 1000, NULL);
    T_CHECK(tc, rc == PJ_SUCCESS, "close: %s", st(rc));
    T_CHECK(tc, tctx_wait_close(&c, tmo(5000)), "no on_close after the close timeout");
out:
    if (c.ws)
        tctx_destroy(&c);
    tctx_free(&c);
}

static void *destroy_later(void *arg)
{
    tctx *c = arg;
    sleep_ms(300);
    tctx_destroy(c);
    return NULL;
}

static void case_wait_destroyed(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    pthread_t th;
    int started = 0;
    tctx_init(&c);
    if (!open_silent_queued(tc, &c, 16))
        goto out;
    pj_websock *ws = c.ws;
    T_REQUIRE(tc, pthread_create(&th, NULL, destroy_later, &c) == 0, "pthread_create");
    started = 1;
    double t0 = now_ms();
    pj_status_t rc = pj_websock_wait_buffered(ws, 0, (unsigned)tmo(30000));
    double t1 = now_ms();
    T_CHECK(tc, rc == PJ_EINVALIDOP, "wait ended by destroy from another thread: %s", st(rc));
    T_CHECK(tc, t1 - t0 < tmo(30000), "the wait ran to its timeout (%.0f ms)", t1 - t0);
out:
    if (started) {
        pthread_join(th, NULL);
        c.ws = NULL;
    }
    if (c.ws)
        tctx_destroy(&c);
    tctx_free(&c);
}

/* Closing with data queued to a peer that never reads: the wait goes on
 * through CLOSING and ends when the close timeout ends the connection. */
static void case_wait_close_timeout(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    tctx_init(&c);
    if (!open_silent_queued(tc, &c, 16))
        goto out;
    pj_websock_set_close_timeout(c.ws, 300);
    pj_status_t rc = pj_websock_close(c.ws, 1000, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "close: %s", st(rc));
    double t0 = now_ms();
    rc = pj_websock_wait_buffered(c.ws, 0, (unsigned)tmo(30000));
    double t1 = now_ms();
    T_CHECK(tc, rc == PJ_EINVALIDOP, "wait ended by the close timeout: %s", st(rc));
    T_CHECK(tc, t1 - t0 >= 250 && t1 - t0 < tmo(30000), "the wait ended after %.0f ms (close timeout 300 ms)",
            t1 - t0);
    T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "no on_close");
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s",
            state_name(pj_websock_get_state(c.ws)));
out:
    if (c.ws)
        tctx_destroy(&c);
    tctx_free(&c);
}

int main(void)
{
    t_run("64 MiB to a paused peer: buffered amount grows, echoes intact, drains to 0", case_queue_64mib, NULL);
    t_run("sends return fast (< 50 ms) while the peer is paused", case_sends_fast, NULL);
    t_run("PJ_EBUSY at the high-water mark, nothing queued, accepted data arrives", case_ebusy, NULL);
    t_run("high-water mark counts the new frame (buffered never above the mark)", case_ebusy_counts_new_frame,
          NULL);
    t_run("1000-byte mark, reading peer: a tight burst of 300 sends is all accepted and echoed",
          case_small_mark_burst, NULL);
    t_run("sender and loop thread on one core: a burst of 50,000 small sends, echoes intact and in order",
          case_one_core_burst, NULL);
    t_run("default high-water mark 64 MiB: PJ_EBUSY with more than 63 MiB queued, echoes intact",
          case_default_mark, NULL);
    t_run("wait_buffered: NULL PJ_EINVAL; not connected or closed PJ_EINVALIDOP; empty queue at once",
          case_wait_args, NULL);
    t_run("wait_buffered on a paused peer: times out, returns once it reads with the queue at the level; "
          "waiting on each PJ_EBUSY, 40 MiB echoed in order",
          case_wait_paused, NULL);
    t_run("wait_buffered inside on_connect: at once when empty, PJ_EINVALIDOP with data queued", case_wait_in_callback,
          NULL);
    t_run("wait_buffered ended by pj_websock_destroy from another thread", case_wait_destroyed, NULL);
    t_run("wait_buffered goes on while closing, ended by the close timeout", case_wait_close_timeout, NULL);
    return t_done();
}
