/*
 * libpjwebsock benchmark client (see bench/README.md for the workloads).
 *
 * Written the way the library's header recommends: NULL pool/ioqueue/timer
 * heap, so the library's own event thread drives every connection and runs
 * the callbacks. Echoes are verified inside on_rx_msg (on that thread);
 * pingpong sends the next message from on_rx_msg; stream/bulk send from the
 * main thread as fast as pj_websock_send() accepts (PJ_EBUSY above the
 * send-queue high-water mark, set to 256 KiB as the header recommends for
 * such senders: wait a little and retry); fanout sends from
 * the main thread on a 20 ms clock per connection.
 *
 * With PJWS_LOOP=poll the loop runs in poll mode (PJ_WEBSOCK_LOOP_POLL): no
 * library thread; the main thread runs the loop in pj_websock_poll() while
 * it waits (for connects, echoes, a send slot on PJ_EBUSY, the next fanout
 * frame's due time) and, when streaming, after every 128 KiB it sent.
 */
#include "common.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

#include <pjwebsock/websock.h>

typedef struct conn {
    pj_websock *ws;
    long idx;
    uint64_t rx_seq; /* next echo expected */
    size_t rx_count;
} conn_t;

static bench_args A;
static int g_text;                 /* pingpong uses TEXT, the rest BIN */
static long g_total;               /* messages to echo in this run */
static uint8_t *g_txbuf;           /* pingpong: next message (event thread) */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;
static long g_connected, g_connect_failed;
static pj_status_t g_first_connect_error;
static int g_done;
static int g_closing;
static long g_closed;
static int g_failed;
static char g_err[600];

static int g_poll;                 /* PJWS_LOOP=poll: the loop runs in pj_websock_poll() */
static atomic_long g_echoes;       /* verified echoes (conns, fanout) */
static uint64_t g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, g_last_connect;
static uint64_t *g_sent_at;        /* pingpong: [0]; fanout: per message */
static hist_t g_lat;               /* ns per measured echo */
static long g_fan_k;               /* fanout frames per connection */

static void fail(const char *fmt, ...)
{
    pthread_mutex_lock(&g_mu);
    if (!g_failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_err, sizeof g_err, fmt, ap);
        va_end(ap);
        g_failed = 1;
    }
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

