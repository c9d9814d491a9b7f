/* PJ_WEBSOCK_LOOP_POLL: the library's event loop runs inside
 * pj_websock_poll() on the application's thread, no thread of the
 * library's is started, and every callback runs inside that call.
 * Covers the mode switch rules, echo of small and large messages, the
 * timers (connect timeout, close handshake), name resolution, destroy
 * (from the polling thread and from a callback), a call from inside a
 * callback (PJ_EINVALIDOP), a second polling thread (PJ_EBUSY), the
 * wait bounds of pj_websock_poll() and pj_websock_poll_us() themselves,
 * pj_websock_wait_buffered() running the loop while it waits, and a read
 * leaving the application's burst of sends to its coalescing deadline.
 * The mode is process-wide, so this is a binary of its own. */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441 /* x86-64 and the generic table (older headers) */
#endif

static pthread_t g_main;
static int g_off_thread; /* callbacks that ran on another thread */
static unsigned g_base_live;

static void note_thread(void)
{
    if (!pthread_equal(pthread_self(), g_main))
        g_off_thread++;
}

static void hook_connect_note(tctx *c, pj_websock *ws, pj_status_t status)
{
    (void)c;
    (void)ws;
    (void)status;
    note_thread();
}

static void hook_rx_note(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)c;
    (void)ws;
    (void)op;
    (void)d;
    (void)len;
    note_thread();
}

static void hook_close_note(tctx *c, pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    (void)c;
    (void)ws;
    (void)code;
    (void)reason;
    note_thread();
}

static void tctx_init_noted(tctx *c)
{
    tctx_init(c);
    c->connect_hook = hook_connect_note;
    c->rx_hook = hook_rx_note;
    c->close_hook = hook_close_note;
}

/* Threads of this process whose name starts with "pjwebsock". */
static int library_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        char path[300], name[64] = "";
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof(name), f) && !strncmp(name, "pjwebsock", 9))
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Polls until the live count is back to the base or `ms` passed. */
static int poll_until_freed(int ms)
{
    double end = now_ms() + ms;
    while (pj_websock_get_live_count() != g_base_live && now_ms() < end)
        pj_websock_poll(10, NULL);
    return pj_websock_get_live_count() == g_base_live;
}

/* End of a case: destroy what is left, poll until it is freed, free the
 * context. */
static void end_case(t_case *tc, tctx *c)
{
    if (c->ws)
        tctx_destroy(c);
    T_CHECK(tc, poll_until_freed(tmo(3000)), "live count %u, want %u", pj_websock_get_live_count(), g_base_live);
    tctx_free(c);
}

/* ---- mode switch --------------------------------------------------- */

static void case_mode_rules(t_case *tc, void *arg)
{
    (void)arg;
    unsigned n = 99;
    pj_status_t rc = pj_websock_poll(0, &n);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "poll before the mode is chosen: %s", st(rc));
    T_CHECK(tc, n == 99, "*p_count written on failure (%u)", n);
    rc = pj_websock_set_loop_mode(7);
    T_CHECK(tc, rc == PJ_EINVAL, "mode 7: %s", st(rc));
    rc = pj_websock_set_loop_mode(-1);
    T_CHECK(tc, rc == PJ_EINVAL, "mode -1: %s", st(rc));
    rc = pj_websock_set_loop_mode(PJ_WEBSOCK_LOOP_POLL);
    T_CHECK(tc, rc == PJ_SUCCESS, "poll mode: %s", st(rc));
    rc = pj_websock_set_loop_mode(PJ_WEBSOCK_LOOP_POLL);
    T_CHECK(tc, rc == PJ_SUCCESS, "poll mode again: %s", st(rc));
    rc = pj_websock_set_loop_mode(PJ_WEBSOCK_LOOP_THREAD);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "thread mode after poll mode: %s", st(rc));
    rc = pj_websock_poll(0, NULL);
    T_CHECK(tc, rc == PJ_SUCCESS, "poll(0, NULL): %s", st(rc));
    T_CHECK(tc, library_threads() == 0, "%d library threads", library_threads());
}

