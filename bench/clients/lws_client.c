/*
 * libwebsockets benchmark client (see bench/README.md for the workloads).
 *
 * Written the way libwebsockets' documentation (READMEs/README.coding.md,
 * minimal-examples/ws-client) recommends: one context, the main thread runs
 * lws_service(); data is written only from LWS_CALLBACK_CLIENT_WRITEABLE,
 * one lws_write() per callback, asking for the next one with
 * lws_callback_on_writable(); messages larger than the send packet size are
 * sent as fragments (BINARY|NO_FIN, CONTINUATION..., CONTINUATION) of that
 * size, as the lws_protocols.tx_packet_size documentation advises;
 * received data is verified chunk by chunk as lws delivers it; timers are
 * lws_sul (fanout). lws sets TCP_NODELAY on its sockets itself.
 * Throughput settings for stream/bulk: 64 KiB rx buffer and send packets,
 * pt_serv_buf_size 128 KiB (the value its documentation suggests); the
 * other workloads keep the defaults (4 KiB).
 */
#include "common.h"

#include <libwebsockets.h>

typedef struct conn {
    struct lws *wsi;
    long idx;
    int established;
    /* send side */
    uint64_t tx_seq;    /* next message to send */
    size_t tx_pos;      /* bytes of message tx_seq already sent (fragments) */
    lws_sorted_usec_list_t sul;
    /* receive side */
    uint64_t rx_seq;    /* message being received */
    size_t rx_pos;      /* bytes of it received so far */
} conn_t;

static bench_args A;
static struct lws_context *g_ctx;
static int g_text;
static long g_total;           /* messages to echo */
static long g_tx_total;        /* messages to send per connection */
static size_t g_frag;          /* fragment size for sending */
static uint8_t *g_txbuf;       /* LWS_PRE + size */
static int g_failed, g_done, g_closing, g_send_enabled;
static char g_err[600];
static long g_connected, g_connect_failed;
static long g_echoes;
static uint64_t g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, g_last_connect;
static uint64_t *g_sent_at;
static hist_t g_lat;
static long g_fan_k;
static uint64_t g_fan_start, g_period, g_late_max;
static conn_t *g_conns;
static long g_nconns;

