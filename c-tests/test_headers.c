/* The opening handshake request as the server sees it (ws_server.py /info
 * replies with a JSON description of the request): extra headers, query
 * string, Host with port, subprotocol negotiation, 32 extra headers, a
 * fresh random Sec-WebSocket-Key per connection; and the synchronous
 * rejection of header names/values that would break or
 * hijack the request. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void set_hdr(pj_websock_connect_param *cp, unsigned i, const char *name, const char *value)
{
    cp->extra_hdr.header[i].name = pjstr(name);
    cp->extra_hdr.header[i].value = pjstr(value);
}

/* Opens url with cp and returns the /info JSON (the first message), or NULL. */
static const char *open_info(t_case *tc, tctx *c, const char *url, const pj_websock_connect_param *cp)
{
    rx_msg m;
    if (!tctx_open(tc, c, NULL, url, cp))
        return NULL;
    if (!tctx_wait_rx(c, 1, tmo(5000))) {
        t_fail_at(tc, __FILE__, __LINE__, "no /info message");
        return NULL;
    }
    if (!tctx_msg(c, 0, &m) || m.opcode != PJ_WEBSOCK_OP_TEXT) {
        t_fail_at(tc, __FILE__, __LINE__, "first message is not TEXT");
        return NULL;
    }
    return (const char *)m.data;
}

