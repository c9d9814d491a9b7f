/* Connect failures: refused port, unresolvable name, black-holed address
 * with a connect timeout, slow handshake with a connect timeout, every
 * kind of bad handshake response (raw_server.py /hs-*), wrong-state calls
 * (pj_websock_send while CONNECTING is PJ_EINVALIDOP and sends nothing),
 * and aborting a pending connect with pj_websock_close (PJ_ECANCELLED).
 * pj_websock_connect must return at once (no blocking DNS or connect). */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void finish(tctx *c)
{
    if (c->ws)
        pj_websock_destroy(c->ws);
    tctx_free(c);
}

/* Starts connecting and returns how long pj_websock_connect took (ms), or
 * -1 after reporting a failure. */
static double start_connect(t_case *tc, tctx *c, const char *url, const pj_websock_connect_param *cp)
{
    pj_status_t rc;
    if (!c->ws) {
        rc = tctx_create(c, NULL, NULL);
        if (rc != PJ_SUCCESS) {
            t_fail_at(tc, __FILE__, __LINE__, "create: %s", st(rc));
            return -1;
        }
    }
    double t0 = now_ms();
    rc = tctx_connect(c, url, cp);
    double dt = now_ms() - t0;
    if (rc != PJ_SUCCESS) {
        t_fail_at(tc, __FILE__, __LINE__, "connect(%s) returned %s, want PJ_SUCCESS (asynchronous failure)", url,
                  st(rc));
        return -1;
    }
    return dt;
}

/* After a failed connect: exactly one on_connect, no on_close, CLOSED, and
 * the instance can connect again. */
static void check_failed_connect(t_case *tc, tctx *c, pj_status_t got)
{
    char url[512];
    sleep_ms(100);
    T_CHECK(tc, c->n_connect == 1, "on_connect called %d times", c->n_connect);
    T_CHECK(tc, c->n_close == 0, "on_close(%u) after a failed connect", c->close_code);
    T_CHECK(tc, c->state_in_connect == PJ_WEBSOCK_STATE_CLOSED, "state in failed on_connect %s",
            state_name(c->state_in_connect));
    T_CHECK(tc, pj_websock_get_state(c->ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s",
            state_name(pj_websock_get_state(c->ws)));
    (void)got;
    pj_status_t rc;
    pj_status_t rs = pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
    T_CHECK(tc, rs == PJ_EINVALIDOP, "send after failed connect: %s", st(rs));
    if (url_make(url, sizeof(url), "WS_ECHO_URL", "/")) {
        tctx_reset_events(c);
        rc = tctx_connect(c, url, NULL);
        T_CHECK(tc, rc == PJ_SUCCESS, "connect again after failure: %s", st(rc));
        if (rc == PJ_SUCCESS) {
            T_CHECK(tc, tctx_wait_connect(c, tmo(5000)) && c->connect_status == PJ_SUCCESS,
                    "second connect on the same instance: %s", st(c->connect_status));
            if (c->connect_status == PJ_SUCCESS)
                tctx_close_wait(tc, c, 1000, NULL);
        }
    }
}

/* A program without pjlib that passes an ioqueue: the callbacks could not
 * run on its polling threads, so create refuses rather than moving them. */
static void case_ioqueue_without_pjlib(t_case *tc, void *arg)
{
    (void)arg;
    static char fake_ioq[64], fake_th[64], fake_pool[256];
    pj_websock_param p;
    pj_websock_param_default(&p);
    p.ioqueue = (pj_ioqueue_t *)fake_ioq;
    p.timer_heap = (pj_timer_heap_t *)fake_th;
    pj_websock *ws = (pj_websock *)0x1;
    pj_status_t rc = pj_websock_create((pj_pool_t *)fake_pool, &p, &ws);
    T_CHECK(tc, rc == PJ_ENOTSUP, "create with an ioqueue, no pjlib: %s", st(rc));
    T_CHECK(tc, ws == (pj_websock *)0x1, "*p_ws written on failure");
    p.timer_heap = NULL;
    rc = pj_websock_create((pj_pool_t *)fake_pool, &p, &ws);
    T_CHECK(tc, rc == PJ_EINVAL, "ioqueue without timer_heap: %s", st(rc));
    T_CHECK(tc, pj_websock_get_live_count() == 0, "an instance leaked: %u", (unsigned)pj_websock_get_live_count());
}

static void case_refused(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_REFUSED_URL", "/"))
        goto out;
    double dt = start_connect(tc, &c, url, NULL);
    T_REQUIRE(tc, dt >= 0, "connect failed");
    if (!under_valgrind())
        T_CHECK(tc, dt < 50, "pj_websock_connect took %.1f ms", dt);
    double t0 = now_ms();
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(3000)), "no on_connect within 3 s");
    T_CHECK(tc, c.connect_status == PJ_STATUS_FROM_OS(ECONNREFUSED), "status %s, want %s", st(c.connect_status),
            st(PJ_STATUS_FROM_OS(ECONNREFUSED)));
    if (!under_valgrind())
        T_CHECK(tc, c.t_connect - t0 < 1000, "refusal reported after %.0f ms", c.t_connect - t0);
    check_failed_connect(tc, &c, PJ_STATUS_FROM_OS(ECONNREFUSED));
