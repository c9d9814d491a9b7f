/* Shared helpers for libpjwebsock's C tests; see common.h. */
#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Reporter + watchdog                                                 */

static int g_passed, g_failed, g_skipped;
static pthread_mutex_t g_wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wd_cv = PTHREAD_COND_INITIALIZER;
static const char *g_wd_name;     /* case being run, NULL if none */
static double g_wd_deadline;
static int g_wd_started;
static int g_wd_stop;
static pthread_t g_wd_thread;
static int g_case_timeout_s;

static void vappend(t_case *tc, const char *fmt, va_list ap)
{
    size_t used = strlen(tc->why);
    if (used + 4 >= sizeof(tc->why))
        return;
    if (used) {
        strcat(tc->why, "; ");
        used += 2;
    }
    vsnprintf(tc->why + used, sizeof(tc->why) - used, fmt, ap);
    /* one line only */
    for (char *p = tc->why; *p; ++p)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

void t_fail_at(t_case *tc, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    const char *base = strrchr(file, '/');
    char where[64];
    snprintf(where, sizeof(where), "%s:%d: ", base ? base + 1 : file, line);
    if (!tc->failed)
        tc->why[0] = '\0';
    tc->failed++;
    if (strlen(tc->why) + strlen(where) + 4 < sizeof(tc->why)) {
        if (tc->why[0])
            strcat(tc->why, "; ");
        strcat(tc->why, where);
        /* vappend adds "; " for a non-empty buffer: write directly */
        size_t used = strlen(tc->why);
        va_start(ap, fmt);
        vsnprintf(tc->why + used, sizeof(tc->why) - used, fmt, ap);
        va_end(ap);
        for (char *p = tc->why; *p; ++p)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
}

void t_skip(t_case *tc, const char *fmt, ...)
{
    va_list ap;
    if (tc->failed)
        return;
    tc->skipped = 1;
    tc->why[0] = '\0';
    va_start(ap, fmt);
    vappend(tc, fmt, ap);
    va_end(ap);
}

void t_set_case_timeout_s(int seconds)
{
    g_case_timeout_s = seconds;
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_wd_mu);
    while (!g_wd_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g_wd_cv, &g_wd_mu, &ts);
        if (g_wd_name && now_ms() > g_wd_deadline) {
            printf("not ok - %s: watchdog: case still running after %d s (hang?)\n",
                   g_wd_name, g_case_timeout_s);
            printf("# %d passed, %d failed, %d skipped (aborted)\n", g_passed,
                   g_failed + 1, g_skipped);
            fflush(stdout);
            _exit(3);
        }
    }
    pthread_mutex_unlock(&g_wd_mu);
    return NULL;
}

void t_run(const char *name, t_fn fn, void *arg)
{
    t_case tc;
    memset(&tc, 0, sizeof(tc));
    tc.name = name;

    if (!g_case_timeout_s)
        g_case_timeout_s = under_valgrind() ? 900 : 120;
    pthread_mutex_lock(&g_wd_mu);
    if (!g_wd_started && pthread_create(&g_wd_thread, NULL, watchdog_main, NULL) == 0)
        g_wd_started = 1;
    g_wd_name = name;
    g_wd_deadline = now_ms() + g_case_timeout_s * 1000.0;
    pthread_mutex_unlock(&g_wd_mu);

    printf("# running %s\n", name);
    fflush(stdout);
    double t0 = now_ms();
    fn(&tc, arg);
    double dt = now_ms() - t0;

    pthread_mutex_lock(&g_wd_mu);
    g_wd_name = NULL;
    pthread_mutex_unlock(&g_wd_mu);

    if (tc.failed) {
        g_failed++;
        printf("not ok - %s: %s\n", name, tc.why[0] ? tc.why : "failed");
    } else if (tc.skipped) {
        g_skipped++;
        printf("SKIPPED - %s: %s\n", name, tc.why[0] ? tc.why : "skipped");
    } else {
        g_passed++;
        printf("ok - %s\n", name);
    }
    printf("#   (%.0f ms)\n", dt);
    fflush(stdout);
}

void t_runf(t_fn fn, void *arg, const char *fmt, ...)
{
    /* names must outlive the watchdog's use of them */
    char *name = malloc(256);
    va_list ap;
    if (!name)
        abort();
    va_start(ap, fmt);
    vsnprintf(name, 256, fmt, ap);
    va_end(ap);
    t_run(name, fn, arg);
    free(name);
}