static void case_info(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], val[512], host_want[128];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/info?model=gpt&x=1"))
        goto out;
    pj_websock_connect_param_default(&cp);
    cp.extra_hdr.count = 2;
    set_hdr(&cp, 0, "Authorization", "Bearer sk-test-123");
    set_hdr(&cp, 1, "X-Custom", "hello world");
    cp.subprotocol = pjstr("foo, chat");
    const char *json = open_info(tc, &c, url, &cp);
    T_REQUIRE(tc, json, "no info");

    T_CHECK(tc, info_field(json, "path", val, sizeof(val)) && strcmp(val, "/info") == 0, "path '%s'", val);
    T_CHECK(tc, info_field(json, "query", val, sizeof(val)) && strcmp(val, "model=gpt&x=1") == 0, "query '%s'", val);
    T_CHECK(tc, info_header(json, "Authorization", 0, val, sizeof(val)) && strcmp(val, "Bearer sk-test-123") == 0,
            "Authorization '%s'", val);
    T_CHECK(tc, info_header(json, "X-Custom", 0, val, sizeof(val)) && strcmp(val, "hello world") == 0,
            "X-Custom '%s'", val);
    snprintf(host_want, sizeof(host_want), "127.0.0.1:%d", url_port(url));
    T_CHECK(tc, info_header(json, "Host", 0, val, sizeof(val)) && strcmp(val, host_want) == 0, "Host '%s', want '%s'",
            val, host_want);
    T_CHECK(tc, !info_header(json, "Host", 1, val, sizeof(val)), "two Host headers");
    T_CHECK(tc, info_header(json, "Sec-WebSocket-Protocol", 0, val, sizeof(val)) && strcmp(val, "foo, chat") == 0,
            "Sec-WebSocket-Protocol '%s'", val);
    T_CHECK(tc, info_field(json, "subprotocol", val, sizeof(val)) && strcmp(val, "chat") == 0,
            "negotiated subprotocol '%s'", val);
    T_CHECK(tc, info_header(json, "Sec-WebSocket-Version", 0, val, sizeof(val)) && strcmp(val, "13") == 0,
            "Sec-WebSocket-Version '%s'", val);
    T_CHECK(tc, info_header(json, "Upgrade", 0, val, sizeof(val)) && strcasecmp(val, "websocket") == 0,
            "Upgrade '%s'", val);
    T_CHECK(tc, info_header(json, "Connection", 0, val, sizeof(val)) && strcasestr(val, "upgrade"),
            "Connection '%s'", val);
    T_CHECK(tc, info_header(json, "Sec-WebSocket-Key", 0, val, sizeof(val)) && strlen(val) == 24 && val[22] == '=' &&
                val[23] == '=',
            "Sec-WebSocket-Key '%s' is not 16 bytes in base64", val);
    T_CHECK(tc, !info_header(json, "Sec-WebSocket-Extensions", 0, val, sizeof(val)),
            "client offered extensions '%s' it cannot support", val);
    /* the client side knows the outcome too */
    memset(val, 'Z', sizeof(val));
    pj_ssize_t n = pj_websock_get_subprotocol(c.ws, val, sizeof(val));
    T_CHECK(tc, n == 4 && strcmp(val, "chat") == 0, "get_subprotocol: %ld '%.10s'", (long)n, val);
    n = pj_websock_get_subprotocol(c.ws, val, 3);
    T_CHECK(tc, n == 4 && strcmp(val, "ch") == 0, "get_subprotocol truncated: %ld '%.10s'", (long)n, val);
    T_CHECK(tc, pj_websock_get_subprotocol(NULL, val, sizeof(val)) == -1, "get_subprotocol(NULL)");
    T_CHECK(tc, pj_websock_get_http_status(c.ws) == 101, "http status %d after open", pj_websock_get_http_status(c.ws));
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_no_subprotocol(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], val[256];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/info"))
        goto out;
    pj_websock_connect_param_default(&cp);
    cp.subprotocol = pjstr("unknown-proto");
    const char *json = open_info(tc, &c, url, &cp);
    T_REQUIRE(tc, json, "no info");
    T_CHECK(tc, info_field(json, "subprotocol", val, sizeof(val)) && strcmp(val, "null") == 0,
            "negotiated subprotocol '%s', want none", val);
    T_CHECK(tc, info_header(json, "Sec-WebSocket-Protocol", 0, val, sizeof(val)) && strcmp(val, "unknown-proto") == 0,
            "Sec-WebSocket-Protocol '%s'", val);
    T_CHECK(tc, pj_websock_get_subprotocol(c.ws, val, sizeof(val)) == 0 && val[0] == '\0',
            "get_subprotocol '%s' although none was selected", val);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_no_cparam(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], val[256];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/info?a=b"))
        goto out;
    const char *json = open_info(tc, &c, url, NULL);
    T_REQUIRE(tc, json, "no info");
    T_CHECK(tc, !info_header(json, "Sec-WebSocket-Protocol", 0, val, sizeof(val)),
            "Sec-WebSocket-Protocol '%s' sent without a subprotocol", val);
    T_CHECK(tc, info_field(json, "query", val, sizeof(val)) && strcmp(val, "a=b") == 0, "query '%s'", val);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_32_headers(t_case *tc, void *arg)
{
    (void)arg;
    char url[512], val[256];
    char names[32][16], values[32][32];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/info"))
        goto out;
    pj_websock_connect_param_default(&cp);
    cp.extra_hdr.count = 32;
    for (unsigned i = 0; i < 32; ++i) {
        snprintf(names[i], sizeof(names[i]), "X-H%02u", i);
        snprintf(values[i], sizeof(values[i]), "value-%u-%u", i, i * 31);
        set_hdr(&cp, i, names[i], values[i]);
    }
    const char *json = open_info(tc, &c, url, &cp);
    T_REQUIRE(tc, json, "no info");
    const char *prev = json;
    for (unsigned i = 0; i < 32; ++i) {
        char needle[640];
        T_CHECK(tc, info_header(json, names[i], 0, val, sizeof(val)) && strcmp(val, values[i]) == 0,
                "header %s: '%s', want '%s'", names[i], val, values[i]);
        snprintf(needle, sizeof(needle), "[\"%s\"", names[i]);
        const char *at = strstr(json, needle);
        T_CHECK(tc, at && at >= prev, "header %s out of order", names[i]);
        if (at)
            prev = at;
    }
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* pj_str_t is length-delimited: bytes after slen must not be sent. */
static void case_not_nul_terminated(t_case *tc, void *arg)
{
    (void)arg;
    char base[512], val[256];
    char urlbuf[600], name[32], value[32];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    if (!need_url(tc, base, sizeof(base), "WS_ECHO_URL", "/info?k=v"))
        goto out;
    snprintf(urlbuf, sizeof(urlbuf), "%sGARBAGE", base);
    pj_str_t url = {urlbuf, (pj_ssize_t)strlen(base)};
    memcpy(name, "X-TrimmedJUNK", 14);
    memcpy(value, "keepDROP", 9);
    pj_websock_connect_param_default(&cp);
    cp.extra_hdr.count = 1;
    cp.extra_hdr.header[0].name.ptr = name;
    cp.extra_hdr.header[0].name.slen = 9;   /* "X-Trimmed" */
    cp.extra_hdr.header[0].value.ptr = value;
    cp.extra_hdr.header[0].value.slen = 4;  /* "keep" */
    char proto[] = "chatXYZ";
    cp.subprotocol.ptr = proto;
    cp.subprotocol.slen = 4;
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_connect(c.ws, &url, &cp);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect: %s", st(rc));
    /* the caller's buffers may be reused right after connect returns */
    memset(urlbuf, 'Q', sizeof(urlbuf) - 1);
    memset(name, 'Q', sizeof(name) - 1);
    memset(value, 'Q', sizeof(value) - 1);
    memset(proto, 'Q', sizeof(proto) - 1);
    T_REQUIRE(tc, tctx_wait_connect(&c, tmo(5000)) && c.connect_status == PJ_SUCCESS, "on_connect: %s",
              st(c.connect_status));
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no /info message");
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "missing");
    const char *json = (const char *)m.data;
    T_CHECK(tc, info_field(json, "query", val, sizeof(val)) && strcmp(val, "k=v") == 0, "query '%s'", val);
    T_CHECK(tc, info_header(json, "X-Trimmed", 0, val, sizeof(val)) && strcmp(val, "keep") == 0, "X-Trimmed '%s'",
            val);
    T_CHECK(tc, info_field(json, "subprotocol", val, sizeof(val)) && strcmp(val, "chat") == 0, "subprotocol '%s'",
            val);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* Decodes standard base64 (with '=' padding, length a multiple of 4) into
 * out; returns the number of bytes, or -1 if src is not valid base64. */
static long b64_decode(const char *src, unsigned char *out, size_t outsz)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(src), n = 0;
    if (len == 0 || len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            char ch = src[i + k];
            const char *at = ch ? strchr(alphabet, ch) : NULL;
            if (ch == '=' && i + 4 == len && k >= 2 && (k == 3 || src[i + 3] == '=')) {
                pad++;
                v <<= 6;
            } else if (at && !pad) {
                v = v << 6 | (unsigned)(at - alphabet);
            } else {
                return -1;
            }
        }
        for (int k = 0; k < 3 - pad; ++k) {
            if (n >= outsz)
                return -1;
            out[n++] = (unsigned char)(v >> (16 - 8 * k));
        }
    }
    return (long)n;
}

