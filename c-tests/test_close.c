/* Closing: client- and server-initiated close handshakes, what exactly the
 * client sends (raw_server.py /expect-close answers with the reason
 * "got:<code>:<reason>"), empty close bodies (1005), transport drops, the
 * close timeout, oversize messages (1009), argument checks, state
 * sequence, on_close exactly once, and reconnecting the same instance. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void finish(tctx *c)
{
    if (c->ws)
        pj_websock_destroy(c->ws);
    tctx_free(c);
}

/* After on_close: no second on_close, state CLOSED, close/send refused. */
static void check_after_close(t_case *tc, tctx *c)
{
    sleep_ms(150);
    T_CHECK(tc, c->n_close == 1, "on_close called %d times", c->n_close);
    T_CHECK(tc, c->state_in_close == PJ_WEBSOCK_STATE_CLOSED, "state in on_close %s", state_name(c->state_in_close));
    T_CHECK(tc, pj_websock_get_state(c->ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s after on_close",
            state_name(pj_websock_get_state(c->ws)));
    pj_status_t rc = pj_websock_close(c->ws, 1000, NULL);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "close after on_close: %s", st(rc));
    rc = pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send after on_close: %s", st(rc));
    T_CHECK(tc, c->n_after_destroy == 0 && c->n_wrong_ws == 0, "callback for wrong/destroyed instance");
}

static void case_client_close(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    pj_str_t reason = pjstr("normal bye");
    pj_status_t rc = pj_websock_close(c.ws, 1000, &reason);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "close: %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSING || c.n_close > 0,
            "state %s right after close()", state_name(pj_websock_get_state(c.ws)));
    rc = pj_websock_close(c.ws, 1000, &reason);
    T_CHECK(tc, rc == PJ_EINVALIDOP || c.n_close > 0, "second close while CLOSING: %s", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "late", 4);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send while CLOSING: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "no on_close");
    T_CHECK(tc, c.close_code == 1000, "on_close code %u, want the server's echo 1000", c.close_code);
    T_CHECK(tc, c.close_info_rc == PJ_SUCCESS, "get_close_info: %s", st(c.close_info_rc));
    T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_LOCAL, "initiator %d, want LOCAL",
            (int)c.close_info.initiator);
    T_CHECK(tc, c.close_info.clean, "not clean");
    T_CHECK(tc, c.close_info.code_sent == 1000, "code_sent %u", c.close_info.code_sent);
    T_CHECK(tc, c.close_info.code_received == 1000, "code_received %u", c.close_info.code_received);
    T_CHECK(tc, c.close_info.status == PJ_SUCCESS, "status %s", st(c.close_info.status));
    check_after_close(tc, &c);
    /* close_info stays readable after on_close */
    pj_websock_close_info info;
    T_CHECK(tc, pj_websock_get_close_info(c.ws, &info) == PJ_SUCCESS && info.initiator == PJ_WEBSOCK_CLOSE_LOCAL &&
                    info.code_sent == 1000,
            "close_info changed after on_close");
out:
    finish(&c);
}

typedef struct expect_case {
    unsigned code;
    const char *reason;     /* NULL: pass NULL */
    const char *want_reason;/* what on_close must report */
    unsigned want_code;
    int prefix;             /* want_reason is a prefix */
} expect_case;

static void case_expect_close(t_case *tc, void *arg)
{
    const expect_case *e = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/expect-close"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    T_REQUIRE(tc, tctx_close_wait(tc, &c, (pj_uint16_t)e->code, e->reason), "close failed");
    T_CHECK(tc, c.close_code == e->want_code, "on_close code %u, want %u", c.close_code, e->want_code);
    size_t wl = strlen(e->want_reason);
    if (e->prefix)
        T_CHECK(tc, c.close_reason_len >= (long)wl && memcmp(c.close_reason, e->want_reason, wl) == 0,
                "server saw '%s', want '%s...'", c.close_reason, e->want_reason);
    else
        T_CHECK(tc, c.close_reason_len == (long)wl && memcmp(c.close_reason, e->want_reason, wl) == 0,
                "server saw '%s' (len %ld), want '%s'", c.close_reason, c.close_reason_len, e->want_reason);
    T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_LOCAL, "initiator %d", (int)c.close_info.initiator);
    T_CHECK(tc, c.close_info.code_sent == e->code, "code_sent %u, want %u", c.close_info.code_sent, e->code);
    T_CHECK(tc, c.close_info.clean && c.close_info.status == PJ_SUCCESS, "clean=%d status %s", c.close_info.clean,
            st(c.close_info.status));
    check_after_close(tc, &c);
