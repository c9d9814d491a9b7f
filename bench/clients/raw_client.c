/*
 * The floor of the fanout workload: no WebSocket library, only what any
 * client must ask of the kernel (see bench/README.md, "Floor").
 *
 * One thread, one epoll set, plain non-blocking TCP sockets with
 * TCP_NODELAY. The upgrade request is written by hand; each frame is built
 * and masked (a fresh key per frame) in a stack buffer and goes out with one
 * send(); each readiness of a socket gets one recv() into that connection's
 * buffer, whose whole frames are checked like every client's (opcode,
 * length, every byte, order). Nothing else: no queues, no timers, no locks.
 * What this costs per message is what the kernel charges for one send and
 * one receive on this machine; every client pays it, and a library's own
 * cost is what it adds on top.
 *
 * `--workload stream` and `--workload bulk` get the same treatment on one
 * connection: frames are built and masked in place (a fresh key each) into
 * one send buffer of up to TX_BATCH bytes (or one larger frame), which goes
 * out with as few send() calls as the socket takes; echoes are read
 * BIG_RX_CAP bytes at a time into one buffer and checked where they lie, a
 * frame spanning reads checked piece by piece. Each turn makes one send()
 * and recv()s until one comes up short; poll() only when a turn moved
 * nothing.
 *
 * ws:// URLs whose host is an IPv4 literal only.
 */
#include "common.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>

#define ACCEPT_FOR_KEY "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* RFC 6455 §1.3's example key */
#define RX_CAP 4096
/* stream/bulk: bytes of whole frames per send buffer (as the libraries
 * coalesce), and bytes per recv(). */
#define TX_BATCH (128 * 1024)
#define BIG_RX_CAP (64 * 1024)

typedef struct conn {
    int fd;
    long k;         /* next echo expected */
    size_t rx_len;  /* bytes in rx */
    uint8_t rx[RX_CAP];
} conn_t;

static bench_args A;
static char g_err[600];

static int fail(const char *fmt, ...)
{
    if (!g_err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_err, sizeof g_err, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Blocking connect and upgrade; the socket is non-blocking afterwards. */
static int open_conn(conn_t *c, const struct sockaddr_in *sa, const char *host, const char *path)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (const struct sockaddr *)sa, sizeof *sa) != 0)
        return fail("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, host);
    if (send(c->fd, req, (size_t)n, 0) != n)
        return fail("send upgrade: %s", strerror(errno));
    char head[1024];
    size_t len = 0;
    head[0] = 0;
    while (!strstr(head, "\r\n\r\n")) {
        /* One byte at a time: the server may send nothing after the head
         * until it gets a frame, so nothing past it is consumed. */
        ssize_t r = recv(c->fd, head + len, 1, 0);
        if (r <= 0 || ++len == sizeof head - 1)
            return fail("upgrade response: %s", r < 0 ? strerror(errno) : "closed or too long");
        head[len] = 0;
    }
    if (strncmp(head, "HTTP/1.1 101", 12) || !strstr(head, ACCEPT_FOR_KEY))
        return fail("upgrade refused: %.80s", head);
    if (fcntl(c->fd, F_SETFL, O_NONBLOCK) != 0)
        return fail("fcntl: %s", strerror(errno));
    return 0;
}

