/* ABI and argument checking of the public header and library.
 *
 * Compile time: every size and offset that pjproject's own websock.h has on
 * x86-64 (docs: /work/shared/ABI.md), enum values and status codes.
 * Run time: the *_default() functions, NULL/invalid arguments of every
 * function, the extension setters' ranges, pj_websock_strerror().
 */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ */
/* Layout (x86-64 LP64)                                                */

#define SA(cond) _Static_assert(cond, #cond)

SA(sizeof(pj_status_t) == 4);
SA(sizeof(pj_bool_t) == 4);
SA(sizeof(pj_size_t) == 8);
SA(sizeof(pj_ssize_t) == 8);
SA(sizeof(pj_uint16_t) == 2);
SA((pj_ssize_t)-1 < 0);
SA((pj_uint16_t)-1 > 0);

SA(sizeof(pj_str_t) == 16);
SA(offsetof(pj_str_t, ptr) == 0);
SA(offsetof(pj_str_t, slen) == 8);

SA(sizeof(pj_time_val) == 16);
SA(offsetof(pj_time_val, sec) == 0);
SA(offsetof(pj_time_val, msec) == 8);

SA(sizeof(pj_http_header_elmt) == 32);
SA(offsetof(pj_http_header_elmt, name) == 0);
SA(offsetof(pj_http_header_elmt, value) == 16);

SA(sizeof(pj_http_headers) == 1032);
SA(offsetof(pj_http_headers, count) == 0);
SA(offsetof(pj_http_headers, header) == 8);
SA(sizeof(((pj_http_headers *)0)->header) / sizeof(pj_http_header_elmt) == 32);
SA(sizeof(((pj_http_headers *)0)->count) == 4);

SA(sizeof(pj_websock_cb) == 24);
SA(offsetof(pj_websock_cb, on_connect) == 0);
SA(offsetof(pj_websock_cb, on_rx_msg) == 8);
SA(offsetof(pj_websock_cb, on_close) == 16);

SA(sizeof(pj_websock_param) == 80);
SA(offsetof(pj_websock_param, ioqueue) == 0);
SA(offsetof(pj_websock_param, timer_heap) == 8);
SA(offsetof(pj_websock_param, cb) == 16);
SA(offsetof(pj_websock_param, user_data) == 40);
SA(offsetof(pj_websock_param, max_rx_msg_size) == 48);
SA(offsetof(pj_websock_param, ssl_param) == 56);
SA(offsetof(pj_websock_param, ping_interval) == 64);
SA(offsetof(pj_websock_param, grp_lock) == 72);
SA(sizeof(((pj_websock_param *)0)->ping_interval) == 4);
SA(sizeof(((pj_websock_param *)0)->max_rx_msg_size) == 8);

SA(sizeof(pj_websock_connect_param) == 1048);
SA(offsetof(pj_websock_connect_param, extra_hdr) == 0);
SA(offsetof(pj_websock_connect_param, subprotocol) == 1032);

SA(sizeof(pj_websock_opcode) == 4);
SA(sizeof(pj_websock_readystate) == 4);
SA(sizeof(pj_websock_close_initiator) == 4);

SA(PJ_WEBSOCK_OP_CONT == 0x0);
SA(PJ_WEBSOCK_OP_TEXT == 0x1);
SA(PJ_WEBSOCK_OP_BIN == 0x2);
SA(PJ_WEBSOCK_OP_CLOSE == 0x8);
SA(PJ_WEBSOCK_OP_PING == 0x9);
SA(PJ_WEBSOCK_OP_PONG == 0xA);

SA(PJ_WEBSOCK_STATE_CONNECTING == 0);
SA(PJ_WEBSOCK_STATE_OPEN == 1);
SA(PJ_WEBSOCK_STATE_CLOSING == 2);
SA(PJ_WEBSOCK_STATE_CLOSED == 3);

SA(PJ_WEBSOCK_CLOSE_NONE == 0);
SA(PJ_WEBSOCK_CLOSE_LOCAL == 1);
SA(PJ_WEBSOCK_CLOSE_PEER == 2);
SA(PJ_WEBSOCK_CLOSE_TRANSPORT == 3);
SA(PJ_WEBSOCK_CLOSE_TIMEOUT == 4);
SA(PJ_WEBSOCK_CLOSE_PROTOCOL == 5);