out:
    finish(&c);
}

/* Data accepted before close() goes out before the close frame, and
 * messages arriving before the peer's close frame are still delivered. */
static void case_data_before_close(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    char msg[32];
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/expect-close"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    for (int i = 0; i < 20; ++i) {
        int n = snprintf(msg, sizeof(msg), "m%02d", i);
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, msg, (size_t)n);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    }
    T_REQUIRE(tc, tctx_close_wait(tc, &c, 1000, "after data"), "close failed");
    T_CHECK(tc, strcmp(c.close_reason, "got:1000:after data") == 0, "server saw '%s'", c.close_reason);
    T_CHECK(tc, c.n_rx == 20, "%zu of 20 echoes delivered before on_close", c.n_rx);
    for (size_t i = 0; i < c.n_rx; ++i) {
        rx_msg m;
        snprintf(msg, sizeof(msg), "m%02zu", i);
        T_CHECK(tc, tctx_msg(&c, i, &m) && m.len == 3 && memcmp(m.data, msg, 3) == 0, "echo %zu is '%s'", i,
                (const char *)m.data);
    }
    check_after_close(tc, &c);
out:
    finish(&c);
}

typedef struct server_close_case {
    const char *var;
    const char *path;
    const char *send_first;   /* message to send first, or NULL */
    unsigned want_code;
    const char *want_reason;
    pj_websock_close_initiator want_initiator;
    int want_clean;
} server_close_case;

static void case_server_close(t_case *tc, void *arg)
{
    const server_close_case *s = arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), s->var, s->path))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    if (s->send_first) {
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, s->send_first, strlen(s->send_first));
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    }
    T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "no on_close");
    T_CHECK(tc, c.close_code == s->want_code, "on_close code %u, want %u", c.close_code, s->want_code);
    T_CHECK(tc, c.close_reason_len == (long)strlen(s->want_reason) && strcmp(c.close_reason, s->want_reason) == 0,
            "on_close reason '%s' (len %ld), want '%s'", c.close_reason, c.close_reason_len, s->want_reason);
    T_CHECK(tc, c.close_info.initiator == s->want_initiator, "initiator %d, want %d", (int)c.close_info.initiator,
            (int)s->want_initiator);
    T_CHECK(tc, !!c.close_info.clean == s->want_clean, "clean=%d, want %d", c.close_info.clean, s->want_clean);
    if (s->want_initiator == PJ_WEBSOCK_CLOSE_PEER) {
        T_CHECK(tc, c.close_info.code_received == s->want_code, "code_received %u", c.close_info.code_received);
        T_CHECK(tc, c.close_info.status == PJ_SUCCESS, "status %s", st(c.close_info.status));
    } else {
        T_CHECK(tc, c.close_info.code_received == 0, "code_received %u", c.close_info.code_received);
        T_CHECK(tc, c.close_info.status != PJ_SUCCESS, "status PJ_SUCCESS for a dropped connection");
    }
    check_after_close(tc, &c);
out:
    finish(&c);
}

typedef struct close_timeout_case {
    int timing;
} close_timeout_case;