/* ---- pj_websock_poll waits at most its timeout ------------------------ */

static void case_poll_timeout(t_case *tc, void *arg)
{
    (void)arg;
    if (skip_timing_under_valgrind(tc))
        return;
    unsigned n = 99;
    double t0 = now_ms();
    pj_status_t rc = pj_websock_poll(100, &n);
    double dt = now_ms() - t0;
    T_CHECK(tc, rc == PJ_SUCCESS, "poll: %s", st(rc));
    T_CHECK(tc, n == 0, "%u events with nothing to do", n);
    T_CHECK(tc, dt >= 95 && dt < 600, "poll(100) took %.0f ms", dt);
    t0 = now_ms();
    rc = pj_websock_poll(0, &n);
    dt = now_ms() - t0;
    T_CHECK(tc, rc == PJ_SUCCESS && n == 0, "poll(0): %s, %u events", st(rc), n);
    T_CHECK(tc, dt < 50, "poll(0) took %.0f ms", dt);
}

/* ---- pj_websock_poll_us keeps its timeout to the microsecond ---------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void case_poll_us_timeout(t_case *tc, void *arg)
{
    (void)arg;
    unsigned n = 99;
    pj_status_t rc = pj_websock_poll_us(0, &n);
    T_CHECK(tc, rc == PJ_SUCCESS && n == 0, "poll_us(0): %s, %u events", st(rc), n);
    if (skip_timing_under_valgrind(tc))
        return;
    /* Never shorter than asked, also past whole milliseconds. */
    double t0 = now_ms();
    rc = pj_websock_poll_us(2500, &n);
    double dt = now_ms() - t0;
    T_CHECK(tc, rc == PJ_SUCCESS && n == 0, "poll_us(2500): %s, %u events", st(rc), n);
    T_CHECK(tc, dt >= 2.49 && dt < 500, "poll_us(2500) took %.3f ms", dt);
    /* Not rounded up to a millisecond where the kernel has epoll_pwait2
     * (Linux 5.11): the median of 15 waits of 300 us stays under one,
     * while each would take >= 1 ms if it were. Without it, each wait is
     * rounded up, never down. */
    errno = 0;
    long probe = syscall(SYS_epoll_pwait2, -1, NULL, 1, NULL, NULL, 0);
    int exact = !(probe < 0 && (errno == ENOSYS || errno == EPERM));
    double d[15];
    for (int i = 0; i < 15; i++) {
        t0 = now_ms();
        rc = pj_websock_poll_us(300, NULL);
        d[i] = now_ms() - t0;
        T_CHECK(tc, rc == PJ_SUCCESS, "poll_us(300): %s", st(rc));
        T_CHECK(tc, d[i] >= (exact ? 0.299 : 0.999), "poll_us(300) took %.3f ms", d[i]);
    }
    qsort(d, 15, sizeof d[0], cmp_double);
    if (exact)
        T_CHECK(tc, d[7] < 0.95, "median poll_us(300) %.3f ms (min %.3f, max %.3f)", d[7], d[0], d[14]);
}

/* ---- nothing happens without polling, then everything does ------------ */