/* pj_websock_close_info as documented in the extension API */
SA(offsetof(pj_websock_close_info, initiator) == 0);
SA(offsetof(pj_websock_close_info, clean) == 4);
SA(offsetof(pj_websock_close_info, code_sent) == 8);
SA(offsetof(pj_websock_close_info, code_received) == 10);
SA(offsetof(pj_websock_close_info, status) == 12);
SA(sizeof(pj_websock_close_info) == 16);

SA(PJ_WEBSOCK_MAX_HEADERS == 16);
SA(PJ_WEBSOCK_MAX_RX_MSG_SIZE == 256 * 1024);
SA(PJ_WEBSOCK_DEFAULT_PING_INTERVAL == 30);
SA(PJ_WEBSOCK_TX_BUF_SIZE == 64 * 1024);
SA(PJ_WEBSOCK_RX_BUF_SIZE > 0);

SA(PJ_SUCCESS == 0);
SA(PJ_EUNKNOWN == 70001);
SA(PJ_EPENDING == 70002);
SA(PJ_EINVAL == 70004);
SA(PJ_ENOMEM == 70007);
SA(PJ_EBUG == 70008);
SA(PJ_ETIMEDOUT == 70009);
SA(PJ_ETOOMANY == 70010);
SA(PJ_EBUSY == 70011);
SA(PJ_ENOTSUP == 70012);
SA(PJ_EINVALIDOP == 70013);
SA(PJ_ECANCELLED == 70014);
SA(PJ_EEOF == 70016);
SA(PJ_ETOOBIG == 70017);
SA(PJ_ERESOLVE == 70018);
SA(PJ_ETOOSMALL == 70019);
SA(PJ_EIGNORED == 70020);
SA(PJ_EGONE == 70023);
SA(PJ_STATUS_FROM_OS(ECONNREFUSED) == 120111);

SA(PJ_WEBSOCK_ERRNO_START == 570000);
SA(PJ_WEBSOCK_EHS_STATUS == 570001);
SA(PJ_WEBSOCK_EHS_MALFORMED == 570002);
SA(PJ_WEBSOCK_EHS_TOOLARGE == 570003);
SA(PJ_WEBSOCK_EHS_UPGRADE == 570004);
SA(PJ_WEBSOCK_EHS_CONNECTION == 570005);
SA(PJ_WEBSOCK_EHS_ACCEPT == 570006);
SA(PJ_WEBSOCK_EHS_SUBPROTOCOL == 570007);
SA(PJ_WEBSOCK_EHS_EXTENSION == 570008);
SA(PJ_WEBSOCK_ECONNCLOSED == 570009);
SA(PJ_WEBSOCK_EPROTOCOL == 570010);
SA(PJ_WEBSOCK_EUTF8 == 570011);
SA(PJ_WEBSOCK_EMSGTOOBIG == 570012);
SA(PJ_WEBSOCK_EPINGTIMEOUT == 570013);
SA(PJ_WEBSOCK_ECLOSETIMEOUT == 570014);
SA(PJ_WEBSOCK_ECONNECTTIMEOUT == 570015);

/* Function types: a mismatch in any prototype fails to compile. */
static void (*const fp_param_default)(pj_websock_param *) = pj_websock_param_default;
static void (*const fp_cparam_default)(pj_websock_connect_param *) = pj_websock_connect_param_default;
static pj_status_t (*const fp_create)(pj_pool_t *, const pj_websock_param *, pj_websock **) = pj_websock_create;
static pj_status_t (*const fp_connect)(pj_websock *, const pj_str_t *, const pj_websock_connect_param *) = pj_websock_connect;
static pj_status_t (*const fp_send)(pj_websock *, pj_websock_opcode, const void *, pj_size_t) = pj_websock_send;
static pj_status_t (*const fp_close)(pj_websock *, pj_uint16_t, const pj_str_t *) = pj_websock_close;
static pj_websock_readystate (*const fp_get_state)(const pj_websock *) = pj_websock_get_state;
static void *(*const fp_get_user_data)(const pj_websock *) = pj_websock_get_user_data;
static pj_status_t (*const fp_set_user_data)(pj_websock *, void *) = pj_websock_set_user_data;
static pj_status_t (*const fp_destroy)(pj_websock *) = pj_websock_destroy;
static pj_status_t (*const fp_get_close_info)(const pj_websock *, pj_websock_close_info *) = pj_websock_get_close_info;
static pj_size_t (*const fp_get_buffered)(const pj_websock *) = pj_websock_get_buffered_amount;
static pj_status_t (*const fp_set_max_buffered)(pj_websock *, pj_size_t) = pj_websock_set_max_buffered;
static pj_status_t (*const fp_set_connect_timeout)(pj_websock *, unsigned) = pj_websock_set_connect_timeout;
static pj_status_t (*const fp_set_close_timeout)(pj_websock *, unsigned) = pj_websock_set_close_timeout;
static pj_status_t (*const fp_set_ping_ms)(pj_websock *, unsigned) = pj_websock_set_ping_interval_ms;
static pj_str_t (*const fp_strerror)(pj_status_t, char *, pj_size_t) = pj_websock_strerror;
static unsigned (*const fp_live)(void) = pj_websock_get_live_count;