static void case_close_timeout(t_case *tc, void *arg)
{
    const close_timeout_case *ct = arg;
    char url[512];
    tctx c;
    pj_websock_param p;
    tctx_init(&c);
    if (ct->timing && skip_timing_under_valgrind(tc))
        goto out;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/silent"))
        goto out;
    tctx_param(&c, &p);
    p.ping_interval = 0;
    pj_status_t rc = tctx_create(&c, &p, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_set_close_timeout(c.ws, 500);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_close_timeout: %s", st(rc));
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    double t0 = now_ms();
    rc = pj_websock_close(c.ws, 1000, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "close: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_close(&c, ct->timing ? 5000 : 60000), "no on_close after the close timeout");
    double dt = c.t_close - t0;
    printf("# on_close %.0f ms after close()\n", dt);
    if (ct->timing)
        T_CHECK(tc, dt >= 450 && dt <= 3000, "on_close %.0f ms after close(), want 500..3000", dt);
    T_CHECK(tc, c.close_code == 0, "on_close code %u, want 0 (nothing received)", c.close_code);
    T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_TIMEOUT, "initiator %d, want TIMEOUT",
            (int)c.close_info.initiator);
    T_CHECK(tc, c.close_info.status == PJ_WEBSOCK_ECLOSETIMEOUT, "status %s, want ECLOSETIMEOUT",
            st(c.close_info.status));
    T_CHECK(tc, c.close_info.code_sent == 1000 && c.close_info.code_received == 0 && !c.close_info.clean,
            "close_info sent=%u rcvd=%u clean=%d", c.close_info.code_sent, c.close_info.code_received,
            c.close_info.clean);
    check_after_close(tc, &c);
out:
    finish(&c);
}

typedef struct big_case {
    size_t max_rx;          /* param value; 0 = library default */
    int use_default_param;  /* leave max_rx_msg_size as param_default set it */
    size_t n;               /* /bigreply?n= */
    int want_delivered;
} big_case;

static void case_bigreply(t_case *tc, void *arg)
{
    const big_case *b = arg;
    char url[512], path[64];
    tctx c;
    pj_websock_param p;
    tctx_init(&c);
    snprintf(path, sizeof(path), "/bigreply?n=%zu", b->n);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", path))
        goto out;
    tctx_param(&c, &p);
    if (!b->use_default_param)
        p.max_rx_msg_size = b->max_rx;
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    if (b->want_delivered) {
        T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "message of %zu bytes not delivered (on_close %u, status %s)",
                  b->n, c.close_code, st(c.close_info.status));
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, 0, &m), "missing");
        T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_BIN && m.len == b->n, "op %d len %zu", m.opcode, m.len);
        long bad = pat_check(m.data, m.len, 0);
        T_CHECK(tc, bad < 0, "payload differs at %ld", bad);
        T_CHECK(tc, c.n_close == 0, "on_close(%u)", c.close_code);
        tctx_close_wait(tc, &c, 1000, NULL);
    } else {
        T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "no on_close after an oversize message");
        T_CHECK(tc, c.n_rx == 0, "oversize message delivered (%zu bytes)", c.rx_bytes);
        T_CHECK(tc, c.close_info.code_sent == 1009, "code_sent %u, want 1009", c.close_info.code_sent);
        T_CHECK(tc, c.close_info.status == PJ_WEBSOCK_EMSGTOOBIG, "status %s, want EMSGTOOBIG",
                st(c.close_info.status));
        T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_PROTOCOL, "initiator %d, want PROTOCOL",
                (int)c.close_info.initiator);
        T_CHECK(tc, c.close_code == 1009 || c.close_code == 0, "on_close code %u (server echo 1009 or none)",
                c.close_code);
        check_after_close(tc, &c);
    }
out:
    finish(&c);
}

static void case_close_args(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], long_reason[200];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/expect-close"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    static const unsigned bad_codes[] = {1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); ++i) {
        pj_status_t rc = pj_websock_close(c.ws, (pj_uint16_t)bad_codes[i], NULL);
        T_CHECK(tc, rc == PJ_EINVAL, "close(%u): %s", bad_codes[i], st(rc));
    }
    memset(long_reason, 'r', sizeof(long_reason));
    pj_str_t r124 = {long_reason, 124};
    pj_status_t rc = pj_websock_close(c.ws, 1000, &r124);
    T_CHECK(tc, rc == PJ_EINVAL, "close with a 124-byte reason: %s", st(rc));
    pj_str_t bad_utf8 = {(char *)"bad \xff\xfe utf8", 12};
    rc = pj_websock_close(c.ws, 1000, &bad_utf8);
    T_CHECK(tc, rc == PJ_EINVAL, "close with invalid UTF-8 reason: %s", st(rc));
    pj_str_t null_ptr = {NULL, 5};
    rc = pj_websock_close(c.ws, 1000, &null_ptr);
    T_CHECK(tc, rc == PJ_EINVAL, "close with reason {NULL, 5}: %s", st(rc));
    pj_str_t some = pjstr("why");
    rc = pj_websock_close(c.ws, 0, &some);
    T_CHECK(tc, rc == PJ_EINVAL, "close(0) with a reason: %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN, "state %s after refused closes",
            state_name(pj_websock_get_state(c.ws)));
    T_CHECK(tc, c.n_close == 0, "on_close after refused closes");
    /* 123 bytes is fine; the server's answer echoes as much as fits */
    pj_str_t r123 = {long_reason, 123};
    rc = pj_websock_close(c.ws, 3000, &r123);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "close(3000, 123-byte reason): %s", st(rc));
    T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "no on_close");
    T_CHECK(tc, c.close_code == 3000 && strncmp(c.close_reason, "got:3000:rrrrrrrrrr", 19) == 0 &&
                    c.close_reason_len == 123,
            "server saw code %u reason '%.30s...' (len %ld)", c.close_code, c.close_reason, c.close_reason_len);