static void case_echo(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init_noted(&c);
    unsigned char *big = NULL;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    g_off_thread = 0;
    pj_websock_param p;
    tctx_param(&c, &p);
    p.max_rx_msg_size = 8 * MiB;
    pj_status_t rc = tctx_create(&c, &p, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = tctx_connect(&c, url, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect: %s", st(rc));
    /* Without a poll the connect does not even start. */
    sleep_ms(200);
    T_CHECK(tc, c.n_connect == 0, "on_connect without polling");
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CONNECTING, "state %s",
            state_name(pj_websock_get_state(c.ws)));
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)), "no on_connect while polling");
    T_REQUIRE(tc, c.connect_status == PJ_SUCCESS, "on_connect: %s", st(c.connect_status));
    T_CHECK(tc, library_threads() == 0, "%d library threads while connected", library_threads());

    /* 200 messages of growing size and one of 4 MiB, all queued before
     * any poll: they leave when the loop runs, echoes in order. */
    static const size_t sizes[] = {0, 1, 125, 126, 640, 65535, 65536, 200000};
    size_t n_sent = 0;
    for (int i = 0; i < 200; ++i) {
        size_t len = sizes[i % 8];
        unsigned char buf[200000];
        pat_fill(buf, len, (size_t)i);
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, len);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %d: %s", i, st(rc));
        n_sent++;
    }
    big = malloc(4 * MiB);
    T_REQUIRE(tc, big != NULL, "malloc");
    pat_fill(big, 4 * MiB, 7);
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, big, 4 * MiB);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send 4 MiB: %s", st(rc));
    n_sent++;
    T_REQUIRE(tc, tctx_wait_rx(&c, n_sent, tmo(20000)), "%zu of %zu echoes", c.n_rx, n_sent);
    for (size_t i = 0; i < 200; ++i) {
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, i, &m), "message %zu missing", i);
        size_t len = sizes[i % 8];
        T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_BIN && m.len == len && pat_check(m.data, len, i) < 0,
                "echo %zu: opcode %d, %zu bytes (want %zu)", i, m.opcode, m.len, len);
    }
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 200, &m), "4 MiB echo missing");
    T_CHECK(tc, m.len == 4 * MiB && pat_check(m.data, m.len, 7) < 0, "4 MiB echo: %zu bytes, bad at %ld", m.len,
            pat_check(m.data, m.len, 7));
    T_REQUIRE(tc, tctx_close_wait(tc, &c, 1000, "done"), "close");
    T_CHECK(tc, c.close_info.clean, "close not clean");
    T_CHECK(tc, g_off_thread == 0, "%d callbacks off the polling thread", g_off_thread);
out:
    free(big);
    end_case(tc, &c);
}

/* ---- the descriptor table grows ahead, in one step ----------------- */

/* Once the loop registers a socket half-way up the table a fresh process
 * starts with (64 slots), it grows the table to 1,024 slots at once
 * (inline: polling threads wait for no worker). */
static void case_fd_table(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init_noted(&c);
    int fds[64];
    int n_fds = 0;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    long before, want;
    if (!need_small_fd_table(tc, &before, &want))
        goto out;
    /* hold descriptors up to 40 so the connection's socket lands above 32 */
    n_fds = fd_hold_up_to(40, fds, 64);
    T_REQUIRE(tc, n_fds >= 0, "dup: %s", strerror(errno));
    pj_websock_param p;
    tctx_param(&c, &p);
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    long after = fd_table_wait(want, 0); /* inline: grown already */
    printf("# descriptor table: %ld slots before, %ld after a socket above 32\n", before, after);
    T_CHECK(tc, after >= want, "%ld slots (want %ld)", after, want);
    T_CHECK(tc, library_threads() == 0, "%d library threads", library_threads());
    T_REQUIRE(tc, tctx_close_wait(tc, &c, 1000, "done"), "close");
out:
    while (n_fds > 0)
        close(fds[--n_fds]);
    end_case(tc, &c);
}

/* ---- timers run while polling --------------------------------------- */

static void case_connect_timeout(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init_noted(&c);
    if (!url_make(url, sizeof(url), "WS_BLACKHOLE_URL", "/")) {
        t_skip(tc, "WS_BLACKHOLE_URL is not set");
        goto out;
    }
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    pj_websock_set_connect_timeout(c.ws, 300);
    double t0 = now_ms();
    rc = tctx_connect(&c, url, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)), "no on_connect");
    double dt = now_ms() - t0;
    T_CHECK(tc, c.connect_status == PJ_WEBSOCK_ECONNECTTIMEOUT, "on_connect: %s", st(c.connect_status));
    if (!under_valgrind())
        T_CHECK(tc, dt >= 290 && dt < 1500, "timed out after %.0f ms (300 set)", dt);
out:
    end_case(tc, &c);
}

/* A host name: resolution runs off this thread and its result comes back
 * through the loop. */