static void fail(const char *fmt, ...)
{
    if (g_failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    g_failed = 1;
}

static void finish(uint64_t t)
{
    g_t1 = t;
    g_cpu1 = self_cpu_us();
    g_srv1 = proc_cpu_ns(A.server_pid);
    g_done = 1;
}

static void start_clock(void)
{
    g_cpu0 = self_cpu_us();
    g_srv0 = proc_cpu_ns(A.server_pid);
    g_t0 = now_ns();
}

static int is_pingpong(void) { return !strcmp(A.workload, "pingpong"); }
static int is_fanout(void) { return !strcmp(A.workload, "fanout"); }
static int is_conns(void) { return !strcmp(A.workload, "conns"); }

static uint64_t msg_seq(conn_t *c, uint64_t k)
{
    if (is_fanout())
        return ((uint64_t)c->idx << 32) | k;
    if (is_conns())
        return (uint64_t)c->idx;
    return k;
}

static void fan_tick(lws_sorted_usec_list_t *sul)
{
    conn_t *c = lws_container_of(sul, conn_t, sul);
    lws_callback_on_writable(c->wsi);
}

static void fan_schedule(conn_t *c)
{
    uint64_t due = g_fan_start + c->tx_seq * g_period + FANOUT_OFFSET_NS((uint64_t)c->idx, g_period, (uint64_t)g_nconns);
    uint64_t t = now_ns();
    lws_usec_t us = due > t ? (lws_usec_t)((due - t) / 1000) : 0;
    lws_sul_schedule(g_ctx, 0, &c->sul, fan_tick, us);
}

/* Writes (the next fragment of) message c->tx_seq. lws masks the payload
 * in place and needs LWS_PRE bytes of headroom, so each fragment is
 * generated into g_txbuf + LWS_PRE just before it is written. */
static int write_next(conn_t *c)
{
    size_t size = (size_t)A.size;
    uint64_t seq = msg_seq(c, c->tx_seq);
    if (c->tx_pos == 0) {
        if (is_pingpong() && (long)c->tx_seq == A.warmup)
            start_clock();
        if (is_pingpong())
            g_sent_at[0] = now_ns();
        if (is_fanout()) {
            uint64_t t = now_ns();
            uint64_t due = g_fan_start + c->tx_seq * g_period + FANOUT_OFFSET_NS((uint64_t)c->idx, g_period, (uint64_t)g_nconns);
            if (t > due && t - due > g_late_max)
                g_late_max = t - due;
            g_sent_at[(size_t)c->idx * (size_t)g_fan_k + c->tx_seq] = t;
        }
    }
    size_t n = size - c->tx_pos;
    if (n > g_frag)
        n = g_frag;
    int first = c->tx_pos == 0, last = c->tx_pos + n == size;
    int flags = first ? (g_text ? LWS_WRITE_TEXT : LWS_WRITE_BINARY) : LWS_WRITE_CONTINUATION;
    if (!last)
        flags |= LWS_WRITE_NO_FIN;
    fill_chunk(g_txbuf + LWS_PRE, seq, c->tx_pos, n, g_text);
    int w = lws_write(c->wsi, g_txbuf + LWS_PRE, n, (enum lws_write_protocol)flags);
    if (w < (int)n) {
        fail("lws_write returned %d for %zu bytes", w, n);
        return -1;
    }
    if (last) {
        c->tx_pos = 0;
        c->tx_seq++;
    } else {
        c->tx_pos += n;
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    conn_t *c = (conn_t *)lws_get_opaque_user_data(wsi);
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (c && !c->established) {
            g_connect_failed++;
            fail("connect %ld failed: %s", c ? c->idx : -1L, in ? (const char *)in : "(no reason)");
        }
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        c->established = 1;
        g_connected++;
        g_last_connect = now_ns();
        if (g_send_enabled)
            lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (g_failed || g_closing)
            return 0;
        if (is_fanout()) {
            if ((long)c->tx_seq >= g_fan_k)
                return 0;
            uint64_t due = g_fan_start + c->tx_seq * g_period + FANOUT_OFFSET_NS((uint64_t)c->idx, g_period, (uint64_t)g_nconns);
            if (now_ns() + 50000 < due) { /* early wake-up: wait for the due time */
                fan_schedule(c);
                return 0;
            }
            if (write_next(c))
                return -1;
            if (c->tx_pos)
                lws_callback_on_writable(wsi);
            else if ((long)c->tx_seq < g_fan_k)
                fan_schedule(c);
            return 0;
        }
        if ((long)c->tx_seq >= g_tx_total)
            return 0;
        if (is_pingpong() && c->tx_seq != c->rx_seq)
            return 0; /* wait for the echo */
        if (write_next(c))
            return -1;
        if (c->tx_pos || (!is_pingpong() && (long)c->tx_seq < g_tx_total))
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        if (g_failed)
            return 0;
        uint64_t seq = msg_seq(c, c->rx_seq);
        int bin = lws_frame_is_binary(wsi);
        if (bin == g_text || (c->rx_pos == 0 && !lws_is_first_fragment(wsi)) ||
            (is_fanout() && (long)c->rx_seq >= g_fan_k) || (is_conns() && c->rx_seq > 0) ||
            check_chunk((const uint8_t *)in, len, c->rx_pos, seq, (size_t)A.size, g_text)) {
            char d[200];
            describe_mismatch(d, sizeof d, (const uint8_t *)in, len, seq, (size_t)A.size, g_text);
            fail("conn %ld: bad echo at byte %zu (binary=%d): %s", c->idx, c->rx_pos, bin, d);
            return 0;
        }
        c->rx_pos += len;
        if (!lws_is_final_fragment(wsi))
            return 0;
        if (c->rx_pos != (size_t)A.size) {
            fail("conn %ld: echo %llu ended after %zu of %ld bytes", c->idx, (unsigned long long)seq, c->rx_pos,
                 A.size);
            return 0;
        }
        uint64_t t = now_ns();
        c->rx_pos = 0;
        uint64_t k = c->rx_seq++;
        if (is_pingpong()) {
            if ((long)k >= A.warmup)
                hist_add(&g_lat, t - g_sent_at[0]);
            if ((long)c->rx_seq == g_total)
                finish(t);
            else
                lws_callback_on_writable(wsi);
        } else if (is_fanout()) {
            size_t slot = (size_t)c->idx * (size_t)g_fan_k + k;
            hist_add(&g_lat, t - g_sent_at[slot]);
            if (++g_echoes == g_total)
                finish(t);
        } else if (is_conns()) {
            if (++g_echoes == g_total)
                finish(t);
        } else if ((long)c->rx_seq == g_total) {
            finish(t);
        }
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (!g_closing && c)
            fail("conn %ld closed unexpectedly", c->idx);
        break;
    default:
        break;
    }
    return 0;
}

static struct lws_protocols g_protocols[] = {
    {"bench", callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static char g_host[256], g_path[1024];
static int g_port, g_wss;

static int parse_url(const char *url)
{
    const char *p;
    if (!strncasecmp(url, "ws://", 5)) { p = url + 5; g_wss = 0; g_port = 80; }
    else if (!strncasecmp(url, "wss://", 6)) { p = url + 6; g_wss = 1; g_port = 443; }
    else return -1;
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl >= sizeof g_host) return -1;
    memcpy(g_host, p, hl);
    g_host[hl] = 0;
    char *colon = strrchr(g_host, ':');
    if (colon && !strchr(colon, ']')) {
        *colon = 0;
        g_port = atoi(colon + 1);
    }
    snprintf(g_path, sizeof g_path, "%s", slash ? slash : "/");
    return 0;
}

static void conn_open(conn_t *c, long idx)
{
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    c->idx = idx;
    i.context = g_ctx;
    i.address = g_host;
    i.port = g_port;
    i.path = g_path;
    i.host = g_host;
    i.origin = g_host;
    i.ssl_connection = g_wss ? LCCSCF_USE_SSL : 0;
    i.local_protocol_name = "bench";
    i.opaque_user_data = c;
    i.pwsi = &c->wsi;
    if (!lws_client_connect_via_info(&i)) {
        g_connect_failed++;
        fail("lws_client_connect_via_info failed for connection %ld", idx);
    }
}

/* Services until pred() holds, a failure, or the timeout. */
static int service_until(int (*pred)(void), double timeout_s)
{
    uint64_t end = now_ns() + (uint64_t)(timeout_s * 1e9);
    while (!pred() && !g_failed) {
        if (now_ns() > end)
            return -1;
        if (lws_service(g_ctx, 0) < 0) {
            fail("lws_service failed");
            return -1;
        }
    }
    return g_failed ? -1 : 0;
}

static long g_want_connected;
static int pred_connected(void) { return g_connected + g_connect_failed >= g_want_connected; }
static int pred_done(void) { return g_done; }

static int open_all(conn_t *cs, long first, long n, double timeout_s)
{
    g_want_connected = g_connected + g_connect_failed + n;
    for (long i = first; i < first + n && !g_failed; i++)
        conn_open(&cs[i], i);
    if (service_until(pred_connected, timeout_s)) {
        if (!g_failed)
            fail("timed out waiting for %ld connections (%ld open)", n, g_connected);
        return -1;
    }
    return 0;
}

static void report_head(void)
{
    json_head("libwebsockets", &A);
}

static int report_tail(void)
{
    json_bool("ok", !g_failed);
    if (g_failed)
        json_str("error", g_err);
    json_end();
    g_closing = 1;
    lws_context_destroy(g_ctx);
    return g_failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    bench_parse_args(argc, argv, &A);
    if (parse_url(A.url)) {
        fprintf(stderr, "bad url %s\n", A.url);
        return 2;
    }
    pattern_init((size_t)A.size);
    lws_set_log_level(LLL_ERR, NULL);
    long lim = raise_nofile(); /* before the context: lws sizes its fd table from it */

    int thru = !strcmp(A.workload, "stream") || !strcmp(A.workload, "bulk");
    if (thru) {
        g_protocols[0].rx_buffer_size = 65536;
        g_protocols[0].tx_packet_size = 65536;
    }
    g_frag = g_protocols[0].tx_packet_size ? g_protocols[0].tx_packet_size
             : g_protocols[0].rx_buffer_size ? g_protocols[0].rx_buffer_size : 4096;

    g_txbuf = malloc(LWS_PRE + ((size_t)A.size < g_frag ? (size_t)A.size : g_frag));

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = g_protocols;
    info.gid = -1;
    info.uid = -1;
    if (thru)
        info.pt_serv_buf_size = 128 * 1024;
    if (g_wss) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.client_ssl_ca_filepath = A.ca;
    }
    g_ctx = lws_create_context(&info);
    if (!g_ctx) {
        fprintf(stderr, "lws_create_context failed\n");
        return 1;
    }

    const char *w = A.workload;
    if (!strcmp(w, "pingpong") || thru) {
        int pp = is_pingpong();
        g_text = pp;
        g_total = A.n + (pp ? A.warmup : 0);
        g_tx_total = g_total;
        g_sent_at = calloc(1, sizeof(uint64_t));
        conn_t *c = calloc(1, sizeof *c);
        g_nconns = 1;
        if (open_all(c, 0, 1, 30.0) == 0) {
            if (!pp || A.warmup == 0)
                start_clock();
            g_send_enabled = 1;
            lws_callback_on_writable(c->wsi);
            if (service_until(pred_done, 600.0) && !g_failed)
                fail("timed out: %llu of %ld echoes", (unsigned long long)c->rx_seq, g_total);
        }
        report_head();
        if (!g_failed) {
            json_interval(A.n, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
            if (pp) {
                json_num("warmup", (double)A.warmup);
                json_num("rtt_median_us", hist_percentile_us(&g_lat, 0.5));
                json_num("rtt_p99_us", hist_percentile_us(&g_lat, 0.99));
            }
            json_num("maxrss_kb", (double)self_maxrss_kb());
            json_str("nodelay", nodelay_state());
        }
        return report_tail();
    }

    if (!strcmp(w, "conns")) {
        long n = A.n;
        g_total = n;
        g_tx_total = 1;
        conn_t *cs = calloc((size_t)n + 1, sizeof *cs);
        g_nconns = n;
        report_head();
        json_num("nofile", (double)lim);
        if (lim < n + 64) {
            fail("RLIMIT_NOFILE %ld is too low for %ld connections", lim, n);
            return report_tail();
        }
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
        g_send_enabled = 1;
        for (long i = 0; i < n; i++)
            lws_callback_on_writable(cs[i].wsi);
        if (service_until(pred_done, 120.0) && !g_failed)
            fail("timed out: %ld of %ld echoes", g_echoes, n);
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
        json_str("nodelay", nodelay_state());
        return report_tail();
    }

    if (!strcmp(w, "fanout")) {
        long C = A.conns, K = A.n;
        g_fan_k = K;
        g_total = C * K;
        g_tx_total = K;
        g_nconns = C;
        conn_t *cs = calloc((size_t)C, sizeof *cs);
        g_conns = cs;
        g_sent_at = calloc((size_t)(C * K), sizeof(uint64_t));
        if (open_all(cs, 0, C, 60.0) == 0) {
            g_period = 1000000000ull / (uint64_t)A.rate;
            g_fan_start = now_ns() + 20000000ull;
            g_cpu0 = self_cpu_us();
            g_srv0 = proc_cpu_ns(A.server_pid);
            g_t0 = g_fan_start;
            for (long i = 0; i < C; i++)
                fan_schedule(&cs[i]);
            if (service_until(pred_done, 60.0) && !g_failed)
                fail("timed out: %ld of %ld echoes", g_echoes, g_total);
        }
        report_head();
        json_num("conns", (double)C);
        json_num("rate", (double)A.rate);
        json_num("duration_s", A.duration);
        if (!g_failed) {
            json_interval(C * K, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
            json_num("lat_median_us", hist_percentile_us(&g_lat, 0.5));
            json_num("lat_p99_us", hist_percentile_us(&g_lat, 0.99));
            json_num("send_late_max_us", (double)g_late_max / 1e3);
            json_str("nodelay", nodelay_state());
        }
        return report_tail();
    }
    bench_usage(argv[0]);
    return 2;
}
