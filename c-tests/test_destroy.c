/* pj_websock_destroy in every situation: from inside each callback, from
 * another thread while the event thread delivers messages, while
 * connecting, with data queued, without ever connecting, from another
 * instance's callback; then 10,000 create/connect/destroy cycles with the
 * live count back to its start, bounded RSS growth and no leaked fds.
 * After destroy returns no callback may start for that instance (the
 * context records callbacks that arrive after it was marked destroyed). */
#include "common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned g_base_live;

static int wait_live(unsigned want, int ms)
{
    double t0 = now_ms();
    while (pj_websock_get_live_count() != want) {
        if (now_ms() - t0 > ms)
            return 0;
        sleep_ms(5);
    }
    return 1;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* Common end of a destroy case: no late callbacks, instance freed. */
static void check_quiet_after_destroy(t_case *tc, tctx *c, int settle_ms)
{
    sleep_ms(settle_ms);
    pthread_mutex_lock(&c->mu);
    int late = c->n_after_destroy, wrong = c->n_wrong_ws, overlap = c->n_cb_concurrent;
    pthread_mutex_unlock(&c->mu);
    T_CHECK(tc, late == 0, "%d callbacks after destroy", late);
    T_CHECK(tc, wrong == 0, "%d callbacks for a wrong instance", wrong);
    T_CHECK(tc, overlap == 0, "%d overlapping callbacks", overlap);
    T_CHECK(tc, wait_live(g_base_live, tmo(3000)), "live count %u, want %u after destroy", pj_websock_get_live_count(),
            g_base_live);
}

/* ---- destroy from inside callbacks ----------------------------------- */

static void destroy_self(tctx *c, pj_websock *ws)
{
    pj_status_t rc = pj_websock_destroy(ws);
    pthread_mutex_lock(&c->mu);
    c->destroyed = 1;
    c->ws = NULL; /* the test must not destroy it again */
    c->arg = (void *)(size_t)(rc == PJ_SUCCESS ? 1 : 2);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void hook_connect_destroy(tctx *c, pj_websock *ws, pj_status_t status)
{
    (void)status;
    destroy_self(c, ws);
}

static void hook_rx_destroy(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)op;
    (void)d;
    (void)len;
    if (!c->destroyed)
        destroy_self(c, ws);
}

static void hook_close_destroy(tctx *c, pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    (void)code;
    (void)reason;
    destroy_self(c, ws);
}

static int pred_destroyed(tctx *c, void *arg)
{
    (void)arg;
    return c->destroyed;
}

typedef struct in_cb_case {
    const char *var;
    const char *path;
    int which; /* 0 connect, 1 rx, 2 close */
    int send_first;
} in_cb_case;

static void case_destroy_in_callback(t_case *tc, void *arg)
{
    const in_cb_case *k = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), k->var, k->path))
        goto out;
    if (k->which == 0)
        c.connect_hook = hook_connect_destroy;
    else if (k->which == 1)
        c.rx_hook = hook_rx_destroy;
    else
        c.close_hook = hook_close_destroy;
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    T_CHECK(tc, pj_websock_get_live_count() == g_base_live + 1, "live count %u", pj_websock_get_live_count());
    rc = tctx_connect(&c, url, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect: %s", st(rc));
    if (k->send_first) {
        T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)) && c.connect_status == PJ_SUCCESS, "on_connect %s",
                  st(c.connect_status));
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "hello", 5);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    }
    T_REQUIRE(tc, tctx_wait_until(&c, pred_destroyed, NULL, tmo(10000)), "the destroying callback never ran");
    T_CHECK(tc, c.arg == (void *)1, "destroy inside the callback failed");
    check_quiet_after_destroy(tc, &c, 300);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- destroy from the main thread while messages flow in ------------- */

static void hook_rx_slow(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)c;
    (void)ws;
    (void)op;
    (void)d;
    (void)len;
    sleep_ms(2); /* widen the window in which destroy meets a running callback */
}