/* Reads the Sec-WebSocket-Key of the connection c just opened (/info) into
 * key and checks that it is base64 of exactly 16 bytes. */
static int seen_key(t_case *tc, tctx *c, const char *url, char *key, size_t keysz)
{
    unsigned char raw[64];
    const char *json = open_info(tc, c, url, NULL);
    if (!json)
        return 0;
    if (!info_header(json, "Sec-WebSocket-Key", 0, key, keysz)) {
        t_fail_at(tc, __FILE__, __LINE__, "the server saw no Sec-WebSocket-Key");
        return 0;
    }
    long n = b64_decode(key, raw, sizeof(raw));
    if (n != 16) {
        t_fail_at(tc, __FILE__, __LINE__, "Sec-WebSocket-Key '%s' decodes to %ld bytes, want 16", key, n);
        return 0;
    }
    return 1;
}

/* RFC 6455 4.1: the key is a randomly selected 16-byte value, chosen
 * afresh for each connection: a reconnect of the same instance and
 * connections of other instances (two of them open at once) all differ. */
static void case_fresh_key(t_case *tc, void *arg)
{
    (void)arg;
    enum { N_KEYS = 5 };
    char url[512], keys[N_KEYS][64];
    tctx a, b, d;
    int n = 0;
    tctx_init(&a);
    tctx_init(&b);
    tctx_init(&d);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/info"))
        goto out;
    /* A: connect, close, connect again, close, and a third time */
    for (int round = 0; round < 3; ++round) {
        if (round) {
            tctx_reset_events(&a);
            tctx_clear_msgs(&a);
        }
        T_REQUIRE(tc, seen_key(tc, &a, url, keys[n], sizeof(keys[n])), "instance A, connection %d", round + 1);
        n++;
        T_REQUIRE(tc, tctx_close_wait(tc, &a, 1000, NULL), "close of A, connection %d", round + 1);
    }
    /* B and D open at the same time */
    T_REQUIRE(tc, seen_key(tc, &b, url, keys[n], sizeof(keys[n])), "instance B");
    n++;
    T_REQUIRE(tc, seen_key(tc, &d, url, keys[n], sizeof(keys[n])), "instance D (B still open)");
    n++;
    printf("# keys:");
    for (int i = 0; i < n; ++i)
        printf(" %s", keys[i]);
    printf("\n");
    for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j)
            T_CHECK(tc, strcmp(keys[i], keys[j]) != 0, "connections %d and %d sent the same key %s", i + 1, j + 1,
                    keys[i]);
    tctx_close_wait(tc, &b, 1000, NULL);
    tctx_close_wait(tc, &d, 1000, NULL);