void t_report_skip(const char *name, const char *why)
{
    g_skipped++;
    printf("SKIPPED - %s: %s\n", name, why);
    fflush(stdout);
}

int t_done(void)
{
    /* stop the watchdog (joined, so that valgrind sees no leftover thread) */
    pthread_mutex_lock(&g_wd_mu);
    g_wd_stop = 1;
    pthread_cond_broadcast(&g_wd_cv);
    int started = g_wd_started;
    g_wd_started = 0;
    pthread_mutex_unlock(&g_wd_mu);
    if (started)
        pthread_join(g_wd_thread, NULL);
    printf("# %d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
    fflush(stdout);
    return g_failed ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* Environment                                                         */

const char *env_url(const char *var)
{
    const char *v = getenv(var);
    return (v && *v) ? v : NULL;
}

int url_make(char *buf, size_t size, const char *var, const char *path)
{
    const char *base = env_url(var);
    if (!base) {
        if (size)
            buf[0] = '\0';
        return 0;
    }
    snprintf(buf, size, "%s%s", base, path ? path : "");
    return 1;
}

int url_port(const char *url)
{
    const char *p = strstr(url, "://");
    if (!p)
        return -1;
    p += 3;
    if (*p == '[') {
        p = strchr(p, ']');
        if (!p)
            return -1;
        p++;
    } else {
        while (*p && *p != ':' && *p != '/' && *p != '?')
            p++;
    }
    if (*p != ':')
        return -1;
    return atoi(p + 1);
}

int need_url(t_case *tc, char *buf, size_t size, const char *var, const char *path)
{
    if (url_make(buf, size, var, path))
        return 1;
    t_skip(tc, "%s is not set (run through tests/run_c_tests.py)", var);
    return 0;
}

long heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (long)(mi.uordblks + mi.hblkhd);
}

int skip_timing_under_valgrind(t_case *tc)
{
    if (!under_valgrind())
        return 0;
    t_skip(tc, "timing case, not run under valgrind");
    return 1;
}

/* ------------------------------------------------------------------ */
/* Utilities                                                           */

long rss_kb(void)
{
    return proc_status_field("VmRSS");
}

int need_small_fd_table(t_case *tc, long *before, long *want)
{
    *before = fd_table_slots();
    *want = fd_table_reserve_want();
    T_CHECK(tc, *before > 0 && *want > 0, "FDSize %ld, RLIMIT_NOFILE %ld", *before, *want);
    if (*before <= 0 || *want <= 0)
        return 0;
    if (*before >= *want) {
        t_skip(tc, "the descriptor table has %ld slots already", *before);
        return 0;
    }
    return 1;
}

pj_str_t pjstr(const char *s)
{
    pj_str_t r;
    r.ptr = (char *)s;
    r.slen = s ? (pj_ssize_t)strlen(s) : 0;
    return r;
}

const char *st(pj_status_t status)
{
    static __thread char bufs[8][192];
    static __thread unsigned idx;
    char *out = bufs[idx++ % 8];
    char text[160];
    pj_str_t s = pj_websock_strerror(status, text, sizeof(text));
    int n = (s.ptr && s.slen > 0) ? (int)s.slen : 0;
    if (n > (int)sizeof(text) - 1)
        n = (int)sizeof(text) - 1;
    snprintf(out, 192, "%d (%.*s)", status, n, s.ptr ? s.ptr : "");
    return out;
}

const char *state_name(pj_websock_readystate s)
{
    switch (s) {
    case PJ_WEBSOCK_STATE_CONNECTING: return "CONNECTING";
    case PJ_WEBSOCK_STATE_OPEN: return "OPEN";
    case PJ_WEBSOCK_STATE_CLOSING: return "CLOSING";
    case PJ_WEBSOCK_STATE_CLOSED: return "CLOSED";
    default: return "?";
    }
}

pj_status_t send_mib(pj_websock *ws, int n, int *n_sent)
{
    unsigned char *buf = calloc(1, MiB);
    pj_status_t rc = buf ? PJ_SUCCESS : PJ_ENOMEM;
    int i = 0;
    while (buf && i < n && (rc = pj_websock_send(ws, PJ_WEBSOCK_OP_BIN, buf, MiB)) == PJ_SUCCESS)
        i++;
    free(buf);
    if (n_sent)
        *n_sent = i;
    return rc;
}

void pat_fill(void *buf, size_t len, size_t off)
{
    unsigned char *p = buf;
    unsigned v = (unsigned)((off % 251) * 7 % 251);
    for (size_t i = 0; i < len; ++i) {
        p[i] = (unsigned char)v;
        v += 7;
        if (v >= 251)
            v -= 251;
    }
}

long pat_check(const void *buf, size_t len, size_t off)
{
    const unsigned char *p = buf;
    unsigned v = (unsigned)((off % 251) * 7 % 251);
    for (size_t i = 0; i < len; ++i) {
        if (p[i] != v)
            return (long)i;
        v += 7;
        if (v >= 251)
            v -= 251;
    }
    return -1;
}

void pat_fill_text(void *buf, size_t len, size_t off)
{
    unsigned char *p = buf;
    unsigned v = (unsigned)((off % 95) * 7 % 95);
    for (size_t i = 0; i < len; ++i) {
        p[i] = (unsigned char)(0x20 + v);
        v += 7;
        if (v >= 95)
            v -= 95;
    }
}

long pat_check_text(const void *buf, size_t len, size_t off)
{
    const unsigned char *p = buf;
    unsigned v = (unsigned)((off % 95) * 7 % 95);
    for (size_t i = 0; i < len; ++i) {
        if (p[i] != 0x20 + v)
            return (long)i;
        v += 7;
        if (v >= 95)
            v -= 95;
    }
    return -1;
}

int info_header(const char *json, const char *name, int nth, char *out, size_t outsz)
{
    const char *p = json;
    size_t nlen = strlen(name);
    int seen = 0;
    if (!json)
        return 0;
    while ((p = strstr(p, "[\"")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nlen) == 0 && strncmp(p + nlen, "\", \"", 4) == 0) {
            const char *v = p + nlen + 4;
            const char *e = strstr(v, "\"]");
            if (!e)
                return 0;
            if (seen++ < nth)
                continue;
            size_t n = (size_t)(e - v);
            if (n >= outsz)
                n = outsz - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
    }
    return 0;
}

int info_field(const char *json, const char *key, char *out, size_t outsz)
{
    char pat[64];
    const char *p;
    if (!json)
        return 0;
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    p = strstr(json, pat);
    if (!p)
        return 0;
    p += strlen(pat);
    if (strncmp(p, "null", 4) == 0) {
        snprintf(out, outsz, "null");
        return 1;
    }
    if (*p != '"')
        return 0;
    p++;
    const char *e = strchr(p, '"');
    if (!e)
        return 0;
    size_t n = (size_t)(e - p);
    if (n >= outsz)
        n = outsz - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return 1;
}

/* ------------------------------------------------------------------ */
/* Callback context                                                    */

static tctx *ctx_of(pj_websock *ws)
{
    return (tctx *)pj_websock_get_user_data(ws);
}

static void cb_enter(tctx *c, pj_websock *ws)
{
    if (c->destroyed)
        c->n_after_destroy++;
    if (c->ws && ws != c->ws)
        c->n_wrong_ws++;
    if (c->in_cb)
        c->n_cb_concurrent++;
    c->in_cb = 1;
}

static void on_connect_cb(pj_websock *ws, pj_status_t status)
{
    tctx *c = ctx_of(ws);
    if (!c)
        return;
    pj_websock_readystate s = pj_websock_get_state(ws);
    pthread_mutex_lock(&c->mu);
    cb_enter(c, ws);
    c->n_connect++;
    c->connect_status = status;
    c->t_connect = now_ms();
    c->state_in_connect = s;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->connect_hook)
        c->connect_hook(c, ws, status);
    pthread_mutex_lock(&c->mu);
    c->in_cb = 0;
    pthread_mutex_unlock(&c->mu);
}