static void case_destroy_while_receiving(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    c.keep_msgs = 0;
    c.rx_hook = hook_rx_slow;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/flood?size=1000"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    T_REQUIRE(tc, tctx_wait_rx(&c, 50, tmo(5000)), "flood did not start (%zu messages)", c.n_rx);
    pj_status_t rc = pj_websock_destroy(c.ws);
    pthread_mutex_lock(&c.mu);
    int running = c.in_cb;
    c.destroyed = 1;
    size_t n_at_destroy = c.n_rx;
    pthread_mutex_unlock(&c.mu);
    c.ws = NULL;
    T_CHECK(tc, rc == PJ_SUCCESS, "destroy: %s", st(rc));
    T_CHECK(tc, !running, "a callback was still running when destroy returned");
    check_quiet_after_destroy(tc, &c, 300);
    T_CHECK(tc, c.n_rx == n_at_destroy, "%zu messages delivered after destroy", c.n_rx - n_at_destroy);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- destroy with data queued and echoes in flight -------------------- */

typedef struct sender {
    pj_websock *ws;
    volatile int stop;
    size_t sent;
    pj_status_t err;
    size_t msg_len; /* 0: 16 KiB */
    int burst;      /* messages per burst, then 150 us apart; 0: no pause */
} sender;

/* Sends until told to stop or a send fails with anything but PJ_EBUSY. */
static void *sender_main(void *arg)
{
    sender *s = arg;
    unsigned char buf[16384];
    size_t len = s->msg_len ? s->msg_len : sizeof(buf);
    pat_fill(buf, len, 0);
    while (!s->stop) {
        for (int i = 0; i < (s->burst ? s->burst : 1) && !s->stop; ++i) {
            pj_status_t rc = pj_websock_send(s->ws, PJ_WEBSOCK_OP_BIN, buf, len);
            if (rc == PJ_SUCCESS)
                s->sent++;
            else if (rc != PJ_EBUSY) {
                s->err = rc;
                return NULL;
            }
        }
        if (s->burst) {
            struct timespec ts = {0, 150 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* Runs sender_main on `s` for `ms` milliseconds; checks that it sent
 * something and that no send failed. */
static void send_for(t_case *tc, sender *s, int ms)
{
    pthread_t th;
    if (pthread_create(&th, NULL, sender_main, s) != 0) {
        T_CHECK(tc, 0, "pthread_create");
        return;
    }
    sleep_ms(ms);
    s->stop = 1;
    pthread_join(th, NULL);
    T_CHECK(tc, s->err == PJ_SUCCESS, "send failed: %s", st(s->err));
    T_CHECK(tc, s->sent > 0, "nothing sent");
}

static void case_destroy_with_queue(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    sender s;
    memset(&s, 0, sizeof(s));
    tctx_init(&c);
    c.keep_msgs = 0;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    s.ws = c.ws;
    send_for(tc, &s, 300);
    size_t queued = pj_websock_get_buffered_amount(c.ws);
    printf("# sent %zu x 16 KiB, %zu bytes still queued, %zu echoes so far\n", s.sent, queued, c.n_rx);
    tctx_destroy(&c);
    c.ws = NULL;
    check_quiet_after_destroy(tc, &c, 300);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* ---- destroy after bursts of small sends ------------------------------ */

/* Small sends in quick succession are coalesced: the application thread
 * arms a short flush timer while the event thread fires the previous one.
 * However those race, no timer may outlive the connection and keep the
 * instance alive (the keep-alive ping timer is 30 s away). */
static void case_destroy_after_bursts(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        return;
    for (int round = 0; round < 5; ++round) {
        tctx c;
        sender s;
        memset(&s, 0, sizeof(s));
        s.msg_len = 200;
        s.burst = 4;
        tctx_init(&c);
        c.keep_msgs = 0;
        if (!tctx_open(tc, &c, NULL, url, NULL)) {
            T_CHECK(tc, 0, "open failed (round %d)", round);
            tctx_free(&c);
            return;
        }
        s.ws = c.ws;
        send_for(tc, &s, 400);
        tctx_destroy(&c);
        c.ws = NULL;
        int freed = wait_live(g_base_live, tmo(2000));
        T_CHECK(tc, freed, "round %d: live count %u, want %u 2 s after destroy (%zu sends)", round,
                pj_websock_get_live_count(), g_base_live, s.sent);
        tctx_free(&c);
        if (!freed) {
            wait_live(g_base_live, 35000); /* let the next cases start clean */
            return;
        }
    }
}

/* ---- destroy while connecting ---------------------------------------- */

typedef struct connecting_case {
    const char *var;   /* NULL: literal url */
    const char *path;
    int wait_ms;
} connecting_case;

static void case_destroy_connecting(t_case *tc, void *arg)
{
    const connecting_case *k = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (k->var) {
        if (!url_make(url, sizeof(url), k->var, k->path)) {
            const char *why = getenv("WS_BLACKHOLE_SKIP");
            t_skip(tc, "%s is not set%s%s", k->var, why ? ": " : "", why ? why : "");
            goto out;
        }
    } else {
        snprintf(url, sizeof(url), "%s", k->path);
    }
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = tctx_connect(&c, url, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect: %s", st(rc));
    if (k->wait_ms)
        sleep_ms(k->wait_ms);
    int connected_before = c.n_connect;
    tctx_destroy(&c);
    c.ws = NULL;
    check_quiet_after_destroy(tc, &c, 500);
    T_CHECK(tc, c.n_connect == connected_before, "on_connect after destroy");
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_destroy_never_connected(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    tctx_init(&c);
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = tctx_destroy(&c);
    c.ws = NULL;
    T_CHECK(tc, rc == PJ_SUCCESS, "destroy: %s", st(rc));
    check_quiet_after_destroy(tc, &c, 50);
out:
    tctx_free(&c);
}

/* ---- destroy another instance from a callback ------------------------ */

static void hook_destroy_other(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    (void)ws;
    (void)op;
    (void)d;
    (void)len;
    tctx *victim = c->arg;
    if (victim && !victim->destroyed) {
        pj_websock_destroy(victim->ws);
        pthread_mutex_lock(&victim->mu);
        victim->destroyed = 1;
        pthread_cond_broadcast(&victim->cv);
        pthread_mutex_unlock(&victim->mu);
    }
}

static void case_destroy_other_from_callback(t_case *tc, void *arg)
{
    (void)arg;
    char flood[512], echo[512];
    tctx a, b;
    tctx_init(&a);
    tctx_init(&b);
    b.keep_msgs = 0;
    if (!need_url(tc, flood, sizeof(flood), "WS_ECHO_URL", "/flood?size=200") ||
        !url_make(echo, sizeof(echo), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &b, NULL, flood, NULL), "open b failed");
    T_REQUIRE(tc, tctx_wait_rx(&b, 10, tmo(5000)), "flood did not start");
    a.rx_hook = hook_destroy_other;
    a.arg = &b;
    T_REQUIRE(tc, tctx_open(tc, &a, NULL, echo, NULL), "open a failed");
    pj_status_t rc = pj_websock_send(a.ws, PJ_WEBSOCK_OP_TEXT, "go", 2);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_until(&b, pred_destroyed, NULL, tmo(5000)), "a's callback did not destroy b (deadlock?)");
    b.ws = NULL;
    size_t n_b = b.n_rx;
    sleep_ms(300);
    T_CHECK(tc, b.n_after_destroy == 0 && b.n_rx == n_b, "b got %d callbacks after destroy", b.n_after_destroy);
    /* a is unaffected */
    rc = pj_websock_send(a.ws, PJ_WEBSOCK_OP_TEXT, "still", 5);
    T_CHECK(tc, rc == PJ_SUCCESS, "a send after: %s", st(rc));
    T_CHECK(tc, tctx_wait_rx(&a, 2, tmo(5000)), "a stopped working");
    a.rx_hook = NULL;
    tctx_close_wait(tc, &a, 1000, NULL);
out:
    if (a.ws)
        pj_websock_destroy(a.ws);
    if (b.ws)
        pj_websock_destroy(b.ws);
    tctx_free(&a);
    tctx_free(&b);
}

/* ---- many cycles ----------------------------------------------------- */

static void case_cycles(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    const int n = under_valgrind() ? 1000 : 10000;
    const int warmup = under_valgrind() ? 100 : 300;
    long rss0 = -1;
    int fds0 = -1;
    int n_open = 0, n_fail = 0;
    pj_status_t first_err = PJ_SUCCESS;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        return;
    double t0 = now_ms();
    for (int i = 0; i < n; ++i) {
        tctx c;
        tctx_init(&c);
        if (i == warmup) {
            T_REQUIRE(tc, wait_live(g_base_live, tmo(5000)), "live count %u after warm-up", pj_websock_get_live_count());
            rss0 = rss_kb();
            fds0 = count_fds();
        }
        pj_status_t rc = tctx_create(&c, NULL, NULL);
        if (rc != PJ_SUCCESS) {
            tctx_free(&c);
            t_fail_at(tc, __FILE__, __LINE__, "cycle %d: create: %s", i, st(rc));
            break;
        }
        int mode = i % 4;
        if (mode >= 1) {
            rc = tctx_connect(&c, url, NULL);
            if (rc != PJ_SUCCESS) {
                if (!n_fail++)
                    first_err = rc;
            } else if (mode == 2) {
                sleep_ms((i / 4) % 3); /* mid-connect or mid-handshake */
            } else if (mode == 3) {
                if (tctx_wait_connect(&c, tmo(5000)) && c.connect_status == PJ_SUCCESS) {
                    n_open++;
                    if (i % 8 == 3)
                        pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
                } else if (!n_fail++) {
                    first_err = c.n_connect ? c.connect_status : PJ_ETIMEDOUT;
                }
            }
        }
        tctx_destroy(&c);
        tctx_free(&c);
    }
    double dt = now_ms() - t0;
    T_CHECK(tc, n_fail == 0, "%d connects failed, first: %s", n_fail, st(first_err));
    T_CHECK(tc, wait_live(g_base_live, tmo(10000)), "live count %u after %d cycles, want %u",
            pj_websock_get_live_count(), n, g_base_live);
    long rss1 = rss_kb();
    int fds1 = count_fds();
    printf("# %d cycles (%d opened) in %.0f ms; VmRSS %ld -> %ld kB; fds %d -> %d\n", n, n_open, dt, rss0, rss1,
           fds0, fds1);
    /* ASan keeps freed memory in quarantine: the RSS bound holds natively
     * (and LeakSanitizer checks for leaks at exit). */
    if (under_asan())
        printf("# VmRSS bound: native only (ASan quarantines freed memory)\n");
    else if (rss0 > 0 && rss1 > 0)
        T_CHECK(tc, rss1 - rss0 < 30 * 1024, "VmRSS grew by %ld kB over %d cycles", rss1 - rss0, n - warmup);
    if (fds0 >= 0 && fds1 >= 0)
        T_CHECK(tc, fds1 - fds0 <= 4, "open fds grew from %d to %d", fds0, fds1);
    T_CHECK(tc, n_open >= n / 4 - 1, "only %d of %d connections opened", n_open, n / 4);
out:;
}

int main(void)
{
    static const in_cb_case in_cb[] = {
        {"WS_ECHO_URL", "/", 0, 0},
        {"WS_REFUSED_URL", "/", 0, 0},
        {"WS_RAW_URL", "/hs-bad-accept", 0, 0},
        {"WS_ECHO_URL", "/flood?size=100", 1, 0},
        {"WS_ECHO_URL", "/", 1, 1},
        {"WS_ECHO_URL", "/close?code=4001&reason=bye", 2, 0},
        {"WS_ECHO_URL", "/drop", 2, 0},
    };
    static const char *in_cb_names[] = {
        "destroy inside on_connect (success)",
        "destroy inside on_connect (refused)",
        "destroy inside on_connect (bad handshake)",
        "destroy inside on_rx_msg while the server floods",
        "destroy inside on_rx_msg (echo)",
        "destroy inside on_close (server close)",
        "destroy inside on_close (transport drop)",
    };
    static const connecting_case connecting[] = {
        {"WS_BLACKHOLE_URL", "/", 200},
        {"WS_ECHO_URL", "/slowhs?ms=3000", 200},
        {NULL, "ws://nonexistent.invalid/", 0},
        {"WS_ECHO_URL", "/", 0},
    };
    static const char *connecting_names[] = {
        "destroy while TCP connect pending (black hole)",
        "destroy while the handshake is pending",
        "destroy while name resolution is pending",
        "destroy immediately after connect",
    };
    g_base_live = pj_websock_get_live_count();
    for (size_t i = 0; i < sizeof(in_cb) / sizeof(in_cb[0]); ++i)
        t_run(in_cb_names[i], case_destroy_in_callback, (void *)&in_cb[i]);
    t_run("destroy from the main thread while messages are delivered", case_destroy_while_receiving, NULL);
    t_run("destroy with data queued and echoes in flight", case_destroy_with_queue, NULL);
    t_run("destroy after bursts of small sends: no flush timer outlives the connection", case_destroy_after_bursts,
          NULL);
    for (size_t i = 0; i < sizeof(connecting) / sizeof(connecting[0]); ++i)
        t_run(connecting_names[i], case_destroy_connecting, (void *)&connecting[i]);
    t_run("destroy without ever connecting", case_destroy_never_connected, NULL);
    t_run("destroy an instance from another instance's callback", case_destroy_other_from_callback, NULL);
    t_run(under_valgrind() ? "1000 create/connect/destroy cycles: live count 0, RSS and fds bounded"
                           : "10000 create/connect/destroy cycles: live count 0, RSS and fds bounded",
          case_cycles, NULL);
    return t_done();
}
