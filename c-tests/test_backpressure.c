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
 *    accepted ones all arrive afterwards. */
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
    return t_done();
}