/* ------------------------------------------------------------------ */
/* Runtime cases                                                       */

static void case_prototypes(t_case *tc, void *arg)
{
    (void)arg;
    const void *fps[] = {
        (const void *)(size_t)fp_param_default, (const void *)(size_t)fp_cparam_default,
        (const void *)(size_t)fp_create, (const void *)(size_t)fp_connect,
        (const void *)(size_t)fp_send, (const void *)(size_t)fp_close,
        (const void *)(size_t)fp_get_state, (const void *)(size_t)fp_get_user_data,
        (const void *)(size_t)fp_set_user_data, (const void *)(size_t)fp_destroy,
        (const void *)(size_t)fp_get_close_info, (const void *)(size_t)fp_get_buffered,
        (const void *)(size_t)fp_set_max_buffered, (const void *)(size_t)fp_set_connect_timeout,
        (const void *)(size_t)fp_set_close_timeout, (const void *)(size_t)fp_set_ping_ms,
        (const void *)(size_t)fp_strerror, (const void *)(size_t)fp_live,
    };
    for (size_t i = 0; i < sizeof(fps) / sizeof(fps[0]); ++i)
        T_CHECK(tc, fps[i] != NULL, "function #%zu resolved to NULL", i);
}

static void case_param_default(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    memset(&p, 0xAA, sizeof(p));
    pj_websock_param_default(&p);
    T_CHECK(tc, p.ioqueue == NULL, "ioqueue not NULL");
    T_CHECK(tc, p.timer_heap == NULL, "timer_heap not NULL");
    T_CHECK(tc, p.cb.on_connect == NULL, "cb.on_connect not NULL");
    T_CHECK(tc, p.cb.on_rx_msg == NULL, "cb.on_rx_msg not NULL");
    T_CHECK(tc, p.cb.on_close == NULL, "cb.on_close not NULL");
    T_CHECK(tc, p.user_data == NULL, "user_data not NULL");
    T_CHECK(tc, p.max_rx_msg_size == 262144, "max_rx_msg_size=%zu, want 262144",
            (size_t)p.max_rx_msg_size);
    T_CHECK(tc, p.ssl_param == NULL, "ssl_param not NULL");
    T_CHECK(tc, p.ping_interval == 30, "ping_interval=%u, want 30", p.ping_interval);
    T_CHECK(tc, p.grp_lock == NULL, "grp_lock not NULL");
}

static void case_connect_param_default(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_connect_param cp;
    memset(&cp, 0xAA, sizeof(cp));
    pj_websock_connect_param_default(&cp);
    T_CHECK(tc, cp.extra_hdr.count == 0, "extra_hdr.count=%u", cp.extra_hdr.count);
    for (unsigned i = 0; i < 32; ++i) {
        const pj_http_header_elmt *h = &cp.extra_hdr.header[i];
        if (h->name.ptr || h->name.slen || h->value.ptr || h->value.slen) {
            t_fail_at(tc, __FILE__, __LINE__, "extra_hdr.header[%u] not zeroed", i);
            break;
        }
    }
    T_CHECK(tc, cp.subprotocol.ptr == NULL && cp.subprotocol.slen == 0, "subprotocol not zeroed");
}

static void case_default_null(t_case *tc, void *arg)
{
    (void)arg;
    /* Must not crash. */
    pj_websock_param_default(NULL);
    pj_websock_connect_param_default(NULL);
    T_CHECK(tc, 1, "unreachable");
}

