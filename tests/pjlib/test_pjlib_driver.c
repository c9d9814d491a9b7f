/*
 * libpjwebsock driven by pjlib's ioqueue and timer heap (pjlib mode).
 * Built and run by tests/pjlib/run.sh against a pjproject build.
 *
 *   test_pjlib_driver ws://127.0.0.1:PORT
 */
#include <pjlib.h>
#include <pjlib-util.h>
#include <pjwebsock/websock.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPOLL 2
static pj_caching_pool cp;
static pj_pool_t *pool;
static pj_ioqueue_t *ioq;
static pj_timer_heap_t *th;
static volatile int quit;
static pthread_t pollers[NPOLL];
static int passed, failed;

static void check(int ok, const char *name, const char *why)
{
    if (ok) { passed++; printf("ok - %s\n", name); }
    else { failed++; printf("not ok - %s: %s\n", name, why); }
    fflush(stdout);
}

static int on_poll_thread(void)
{
    for (int i = 0; i < NPOLL; i++)
        if (pthread_equal(pthread_self(), pollers[i])) return 1;
    return 0;
}

typedef struct {
    volatile int connected, status, closed, rx, bad_thread, overlap, in_cb, after_destroy, destroy_in;
    volatile int destroyed;
    size_t last_len;
    unsigned char *expect; size_t expect_len; int bad_bytes;
} ctx_t;

static void enter(ctx_t *c) { if (!on_poll_thread()) c->bad_thread++; if (__sync_add_and_fetch(&c->in_cb, 1) > 1) c->overlap++; if (c->destroyed) c->after_destroy++; }
static void leave(ctx_t *c) { __sync_sub_and_fetch(&c->in_cb, 1); }

static void on_connect(pj_websock *ws, pj_status_t st)
{
    ctx_t *c = pj_websock_get_user_data(ws); enter(c);
    c->status = st; c->connected = st == PJ_SUCCESS ? 1 : -1;
    if (c->destroy_in == 1) { c->destroyed = 1; pj_websock_destroy(ws); }
    leave(c);
}
static void on_rx(pj_websock *ws, pj_websock_opcode op, const void *d, pj_size_t len)
{
    ctx_t *c = pj_websock_get_user_data(ws); enter(c);
    (void)op;
    if (c->expect && (len != c->expect_len || memcmp(d, c->expect, len) != 0)) c->bad_bytes++;
    c->last_len = len; c->rx++;
    if (c->destroy_in == 2) { c->destroyed = 1; pj_websock_destroy(ws); }
    leave(c);
}
static void on_close(pj_websock *ws, pj_uint16_t code, const pj_str_t *r)
{
    ctx_t *c = pj_websock_get_user_data(ws); enter(c);
    (void)code; (void)r; c->closed = 1;
    if (c->destroy_in == 3) { c->destroyed = 1; pj_websock_destroy(ws); }
    leave(c);
}

static void *poll_main(void *a)
{
    pj_thread_desc d; pj_thread_t *t; (void)a;
    memset(d, 0, sizeof d);
    pj_thread_register("poll", d, &t);
    while (!quit) { pj_time_val tv = {0, 5}; pj_timer_heap_poll(th, NULL); pj_ioqueue_poll(ioq, &tv); }
    return NULL;
}

static int wait_for(volatile int *v, int want, int ms)
{
    for (int i = 0; i < ms / 5 && *v != want; i++) pj_thread_sleep(5);
    return *v == want;
}

static pj_websock *open_ws(ctx_t *c, pj_ioqueue_t *q, const char *url)
{
    pj_websock_param p; pj_websock *ws = NULL;
    pj_websock_param_default(&p);
    p.ioqueue = q; p.timer_heap = th; p.user_data = c;
    p.cb.on_connect = on_connect; p.cb.on_rx_msg = on_rx; p.cb.on_close = on_close;
    p.max_rx_msg_size = 32 * 1024 * 1024;
    if (pj_websock_create(pool, &p, &ws) != PJ_SUCCESS) return NULL;
    pj_str_t u = pj_str((char *)url);
    if (pj_websock_connect(ws, &u, NULL) != PJ_SUCCESS) { pj_websock_destroy(ws); return NULL; }
    return ws;
}

static int count_tasks(void)
{
    int n = 0; DIR *d = opendir("/proc/self/task"); struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
    closedir(d); return n;
}