out:
    finish(&c);
}

static void case_unresolvable(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    tctx_init(&c);
    double dt = start_connect(tc, &c, "ws://nonexistent.invalid/", NULL);
    T_REQUIRE(tc, dt >= 0, "connect failed");
    if (!under_valgrind())
        T_CHECK(tc, dt < 50, "pj_websock_connect took %.1f ms (DNS on the caller's thread?)", dt);
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(20000)), "no on_connect within 20 s");
    T_CHECK(tc, c.connect_status == PJ_ERESOLVE, "status %s, want PJ_ERESOLVE", st(c.connect_status));
    check_failed_connect(tc, &c, PJ_ERESOLVE);
out:
    finish(&c);
}

static int blackhole_url(t_case *tc, char *url, size_t size)
{
    if (url_make(url, size, "WS_BLACKHOLE_URL", "/"))
        return 1;
    const char *why = getenv("WS_BLACKHOLE_SKIP");
    t_skip(tc, "no black-holed address: %s", why && *why ? why : "WS_BLACKHOLE_URL is not set");
    return 0;
}

typedef struct timeout_case {
    int timing;
    int blackhole;       /* else /slowhs: TCP up, handshake never answered in time */
} timeout_case;

static void case_connect_timeout(t_case *tc, void *arg)
{
    const timeout_case *t = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (t->timing && skip_timing_under_valgrind(tc))
        goto out;
    if (t->blackhole) {
        if (!blackhole_url(tc, url, sizeof(url)))
            goto out;
    } else if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/hs-slow?ms=5000")) {
        goto out;
    }
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    unsigned limit = t->blackhole ? 1000 : 500;
    rc = pj_websock_set_connect_timeout(c.ws, limit);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_connect_timeout: %s", st(rc));
    double t0 = now_ms();
    double dt = start_connect(tc, &c, url, NULL);
    T_REQUIRE(tc, dt >= 0, "connect failed");
    if (t->timing)
        T_CHECK(tc, dt < 50, "pj_websock_connect took %.1f ms", dt);
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CONNECTING || c.n_connect,
            "state %s while connecting", state_name(pj_websock_get_state(c.ws)));
    rc = tctx_connect(&c, url, NULL);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "connect while CONNECTING: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_connect(&c, t->timing ? 6000 : 60000), "no on_connect after the %u ms connect timeout",
              limit);
    double took = c.t_connect - t0;
    printf("# on_connect(%s) after %.0f ms\n", st(c.connect_status), took);
    T_CHECK(tc, c.connect_status == PJ_WEBSOCK_ECONNECTTIMEOUT || c.connect_status == PJ_ETIMEDOUT,
            "status %s, want ECONNECTTIMEOUT or PJ_ETIMEDOUT", st(c.connect_status));
    if (t->timing)
        T_CHECK(tc, took >= limit * 0.9 && took <= limit + 3000.0, "timed out after %.0f ms, want %u..%u", took,
                limit, limit + 3000);
    check_failed_connect(tc, &c, c.connect_status);
out:
    finish(&c);
}

/* pj_websock_send while CONNECTING: PJ_EINVALIDOP for every opcode, nothing
 * queued. During the TCP connect (black hole) the attempt is then aborted;
 * during the handshake (the server delays its 101) the connection then
 * opens and the first echo is the first message sent after opening, so
 * the refused ones never went out. */
typedef struct connecting_send_case {
    int blackhole;
} connecting_send_case;

