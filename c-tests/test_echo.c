/* Echo round trips: TEXT and BIN of boundary sizes (payload length
 * encodings 7/16/64 bit) up to 16 MiB, multi-byte UTF-8, ordering of mixed
 * types, and what the client puts on the wire (masking, FIN, opcodes),
 * checked by the raw scripted server. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct echo_case {
    pj_websock_opcode op;
    size_t len;
} echo_case;

static void open_echo(t_case *tc, tctx *c, const char *var, const char *path, size_t max_rx, int *ok)
{
    char url[512];
    pj_websock_param p;
    *ok = 0;
    if (!need_url(tc, url, sizeof(url), var, path))
        return;
    tctx_param(c, &p);
    p.max_rx_msg_size = max_rx;
    *ok = tctx_open(tc, c, &p, url, NULL);
}

static void case_echo(t_case *tc, void *arg)
{
    const echo_case *ec = arg;
    tctx c;
    int ok;
    unsigned char *buf = NULL;
    size_t off = ec->len % 1000 + 3;
    tctx_init(&c);
    open_echo(tc, &c, "WS_ECHO_URL", "/", 32 * MiB, &ok);
    if (!ok)
        goto out;
    buf = malloc(ec->len ? ec->len : 1);
    T_REQUIRE(tc, buf, "malloc");
    if (ec->op == PJ_WEBSOCK_OP_TEXT)
        pat_fill_text(buf, ec->len, off);
    else
        pat_fill(buf, ec->len, off);

    pj_status_t rc = pj_websock_send(c.ws, ec->op, buf, ec->len);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send(%zu): %s", ec->len, st(rc));
    /* the library copied the data: scribbling over ours must not matter */
    memset(buf, 0x5A, ec->len);
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(ec->len > MiB ? 60000 : 10000)),
              "no echo of %zu bytes (state %s)", ec->len, state_name(pj_websock_get_state(c.ws)));
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "message missing");
    T_CHECK(tc, m.opcode == (int)ec->op, "opcode %d, want %d", m.opcode, (int)ec->op);
    T_REQUIRE(tc, m.len == ec->len, "length %zu, want %zu", m.len, ec->len);
    long bad = ec->op == PJ_WEBSOCK_OP_TEXT ? pat_check_text(m.data, m.len, off)
                                           : pat_check(m.data, m.len, off);
    T_CHECK(tc, bad < 0, "payload differs at offset %ld", bad);
    sleep_ms(50);
    T_CHECK(tc, c.n_rx == 1, "%zu messages received, want 1", c.n_rx);
    T_CHECK(tc, c.n_close == 0, "unexpected on_close(%u)", c.close_code);
    tctx_close_wait(tc, &c, 1000, "done");
out:
    free(buf);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_utf8(t_case *tc, void *arg)
{
    (void)arg;
    /* 2-, 3- and 4-byte sequences, and U+FFFF / U+10FFFF edges */
    static const char text[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x82\xac \xf0\x9d\x84\x9e "
                               "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xef\xbf\xbf \xf4\x8f\xbf\xbf";
    tctx c;
    int ok;
    tctx_init(&c);
    open_echo(tc, &c, "WS_ECHO_URL", "/", 0, &ok);
    if (!ok)
        goto out;
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, text, sizeof(text) - 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo (state %s, on_close %d code %u)",
              state_name(pj_websock_get_state(c.ws)), c.n_close, c.close_code);
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "message missing");
    T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_TEXT, "opcode %d", m.opcode);
    T_CHECK(tc, m.len == sizeof(text) - 1 && memcmp(m.data, text, m.len) == 0,
            "echo differs (len %zu, want %zu)", m.len, sizeof(text) - 1);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_mixed_order(t_case *tc, void *arg)
{
    (void)arg;
    enum { N = 200 };
    tctx c;
    int ok;
    unsigned char buf[70000];
    tctx_init(&c);
    open_echo(tc, &c, "WS_ECHO_URL", "/", 0, &ok);
    if (!ok)
        goto out;
    for (int i = 0; i < N; ++i) {
        size_t len = (size_t)((i * 7919) % 70000);
        pj_websock_opcode op = (i % 3 == 0) ? PJ_WEBSOCK_OP_TEXT : PJ_WEBSOCK_OP_BIN;
        if (op == PJ_WEBSOCK_OP_TEXT)
            pat_fill_text(buf, len, (size_t)i);
        else
            pat_fill(buf, len, (size_t)i);
        pj_status_t rc = pj_websock_send(c.ws, op, buf, len);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send #%d: %s", i, st(rc));
    }
    T_REQUIRE(tc, tctx_wait_rx(&c, N, tmo(20000)), "only %zu of %d echoes", c.n_rx, N);
    for (int i = 0; i < N; ++i) {
        rx_msg m;
        size_t len = (size_t)((i * 7919) % 70000);
        int want_op = (i % 3 == 0) ? PJ_WEBSOCK_OP_TEXT : PJ_WEBSOCK_OP_BIN;
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m), "message %d missing", i);
        T_REQUIRE(tc, m.opcode == want_op && m.len == len, "message %d: op %d len %zu, want op %d len %zu",
                  i, m.opcode, m.len, want_op, len);
        long bad = want_op == PJ_WEBSOCK_OP_TEXT ? pat_check_text(m.data, m.len, (size_t)i)
                                                 : pat_check(m.data, m.len, (size_t)i);
        T_REQUIRE(tc, bad < 0, "message %d differs at %ld", i, bad);
    }
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* /frames describes each frame the client sent: "fin=1 rsv=0 op=1 masked=1
 * len=5 key=0a0b0c0d". */