static void on_rx_msg_cb(pj_websock *ws, pj_websock_opcode op, const void *data, pj_size_t len)
{
    tctx *c = ctx_of(ws);
    if (!c)
        return;
    unsigned char *copy = NULL;
    if (c->keep_msgs) {
        copy = malloc(len + 1);
        if (!copy)
            abort();
        if (len)
            memcpy(copy, data, len);
        copy[len] = '\0';
    }
    pthread_mutex_lock(&c->mu);
    cb_enter(c, ws);
    if (op != PJ_WEBSOCK_OP_TEXT && op != PJ_WEBSOCK_OP_BIN)
        c->n_bad_opcode++;
    if (c->keep_msgs) {
        if (c->n_msgs == c->msgs_cap) {
            size_t cap = c->msgs_cap ? c->msgs_cap * 2 : 64;
            rx_msg *m = realloc(c->msgs, cap * sizeof(*m));
            if (!m)
                abort();
            c->msgs = m;
            c->msgs_cap = cap;
        }
        c->msgs[c->n_msgs].opcode = (int)op;
        c->msgs[c->n_msgs].len = len;
        c->msgs[c->n_msgs].data = copy;
        c->msgs[c->n_msgs].t_ms = now_ms();
        c->n_msgs++;
    }
    c->n_rx++;
    c->rx_bytes += len;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->rx_hook)
        c->rx_hook(c, ws, op, data, len);
    pthread_mutex_lock(&c->mu);
    c->in_cb = 0;
    pthread_mutex_unlock(&c->mu);
}