static void case_null_instance(t_case *tc, void *arg)
{
    (void)arg;
    pj_str_t url = pjstr("ws://127.0.0.1:1/");
    pj_str_t reason = pjstr("x");
    char data[4] = "abc";
    pj_websock_close_info info;

    T_CHECK(tc, pj_websock_connect(NULL, &url, NULL) == PJ_EINVAL, "connect(NULL)");
    T_CHECK(tc, pj_websock_send(NULL, PJ_WEBSOCK_OP_TEXT, data, 3) == PJ_EINVAL, "send(NULL)");
    T_CHECK(tc, pj_websock_close(NULL, 1000, &reason) == PJ_EINVAL, "close(NULL)");
    T_CHECK(tc, pj_websock_get_state(NULL) == PJ_WEBSOCK_STATE_CLOSED, "get_state(NULL)=%d",
            (int)pj_websock_get_state(NULL));
    T_CHECK(tc, pj_websock_get_user_data(NULL) == NULL, "get_user_data(NULL)");
    T_CHECK(tc, pj_websock_set_user_data(NULL, data) == PJ_EINVAL, "set_user_data(NULL)");
    T_CHECK(tc, pj_websock_destroy(NULL) == PJ_EINVAL, "destroy(NULL)");
    T_CHECK(tc, pj_websock_get_close_info(NULL, &info) == PJ_EINVAL, "get_close_info(NULL)");
    T_CHECK(tc, pj_websock_get_buffered_amount(NULL) == 0, "get_buffered_amount(NULL)");
    T_CHECK(tc, pj_websock_set_max_buffered(NULL, 1000) == PJ_EINVAL, "set_max_buffered(NULL)");
    T_CHECK(tc, pj_websock_set_connect_timeout(NULL, 1000) == PJ_EINVAL, "set_connect_timeout(NULL)");
    T_CHECK(tc, pj_websock_set_close_timeout(NULL, 1000) == PJ_EINVAL, "set_close_timeout(NULL)");
    T_CHECK(tc, pj_websock_set_ping_interval_ms(NULL, 1000) == PJ_EINVAL, "set_ping_interval_ms(NULL)");
}

static void case_create_args(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws = (pj_websock *)(size_t)0x1234;
    pj_status_t rc;

    pj_websock_param_default(&p);
    rc = pj_websock_create(NULL, NULL, &ws);
    T_CHECK(tc, rc == PJ_EINVAL, "create(param NULL): %s", st(rc));
    T_CHECK(tc, ws == (pj_websock *)(size_t)0x1234, "create(param NULL) wrote *p_ws");
    rc = pj_websock_create(NULL, &p, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "create(p_ws NULL): %s", st(rc));

    /* pool NULL is accepted; callbacks NULL too */
    ws = NULL;
    rc = pj_websock_create(NULL, &p, &ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS && ws != NULL, "create(pool NULL): %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(ws) == PJ_WEBSOCK_STATE_CLOSED, "new instance state %s",
            state_name(pj_websock_get_state(ws)));
    T_CHECK(tc, pj_websock_get_buffered_amount(ws) == 0, "new instance buffered amount");
    rc = pj_websock_destroy(ws);
    T_CHECK(tc, rc == PJ_SUCCESS, "destroy: %s", st(rc));
out:;
}