static void case_send_while_connecting(t_case *tc, void *arg)
{
    const connecting_send_case *cs = arg;
    static const char probe[] = "first after open";
    char url[512];
    tctx c;
    tctx_init(&c);
    if (cs->blackhole) {
        if (!blackhole_url(tc, url, sizeof(url)))
            goto out;
    } else if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/slowhs?ms=1000")) {
        goto out;
    }
    T_REQUIRE(tc, start_connect(tc, &c, url, NULL) >= 0, "connect failed");
    /* the black hole never answers, /slowhs answers after 1 s: CONNECTING */
    T_REQUIRE(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CONNECTING, "state %s right after connect",
              state_name(pj_websock_get_state(c.ws)));
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "refused", 7);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send(TEXT) while CONNECTING: %s, want PJ_EINVALIDOP", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, "\x01\x02\x03", 3);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send(BIN) while CONNECTING: %s, want PJ_EINVALIDOP", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, NULL, 0);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send(BIN, empty) while CONNECTING: %s, want PJ_EINVALIDOP", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_PING, "p", 1);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send(PING) while CONNECTING: %s, want PJ_EINVALIDOP", st(rc));
    T_CHECK(tc, pj_websock_get_buffered_amount(c.ws) == 0, "buffered amount %zu after refused sends",
            (size_t)pj_websock_get_buffered_amount(c.ws));
    T_REQUIRE(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CONNECTING && c.n_connect == 0,
              "state %s, on_connect %d (%s) during the refused sends: inconclusive",
              state_name(pj_websock_get_state(c.ws)), c.n_connect, st(c.connect_status));

    if (cs->blackhole) {
        rc = pj_websock_close(c.ws, 1000, NULL);
        T_CHECK(tc, rc == PJ_SUCCESS, "close while CONNECTING: %s", st(rc));
        T_REQUIRE(tc, tctx_wait_connect(&c, tmo(3000)), "no on_connect after aborting the connect");
        T_CHECK(tc, c.connect_status == PJ_ECANCELLED, "status %s, want PJ_ECANCELLED", st(c.connect_status));
        check_failed_connect(tc, &c, PJ_ECANCELLED);
        goto out;
    }
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(10000)), "no on_connect");
    T_REQUIRE(tc, c.connect_status == PJ_SUCCESS, "on_connect %s", st(c.connect_status));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, probe, sizeof(probe) - 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send once OPEN: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo");
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "echo missing");
    T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_TEXT && m.len == sizeof(probe) - 1 && memcmp(m.data, probe, m.len) == 0,
            "first echo is op %d '%.*s', want '%s' (a refused send went out)", m.opcode, (int)m.len,
            (const char *)m.data, probe);
    sleep_ms(200);
    T_CHECK(tc, c.n_rx == 1, "%zu echoes for one accepted message", c.n_rx);
    tctx_close_wait(tc, &c, 1000, NULL);
    T_CHECK(tc, c.n_close == 1 && c.close_code == 1000, "on_close %d times, code %u", c.n_close, c.close_code);
out:
    finish(&c);
}

typedef struct hs_case {
    const char *var;
    const char *path;
    const char *subprotocol;
    pj_status_t want;
    const char *want_name;
    int http_status;     /* expected pj_websock_get_http_status(), 0: not checked */
} hs_case;

#define HS(var, path, sub, code) {var, path, sub, code, #code, 0}
#define HSS(var, path, code, http) {var, path, NULL, code, #code, http}

static void case_handshake(t_case *tc, void *arg)
{
    const hs_case *h = arg;
    char url[512];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), h->var, h->path))
        goto out;
    pj_websock_connect_param_default(&cp);
    if (h->subprotocol)
        cp.subprotocol = pjstr(h->subprotocol);
    double dt = start_connect(tc, &c, url, &cp);
    T_REQUIRE(tc, dt >= 0, "connect failed");
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)), "no on_connect within 5 s");
    T_CHECK(tc, c.connect_status == h->want, "status %s, want %s", st(c.connect_status), st(h->want));
    if (h->http_status)
        T_CHECK(tc, pj_websock_get_http_status(c.ws) == h->http_status, "http status %d, want %d",
                pj_websock_get_http_status(c.ws), h->http_status);
    check_failed_connect(tc, &c, c.connect_status);
out:
    finish(&c);
}

typedef struct cancel_case {
    const char *what;
    int blackhole;
} cancel_case;