static void on_close_cb(pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    tctx *c = ctx_of(ws);
    if (!c)
        return;
    pj_websock_close_info info;
    memset(&info, 0, sizeof(info));
    pj_status_t rc = pj_websock_get_close_info(ws, &info);
    pj_websock_readystate s = pj_websock_get_state(ws);
    pthread_mutex_lock(&c->mu);
    cb_enter(c, ws);
    c->n_close++;
    c->close_code = code;
    if (reason) {
        long n = reason->slen;
        if (n < 0)
            n = 0;
        if (n > (long)sizeof(c->close_reason) - 1)
            n = (long)sizeof(c->close_reason) - 1;
        if (n && reason->ptr)
            memcpy(c->close_reason, reason->ptr, (size_t)n);
        c->close_reason[n] = '\0';
        c->close_reason_len = reason->slen;
    } else {
        c->close_reason[0] = '\0';
        c->close_reason_len = -1;
    }
    c->t_close = now_ms();
    c->state_in_close = s;
    c->close_info = info;
    c->close_info_rc = rc;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->close_hook)
        c->close_hook(c, ws, code, reason);
    pthread_mutex_lock(&c->mu);
    c->in_cb = 0;
    pthread_mutex_unlock(&c->mu);
}

void tctx_init(tctx *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    c->keep_msgs = 1;
    c->close_reason_len = -1;
    c->state_in_connect = (pj_websock_readystate)-1;
    c->state_in_close = (pj_websock_readystate)-1;
}

void tctx_clear_msgs(tctx *c)
{
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n_msgs; ++i)
        free(c->msgs[i].data);
    free(c->msgs);
    c->msgs = NULL;
    c->n_msgs = 0;
    c->msgs_cap = 0;
    c->n_rx = 0;
    c->rx_bytes = 0;
    pthread_mutex_unlock(&c->mu);
}

void tctx_reset_events(tctx *c)
{
    pthread_mutex_lock(&c->mu);
    c->n_connect = 0;
    c->connect_status = 0;
    c->n_close = 0;
    c->close_code = 0;
    c->close_reason[0] = '\0';
    c->close_reason_len = -1;
    memset(&c->close_info, 0, sizeof(c->close_info));
    c->state_in_connect = (pj_websock_readystate)-1;
    c->state_in_close = (pj_websock_readystate)-1;
    pthread_mutex_unlock(&c->mu);
}