static void case_user_data(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws = NULL;
    int a, b;
    pj_websock_param_default(&p);
    p.user_data = &a;
    pj_status_t rc = pj_websock_create(NULL, &p, &ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    T_CHECK(tc, pj_websock_get_user_data(ws) == &a, "get_user_data != param.user_data");
    T_CHECK(tc, pj_websock_set_user_data(ws, &b) == PJ_SUCCESS, "set_user_data");
    T_CHECK(tc, pj_websock_get_user_data(ws) == &b, "get_user_data != set value");
    T_CHECK(tc, pj_websock_set_user_data(ws, NULL) == PJ_SUCCESS, "set_user_data(NULL value)");
    T_CHECK(tc, pj_websock_get_user_data(ws) == NULL, "get_user_data != NULL");
    /* the param struct is copied: changing it later has no effect */
    p.user_data = &b;
    T_CHECK(tc, pj_websock_get_user_data(ws) == NULL, "instance follows caller's param");
    pj_websock_destroy(ws);
out:;
}

static void case_closed_state_ops(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws = NULL;
    pj_websock_close_info info;
    char data[8] = "hello";
    pj_str_t reason = pjstr("bye");
    pj_status_t rc;

    pj_websock_param_default(&p);
    rc = pj_websock_create(NULL, &p, &ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));

    rc = pj_websock_send(ws, PJ_WEBSOCK_OP_TEXT, data, 5);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send TEXT in CLOSED: %s", st(rc));
    rc = pj_websock_send(ws, PJ_WEBSOCK_OP_BIN, data, 5);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "send BIN in CLOSED: %s", st(rc));
    rc = pj_websock_close(ws, 1000, &reason);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "close in CLOSED: %s", st(rc));
    rc = pj_websock_close(ws, 1000, NULL);
    T_CHECK(tc, rc == PJ_EINVALIDOP, "close(NULL reason) in CLOSED: %s", st(rc));

    memset(&info, 0xAA, sizeof(info));
    rc = pj_websock_get_close_info(ws, &info);
    T_CHECK(tc, rc == PJ_SUCCESS, "get_close_info: %s", st(rc));
    T_CHECK(tc, info.initiator == PJ_WEBSOCK_CLOSE_NONE, "fresh initiator %d", (int)info.initiator);
    T_CHECK(tc, info.clean == 0 && info.code_sent == 0 && info.code_received == 0,
            "fresh close_info not zero: clean=%d sent=%u rcvd=%u", info.clean, info.code_sent,
            info.code_received);
    rc = pj_websock_get_close_info(ws, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "get_close_info(info NULL): %s", st(rc));

    T_CHECK(tc, pj_websock_get_state(ws) == PJ_WEBSOCK_STATE_CLOSED, "state changed");
    pj_websock_destroy(ws);
out:;
}

static void case_setters(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws = NULL;
    pj_status_t rc;
    pj_websock_param_default(&p);
    rc = pj_websock_create(NULL, &p, &ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));

    T_CHECK(tc, (rc = pj_websock_set_max_buffered(ws, 0)) == PJ_EINVAL, "set_max_buffered(0): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_max_buffered(ws, 1)) == PJ_SUCCESS, "set_max_buffered(1): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_max_buffered(ws, 64 * MiB)) == PJ_SUCCESS, "set_max_buffered(64M): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_connect_timeout(ws, 0)) == PJ_EINVAL, "set_connect_timeout(0): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_connect_timeout(ws, 1500)) == PJ_SUCCESS, "set_connect_timeout(1500): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_close_timeout(ws, 0)) == PJ_EINVAL, "set_close_timeout(0): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_close_timeout(ws, 1500)) == PJ_SUCCESS, "set_close_timeout(1500): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_ping_interval_ms(ws, 0)) == PJ_SUCCESS, "set_ping_interval_ms(0): %s", st(rc));
    T_CHECK(tc, (rc = pj_websock_set_ping_interval_ms(ws, 250)) == PJ_SUCCESS, "set_ping_interval_ms(250): %s", st(rc));
    pj_websock_destroy(ws);
out:;
}