static void case_cancel(t_case *tc, void *arg)
{
    const cancel_case *cc = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (cc->blackhole) {
        if (!blackhole_url(tc, url, sizeof(url)))
            goto out;
    } else if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/slowhs?ms=3000")) {
        goto out;
    }
    double dt = start_connect(tc, &c, url, NULL);
    T_REQUIRE(tc, dt >= 0, "connect failed");
    sleep_ms(200); /* TCP connect pending (black hole) / handshake pending */
    T_REQUIRE(tc, c.n_connect == 0, "on_connect(%s) before the cancel", st(c.connect_status));
    pj_status_t rc = pj_websock_close(c.ws, 1000, NULL);
    T_CHECK(tc, rc == PJ_SUCCESS, "close while CONNECTING: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(3000)), "no on_connect after aborting the connect");
    T_CHECK(tc, c.connect_status == PJ_ECANCELLED, "status %s, want PJ_ECANCELLED", st(c.connect_status));
    check_failed_connect(tc, &c, PJ_ECANCELLED);
out:
    finish(&c);
}

/* websock.h: close_info is "valid once on_close was called, or after a
 * failed connect": its status then tells why the connect failed. */
static void case_close_info_after_failure(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/hs-status-401"))
        goto out;
    T_REQUIRE(tc, start_connect(tc, &c, url, NULL) >= 0, "connect failed");
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)), "no on_connect");
    T_CHECK(tc, c.connect_status == PJ_WEBSOCK_EHS_STATUS, "on_connect %s", st(c.connect_status));
    pj_websock_close_info info;
    memset(&info, 0xAA, sizeof(info));
    pj_status_t rc = pj_websock_get_close_info(c.ws, &info);
    T_CHECK(tc, rc == PJ_SUCCESS, "get_close_info: %s", st(rc));
    T_CHECK(tc, info.status == PJ_WEBSOCK_EHS_STATUS, "close_info.status %s after a failed connect, want %s",
            st(info.status), st(PJ_WEBSOCK_EHS_STATUS));
    T_CHECK(tc, !info.clean && info.code_sent == 0 && info.code_received == 0,
            "close_info clean=%d sent=%u rcvd=%u", info.clean, info.code_sent, info.code_received);
out:
    finish(&c);
}

/* The rejected response stays available: pj_websock_get_http_status() and
 * pj_websock_get_http_response() (raw head, NUL-terminated, truncated). */
static void case_http_response(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], head[4096], small[16];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/hs-status-401"))
        goto out;
    T_CHECK(tc, pj_websock_get_http_status(NULL) == 0, "get_http_status(NULL)");
    T_CHECK(tc, pj_websock_get_http_response(NULL, head, sizeof(head)) == -1, "get_http_response(NULL)");
    T_REQUIRE(tc, start_connect(tc, &c, url, NULL) >= 0, "connect failed");
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)), "no on_connect");
    T_CHECK(tc, c.connect_status == PJ_WEBSOCK_EHS_STATUS, "on_connect %s", st(c.connect_status));
    T_CHECK(tc, pj_websock_get_http_status(c.ws) == 401, "http status %d, want 401",
            pj_websock_get_http_status(c.ws));
    memset(head, 'Z', sizeof(head));
    pj_ssize_t n = pj_websock_get_http_response(c.ws, head, sizeof(head));
    T_REQUIRE(tc, n > 0 && n < (pj_ssize_t)sizeof(head), "get_http_response returned %ld", (long)n);
    T_CHECK(tc, head[n] == '\0' && (pj_ssize_t)strlen(head) == n, "response not NUL-terminated at %ld", (long)n);
    T_CHECK(tc, strncmp(head, "HTTP/1.1 401 Unauthorized", 25) == 0, "response starts '%.30s'", head);
    T_CHECK(tc, strstr(head, "WWW-Authenticate: Bearer") != NULL, "response lacks WWW-Authenticate: '%s'", head);
    memset(small, 'Z', sizeof(small));
    pj_ssize_t n2 = pj_websock_get_http_response(c.ws, small, 10);
    T_CHECK(tc, n2 == n, "truncated call returned %ld, want the full length %ld", (long)n2, (long)n);
    T_CHECK(tc, small[9] == '\0' && small[10] == 'Z' && strncmp(small, "HTTP/1.1 ", 9) == 0,
            "truncated copy '%.9s' not NUL-terminated at 9", small);
out:
    finish(&c);
}