/* Frame `seq` of A.size bytes, client-masked with a fresh key; returns its length. */
static size_t build_frame(uint8_t *f, uint64_t seq, uint64_t *rng)
{
    size_t len = (size_t)A.size, h;
    f[0] = 0x82;
    if (len < 126) {
        f[1] = (uint8_t)(0x80 | len);
        h = 2;
    } else if (len < 65536) {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(len >> 8);
        f[3] = (uint8_t)len;
        h = 4;
    } else {
        f[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            f[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    uint8_t key[4] = {(uint8_t)*rng, (uint8_t)(*rng >> 8), (uint8_t)(*rng >> 16), (uint8_t)(*rng >> 24)};
    memcpy(f + h, key, 4);
    uint8_t *p = f + h + 4;
    fill_msg(p, seq, len, 0);
    /* 16 bytes at a time, then the tail. */
    typedef uint8_t v16 __attribute__((vector_size(16)));
    v16 k16, w;
    for (int i = 0; i < 16; i++)
        k16[i] = key[i & 3];
    size_t i = 0;
    for (; i + 16 <= len; i += 16) {
        memcpy(&w, p + i, 16);
        w ^= k16;
        memcpy(p + i, &w, 16);
    }
    for (; i < len; i++)
        p[i] ^= key[i & 3];
    return h + 4 + len;
}

/* Checks the whole echoes in c->rx; returns how many, or -1. */
static long take_echoes(conn_t *c, long idx, const uint64_t *sent_at, hist_t *lat, uint64_t t)
{
    long got = 0;
    size_t off = 0;
    for (;;) {
        size_t avail = c->rx_len - off;
        const uint8_t *p = c->rx + off;
        if (avail < 2)
            break;
        size_t plen = p[1] & 0x7F, h = 2;
        if (plen == 127 || (p[1] & 0x80))
            return fail("connection %ld: unexpected frame header %02x %02x", idx, p[0], p[1]);
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (size_t)p[2] << 8 | p[3];
            h = 4;
        }
        if (avail < h + plen)
            break;
        uint64_t seq = ((uint64_t)idx << 32) | (uint64_t)c->k;
        if (p[0] != 0x82 || c->k >= A.n || check_msg(p + h, plen, seq, (size_t)A.size, 0))
            return fail("connection %ld: echo %ld: opcode %02x, %zu bytes, wrong content", idx, c->k,
                        p[0], plen);
        hist_add(lat, t - sent_at[idx * A.n + c->k]);
        c->k++;
        got++;
        off += h + plen;
    }
    memmove(c->rx, c->rx + off, c->rx_len - off);
    c->rx_len -= off;
    return got;
}

static int run_fanout(conn_t *cs, long C, int ep, hist_t *lat, uint64_t *sent_at, uint64_t *late_max,
                      uint64_t *t0, uint64_t *t1)
{
    long K = A.n, total = C * K, echoes = 0;
    uint64_t period = 1000000000ull / (uint64_t)A.rate;
    uint64_t start = now_ns() + 20000000ull, rng = 0x9E3779B97F4A7C15ull;
    uint8_t frame[14 + 65536];
    struct epoll_event ev[64];
    long k = 0, c = 0; /* next frame to send */
    *t0 = start;
    while (echoes < total) {
        uint64_t t = now_ns();
        struct timespec ts = {10, 0};
        if (k < K) {
            uint64_t due = start + (uint64_t)k * period + FANOUT_OFFSET_NS((uint64_t)c, period, (uint64_t)C);
            if (t >= due) {
                /* Frames due now go out back to back, as in every client. */
                if (t - due > *late_max)
                    *late_max = t - due;
                size_t n = build_frame(frame, ((uint64_t)c << 32) | (uint64_t)k, &rng);
                sent_at[c * K + k] = t;
                /* A 646-byte frame every 20 ms never fills a socket buffer. */
                if (send(cs[c].fd, frame, n, 0) != (ssize_t)n)
                    return fail("send: %s", strerror(errno));
                if (++c == C) {
                    c = 0;
                    k++;
                }
                continue;
            }
            ts.tv_sec = (time_t)((due - t) / 1000000000ull);
            ts.tv_nsec = (long)((due - t) % 1000000000ull);
        }
        int n = epoll_pwait2(ep, ev, 64, &ts, NULL);
        if (n < 0 && errno != EINTR)
            return fail("epoll_pwait2: %s", strerror(errno));
        if (n == 0 && k >= K)
            return fail("timed out: %ld of %ld echoes", echoes, total);
        t = now_ns();
        for (int i = 0; i < n; i++) {
            long idx = (long)ev[i].data.u64;
            conn_t *cn = &cs[idx];
            ssize_t r = recv(cn->fd, cn->rx + cn->rx_len, RX_CAP - cn->rx_len, 0);
            if (r == 0)
                return fail("connection %ld closed by the server", idx);
            if (r < 0) {
                if (errno == EAGAIN)
                    continue;
                return fail("recv: %s", strerror(errno));
            }
            cn->rx_len += (size_t)r;
            long got = take_echoes(cn, idx, sent_at, lat, t);
            if (got < 0)
                return -1;
            echoes += got;
        }
    }
    *t1 = now_ns();
    return 0;
}

/* Echo parser for stream/bulk: where the frame being read stands. */
typedef struct rx_state {
    uint8_t hdr[10]; /* header bytes so far */
    size_t hlen;     /* ... how many */
    size_t need;     /* header length once known (0 = not yet) */
    size_t plen;     /* payload length of the frame being read */
    size_t pos;      /* payload bytes checked */
    int in_payload;
    long k;          /* echoes verified */
} rx_state;

/* Checks the n bytes at p against the echoes due; -1 on a wrong byte. */
static int take_bytes(rx_state *st, const uint8_t *p, size_t n)
{
    while (n) {
        if (!st->in_payload) {
            st->hdr[st->hlen++] = *p++;
            n--;
            if (st->hlen == 2) {
                uint8_t b = st->hdr[1];
                if (st->hdr[0] != 0x82 || (b & 0x80))
                    return fail("echo %ld: unexpected frame header %02x %02x", st->k, st->hdr[0], b);
                st->need = (b & 0x7F) == 126 ? 4 : (b & 0x7F) == 127 ? 10 : 2;
            }
            if (st->hlen < 2 || st->hlen < st->need)
                continue;
            size_t len = st->hdr[1] & 0x7F;
            if (st->need > 2) {
                len = 0;
                for (size_t i = 2; i < st->need; i++)
                    len = len << 8 | st->hdr[i];
            }
            if (st->k >= A.n || len != (size_t)A.size)
                return fail("echo %ld: %zu bytes, want %ld", st->k, len, A.size);
            st->plen = len;
            st->pos = 0;
            st->hlen = 0;
            st->in_payload = 1;
        }
        size_t take = st->plen - st->pos < n ? st->plen - st->pos : n;
        if (check_chunk(p, take, st->pos, (uint64_t)st->k, st->plen, 0))
            return fail("echo %ld: wrong content at %zu", st->k, st->pos);
        st->pos += take;
        p += take;
        n -= take;
        if (st->pos == st->plen) {
            st->in_payload = 0;
            st->k++;
        }
    }
    return 0;
}

static int run_stream(int fd, uint64_t *t0, uint64_t *t1)
{
    size_t flen = (size_t)A.size + 14;
    size_t tx_cap = flen > TX_BATCH ? flen : TX_BATCH;
    uint8_t *tx = malloc(tx_cap), *rx = malloc(BIG_RX_CAP);
    size_t tx_len = 0, tx_off = 0;
    long built = 0;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    rx_state st = {0};
    int rc = 0;
    *t0 = now_ns();
    while (st.k < A.n && !rc) {
        int progress = 0, more = tx_off < tx_len || built < A.n;
        if (tx_off == tx_len && built < A.n) {
            tx_len = tx_off = 0;
            do
                tx_len += build_frame(tx + tx_len, (uint64_t)built++, &rng);
            while (built < A.n && tx_len + flen <= TX_BATCH);
        }
        if (more) {
            ssize_t r = send(fd, tx + tx_off, tx_len - tx_off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r > 0) {
                tx_off += (size_t)r;
                progress = 1;
            } else if (errno != EAGAIN) {
                rc = fail("send: %s", strerror(errno));
                break;
            }
        }
        /* Reads until one comes up short: the queue is drained. */
        ssize_t r;
        do {
            r = recv(fd, rx, BIG_RX_CAP, MSG_DONTWAIT);
            if (r > 0) {
                rc = take_bytes(&st, rx, (size_t)r);
                progress = 1;
            } else if (r == 0) {
                rc = fail("closed by the server after %ld echoes", st.k);
            } else if (errno != EAGAIN) {
                rc = fail("recv: %s", strerror(errno));
            }
        } while (r == BIG_RX_CAP && !rc);
        if (!progress && !rc) {
            struct pollfd pf = {.fd = fd, .events = (short)(POLLIN | (more ? POLLOUT : 0))};
            if (poll(&pf, 1, 10000) == 0)
                rc = fail("timed out: %ld of %ld echoes", st.k, A.n);
        }
    }
    *t1 = now_ns();
    free(tx);
    free(rx);
    return rc;
}

int main(int argc, char **argv)
{
    bench_parse_args(argc, argv, &A);
    char host[64];
    unsigned port = 0;
    int pos = 0;
    int fan = !strcmp(A.workload, "fanout");
    int single = !strcmp(A.workload, "stream") || !strcmp(A.workload, "bulk");
    if ((!fan && !single) || sscanf(A.url, "ws://%63[0-9.]:%u%n", host, &port, &pos) != 2 || A.url[pos] != '/' ||
        A.size < 8 || (fan && A.size > 65535)) {
        fprintf(stderr, "%s: only --workload fanout|stream|bulk, ws://IPv4:PORT/PATH, --size from 8 "
                        "(fanout: up to 65535)\n", argv[0]);
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    raise_nofile();
    pattern_init((size_t)A.size);
    long C = fan ? A.conns : 1;
    conn_t *cs = calloc((size_t)C, sizeof *cs);
    uint64_t *sent_at = fan ? calloc((size_t)(C * A.n), sizeof *sent_at) : NULL;
    static hist_t lat;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int rc = 0;
    for (long i = 0; i < C && !rc; i++) {
        rc = open_conn(&cs[i], &sa, host, A.url + pos);
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (!rc && epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e))
            rc = fail("epoll_ctl: %s", strerror(errno));
    }
    uint64_t t0 = 0, t1 = 0, late_max = 0, cpu0 = self_cpu_us(), srv0 = proc_cpu_ns(A.server_pid);
    if (!rc)
        rc = fan ? run_fanout(cs, C, ep, &lat, sent_at, &late_max, &t0, &t1) : run_stream(cs[0].fd, &t0, &t1);
    uint64_t cpu1 = self_cpu_us(), srv1 = proc_cpu_ns(A.server_pid);
    json_head("raw-sockets", &A);
    if (fan) {
        json_num("conns", (double)C);
        json_num("rate", (double)A.rate);
        json_num("duration_s", A.duration);
    }
    if (!rc) {
        json_interval(C * A.n, A.size, t0, t1, cpu0, cpu1, srv0, srv1, A.server_pid);
        if (fan) {
            json_num("lat_median_us", hist_percentile_us(&lat, 0.5));
            json_num("lat_p99_us", hist_percentile_us(&lat, 0.99));
            json_num("send_late_max_us", (double)late_max / 1e3);
        } else {
            json_num("maxrss_kb", (double)self_maxrss_kb());
        }
        json_str("nodelay", nodelay_state());
    } else {
        json_str("error", g_err);
    }
    json_bool("ok", !rc);
    json_end();
    for (long i = 0; i < C; i++)
        if (cs[i].fd > 0)
            close(cs[i].fd);
    close(ep);
    free(cs);
    free(sent_at);
    return rc ? 1 : 0;
}