static void case_resolve(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init_noted(&c);
    int port = url_port(env_url("WS_ECHO_URL"));
    if (port <= 0) {
        t_skip(tc, "WS_ECHO_URL is not set");
        goto out;
    }
    snprintf(url, sizeof(url), "ws://localhost:%d/", port);
    g_off_thread = 0;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open %s", url);
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "hi", 2);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo");
    T_CHECK(tc, g_off_thread == 0, "%d callbacks off the polling thread", g_off_thread);
out:
    end_case(tc, &c);
}

/* ---- calls that are refused ------------------------------------------ */

static void hook_rx_poll_inside(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)ws;
    (void)op;
    (void)d;
    (void)len;
    c->hook_status = pj_websock_poll(0, NULL);
}

typedef struct poller {
    volatile int go;
    pj_status_t rc;
} poller;

static void *second_poller(void *arg)
{
    poller *p = arg;
    while (!p->go)
        sleep_ms(1);
    p->rc = pj_websock_poll(0, NULL);
    return NULL;
}

static void hook_rx_other_thread_polls(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)ws;
    (void)op;
    (void)d;
    (void)len;
    /* This thread is inside pj_websock_poll(): another one may not poll. */
    poller p = {1, PJ_SUCCESS};
    pthread_t th;
    if (pthread_create(&th, NULL, second_poller, &p) == 0) {
        pthread_join(th, NULL);
        c->hook_status = p.rc;
    }
}

static void case_refused_calls(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open");
    c.hook_status = PJ_SUCCESS;
    c.rx_hook = hook_rx_poll_inside;
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "a", 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo");
    T_CHECK(tc, c.hook_status == PJ_EINVALIDOP, "pj_websock_poll inside a callback: %s", st(c.hook_status));
    c.hook_status = PJ_SUCCESS;
    c.rx_hook = hook_rx_other_thread_polls;
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "b", 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 2, tmo(5000)), "no echo");
    T_CHECK(tc, c.hook_status == PJ_EBUSY, "a second thread polling meanwhile: %s", st(c.hook_status));
    c.rx_hook = NULL;
    /* The loop is intact: one more echo. */
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "c", 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_CHECK(tc, tctx_wait_rx(&c, 3, tmo(5000)), "no echo after the refused calls");
out:
    end_case(tc, &c);
}

/* Another thread may poll once this one is done: the loop is not bound to
 * the first thread that polled. */
static void *poll_echo_thread(void *arg)
{
    tctx *c = arg;
    pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, "from another thread", 19);
    tctx_wait_rx(c, 1, tmo(5000));
    return NULL;
}

static void case_other_thread_polls(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    pthread_t th;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open");
    T_REQUIRE(tc, pthread_create(&th, NULL, poll_echo_thread, &c) == 0, "pthread_create");
    pthread_join(th, NULL);
    T_CHECK(tc, c.n_rx == 1, "%zu echoes polled by the other thread", c.n_rx);
out:
    end_case(tc, &c);
}

/* ---- destroy ---------------------------------------------------------- */

static void hook_rx_destroy(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)op;
    (void)d;
    (void)len;
    if (!c->destroyed) {
        c->hook_status = pj_websock_destroy(ws);
        c->destroyed = 1;
        c->ws = NULL;
    }
}

static void case_destroy(t_case *tc, void *arg)
{
    int in_callback = arg != NULL;
    char url[512];
    tctx c;
    tctx_init(&c);
    c.keep_msgs = 0;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", in_callback ? "/flood?size=100" : "/"))
        goto out;
    if (in_callback)
        c.rx_hook = hook_rx_destroy;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open");
    if (in_callback) {
        T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no message");
        T_CHECK(tc, c.hook_status == PJ_SUCCESS, "destroy in on_rx_msg: %s", st(c.hook_status));
        size_t n = c.n_rx;
        for (int i = 0; i < 20; ++i)
            pj_websock_poll(5, NULL);
        T_CHECK(tc, c.n_rx == n, "%zu messages after destroy", c.n_rx - n);
    } else {
        unsigned char buf[16384];
        pat_fill(buf, sizeof(buf), 0);
        for (int i = 0; i < 100; ++i)
            pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, sizeof(buf));
        pj_status_t rc = tctx_destroy(&c);
        c.ws = NULL;
        T_CHECK(tc, rc == PJ_SUCCESS, "destroy: %s", st(rc));
    }
    T_CHECK(tc, poll_until_freed(tmo(3000)), "live count %u, want %u", pj_websock_get_live_count(), g_base_live);
    T_CHECK(tc, c.n_after_destroy == 0, "%d callbacks after destroy", c.n_after_destroy);