static void finish(uint64_t t)
{
    g_t1 = t;
    g_cpu1 = self_cpu_us();
    g_srv1 = proc_cpu_ns(A.server_pid);
    pthread_mutex_lock(&g_mu);
    g_done = 1;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

static const char *strerr(pj_status_t st)
{
    static char buf[160];
    pj_websock_strerror(st, buf, sizeof buf);
    return buf;
}

/* Waits until pred() holds or a failure was recorded; 0 on success. In
 * poll mode the callbacks run inside pj_websock_poll() on this thread. */
static int wait_for(int (*pred)(void), double timeout_s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)timeout_s;
    int rc = 0;
    if (g_poll) {
        uint64_t end = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        while (!pred() && !g_failed) {
            if (now_ns() > end) {
                rc = -1;
                break;
            }
            pj_websock_poll(100, NULL);
        }
        return g_failed ? -1 : rc;
    }
    pthread_mutex_lock(&g_mu);
    while (!pred() && !g_failed) {
        if (pthread_cond_timedwait(&g_cv, &g_mu, &ts) == ETIMEDOUT) {
            rc = -1;
            break;
        }
    }
    if (g_failed)
        rc = -1;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static long g_want_connected;
static int pred_connected(void) { return g_connected + g_connect_failed >= g_want_connected; }
static int pred_done(void) { return g_done; }
static long g_want_closed;
static int pred_closed(void) { return g_closed >= g_want_closed; }

/* ---- callbacks (library event thread) ----------------------------------- */

static void on_connect(pj_websock *ws, pj_status_t status)
{
    (void)ws;
    uint64_t t = now_ns();
    pthread_mutex_lock(&g_mu);
    if (status == PJ_SUCCESS) {
        g_connected++;
    } else {
        if (!g_connect_failed)
            g_first_connect_error = status;
        g_connect_failed++;
    }
    g_last_connect = t;
    /* Wake the main thread once, when what it waits for is complete. */
    if (pred_connected())
        pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

static void on_close(pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    (void)ws;
    pthread_mutex_lock(&g_mu);
    int expected = g_closing;
    g_closed++;
    if (pred_closed())
        pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    if (!expected)
        fail("connection closed unexpectedly: code %u reason '%.*s'", code,
             reason ? (int)reason->slen : 0, reason ? reason->ptr : "");
}

static void bad_echo(conn_t *c, pj_websock_opcode op, const void *data, size_t len, uint64_t seq)
{
    char d[200];
    describe_mismatch(d, sizeof d, (const uint8_t *)data, len, seq, (size_t)A.size, g_text);
    fail("conn %ld: bad echo (opcode %d): %s", c->idx, (int)op, d);
}

static void on_rx_pingpong(conn_t *c, pj_websock_opcode op, const void *data, pj_size_t len)
{
    uint64_t t = now_ns();
    uint64_t seq = c->rx_seq;
    if (op != PJ_WEBSOCK_OP_TEXT || check_msg((const uint8_t *)data, len, seq, (size_t)A.size, 1)) {
        bad_echo(c, op, data, len, seq);
        return;
    }
    if ((long)seq >= A.warmup)
        hist_add(&g_lat, t - g_sent_at[0]);
    c->rx_seq = ++seq;
    if ((long)seq == g_total) {
        finish(t);
        return;
    }
    fill_msg(g_txbuf, seq, (size_t)A.size, 1);
    if ((long)seq == A.warmup) {
        g_cpu0 = self_cpu_us();
        g_srv0 = proc_cpu_ns(A.server_pid);
        g_t0 = now_ns();
    }
    g_sent_at[0] = now_ns();
    pj_status_t st = pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, g_txbuf, (pj_size_t)A.size);
    if (st != PJ_SUCCESS)
        fail("pj_websock_send: %d %s", st, strerr(st));
}

static void on_rx_stream(conn_t *c, pj_websock_opcode op, const void *data, pj_size_t len)
{
    uint64_t seq = c->rx_seq;
    if (op != PJ_WEBSOCK_OP_BIN || check_msg((const uint8_t *)data, len, seq, (size_t)A.size, 0)) {
        bad_echo(c, op, data, len, seq);
        return;
    }
    c->rx_seq = ++seq;
    if ((long)seq == g_total)
        finish(now_ns());
}

static void on_rx_conns(conn_t *c, pj_websock_opcode op, const void *data, pj_size_t len)
{
    uint64_t seq = (uint64_t)c->idx;
    if (c->rx_count || op != PJ_WEBSOCK_OP_BIN ||
        check_msg((const uint8_t *)data, len, seq, (size_t)A.size, 0)) {
        bad_echo(c, op, data, len, seq);
        return;
    }
    c->rx_count++;
    if (atomic_fetch_add(&g_echoes, 1) + 1 == g_total)
        finish(now_ns());
}

static void on_rx_fanout(conn_t *c, pj_websock_opcode op, const void *data, pj_size_t len)
{
    uint64_t t = now_ns();
    uint64_t k = c->rx_seq;
    uint64_t seq = ((uint64_t)c->idx << 32) | k;
    if (op != PJ_WEBSOCK_OP_BIN || (long)k >= g_fan_k ||
        check_msg((const uint8_t *)data, len, seq, (size_t)A.size, 0)) {
        bad_echo(c, op, data, len, seq);
        return;
    }
    size_t slot = (size_t)c->idx * (size_t)g_fan_k + k;
    hist_add(&g_lat, t - g_sent_at[slot]);
    c->rx_seq = k + 1;
    if (atomic_fetch_add(&g_echoes, 1) + 1 == g_total)
        finish(t);
}

static void (*g_on_rx)(conn_t *, pj_websock_opcode, const void *, pj_size_t);

static void on_rx_msg(pj_websock *ws, pj_websock_opcode op, const void *data, pj_size_t len)
{
    conn_t *c = (conn_t *)pj_websock_get_user_data(ws);
    if (g_failed)
        return;
    g_on_rx(c, op, data, len);
}

/* The send-queue high-water mark (pj_websock_set_max_buffered). */
static size_t g_mark = 256 * 1024;

/* ---- setup ------------------------------------------------------------ */

static pj_websock_param g_param;
static pj_str_t g_url;
static int g_wss;

static int conn_open(conn_t *c, long idx)
{
    c->idx = idx;
    g_param.user_data = c;
    pj_status_t st = pj_websock_create(NULL, &g_param, &c->ws);
    if (st != PJ_SUCCESS) {
        fail("pj_websock_create: %d %s", st, strerr(st));
        return -1;
    }
    /* As the header recommends for senders that outpace the network: a
     * small high-water mark, waiting for room on PJ_EBUSY (stream, bulk). */
    if (getenv("PJWS_MAXBUF"))
        g_mark = (size_t)atol(getenv("PJWS_MAXBUF"));
    pj_websock_set_max_buffered(c->ws, g_mark);
    if (g_wss && A.ca && (st = pj_websock_set_tls_ca(c->ws, A.ca, NULL)) != PJ_SUCCESS) {
        fail("pj_websock_set_tls_ca: %d %s", st, strerr(st));
        return -1;
    }
    st = pj_websock_connect(c->ws, &g_url, NULL);
    if (st != PJ_SUCCESS) {
        fail("pj_websock_connect: %d %s", st, strerr(st));
        return -1;
    }
    return 0;
}

/* Opens conns[0..n) at once and waits for every on_connect. */
static int open_all(conn_t *conns, long first, long n, double timeout_s)
{
    pthread_mutex_lock(&g_mu);
    g_want_connected = g_connected + g_connect_failed + n;
    pthread_mutex_unlock(&g_mu);
    for (long i = first; i < first + n; i++)
        if (conn_open(&conns[i], i))
            return -1;
    if (wait_for(pred_connected, timeout_s)) {
        if (!g_failed)
            fail("timed out waiting for %ld connections (%ld open, %ld failed)", n, g_connected,
                 g_connect_failed);
        return -1;
    }
    if (g_connect_failed) {
        pj_status_t st = g_first_connect_error;
        fail("%ld of %ld connects failed, first: %d %s", g_connect_failed, n, st, strerr(st));
        return -1;
    }
    return 0;
}

static void close_all(conn_t *conns, long n)
{
    long want = 0;
    pthread_mutex_lock(&g_mu);
    g_closing = 1;
    long base = g_closed;
    pthread_mutex_unlock(&g_mu);
    for (long i = 0; i < n; i++)
        if (pj_websock_close(conns[i].ws, 1000, NULL) == PJ_SUCCESS)
            want++;
    pthread_mutex_lock(&g_mu);
    g_want_closed = base + want;
    pthread_mutex_unlock(&g_mu);
    if (wait_for(pred_closed, 10.0))
        json_bool("close_timeout", 1);
    for (long i = 0; i < n; i++)
        pj_websock_destroy(conns[i].ws);
}

/* On PJ_EBUSY, waits until the queue is down to half the mark, or to what
 * leaves room for this frame (at most 14 header bytes) if that is less: 0
 * for a message larger than the mark, which goes only into an empty queue.
 * In poll mode the wait runs the loop. Then retries. */
static void send_or_wait(pj_websock *ws, const uint8_t *buf, size_t len, long *ebusy)
{
    for (;;) {
        pj_status_t st = pj_websock_send(ws, PJ_WEBSOCK_OP_BIN, buf, len);
        if (st == PJ_SUCCESS)
            return;
        if (st != PJ_EBUSY) {
            fail("pj_websock_send: %d %s", st, strerr(st));
            return;
        }
        (*ebusy)++;
        if (g_failed)
            return;
        size_t room = len + 14 < g_mark ? g_mark - len - 14 : 0;
        st = pj_websock_wait_buffered(ws, room < g_mark / 2 ? room : g_mark / 2, 1000);
        if (st != PJ_SUCCESS && st != PJ_ETIMEDOUT) {
            fail("pj_websock_wait_buffered: %d %s", st, strerr(st));
            return;
        }
    }
}

static void report_head(void)
{
    json_head("libpjwebsock", &A);
}

static int report_tail(void)
{
    json_bool("ok", !g_failed);
    if (g_failed)
        json_str("error", g_err);
    json_end();
    return g_failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    bench_parse_args(argc, argv, &A);
    g_poll = getenv("PJWS_LOOP") && !strcmp(getenv("PJWS_LOOP"), "poll");
    if (g_poll) {
        pj_status_t st = pj_websock_set_loop_mode(PJ_WEBSOCK_LOOP_POLL);
        if (st != PJ_SUCCESS) {
            fprintf(stderr, "pj_websock_set_loop_mode: %d\n", st);
            return 2;
        }
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g_cv, &ca);
    pattern_init((size_t)A.size);
    g_url.ptr = (char *)A.url;
    g_url.slen = (pj_ssize_t)strlen(A.url);
    g_wss = !strncasecmp(A.url, "wss://", 6);

    pj_websock_param_default(&g_param);
    g_param.cb.on_connect = &on_connect;
    g_param.cb.on_rx_msg = &on_rx_msg;
    g_param.cb.on_close = &on_close;
    if ((size_t)A.size * 2 > g_param.max_rx_msg_size)
        g_param.max_rx_msg_size = (pj_size_t)A.size * 2;

    const char *w = A.workload;
    long ebusy = 0;

    if (!strcmp(w, "pingpong") || !strcmp(w, "stream") || !strcmp(w, "bulk")) {
        int pp = !strcmp(w, "pingpong");
        g_text = pp;
        g_total = A.n + (pp ? A.warmup : 0);
        g_on_rx = pp ? on_rx_pingpong : on_rx_stream;
        conn_t *c = calloc(1, sizeof *c);
        g_txbuf = malloc((size_t)A.size);
        g_sent_at = calloc(1, sizeof(uint64_t));
        if (open_all(c, 0, 1, 30.0) == 0) {
            if (pp) {
                fill_msg(g_txbuf, 0, (size_t)A.size, 1);
                if (A.warmup == 0) {
                    g_cpu0 = self_cpu_us();
                    g_srv0 = proc_cpu_ns(A.server_pid);
                    g_t0 = now_ns();
                }
                g_sent_at[0] = now_ns();
                pj_status_t st = pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, g_txbuf, (pj_size_t)A.size);
                if (st != PJ_SUCCESS)
                    fail("pj_websock_send: %d %s", st, strerr(st));
            } else {
                g_cpu0 = self_cpu_us();
                g_srv0 = proc_cpu_ns(A.server_pid);
                g_t0 = now_ns();
                /* Poll mode: the echoes are handled between sends, after
                 * every 128 KiB sent (and whenever the queue is full). */
                long every = A.size >= 131072 ? 1 : 131072 / A.size;
                for (long i = 0; i < A.n && !g_failed; i++) {
                    fill_msg(g_txbuf, (uint64_t)i, (size_t)A.size, 0);
                    send_or_wait(c->ws, g_txbuf, (size_t)A.size, &ebusy);
                    if (g_poll && i % every == every - 1)
                        pj_websock_poll(0, NULL);
                }
            }
            if (!g_failed && wait_for(pred_done, 600.0) && !g_failed)
                fail("timed out: %llu of %ld echoes", (unsigned long long)c->rx_seq, g_total);
        }
        report_head();
        if (!g_failed) {
            json_interval(A.n, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
            if (pp) {
                json_num("warmup", (double)A.warmup);
                json_num("rtt_median_us", hist_percentile_us(&g_lat, 0.5));
                json_num("rtt_p99_us", hist_percentile_us(&g_lat, 0.99));
            } else {
                json_num("ebusy_retries", (double)ebusy);
            }
            json_num("maxrss_kb", (double)self_maxrss_kb());
            json_str("nodelay", nodelay_state());
        }
        if (c->ws)
            close_all(c, 1);
        return report_tail();
    }

    if (!strcmp(w, "conns")) {
        long lim = raise_nofile();
        long n = A.n;
        g_total = n;
        g_on_rx = on_rx_conns;
        conn_t *cs = calloc((size_t)n + 1, sizeof *cs);
        uint8_t *buf = malloc((size_t)A.size);
        report_head();
        json_num("nofile", (double)lim);
        if (lim < n + 64) {
            fail("RLIMIT_NOFILE %ld is too low for %ld connections", lim, n);
            return report_tail();
        }
        /* One connection first so the library's threads and one-time
         * allocations are in the baseline, then n at once. */
        if (open_all(cs, n, 1, 30.0))
            return report_tail();
        usleep(100000);
        mem_snap m0 = mem_now();
        uint64_t t0 = now_ns();
        if (open_all(cs, 0, n, 120.0))
            return report_tail();
        uint64_t t1 = g_last_connect;
        usleep(100000);
        mem_snap m1 = mem_now();
        for (long i = 0; i < n && !g_failed; i++) {
            fill_msg(buf, (uint64_t)i, (size_t)A.size, 0);
            send_or_wait(cs[i].ws, buf, (size_t)A.size, &ebusy);
        }
        if (!g_failed && wait_for(pred_done, 120.0) && !g_failed)
            fail("timed out: %ld of %ld echoes", (long)atomic_load(&g_echoes), n);
        usleep(100000);
        mem_snap m2 = mem_now();
        json_num("connect_total_ms", (double)(t1 - t0) / 1e6);
        json_num("connects_per_s", (double)n / ((double)(t1 - t0) / 1e9));
        json_num("rss_per_conn_b", (double)(m1.rss_kb - m0.rss_kb) * 1024.0 / (double)n);
        json_num("vmdata_per_conn_b", (double)(m1.data_kb - m0.data_kb) * 1024.0 / (double)n);
        json_num("malloc_per_conn_b", ((double)m1.heap_used - (double)m0.heap_used) / (double)n);
        json_num("malloc_arena_per_conn_b", ((double)m1.heap_arena - (double)m0.heap_arena) / (double)n);
        json_num("rss_per_conn_after_echo_b", (double)(m2.rss_kb - m0.rss_kb) * 1024.0 / (double)n);
        json_num("malloc_per_conn_after_echo_b", ((double)m2.heap_used - (double)m0.heap_used) / (double)n);
        json_num("rss_base_kb", (double)m0.rss_kb);
        json_num("vmdata_base_kb", (double)m0.data_kb);
        json_num("threads", (double)self_threads());
        /* the loop's own thread (none in poll mode); the rest are the
         * main thread and, for a few seconds after use, workers */
        json_num("loop_threads", (double)self_threads_named("pjwebsock-loop"));
        json_str("nodelay", nodelay_state());
        for (long i = 0; i <= n; i++)
            pj_websock_destroy(cs[i].ws);
        return report_tail();
    }

    if (!strcmp(w, "fanout")) {
        long C = A.conns, K = A.n;
        raise_nofile();
        g_fan_k = K;
        g_total = C * K;
        g_on_rx = on_rx_fanout;
        conn_t *cs = calloc((size_t)C, sizeof *cs);
        g_sent_at = calloc((size_t)(C * K), sizeof(uint64_t));
        uint8_t *buf = malloc((size_t)A.size);
        uint64_t late_max = 0;
        if (open_all(cs, 0, C, 60.0) == 0) {
            uint64_t period = 1000000000ull / (uint64_t)A.rate;
            uint64_t start = now_ns() + 20000000ull;
            g_cpu0 = self_cpu_us();
            g_srv0 = proc_cpu_ns(A.server_pid);
            g_t0 = start;
            for (long k = 0; k < K && !g_failed; k++) {
                for (long c = 0; c < C && !g_failed; c++) {
                    /* Offsets on a 1 ms grid (10 connections per ms), as in every client. */
                    uint64_t due = start + (uint64_t)k * period + FANOUT_OFFSET_NS((uint64_t)c, period, (uint64_t)C);
                    fill_msg(buf, ((uint64_t)c << 32) | (uint64_t)k, (size_t)A.size, 0);
                    uint64_t t = now_ns();
                    while (g_poll && t < due) {
                        /* Handle echoes while waiting, until the due time. */
                        uint64_t us = (due - t + 999) / 1000;
                        pj_websock_poll_us(us > UINT_MAX ? UINT_MAX : (unsigned)us, NULL);
                        t = now_ns();
                    }
                    if (t < due) {
                        struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
                        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                        t = now_ns();
                    } else if (t - due > late_max) {
                        late_max = t - due;
                    }
                    g_sent_at[c * K + k] = t;
                    send_or_wait(cs[c].ws, buf, (size_t)A.size, &ebusy);
                }
            }
            if (!g_failed && wait_for(pred_done, 60.0) && !g_failed)
                fail("timed out: %ld of %ld echoes", (long)atomic_load(&g_echoes), g_total);
        }
        report_head();
        json_num("conns", (double)C);
        json_num("rate", (double)A.rate);
        json_num("duration_s", A.duration);
        if (!g_failed) {
            json_interval(C * K, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
            json_num("lat_median_us", hist_percentile_us(&g_lat, 0.5));
            json_num("lat_p99_us", hist_percentile_us(&g_lat, 0.99));
            json_num("send_late_max_us", (double)late_max / 1e3);
            json_str("nodelay", nodelay_state());
        }
        close_all(cs, C);
        return report_tail();
    }
    bench_usage(argv[0]);
    return 2;
}