out:
    if (a.ws)
        pj_websock_destroy(a.ws);
    if (b.ws)
        pj_websock_destroy(b.ws);
    if (d.ws)
        pj_websock_destroy(d.ws);
    tctx_free(&a);
    tctx_free(&b);
    tctx_free(&d);
}

typedef struct bad_hdr {
    const char *what;
    const char *name;
    const char *value;
    unsigned count;       /* 0: 1 header */
    const char *subprotocol;
} bad_hdr;

static void case_bad_header(t_case *tc, void *arg)
{
    const bad_hdr *b = arg;
    char url[512];
    tctx c;
    pj_websock_connect_param cp;
    tctx_init(&c);
    /* Any URL would do; use the echo server so that a wrongly accepted
     * request would really connect. */
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    pj_websock_connect_param_default(&cp);
    cp.extra_hdr.count = b->count ? b->count : 1;
    for (unsigned i = 0; i < cp.extra_hdr.count && i < 32; ++i)
        set_hdr(&cp, i, "X-Ok", "fine");
    if (b->name || b->value)
        set_hdr(&cp, 0, b->name, b->value);
    if (b->subprotocol)
        cp.subprotocol = pjstr(b->subprotocol);
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = tctx_connect(&c, url, &cp);
    T_CHECK(tc, rc == PJ_EINVAL, "connect with %s: %s, want PJ_EINVAL", b->what, st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s",
            state_name(pj_websock_get_state(c.ws)));
    sleep_ms(100);
    T_CHECK(tc, c.n_connect == 0, "on_connect called (%s) after a synchronous failure", st(c.connect_status));
    /* the instance is still usable */
    rc = tctx_connect(&c, url, NULL);
    T_CHECK(tc, rc == PJ_SUCCESS, "connect afterwards: %s", st(rc));
    if (rc == PJ_SUCCESS)
        T_CHECK(tc, tctx_wait_connect(&c, tmo(5000)) && c.connect_status == PJ_SUCCESS, "reconnect: %s",
                st(c.connect_status));
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

int main(void)
{
    static const bad_hdr bad[] = {
        {"CR in a value", "X-A", "a\rb", 0, NULL},
        {"LF in a value", "X-A", "a\nb", 0, NULL},
        {"CRLF injection in a value", "X-A", "v\r\nX-Injected: 1", 0, NULL},
        {"CR in a name", "X-\rA", "v", 0, NULL},
        {"LF in a name", "X-\nA", "v", 0, NULL},
        {"colon in a name", "X-A:B", "v", 0, NULL},
        {"space in a name", "X A", "v", 0, NULL},
        {"header Upgrade", "Upgrade", "websocket", 0, NULL},
        {"header Connection", "Connection", "keep-alive", 0, NULL},
        {"header Sec-WebSocket-Key", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", 0, NULL},
        {"header sec-websocket-protocol", "sec-websocket-protocol", "chat", 0, NULL},
        {"header Sec-WebSocket-Version", "Sec-WebSocket-Version", "8", 0, NULL},
        {"header Sec-WebSocket-Extensions", "Sec-WebSocket-Extensions", "permessage-deflate", 0, NULL},
        {"header HOST", "HOST", "example.com", 0, NULL},
        {"33 headers", NULL, NULL, 33, NULL},
        {"CRLF in the subprotocol", NULL, NULL, 0, "chat\r\nX-Injected: 1"},
    };
    t_run("extra headers, query, Host, subprotocol seen by the server", case_info, NULL);
    t_run("offered subprotocol the server does not support: none negotiated", case_no_subprotocol, NULL);
    t_run("cparam NULL: no subprotocol header, query kept", case_no_cparam, NULL);
    t_run("32 extra headers all arrive in order", case_32_headers, NULL);
    t_run("pj_str_t lengths respected, caller buffers reusable after connect", case_not_nul_terminated, NULL);
    t_run("Sec-WebSocket-Key: 16 random bytes, fresh per connection and instance", case_fresh_key, NULL);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        t_runf(case_bad_header, (void *)&bad[i], "PJ_EINVAL for %s", bad[i].what);
    }
    return t_done();
}