out:
    if (c.ws)
        tctx_destroy(&c);
    poll_until_freed(tmo(3000));
    tctx_free(&c);
}

/* ---- pj_websock_wait_buffered runs the loop -------------------------- */

enum { WB_MSGS = 24 };

static size_t g_wb_queued;

/* Inside a callback the loop cannot run again: the wait is refused. */
static void hook_connect_wait_inside(tctx *c, pj_websock *ws, pj_status_t status)
{
    if (status != PJ_SUCCESS)
        return;
    send_mib(ws, 16, NULL);
    g_wb_queued = pj_websock_get_buffered_amount(ws);
    c->hook_status = pj_websock_wait_buffered(ws, 0, 2000);
}

/* Closes and frees c's connection, then makes c ready for the next one. */
static int restart_case(t_case *tc, tctx *c)
{
    if (!tctx_close_wait(tc, c, 1000, NULL))
        return 0;
    tctx_destroy(c);
    c->ws = NULL;
    poll_until_freed(tmo(3000));
    tctx_free(c);
    tctx_init_noted(c);
    return 1;
}

static void case_wait_buffered(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    char path[64];
    tctx c;
    tctx_init_noted(&c);
    unsigned char *buf = NULL;
    int pause_ms = under_valgrind() ? 3000 : 500;
    snprintf(path, sizeof(path), "/pause?ms=%d", pause_ms);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", path))
        goto out;
    g_off_thread = 0;
    pj_websock_param p;
    tctx_param(&c, &p);
    p.max_rx_msg_size = 2 * MiB;
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open");
    pj_status_t rc = pj_websock_set_max_buffered(c.ws, 4 * MiB);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    buf = malloc(MiB);
    T_REQUIRE(tc, buf, "malloc");
    /* Every PJ_EBUSY waits for room; the wait runs the loop (no other
     * poll happens until all are sent). */
    int waits = 0;
    for (int i = 0; i < WB_MSGS; ++i) {
        pat_fill(buf, MiB, (size_t)i);
        while ((rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MiB)) == PJ_EBUSY) {
            waits++;
            pj_status_t w = pj_websock_wait_buffered(c.ws, 2 * MiB, (unsigned)tmo(30000));
            T_REQUIRE(tc, w == PJ_SUCCESS, "wait_buffered before message %d: %s", i, st(w));
            T_REQUIRE(tc, pj_websock_get_buffered_amount(c.ws) <= 2 * MiB, "returned with %zu queued",
                      pj_websock_get_buffered_amount(c.ws));
        }
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %d: %s", i, st(rc));
    }
    T_CHECK(tc, waits > 0, "no PJ_EBUSY with a 4 MiB mark and a paused peer");
    rc = pj_websock_wait_buffered(c.ws, 0, (unsigned)tmo(30000));
    T_CHECK(tc, rc == PJ_SUCCESS && pj_websock_get_buffered_amount(c.ws) == 0, "wait_buffered(0): %s, %zu queued",
            st(rc), pj_websock_get_buffered_amount(c.ws));
    T_REQUIRE(tc, tctx_wait_rx(&c, WB_MSGS, tmo(30000)), "%zu of %d echoes", c.n_rx, WB_MSGS);
    for (int i = 0; i < WB_MSGS; ++i) {
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m), "echo %d missing", i);
        T_CHECK(tc, m.len == MiB && pat_check(m.data, m.len, (size_t)i) < 0, "echo %d: %zu bytes, bad at %ld", i,
                m.len, pat_check(m.data, m.len, (size_t)i));
    }
    T_CHECK(tc, g_off_thread == 0, "%d callbacks off the polling thread", g_off_thread);

    /* A sender that waits for too little room (a level of 2 MiB, while
     * its 1 MiB messages go only into an empty queue) spins between send
     * and a wait that returns at once: each wait still runs the loop, so
     * once the peer reads again the queue drains and every message goes
     * out. */
    T_REQUIRE(tc, restart_case(tc, &c), "close");
    T_REQUIRE(tc, need_url(tc, url, sizeof(url), "WS_ECHO_URL", path), "no URL");
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open");
    rc = pj_websock_set_max_buffered(c.ws, 256 * KiB);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    double end = now_ms() + pause_ms + tmo(20000);
    int spins = 0;
    for (int i = 0; i < 8; ++i) {
        pat_fill(buf, MiB, (size_t)i);
        while ((rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, MiB)) == PJ_EBUSY) {
            spins++;
            pj_status_t w = pj_websock_wait_buffered(c.ws, 2 * MiB, 1000);
            T_REQUIRE(tc, w == PJ_SUCCESS, "wait_buffered(2 MiB): %s", st(w));
            T_REQUIRE(tc, now_ms() < end, "message %d not accepted in %d ms (%zu queued)", i,
                      pause_ms + tmo(20000), pj_websock_get_buffered_amount(c.ws));
        }
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %d: %s", i, st(rc));
    }
    T_CHECK(tc, spins > 0, "no PJ_EBUSY for 1 MiB messages with a 256 KiB mark and a paused peer");
    T_REQUIRE(tc, tctx_wait_rx(&c, 8, tmo(30000)), "%zu of 8 echoes", c.n_rx);
    for (int i = 0; i < 8; ++i) {
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m), "echo %d missing", i);
        T_CHECK(tc, m.len == MiB && pat_check(m.data, m.len, (size_t)i) < 0, "echo %d: %zu bytes", i, m.len);
    }

    /* From a callback (16 MiB queued to a peer that never reads):
     * refused at once, and the loop goes on. */
    T_REQUIRE(tc, restart_case(tc, &c), "close");
    T_REQUIRE(tc, need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/silent"), "no URL");
    c.connect_hook = hook_connect_wait_inside;
    c.hook_status = PJ_SUCCESS;
    g_wb_queued = 0;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open /silent");
    T_REQUIRE(tc, g_wb_queued > 0, "16 MiB sent in on_connect to a peer that never reads left nothing queued");
    T_CHECK(tc, c.hook_status == PJ_EINVALIDOP, "wait_buffered in a callback with %zu queued: %s", g_wb_queued,
            st(c.hook_status));
    pj_websock_set_close_timeout(c.ws, 200);
    T_CHECK(tc, pj_websock_close(c.ws, 1000, NULL) == PJ_SUCCESS, "close");
    T_CHECK(tc, tctx_wait_close(&c, tmo(5000)), "no on_close after the refused wait");
out:
    free(buf);
    end_case(tc, &c);
}