out:
    finish(&c);
}

/* State sequence through callbacks, twice on one instance. */
static void case_reconnect(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    for (int round = 0; round < 3; ++round) {
        tctx_reset_events(&c);
        tctx_clear_msgs(&c);
        T_REQUIRE(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "round %d: state %s before connect",
                  round, state_name(pj_websock_get_state(c.ws)));
        rc = tctx_connect(&c, url, NULL);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "round %d: connect: %s", round, st(rc));
        pj_websock_readystate s = pj_websock_get_state(c.ws);
        T_CHECK(tc, s == PJ_WEBSOCK_STATE_CONNECTING || (s == PJ_WEBSOCK_STATE_OPEN && c.n_connect),
                "round %d: state %s right after connect", round, state_name(s));
        rc = tctx_connect(&c, url, NULL);
        T_CHECK(tc, rc == PJ_EINVALIDOP, "round %d: connect while CONNECTING: %s", round, st(rc));
        T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)) && c.connect_status == PJ_SUCCESS, "round %d: on_connect %s",
                  round, st(c.connect_status));
        T_CHECK(tc, c.state_in_connect == PJ_WEBSOCK_STATE_OPEN, "round %d: state in on_connect %s", round,
                state_name(c.state_in_connect));
        rc = tctx_connect(&c, url, NULL);
        T_CHECK(tc, rc == PJ_EINVALIDOP, "round %d: connect while OPEN: %s", round, st(rc));
        char msg[16];
        int n = snprintf(msg, sizeof(msg), "round-%d", round);
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, msg, (size_t)n);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
        T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "round %d: no echo", round);
        rx_msg m;
        T_CHECK(tc, tctx_msg(&c, 0, &m) && m.len == (size_t)n && memcmp(m.data, msg, (size_t)n) == 0,
                "round %d: echo '%s'", round, (const char *)m.data);
        rc = pj_websock_close(c.ws, 1000, NULL);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "close: %s", st(rc));
        s = pj_websock_get_state(c.ws);
        T_CHECK(tc, s == PJ_WEBSOCK_STATE_CLOSING || c.n_close, "round %d: state %s after close()", round,
                state_name(s));
        T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "round %d: no on_close", round);
        T_CHECK(tc, c.state_in_close == PJ_WEBSOCK_STATE_CLOSED, "round %d: state in on_close %s", round,
                state_name(c.state_in_close));
        T_CHECK(tc, c.n_connect == 1 && c.n_close == 1, "round %d: %d on_connect, %d on_close", round, c.n_connect,
                c.n_close);
    }
out:
    finish(&c);
}

/* Reconnect from inside on_close. */
static void reconnect_hook(tctx *c, pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    (void)code;
    (void)reason;
    const char *url = c->arg;
    if (c->n_close == 1) {
        pj_str_t u = pjstr(url);
        pj_status_t rc = pj_websock_connect(ws, &u, NULL);
        pthread_mutex_lock(&c->mu);
        c->hook_status = rc; /* not connect_status: tctx_open may still be reading it */
        pthread_mutex_unlock(&c->mu);
    }
}

static int two_connects(tctx *c, void *arg)
{
    (void)arg;
    return c->n_connect >= 2;
}

