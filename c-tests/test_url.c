/* URL parsing: malformed URLs fail synchronously with PJ_EINVAL and leave
 * the instance CLOSED (no callback); valid spellings connect: upper-case
 * scheme, no path, query without path, IPv6 literal, "localhost" (which
 * may resolve to ::1 first, where nothing listens on that port).
 *
 * Per-address connect timeout: a name whose first address is black-holed
 * (WS_DUAL_URL: [::1]:P drops SYNs, 127.0.0.1:P is ws_server.py) still
 * connects, through the second address, once the first one's share of the
 * connect timeout has run out. Two names: "localhost" when the host's
 * resolver really puts ::1 before 127.0.0.1 (else SKIPPED), and DUAL_NAME,
 * which this program's own getaddrinfo() answers with ::1 then 127.0.0.1
 * (the library's lookup reaches it by symbol interposition; every other
 * name goes to the C library's resolver). */
#include "common.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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

/* ------------------------------------------------------------------ */
/* A name resolving to ::1 first, then 127.0.0.1                       */

#define DUAL_NAME "dual-stack.pjws.test"

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
typedef void (*fai_fn)(struct addrinfo *);

static pthread_mutex_t g_gai_mu = PTHREAD_MUTEX_INITIALIZER;
/* lists made by getaddrinfo(DUAL_NAME): head (the ::1 part) and the
 * 127.0.0.1 part appended to it, to be split again for freeaddrinfo() */
static struct {
    struct addrinfo *head, *tail;
} g_joined[16];

static gai_fn real_getaddrinfo(void)
{
    static gai_fn fn;
    if (!fn)
        *(void **)&fn = dlsym(RTLD_NEXT, "getaddrinfo");
    return fn;
}

static fai_fn real_freeaddrinfo(void)
{
    static fai_fn fn;
    if (!fn)
        *(void **)&fn = dlsym(RTLD_NEXT, "freeaddrinfo");
    return fn;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    gai_fn real = real_getaddrinfo();
    if (!real)
        return EAI_SYSTEM;
    if (!node || strcmp(node, DUAL_NAME) != 0)
        return real(node, service, hints, res);
    struct addrinfo h, *v6 = NULL, *v4 = NULL;
    memset(&h, 0, sizeof(h));
    if (hints)
        h = *hints;
    h.ai_flags = (h.ai_flags | AI_NUMERICHOST) & ~(AI_CANONNAME | AI_ADDRCONFIG);
    h.ai_family = AF_INET6;
    int rc = real("::1", service, &h, &v6);
    if (rc != 0)
        return rc;
    h.ai_family = AF_INET;
    rc = real("127.0.0.1", service, &h, &v4);
    if (rc != 0) {
        real_freeaddrinfo()(v6);
        return rc;
    }
    pthread_mutex_lock(&g_gai_mu);
    size_t i = 0;
    while (i < sizeof(g_joined) / sizeof(g_joined[0]) && g_joined[i].head)
        i++;
    if (i == sizeof(g_joined) / sizeof(g_joined[0])) {
        pthread_mutex_unlock(&g_gai_mu);
        real_freeaddrinfo()(v6);
        real_freeaddrinfo()(v4);
        return EAI_MEMORY;
    }
    g_joined[i].head = v6;
    g_joined[i].tail = v4;
    pthread_mutex_unlock(&g_gai_mu);
    struct addrinfo *last = v6;
    while (last->ai_next)
        last = last->ai_next;
    last->ai_next = v4;
    *res = v6;
    return 0;
}

void freeaddrinfo(struct addrinfo *ai)
{
    struct addrinfo *tail = NULL;
    fai_fn real = real_freeaddrinfo();
    if (!ai || !real)
        return;
    pthread_mutex_lock(&g_gai_mu);
    for (size_t i = 0; i < sizeof(g_joined) / sizeof(g_joined[0]); ++i) {
        if (g_joined[i].head == ai) {
            tail = g_joined[i].tail;
            g_joined[i].head = g_joined[i].tail = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&g_gai_mu);
    if (tail) {
        struct addrinfo *p = ai;
        while (p->ai_next && p->ai_next != tail)
            p = p->ai_next;
        p->ai_next = NULL;
        real(tail);
    }
    real(ai);
}

/* Position of ::1 and of 127.0.0.1 in what getaddrinfo(name) returns for
 * a TCP connect (-1 when absent). Returns 0 if the lookup failed. */
static int loopback_order(const char *name, int *pos6, int *pos4)
{
    struct addrinfo h, *res = NULL;
    memset(&h, 0, sizeof(h));
    h.ai_family = AF_UNSPEC;
    h.ai_socktype = SOCK_STREAM;
    *pos6 = *pos4 = -1;
    if (getaddrinfo(name, NULL, &h, &res) != 0)
        return 0;
    int i = 0;
    for (struct addrinfo *p = res; p; p = p->ai_next, ++i) {
        if (p->ai_family == AF_INET6 && *pos6 < 0 &&
            IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr))
            *pos6 = i;
        if (p->ai_family == AF_INET && *pos4 < 0 &&
            ((struct sockaddr_in *)p->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK))
            *pos4 = i;
    }
    freeaddrinfo(res);
    return 1;
}