/* ---- a read does not split the application's burst ------------------ */

enum { RB_ATTEMPTS = 40, RB_LEN = 640 };

/* Two sends back to back are a burst: the first goes out at once, the
 * second waits (at most 200 us) to be coalesced with what follows. A poll
 * right after them that reads an echo (of a message sent earlier, which
 * waited in the socket unread) leaves the second waiting rather than
 * writing it alone (a small write, and a wake-up of the peer, per read);
 * its deadline sends it. Checked in the attempts where that poll read the
 * echo and returned within 180 us of the start of the held send, before
 * its deadline (others prove nothing); every echo must arrive intact. */
static void case_read_keeps_burst(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init_noted(&c);
    if (skip_timing_under_valgrind(tc))
        goto out;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open");
    unsigned char buf[RB_LEN];
    size_t n = 0;
    int checked = 0;
    for (int a = 0; a < RB_ATTEMPTS; ++a) {
        T_REQUIRE(tc, tctx_wait_rx(&c, n, tmo(5000)), "%zu of %zu echoes", c.n_rx, n);
        /* Message n: its echo waits in the socket (nothing polls). */
        pat_fill(buf, RB_LEN, n);
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, RB_LEN);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %zu: %s", n, st(rc));
        sleep_ms(5); /* and quiet: the next send starts a burst */
        size_t k = n + 1;
        pat_fill(buf, RB_LEN, k);
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, RB_LEN);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send %zu: %s", k, st(rc));
        T_REQUIRE(tc, pj_websock_get_buffered_amount(c.ws) == 0, "a send after 5 ms of quiet was held back");
        /* Sends until one is held (a slow send before it, such as under
         * a sanitizer, can leave more than the burst gap between two). */
        double t0;
        size_t held = 0;
        do {
            pat_fill(buf, RB_LEN, ++k);
            /* Timed from before the send: its deadline starts inside it,
             * and a send slowed after setting it (ASan, preemption) can
             * return close to that deadline. */
            t0 = now_ms();
            rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, RB_LEN);
            T_REQUIRE(tc, rc == PJ_SUCCESS, "send %zu: %s", k, st(rc));
            held = pj_websock_get_buffered_amount(c.ws);
        } while (held == 0 && k < n + 10);
        pj_websock_poll(0, NULL);
        double us = (now_ms() - t0) * 1000.0;
        size_t left = pj_websock_get_buffered_amount(c.ws);
        if (held > 0 && c.n_rx >= n + 1 && us < 180.0) {
            T_CHECK(tc, left == held, "a poll reading an echo %.0f us after the start of a burst's send wrote it "
                    "(%zu of %zu bytes left)", us, left, held);
            checked++;
        }
        n = k + 1;
    }
    T_REQUIRE(tc, tctx_wait_rx(&c, n, tmo(5000)), "%zu of %zu echoes", c.n_rx, n);
    for (size_t i = 0; i < n; ++i) {
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, i, &m), "echo %zu missing", i);
        T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_BIN && m.len == RB_LEN && pat_check(m.data, m.len, i) < 0,
                "echo %zu: opcode %d, %zu bytes", i, m.opcode, m.len);
    }
    T_CHECK(tc, checked >= 3, "only %d of %d attempts had the echo read within 180 us (machine too busy)", checked,
            RB_ATTEMPTS);
    T_CHECK(tc, g_off_thread == 0, "%d callbacks off the polling thread", g_off_thread);
