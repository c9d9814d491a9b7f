/* URL parsing: malformed URLs fail synchronously with PJ_EINVAL and leave
 * the instance CLOSED (no callback); valid spellings connect: upper-case
 * scheme, no path, query without path, IPv6 literal, "localhost" (which
 * may resolve to ::1 first, where nothing listens on that port). */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void case_bad_url(t_case *tc, void *arg)
{
    const char *bad = arg;
    tctx c;
    tctx_init(&c);
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = tctx_connect(&c, bad, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect('%s'): %s, want PJ_EINVAL", bad, st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s",
            state_name(pj_websock_get_state(c.ws)));
    sleep_ms(rc == PJ_SUCCESS ? 300 : 50);
    T_CHECK(tc, c.n_connect == 0 || rc == PJ_SUCCESS, "on_connect after a synchronous failure");
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

static void case_null_url(t_case *tc, void *arg)
{
    (void)arg;
    tctx c;
    tctx_init(&c);
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_connect(c.ws, NULL, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect(NULL url): %s", st(rc));
    pj_str_t empty = {NULL, 0};
    rc = pj_websock_connect(c.ws, &empty, NULL);
    T_CHECK(tc, rc == PJ_EINVAL, "connect({NULL,0}): %s", st(rc));
    T_CHECK(tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s",
            state_name(pj_websock_get_state(c.ws)));
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

typedef struct good_url {
    const char *env;        /* base URL variable */
    const char *fmt;        /* printf with %s = "host:port" of env */
    const char *want_path;  /* what /info must report */
    const char *want_query;
    const char *want_host;  /* NULL: host:port of the base URL */
} good_url;

static void case_good_url(t_case *tc, void *arg)
{
    const good_url *g = arg;
    const char *base = env_url(g->env);
    char hostport[256], url[512], val[256];
    tctx c;
    tctx_init(&c);
    if (!base) {
        t_skip(tc, "%s is not set (no ::1 or not run through tests/run_c_tests.py)", g->env);
        goto out;
    }
    /* base is "ws://HOSTPORT" */
    snprintf(hostport, sizeof(hostport), "%s", strstr(base, "://") ? strstr(base, "://") + 3 : base);
    snprintf(url, sizeof(url), g->fmt, hostport);
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open %s failed", url);
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no /info message");
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "missing");
    const char *json = (const char *)m.data;
    T_CHECK(tc, info_field(json, "path", val, sizeof(val)) && strcmp(val, g->want_path) == 0, "path '%s', want '%s'",
            val, g->want_path);
    T_CHECK(tc, info_field(json, "query", val, sizeof(val)) && strcmp(val, g->want_query) == 0,
            "query '%s', want '%s'", val, g->want_query);
    const char *want_host = g->want_host ? g->want_host : hostport;
    char host_buf[256];
    if (g->want_host) {
        snprintf(host_buf, sizeof(host_buf), g->want_host, url_port(base));
        want_host = host_buf;
    }
    T_CHECK(tc, info_header(json, "Host", 0, val, sizeof(val)) && strcmp(val, want_host) == 0,
            "Host '%s', want '%s'", val, want_host);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

int main(void)
{
    static const char *bad[] = {
        "",
        "http://127.0.0.1/",
        "https://127.0.0.1/",
        "ftp://127.0.0.1/",
        "ws:/127.0.0.1/",
        "ws//127.0.0.1/",
        "127.0.0.1:80",
        "ws://",
        "ws:///path",
        "ws://:80/",
        "ws://h:0",
        "ws://h:65536",
        "ws://h:99999/",
        "ws://h:-1/",
        "ws://h:abc",
        "ws://h:80:90/",
        "ws://user@h/",
        "ws://user:pass@h/",
        "ws://h/#frag",
        "ws://h/p#",
        "ws://[::1/",
        "ws://[::1]x/",
        "ws://[]/",
        "ws://h /",
        "ws:// h/",
        "ws://h/a b",
        "ws://h\r\n/",
        "ws://h/\r\nX-Injected: 1",
    };
    static const good_url good[] = {
        {"WS_ECHO_URL", "WS://%s/info", "/info", "", NULL},
        {"WS_ECHO_URL", "Ws://%s/info?x=1&y=two", "/info", "x=1&y=two", NULL},
        {"WS_ECHO_URL", "ws://%s?info=1", "/", "info=1", NULL},
        {"WS_ECHO_URL", "ws://%s/?info=1", "/", "info=1", NULL},
        {"WS_ECHO_URL", "ws://%s/deep/er/path?info=1&z", "/deep/er/path", "info=1&z", NULL},
        {"WS_ECHO6_URL", "ws://%s/info", "/info", "", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        char shown[64];
        size_t k = 0;
        for (const char *p = bad[i]; *p && k < sizeof(shown) - 3; ++p) {
            if (*p == '\r') {
                shown[k++] = '\\';
                shown[k++] = 'r';
            } else if (*p == '\n') {
                shown[k++] = '\\';
                shown[k++] = 'n';
            } else {
                shown[k++] = *p;
            }
        }
        shown[k] = '\0';
        t_runf(case_bad_url, (void *)bad[i], "malformed url \"%s\" -> PJ_EINVAL", shown);
    }
    t_run("NULL url -> PJ_EINVAL", case_null_url, NULL);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); ++i)
        t_runf(case_good_url, (void *)&good[i], "valid url %s -> path %s query '%s'", good[i].fmt,
               good[i].want_path, good[i].want_query);

    /* localhost: may resolve to ::1 first; the client must try the next
     * address. The Host header keeps the name. */
    static good_url localhost = {"WS_ECHO_URL", "", "/info", "", "localhost:%d"};
    static char localhost_fmt[64];
    const char *base = env_url("WS_ECHO_URL");
    if (base) {
        snprintf(localhost_fmt, sizeof(localhost_fmt), "ws://localhost:%d/info", url_port(base));
        /* fmt has no %s: hostport is ignored */
        localhost.fmt = localhost_fmt;
    }
    if (base)
        t_run("ws://localhost:PORT connects (every resolved address tried)", case_good_url, &localhost);
    else
        t_report_skip("ws://localhost:PORT connects (every resolved address tried)", "WS_ECHO_URL is not set");
    return t_done();
}