typedef struct dual_case {
    int localhost;   /* else DUAL_NAME */
    int timing;
} dual_case;

/* Connect timeout 6 s over two addresses: the first one gets
 * max(6 s / 2, min(6 s, 3 s)) = 3 s (src/client.rs try_next_addr), then
 * the second connects at once. */
#define DUAL_CONNECT_TIMEOUT 6000
#define DUAL_PER_ADDR 3000

static void case_dual(t_case *tc, void *arg)
{
    const dual_case *d = arg;
    const char *host = d->localhost ? "localhost" : DUAL_NAME;
    const char *base = env_url("WS_DUAL_URL");
    char url[512], val[256], want_host[300];
    static const char hello[] = "over the second address";
    unsigned limit = DUAL_CONNECT_TIMEOUT;
    tctx c;
    tctx_init(&c);
    if (d->timing && skip_timing_under_valgrind(tc))
        goto out;
    if (!base) {
        const char *why = getenv("WS_DUAL_SKIP");
        t_skip(tc, "no black-holed ::1 beside a server on 127.0.0.1: %s",
               why && *why ? why : "WS_DUAL_URL is not set (run through tests/run_c_tests.py)");
        goto out;
    }
    int pos6, pos4;
    int looked_up = loopback_order(host, &pos6, &pos4);
    if (d->localhost) {
        if (!looked_up || pos6 < 0 || pos4 < 0 || pos6 > pos4) {
            t_skip(tc, "getaddrinfo(\"localhost\") does not give ::1 before 127.0.0.1 here (%s, ::1 at %d, "
                       "127.0.0.1 at %d)",
                   looked_up ? "resolved" : "lookup failed", pos6, pos4);
            goto out;
        }
    } else {
        T_REQUIRE(tc, looked_up && pos6 == 0 && pos4 == 1,
                  "the program's getaddrinfo(\"%s\") gave ::1 at %d, 127.0.0.1 at %d (lookup %s)", host, pos6, pos4,
                  looked_up ? "ok" : "failed");
    }
    if (!d->timing && under_valgrind())
        limit = 2 * DUAL_CONNECT_TIMEOUT;   /* first address: 6 s */
    int port = url_port(base);
    snprintf(url, sizeof(url), "ws://%s:%d/info", host, port);
    snprintf(want_host, sizeof(want_host), "%s:%d", host, port);
    pj_status_t rc = tctx_create(&c, NULL, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_set_connect_timeout(c.ws, limit);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_connect_timeout: %s", st(rc));
    double t0 = now_ms();
    rc = tctx_connect(&c, url, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "connect(%s): %s", url, st(rc));
    T_REQUIRE(tc, tctx_wait_connect(&c, (int)limit + tmo(3000)), "no on_connect within %u ms", limit + 3000);
    double took = c.t_connect - t0;
    printf("# on_connect(%s) after %.0f ms (connect timeout %u ms)\n", st(c.connect_status), took, limit);
    T_REQUIRE(tc, c.connect_status == PJ_SUCCESS, "on_connect %s after %.0f ms, want PJ_SUCCESS through 127.0.0.1",
              st(c.connect_status), took);
    if (d->timing) {
        T_CHECK(tc, took >= DUAL_PER_ADDR - 50,
                "connected after %.0f ms: sooner than the %d ms the black-holed ::1 should have taken", took,
                DUAL_PER_ADDR);
        T_CHECK(tc, took < DUAL_PER_ADDR + 1500, "connected after %.0f ms, want about %d ms (connect timeout %u ms)",
                took, DUAL_PER_ADDR, limit);
    }
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no /info message");
    rx_msg m;
    T_REQUIRE(tc, tctx_msg(&c, 0, &m), "missing");
    T_CHECK(tc, info_header((const char *)m.data, "Host", 0, val, sizeof(val)) && strcmp(val, want_host) == 0,
            "Host '%s', want '%s'", val, want_host);
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, hello, sizeof(hello) - 1);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
    T_REQUIRE(tc, tctx_wait_rx(&c, 2, tmo(5000)), "no echo");
    T_REQUIRE(tc, tctx_msg(&c, 1, &m), "missing");
    T_CHECK(tc, m.len == sizeof(hello) - 1 && memcmp(m.data, hello, m.len) == 0, "echo '%.*s'", (int)m.len,
            (const char *)m.data);
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

    static const dual_case dual_localhost = {1, 1}, dual_name_timed = {0, 1}, dual_name_untimed = {0, 0};
    t_run("localhost -> black-holed ::1 first: connects via 127.0.0.1 after the per-address timeout (timing)",
          case_dual, (void *)&dual_localhost);
    t_run(DUAL_NAME " -> black-holed ::1 first: connects via 127.0.0.1 after the per-address timeout (timing)",
          case_dual, (void *)&dual_name_timed);
    t_run(DUAL_NAME " -> black-holed ::1 first: connects via 127.0.0.1 (no timing bounds)", case_dual,
          (void *)&dual_name_untimed);
    return t_done();
}