static void case_reconnect_in_on_close(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/close?code=4002&reason=again"))
        goto out;
    char url2[512];
    url_make(url2, sizeof(url2), "WS_ECHO_URL", "/");
    c.arg = url2;
    c.close_hook = reconnect_hook;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    T_REQUIRE(tc, tctx_wait_until(&c, two_connects, NULL, tmo(5000)), "no second on_connect (connect from on_close: %s)",
              st(c.hook_status));
    T_CHECK(tc, c.hook_status == PJ_SUCCESS, "pj_websock_connect from on_close: %s", st(c.hook_status));
    T_CHECK(tc, c.close_code == 4002, "first on_close code %u", c.close_code);
    T_CHECK(tc, c.connect_status == PJ_SUCCESS, "second on_connect: %s", st(c.connect_status));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN, "state %s", state_name(pj_websock_get_state(c.ws)));
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, "\x01\x02", 2);
    T_CHECK(tc, rc == PJ_SUCCESS, "send on the new connection: %s", st(rc));
    T_CHECK(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo on the new connection");
    c.close_hook = NULL;
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    finish(&c);
}

int main(void)
{
    static const expect_case exp[] = {
        {4000, "see you", "got:4000:see you", 4000, 0},
        {1000, NULL, "got:1000:", 1000, 0},
        {1001, "", "got:1001:", 1001, 0},
        {3999, "tsch\xc3\xbc\xc3\x9f \xe2\x82\xac", "got:3999:tsch\xc3\xbc\xc3\x9f \xe2\x82\xac", 3999, 0},
        {0, NULL, "got:none:", 1000, 0},
    };
    static const server_close_case srv[] = {
        {"WS_ECHO_URL", "/close?code=4001&reason=bye", NULL, 4001, "bye", PJ_WEBSOCK_CLOSE_PEER, 1},
        {"WS_ECHO_URL", "/close?code=1001&reason=going%20away&after=1", "hi", 1001, "going away",
         PJ_WEBSOCK_CLOSE_PEER, 1},
        {"WS_ECHO_URL", "/close?code=1000", NULL, 1000, "", PJ_WEBSOCK_CLOSE_PEER, 1},
        {"WS_RAW_URL", "/close-empty", NULL, 1005, "", PJ_WEBSOCK_CLOSE_PEER, 1},
        {"WS_ECHO_URL", "/drop", NULL, 0, "", PJ_WEBSOCK_CLOSE_TRANSPORT, 0},
        {"WS_ECHO_URL", "/drop?rst=1", NULL, 0, "", PJ_WEBSOCK_CLOSE_TRANSPORT, 0},
        {"WS_ECHO_URL", "/drop?after=1", "hi", 0, "", PJ_WEBSOCK_CLOSE_TRANSPORT, 0},
    };
    static const close_timeout_case ct_timed = {1}, ct_untimed = {0};
    static const big_case big[] = {
        {1000, 0, 2000, 0},
        {1000, 0, 1000, 1},
        {1000, 0, 1001, 0},
        {0, 1, 262144, 1},
        {0, 1, 262145, 0},
        {0, 0, 262144, 1},
        {0, 0, 262145, 0},
    };

    t_run("client close 1000: LOCAL, clean, server echo reported", case_client_close, NULL);
    for (size_t i = 0; i < sizeof(exp) / sizeof(exp[0]); ++i)
        t_runf(case_expect_close, (void *)&exp[i], "server receives close code %u reason %s%s%s", exp[i].code,
               exp[i].reason ? "'" : "", exp[i].reason ? exp[i].reason : "NULL", exp[i].reason ? "'" : "");
    t_run("data sent before close() arrives first, echoes before the close are delivered", case_data_before_close,
          NULL);
    for (size_t i = 0; i < sizeof(srv) / sizeof(srv[0]); ++i)
        t_runf(case_server_close, (void *)&srv[i], "server %s -> on_close(%u, '%s')", srv[i].path, srv[i].want_code,
               srv[i].want_reason);
    t_run("close timeout 500 ms against a silent peer (timing)", case_close_timeout, (void *)&ct_timed);
    t_run("close timeout against a silent peer (no timing bounds)", case_close_timeout, (void *)&ct_untimed);
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); ++i)
        t_runf(case_bigreply, (void *)&big[i], "max_rx_msg_size %s%zu, %zu-byte message -> %s",
               big[i].use_default_param ? "default " : "", big[i].use_default_param ? (size_t)262144 : big[i].max_rx,
               big[i].n, big[i].want_delivered ? "delivered" : "1009");
    t_run("close argument checks (codes, reason length/UTF-8)", case_close_args, NULL);
    t_run("state sequence and reconnect on the same instance (3 rounds)", case_reconnect, NULL);
    t_run("reconnect from inside on_close", case_reconnect_in_on_close, NULL);
    return t_done();
}