out:
    end_case(tc, &c);
}

int main(void)
{
    g_main = pthread_self();
    g_tctx_poll = 1;
    g_base_live = pj_websock_get_live_count();
    t_run("mode: poll before choosing, unknown modes, switching back refused, no thread", case_mode_rules, NULL);
    t_run("pj_websock_poll waits at most its timeout", case_poll_timeout, NULL);
    t_run("pj_websock_poll_us: 0 does not wait, 2,500 us at least that, 300 us not rounded up to 1 ms",
          case_poll_us_timeout, NULL);
    t_run("echo: nothing before the first poll, then 201 messages up to 4 MiB on the polling thread", case_echo,
          NULL);
    t_run("the descriptor table grows to 1,024 slots in one step once a socket passes 32", case_fd_table, NULL);
    t_run("connect timeout fires while polling (black hole, 300 ms)", case_connect_timeout, NULL);
    t_run("host name resolved off the polling thread, callbacks on it", case_resolve, NULL);
    t_run("poll inside a callback: PJ_EINVALIDOP; a second thread meanwhile: PJ_EBUSY", case_refused_calls, NULL);
    t_run("another thread may poll when the first is not polling", case_other_thread_polls, NULL);
    t_run("wait_buffered runs the loop: 24 MiB to a paused peer, waiting on each PJ_EBUSY, echoes intact; "
          "a sender spinning on a too-high level still gets through; refused inside a callback",
          case_wait_buffered, NULL);
    t_run("a poll that reads an echo leaves the application's burst to its coalescing deadline; echoes intact",
          case_read_keeps_burst, NULL);
    t_run("destroy with data queued: freed by the next polls", case_destroy, NULL);
    t_run("destroy inside on_rx_msg while the server floods", case_destroy, (void *)1);
    return t_done();
}