void tctx_free(tctx *c)
{
    tctx_clear_msgs(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

void tctx_param(tctx *c, pj_websock_param *p)
{
    pj_websock_param_default(p);
    p->cb.on_connect = on_connect_cb;
    p->cb.on_rx_msg = on_rx_msg_cb;
    p->cb.on_close = on_close_cb;
    p->user_data = c;
}

pj_status_t tctx_create(tctx *c, const pj_websock_param *p, pj_websock **out)
{
    pj_websock_param def;
    pj_websock *ws = NULL;
    if (!p) {
        tctx_param(c, &def);
        p = &def;
    }
    pj_status_t rc = pj_websock_create(NULL, p, &ws);
    if (rc == PJ_SUCCESS) {
        pthread_mutex_lock(&c->mu);
        c->ws = ws;
        c->destroyed = 0;
        pthread_mutex_unlock(&c->mu);
    }
    if (out)
        *out = ws;
    return rc;
}

pj_status_t tctx_connect(tctx *c, const char *url, const pj_websock_connect_param *cp)
{
    pj_str_t u = pjstr(url);
    return pj_websock_connect(c->ws, &u, cp);
}

pj_status_t tctx_destroy(tctx *c)
{
    pj_status_t rc = pj_websock_destroy(c->ws);
    pthread_mutex_lock(&c->mu);
    c->destroyed = 1;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* A typed predicate and its argument, for cond_wait_until's void * one. */
typedef struct tctx_pred {
    int (*pred)(tctx *c, void *arg);
    void *arg;
} tctx_pred;

static int call_tctx_pred(void *ctx, void *arg)
{
    const tctx_pred *p = arg;
    return p->pred(ctx, p->arg);
}

int g_tctx_poll;

int tctx_wait_until(tctx *c, int (*pred)(tctx *c, void *arg), void *arg, int ms)
{
    tctx_pred p = {pred, arg};
    if (!g_tctx_poll)
        return cond_wait_until(&c->mu, &c->cv, call_tctx_pred, c, &p, ms);
    /* Poll mode: the callbacks run in pj_websock_poll() on this thread. */
    double end = now_ms() + ms;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int ok = pred(c, arg);
        pthread_mutex_unlock(&c->mu);
        if (ok || now_ms() > end)
            return ok;
        pj_websock_poll(10, NULL);
    }
}

static int pred_connect(tctx *c, void *arg)
{
    (void)arg;
    return c->n_connect > 0;
}

static int pred_close(tctx *c, void *arg)
{
    (void)arg;
    return c->n_close > 0;
}

static int pred_rx(tctx *c, void *arg)
{
    return c->n_rx >= *(size_t *)arg;
}

int tctx_wait_connect(tctx *c, int ms)
{
    return tctx_wait_until(c, pred_connect, NULL, ms);
}

int tctx_wait_close(tctx *c, int ms)
{
    return tctx_wait_until(c, pred_close, NULL, ms);
}

int tctx_wait_rx(tctx *c, size_t n, int ms)
{
    return tctx_wait_until(c, pred_rx, &n, ms);
}

int tctx_open(t_case *tc, tctx *c, const pj_websock_param *p, const char *url,
              const pj_websock_connect_param *cp)
{
    pj_status_t rc;
    if (!c->ws) {
        rc = tctx_create(c, p, NULL);
        if (rc != PJ_SUCCESS) {
            t_fail_at(tc, __FILE__, __LINE__, "pj_websock_create: %s", st(rc));
            return 0;
        }
    }
    rc = tctx_connect(c, url, cp);
    if (rc != PJ_SUCCESS) {
        t_fail_at(tc, __FILE__, __LINE__, "pj_websock_connect(%s): %s", url, st(rc));
        return 0;
    }
    if (!tctx_wait_connect(c, tmo(10000))) {
        t_fail_at(tc, __FILE__, __LINE__, "no on_connect within 10 s (%s)", url);
        return 0;
    }
    if (c->connect_status != PJ_SUCCESS) {
        t_fail_at(tc, __FILE__, __LINE__, "on_connect(%s): %s", url, st(c->connect_status));
        return 0;
    }
    return 1;
}

int tctx_close_wait(t_case *tc, tctx *c, pj_uint16_t code, const char *reason)
{
    pj_str_t r = pjstr(reason);
    pj_status_t rc = pj_websock_close(c->ws, code, reason ? &r : NULL);
    if (rc != PJ_SUCCESS) {
        t_fail_at(tc, __FILE__, __LINE__, "pj_websock_close(%u): %s", code, st(rc));
        return 0;
    }
    if (!tctx_wait_close(c, tmo(10000))) {
        t_fail_at(tc, __FILE__, __LINE__, "no on_close within 10 s after pj_websock_close");
        return 0;
    }
    return 1;
}

int tctx_msg(tctx *c, size_t i, rx_msg *out)
{
    int ok = 0;
    pthread_mutex_lock(&c->mu);
    if (i < c->n_msgs) {
        *out = c->msgs[i];
        ok = 1;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}