int main(int argc, char **argv)
{
    char buf[256];
    if (argc < 2) { fprintf(stderr, "usage: %s ws://host:port\n", argv[0]); return 2; }
    const char *base = argv[1];
    pj_init(); pjlib_util_init(); pj_log_set_level(1);
    pj_caching_pool_init(&cp, NULL, 0);
    pool = pj_pool_create(&cp.factory, "test", 4000, 4000, NULL);
    pj_ioqueue_create(pool, strncmp(pj_ioqueue_name(), "select", 6) == 0 ? PJ_IOQUEUE_MAX_HANDLES : 1024, &ioq);
    pj_timer_heap_create(pool, 1024, &th);
    { pj_lock_t *lk; pj_lock_create_recursive_mutex(pool, "th", &lk); pj_timer_heap_set_lock(th, lk, PJ_TRUE); }
    printf("# ioqueue: %s\n", pj_ioqueue_name());
    for (int i = 0; i < NPOLL; i++) pthread_create(&pollers[i], NULL, poll_main, NULL);
    size_t used0 = cp.used_count;

    /* 1. echo text and binary up to 16 MiB; callbacks on polling threads */
    {
        static const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20};
        ctx_t c; memset(&c, 0, sizeof c);
        pj_websock *ws = open_ws(&c, ioq, base);
        int ok = ws && wait_for(&c.connected, 1, 5000);
        check(ok, "connect through the application's ioqueue", "no on_connect(PJ_SUCCESS)");
        int tasks = count_tasks();
        snprintf(buf, sizeof buf, "%d threads, expected %d (main + pollers)", tasks, 1 + NPOLL);
        check(tasks == 1 + NPOLL, "no library thread in pjlib mode (/proc/self/task)", buf);
        int echo_ok = ok;
        for (size_t k = 0; ok && k < sizeof sizes / sizeof sizes[0]; k++) {
            for (int op = 0; op < 2; op++) {
                size_t n = sizes[k];
                unsigned char *m = malloc(n ? n : 1);
                for (size_t i = 0; i < n; i++) m[i] = op ? (unsigned char)(i * 7 % 251) : (unsigned char)('a' + i % 26);
                c.expect = m; c.expect_len = n; int before = c.rx;
                pj_websock_send(ws, op ? PJ_WEBSOCK_OP_BIN : PJ_WEBSOCK_OP_TEXT, m, n);
                if (!wait_for(&c.rx, before + 1, 20000) || c.bad_bytes) echo_ok = 0;
                c.expect = NULL; free(m);
            }
        }
        snprintf(buf, sizeof buf, "rx %d, bad bytes %d", c.rx, c.bad_bytes);
        check(echo_ok, "echo text and binary 0 B .. 16 MiB", buf);
        if (ws) { pj_websock_close(ws, 1000, NULL); wait_for(&c.closed, 1, 5000); }
        snprintf(buf, sizeof buf, "%d callbacks off the polling threads, %d overlapping", c.bad_thread, c.overlap);
        check(c.closed && !c.bad_thread && !c.overlap, "every callback on a polling thread, never overlapping", buf);
        if (ws) { c.destroyed = 1; pj_websock_destroy(ws); }
    }

    /* 2. destroy from inside each callback */
    for (int where = 1; where <= 3; where++) {
        ctx_t c; memset(&c, 0, sizeof c); c.destroy_in = where;
        pj_websock *ws = open_ws(&c, ioq, where == 3 ? "" : base);
        char url[300]; snprintf(url, sizeof url, "%s/close?code=4000", base);
        if (where == 3) { c.destroy_in = 3; ws = open_ws(&c, ioq, url); }
        int ok = ws != NULL && wait_for(&c.connected, 1, 5000);
        if (ok && where == 2) pj_websock_send(ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
        pj_thread_sleep(300);
        ok = ok && c.destroyed && !c.after_destroy;
        snprintf(buf, sizeof buf, "destroyed %d, callbacks after destroy %d", c.destroyed, c.after_destroy);
        check(ok, where == 1 ? "destroy inside on_connect" : where == 2 ? "destroy inside on_rx_msg" : "destroy inside on_close", buf);
    }

    /* 3. the socket is the ioqueue's: a 4-handle ioqueue refuses the 5th */
    {
        pj_ioqueue_t *small; pj_ioqueue_create(pool, 4, &small);
        /* polled by the same threads? no: poll it here, from this thread's helper */
        ctx_t c[6]; pj_websock *ws[6]; int fails = 0, oks = 0;
        memset(c, 0, sizeof c);
        for (int i = 0; i < 6; i++) ws[i] = open_ws(&c[i], small, base);
        for (int t = 0; t < 400; t++) { pj_time_val tv = {0, 5}; pj_ioqueue_poll(small, &tv); }
        for (int i = 0; i < 6; i++) { if (c[i].connected == 1) oks++; else if (c[i].connected == -1) fails++; }
        snprintf(buf, sizeof buf, "%d open, %d failed cleanly", oks, fails);
        check(oks >= 1 && oks <= 4 && fails >= 2, "connects beyond a small ioqueue's capacity fail cleanly", buf);
        for (int i = 0; i < 6; i++) if (ws[i]) { c[i].destroyed = 1; pj_websock_destroy(ws[i]); }
    }

    /* 4. pool accounting back to the baseline */
    for (int t = 0; t < 200 && cp.used_count != used0; t++) pj_thread_sleep(10);
    snprintf(buf, sizeof buf, "used_count %u, baseline %u", (unsigned)cp.used_count, (unsigned)used0);
    check(cp.used_count == used0, "pjlib pool accounting clean after destroy", buf);
    check(pj_websock_get_live_count() == 0, "no instance left (live count 0)", "instances left");

    quit = 1;
    for (int i = 0; i < NPOLL; i++) pthread_join(pollers[i], NULL);
    printf("%d passed, %d failed, 0 skipped\n", passed, failed);
    return failed != 0;
}