int main(void)
{
    static const hs_case hs[] = {
        HSS("WS_RAW_URL", "/hs-status-401", PJ_WEBSOCK_EHS_STATUS, 401),
        HSS("WS_RAW_URL", "/hs-status-200", PJ_WEBSOCK_EHS_STATUS, 200),
        HSS("WS_RAW_URL", "/no-such-scenario", PJ_WEBSOCK_EHS_STATUS, 404),
        HSS("WS_ECHO_URL", "/reject?status=403", PJ_WEBSOCK_EHS_STATUS, 403),
        HSS("WS_ECHO_URL", "/stt", PJ_WEBSOCK_EHS_STATUS, 401),
        HS("WS_RAW_URL", "/hs-bad-accept", NULL, PJ_WEBSOCK_EHS_ACCEPT),
        HS("WS_RAW_URL", "/hs-no-accept", NULL, PJ_WEBSOCK_EHS_ACCEPT),
        HS("WS_RAW_URL", "/hs-no-upgrade", NULL, PJ_WEBSOCK_EHS_UPGRADE),
        HS("WS_RAW_URL", "/hs-bad-upgrade", NULL, PJ_WEBSOCK_EHS_UPGRADE),
        HS("WS_RAW_URL", "/hs-no-connection", NULL, PJ_WEBSOCK_EHS_CONNECTION),
        HS("WS_RAW_URL", "/hs-bad-subprotocol", "chat", PJ_WEBSOCK_EHS_SUBPROTOCOL),
        HS("WS_RAW_URL", "/hs-bad-subprotocol", NULL, PJ_WEBSOCK_EHS_SUBPROTOCOL),
        HS("WS_RAW_URL", "/hs-extension", NULL, PJ_WEBSOCK_EHS_EXTENSION),
        HS("WS_RAW_URL", "/hs-garbage", NULL, PJ_WEBSOCK_EHS_MALFORMED),
        HS("WS_RAW_URL", "/hs-huge", NULL, PJ_WEBSOCK_EHS_TOOLARGE),
        HS("WS_RAW_URL", "/hs-eof", NULL, PJ_WEBSOCK_ECONNCLOSED),
    };
    static const timeout_case bh_timed = {1, 1}, bh_untimed = {0, 1}, slow_timed = {1, 0}, slow_untimed = {0, 0};
    static const cancel_case cancel_bh = {"TCP connect pending", 1}, cancel_hs = {"handshake pending", 0};
    static const connecting_send_case send_bh = {1}, send_hs = {0};

    t_run("ioqueue given, pjlib absent -> PJ_ENOTSUP; no timer_heap -> PJ_EINVAL", case_ioqueue_without_pjlib, NULL);
    t_run("connection refused -> on_connect(PJ_STATUS_FROM_OS(ECONNREFUSED))", case_refused, NULL);
    t_run("unresolvable host -> on_connect(PJ_ERESOLVE), connect does not block", case_unresolvable, NULL);
    t_run("black-holed address, connect timeout 1 s (timing)", case_connect_timeout, (void *)&bh_timed);
    t_run("black-holed address, connect timeout (no timing bounds)", case_connect_timeout, (void *)&bh_untimed);
    t_run("handshake never answered, connect timeout 0.5 s (timing)", case_connect_timeout, (void *)&slow_timed);
    t_run("handshake never answered, connect timeout (no timing bounds)", case_connect_timeout,
          (void *)&slow_untimed);
    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); ++i)
        t_runf(case_handshake, (void *)&hs[i], "handshake %s%s%s -> %s", hs[i].path,
               hs[i].subprotocol ? " offering " : "", hs[i].subprotocol ? hs[i].subprotocol : "", hs[i].want_name);
    t_run("close() while TCP connect pending -> on_connect(PJ_ECANCELLED)", case_cancel, (void *)&cancel_bh);
    t_run("close() while handshake pending -> on_connect(PJ_ECANCELLED)", case_cancel, (void *)&cancel_hs);
    t_run("send while CONNECTING (TCP connect pending) -> PJ_EINVALIDOP, nothing queued, abort",
          case_send_while_connecting, (void *)&send_bh);
    t_run("send while CONNECTING (handshake pending) -> PJ_EINVALIDOP, nothing sent once open",
          case_send_while_connecting, (void *)&send_hs);
    t_run("close_info.status reports why the connect failed", case_close_info_after_failure, NULL);
    t_run("get_http_status/get_http_response after a 401", case_http_response, NULL);
    return t_done();
}