static void case_wire_frames(t_case *tc, void *arg)
{
    (void)arg;
    enum { N = 4 };
    static const struct { pj_websock_opcode op; size_t len; } sends[N] = {
        {PJ_WEBSOCK_OP_TEXT, 5}, {PJ_WEBSOCK_OP_BIN, 126}, {PJ_WEBSOCK_OP_BIN, 70000}, {PJ_WEBSOCK_OP_TEXT, 0}};
    char keys[N][16];
    tctx c;
    int ok;
    unsigned char buf[70000];
    tctx_init(&c);
    open_echo(tc, &c, "WS_RAW_URL", "/frames", 0, &ok);
    if (!ok)
        goto out;
    for (int i = 0; i < N; ++i) {
        pat_fill(buf, sends[i].len, 0);
        pj_status_t rc = pj_websock_send(c.ws, sends[i].op, buf, sends[i].len);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send #%d: %s", i, st(rc));
    }
    T_REQUIRE(tc, tctx_wait_rx(&c, N, tmo(10000)), "only %zu of %d frame reports", c.n_rx, N);
    for (int i = 0; i < N; ++i) {
        rx_msg m;
        int fin = -1, rsv = -1, op = -1, masked = -1;
        size_t len = 0;
        keys[i][0] = '\0';
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m), "report %d missing", i);
        int n = sscanf((const char *)m.data, "fin=%d rsv=%d op=%d masked=%d len=%zu key=%15s", &fin,
                       &rsv, &op, &masked, &len, keys[i]);
        T_REQUIRE(tc, n == 6, "cannot parse report '%s'", (const char *)m.data);
        T_CHECK(tc, fin == 1, "frame %d: FIN=%d (a message must go out as one frame here)", i, fin);
        T_CHECK(tc, rsv == 0, "frame %d: RSV=%d", i, rsv);
        T_CHECK(tc, op == (int)sends[i].op, "frame %d: opcode %d, want %d", i, op, (int)sends[i].op);
        T_CHECK(tc, masked == 1, "frame %d: not masked", i);
        T_CHECK(tc, len == sends[i].len, "frame %d: len %zu, want %zu", i, len, sends[i].len);
    }
    /* masking keys must not repeat (RFC 6455 5.3: unpredictable) */
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < i; ++j)
            T_CHECK(tc, strcmp(keys[i], keys[j]) != 0, "frames %d and %d use the same masking key %s", j, i,
                    keys[i]);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void expect_one_text(t_case *tc, const char *path, const char *want, int prefix_only)
{
    tctx c;
    int ok;
    tctx_init(&c);
    open_echo(tc, &c, "WS_RAW_URL", path, 0, &ok);
    if (!ok)
        goto out;
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no message from %s (on_close %d, code %u)", path,
              c.n_close, c.close_code);
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "message missing");
    T_CHECK(tc, m.opcode == PJ_WEBSOCK_OP_TEXT, "opcode %d", m.opcode);
    if (prefix_only)
        T_CHECK(tc, m.len >= strlen(want) && memcmp(m.data, want, strlen(want)) == 0, "got '%s', want '%s...'",
                (const char *)m.data, want);
    else
        T_CHECK(tc, m.len == strlen(want) && memcmp(m.data, want, m.len) == 0, "got '%s' (len %zu), want '%s'",
                (const char *)m.data, m.len, want);
    /* the connection still works */
    pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "more", 4);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 2, tmo(5000)), "no echo after the first message");
    T_REQUIRE(tc, tctx_msg(&c, 1, &m), "message missing");
    T_CHECK(tc, m.len == 4 && memcmp(m.data, "more", 4) == 0, "echo '%s'", (const char *)m.data);
    T_CHECK(tc, c.n_bad_opcode == 0, "control frame delivered to on_rx_msg");
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_hs_plus_frame(t_case *tc, void *arg)
{
    (void)arg;
    expect_one_text(tc, "/hs-plus-frame", "early", 0);
}

static void case_fragmented(t_case *tc, void *arg)
{
    (void)arg;
    expect_one_text(tc, "/fragmented", "fragmented", 0);
}

static void case_server_ping(t_case *tc, void *arg)
{
    (void)arg;
    expect_one_text(tc, "/server-ping", "pong-ok:ping-", 1);
}

int main(void)
{
    static const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 1 * MiB, 16 * MiB};
    static echo_case cases[2 * sizeof(sizes) / sizeof(sizes[0])];
    size_t n = 0;
    for (int t = 0; t < 2; ++t) {
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
            cases[n].op = t == 0 ? PJ_WEBSOCK_OP_TEXT : PJ_WEBSOCK_OP_BIN;
            cases[n].len = sizes[i];
            t_runf(case_echo, &cases[n], "echo %s %zu bytes", t == 0 ? "TEXT" : "BIN", sizes[i]);
            n++;
        }
    }
    t_run("echo multi-byte UTF-8 text", case_utf8, NULL);
    t_run("200 mixed TEXT/BIN messages echo in order", case_mixed_order, NULL);
    t_run("client frames are masked, FIN set, opcode and length right", case_wire_frames, NULL);
    t_run("frame arriving with the 101 response is delivered", case_hs_plus_frame, NULL);
    t_run("fragmented message with a ping inside is reassembled", case_fragmented, NULL);
    t_run("server ping is answered with a pong carrying its payload", case_server_ping, NULL);
    return t_done();
}