static void case_connect_args(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws = NULL;
    pj_status_t rc;
    pj_str_t bad = {NULL, 10};
    pj_str_t neg = {(char *)"ws://127.0.0.1:1/", -1};
    pj_websock_param_default(&p);
    rc = pj_websock_create(NULL, &p, &ws);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_connect(ws, NULL, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect(url NULL): %s", st(rc));
    rc = pj_websock_connect(ws, &bad, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect(url.ptr NULL, slen 10): %s", st(rc));
    rc = pj_websock_connect(ws, &neg, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect(url.slen -1): %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s after bad connect",
            state_name(pj_websock_get_state(ws)));
    pj_websock_destroy(ws);
out:;
}

/* Send argument checks need an OPEN connection, so that the state check
 * cannot be what rejects them. */
static void case_send_args_open(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    unsigned char buf[200];
    pj_status_t rc;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    memset(buf, 'p', sizeof(buf));

    const int bad_ops[] = {3, 4, 5, 6, 7, 0 /* CONT */, 8 /* CLOSE */, 0xB, 0xF, 0x10, 0xFFFF, -1};
    for (size_t i = 0; i < sizeof(bad_ops) / sizeof(bad_ops[0]); ++i) {
        rc = pj_websock_send(c.ws, (pj_websock_opcode)bad_ops[i], buf, 4);
        T_CHECK(tc, rc == PJ_EINVAL, "send(opcode %d): %s", bad_ops[i], st(rc));
    }
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, NULL, 5);
    T_CHECK(tc, rc == PJ_EINVAL, "send(data NULL, len 5): %s", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_PING, buf, 126);
    T_CHECK(tc, rc == PJ_EINVAL, "send(PING, 126 bytes): %s", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_PONG, buf, 126);
    T_CHECK(tc, rc == PJ_EINVAL, "send(PONG, 126 bytes): %s", st(rc));
    static const char *bad_utf8[] = {
        "\xff", "\xc3", "\xc0\xaf" /* overlong */, "\xed\xa0\x80" /* surrogate */,
        "\xf4\x90\x80\x80" /* > U+10FFFF */, "ok\xe2\x82" /* truncated */,
    };
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); ++i) {
        rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, bad_utf8[i], strlen(bad_utf8[i]));
        T_CHECK(tc, rc == PJ_EINVAL, "send(TEXT, invalid UTF-8 #%zu): %s", i, st(rc));
    }
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, "\xff\xfe", 2);
    T_CHECK(tc, rc == PJ_SUCCESS, "send(BIN, non-UTF-8 bytes): %s", st(rc));
    /* still open and working after all that */
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN, "state %s",
            state_name(pj_websock_get_state(c.ws)));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_PING, buf, 125);
    T_CHECK(tc, rc == PJ_SUCCESS, "send(PING, 125 bytes): %s", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, NULL, 0);
    T_CHECK(tc, rc == PJ_SUCCESS, "send(TEXT, NULL, 0): %s", st(rc));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "after", 5);
    T_CHECK(tc, rc == PJ_SUCCESS, "send(TEXT 'after'): %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 3, tmo(5000)), "echoes not received (n_rx=%zu)", c.n_rx);
    rx_msg mb, m0, m1;
    T_REQUIRE(tc, tctx_msg(&c, 0, &mb) && tctx_msg(&c, 1, &m0) && tctx_msg(&c, 2, &m1), "messages missing");
    T_CHECK(tc, mb.opcode == PJ_WEBSOCK_OP_BIN && mb.len == 2 && memcmp(mb.data, "\xff\xfe", 2) == 0,
            "binary echo op=%d len=%zu", mb.opcode, mb.len);
    T_CHECK(tc, m0.opcode == PJ_WEBSOCK_OP_TEXT && m0.len == 0, "first echo op=%d len=%zu (want empty TEXT)",
            m0.opcode, m0.len);
    T_CHECK(tc, m1.opcode == PJ_WEBSOCK_OP_TEXT && m1.len == 5 && memcmp(m1.data, "after", 5) == 0,
            "second echo op=%d len=%zu", m1.opcode, m1.len);
    T_CHECK(tc, c.n_bad_opcode == 0, "on_rx_msg got non-data opcodes (pong?)");
    sleep_ms(100);
    T_CHECK(tc, c.n_rx == 3, "unexpected extra messages: %zu", c.n_rx);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_strerror(t_case *tc, void *arg)
{
    (void)arg;
    char buf[256];
    pj_str_t s;
    struct { pj_status_t code; const char *needle; } known[] = {
        {PJ_EINVAL, "invalid"},
        {PJ_STATUS_FROM_OS(ECONNREFUSED), "refused"},
        {PJ_WEBSOCK_EHS_STATUS, NULL},
        {PJ_WEBSOCK_EHS_ACCEPT, NULL},
        {PJ_WEBSOCK_EPINGTIMEOUT, NULL},
        {PJ_WEBSOCK_ECONNECTTIMEOUT, NULL},
        {PJ_WEBSOCK_EMSGTOOBIG, NULL},
        {PJ_EBUSY, NULL},
        {PJ_ERESOLVE, NULL},
        {PJ_ETIMEDOUT, NULL},
    };
    char seen[sizeof(known) / sizeof(known[0])][256];

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); ++i) {
        memset(buf, 'Z', sizeof(buf));
        s = pj_websock_strerror(known[i].code, buf, sizeof(buf));
        T_CHECK(tc, s.ptr == buf, "strerror(%d): ptr != buf", known[i].code);
        T_CHECK(tc, s.slen > 0 && s.slen < (pj_ssize_t)sizeof(buf), "strerror(%d): slen=%ld",
                known[i].code, (long)s.slen);
        if (s.slen <= 0 || s.slen >= (pj_ssize_t)sizeof(buf))
            continue;
        T_CHECK(tc, buf[s.slen] == '\0', "strerror(%d): not NUL-terminated", known[i].code);
        T_CHECK(tc, (pj_ssize_t)strlen(buf) == s.slen, "strerror(%d): slen %ld != strlen %zu",
                known[i].code, (long)s.slen, strlen(buf));
        if (known[i].needle)
            T_CHECK(tc, strcasestr(buf, known[i].needle) != NULL, "strerror(%d)='%s' lacks '%s'",
                    known[i].code, buf, known[i].needle);
        snprintf(seen[i], sizeof(seen[i]), "%s", buf);
        for (size_t j = 0; j < i; ++j)
            T_CHECK(tc, strcmp(seen[i], seen[j]) != 0, "strerror(%d) == strerror(%d) = '%s'",
                    known[i].code, known[j].code, buf);
    }
    /* unknown code: still some text */
    s = pj_websock_strerror(999999, buf, sizeof(buf));
    T_CHECK(tc, s.slen > 0 && buf[s.slen] == '\0', "strerror(999999) empty");
    /* truncation */
    memset(buf, 'Z', sizeof(buf));
    s = pj_websock_strerror(PJ_WEBSOCK_EHS_STATUS, buf, 8);
    T_CHECK(tc, s.slen >= 0 && s.slen <= 7 && buf[s.slen] == '\0' && buf[8] == 'Z',
            "strerror with bufsize 8: slen=%ld", (long)s.slen);
    memset(buf, 'Z', sizeof(buf));
    s = pj_websock_strerror(PJ_EINVAL, buf, 1);
    T_CHECK(tc, s.slen == 0 && buf[0] == '\0' && buf[1] == 'Z', "strerror with bufsize 1: slen=%ld",
            (long)s.slen);
    /* bufsize 0 / NULL buffer must not write or crash */
    s = pj_websock_strerror(PJ_EINVAL, NULL, 0);
    T_CHECK(tc, s.slen == 0, "strerror(NULL, 0): slen=%ld", (long)s.slen);
}

static void case_live_count(t_case *tc, void *arg)
{
    (void)arg;
    pj_websock_param p;
    pj_websock *ws[5] = {0};
    unsigned base = pj_websock_get_live_count();
    pj_websock_param_default(&p);
    for (int i = 0; i < 5; ++i) {
        pj_status_t rc = pj_websock_create(NULL, &p, &ws[i]);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    }
    T_CHECK(tc, pj_websock_get_live_count() == base + 5, "live count %u after 5 creates (base %u)",
            pj_websock_get_live_count(), base);
out:
    for (int i = 0; i < 5; ++i)
        if (ws[i])
            pj_websock_destroy(ws[i]);
    double t0 = now_ms();
    while (pj_websock_get_live_count() != base && now_ms() - t0 < tmo(3000))
        sleep_ms(5);
    T_CHECK(tc, pj_websock_get_live_count() == base, "live count %u after destroy (base %u)",
            pj_websock_get_live_count(), base);
}

int main(void)
{
    t_run("prototypes match", case_prototypes, NULL);
    t_run("param_default values", case_param_default, NULL);
    t_run("connect_param_default zeroes", case_connect_param_default, NULL);
    t_run("defaults with NULL do not crash", case_default_null, NULL);
    t_run("NULL instance to every function", case_null_instance, NULL);
    t_run("create argument checks (pool NULL accepted)", case_create_args, NULL);
    t_run("user_data get/set", case_user_data, NULL);
    t_run("send/close/close_info in CLOSED state", case_closed_state_ops, NULL);
    t_run("extension setters ranges", case_setters, NULL);
    t_run("connect url argument checks", case_connect_args, NULL);
    t_run("send argument checks on an open connection", case_send_args_open, NULL);
    t_run("pj_websock_strerror", case_strerror, NULL);
    t_run("live count follows create/destroy", case_live_count, NULL);
    return t_done();
}
