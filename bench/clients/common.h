/*
 * Shared helpers of the C benchmark clients (libpjwebsock, libwebsockets,
 * Boost.Beast): command line, clocks, CPU and memory accounting, payload
 * generation and verification, percentiles, and the one-line JSON report.
 *
 * Every client prints exactly one JSON object on stdout and exits 0 when
 * every echo was verified (opcode, length, bytes, order), 1 otherwise.
 *
 * Payload of message `seq` with length `len` (same in the Rust client):
 *   binary: bytes 0..8 = seq (u64 little-endian), bytes 8.. = pat[off+i]
 *   text:   bytes 0..8 = seq as 8 lower-case hex digits, bytes 8.. =
 *           tpat[off+i] (ASCII letters)
 * with off = seq % 251 and pat/tpat = xorshift64 byte streams.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
#define BENCH_UNUSED [[maybe_unused]]
#else
#define BENCH_UNUSED __attribute__((unused))
#endif

/* ---- command line ------------------------------------------------------ */

typedef struct bench_args {
    const char *workload; /* pingpong stream bulk conns fanout */
    const char *url;
    long n;               /* messages (or connections for conns) */
    long size;            /* message size in bytes */
    long warmup;          /* pingpong warm-up round trips */
    long conns;           /* fanout connections */
    long rate;            /* fanout frames per second per connection */
    double duration;      /* fanout seconds */
    long server_pid;      /* 0 = unknown */
    const char *ca;       /* CA file for wss:// */
} bench_args;

static void bench_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s --workload pingpong|stream|bulk|conns|fanout --url ws://HOST:PORT/PATH\n"
            "          [--n N] [--size BYTES] [--warmup N] [--conns N] [--rate HZ]\n"
            "          [--duration S] [--server-pid PID] [--ca CERT.pem]\n",
            prog);
    exit(2);
}

/* Defaults are the full-size workloads of bench/README.md. */
BENCH_UNUSED static void bench_parse_args(int argc, char **argv, bench_args *a)
{
    memset(a, 0, sizeof(*a));
    a->n = -1;
    a->size = -1;
    a->warmup = -1;
    a->conns = 200;
    a->rate = 50;
    a->duration = 5.0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            bench_usage(argv[0]);
        i++;
        if (!strcmp(k, "--workload")) a->workload = v;
        else if (!strcmp(k, "--url")) a->url = v;
        else if (!strcmp(k, "--n")) a->n = atol(v);
        else if (!strcmp(k, "--size")) a->size = atol(v);
        else if (!strcmp(k, "--warmup")) a->warmup = atol(v);
        else if (!strcmp(k, "--conns")) a->conns = atol(v);
        else if (!strcmp(k, "--rate")) a->rate = atol(v);
        else if (!strcmp(k, "--duration")) a->duration = atof(v);
        else if (!strcmp(k, "--server-pid")) a->server_pid = atol(v);
        else if (!strcmp(k, "--ca")) a->ca = v;
        else bench_usage(argv[0]);
    }
    if (!a->workload || !a->url)
        bench_usage(argv[0]);
    const char *w = a->workload;
    if (!strcmp(w, "pingpong")) {
        if (a->n < 0) a->n = 50000;
        if (a->size < 0) a->size = 64;
        if (a->warmup < 0) a->warmup = 2000;
    } else if (!strcmp(w, "stream")) {
        if (a->n < 0) a->n = 200000;
        if (a->size < 0) a->size = 640;
    } else if (!strcmp(w, "bulk")) {
        if (a->n < 0) a->n = 2000;
        if (a->size < 0) a->size = 60 * 1024;
    } else if (!strcmp(w, "conns")) {
        if (a->n < 0) a->n = 1000;
        if (a->size < 0) a->size = 32;
    } else if (!strcmp(w, "fanout")) {
        if (a->size < 0) a->size = 640;
        if (a->n < 0) a->n = (long)(a->rate * a->duration + 0.5); /* frames per connection */
    } else {
        bench_usage(argv[0]);
    }
    if (a->warmup < 0) a->warmup = 0;
    if (a->size < 8) a->size = 8;
}

/* ---- clocks, CPU, memory ----------------------------------------------- */

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time (user + system) of this whole process, all threads, in µs. */
static inline uint64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static inline long self_maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* On-CPU time of process `pid` (all its threads) in ns, from
 * /proc/PID/task/TID/schedstat; 0 when unknown. */
BENCH_UNUSED static uint64_t proc_cpu_ns(long pid)
{
    if (pid <= 0)
        return 0;
    char path[96];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p2[320];
        snprintf(p2, sizeof p2, "/proc/%ld/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(p2, "r");
        if (!f)
            continue;
        unsigned long long v = 0;
        if (fscanf(f, "%llu", &v) == 1)
            sum += v;
        fclose(f);
    }
    closedir(d);
    return sum;
}

typedef struct mem_snap {
    long rss_kb;        /* VmRSS */
    long data_kb;       /* VmData (heap + anonymous maps, thread stacks included) */
    size_t heap_used;   /* mallinfo2: uordblks + hblkhd (bytes allocated by malloc) */
    size_t heap_arena;  /* mallinfo2: arena + hblkhd (bytes malloc got from the OS) */
} mem_snap;

BENCH_UNUSED static mem_snap mem_now(void)
{
    mem_snap m = {0, 0, 0, 0};
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "VmRSS:", 6)) m.rss_kb = atol(line + 6);
            else if (!strncmp(line, "VmData:", 7)) m.data_kb = atol(line + 7);
        }
        fclose(f);
    }
    struct mallinfo2 mi = mallinfo2();
    m.heap_used = mi.uordblks + mi.hblkhd;
    m.heap_arena = mi.arena + mi.hblkhd;
    return m;
}

/* Number of threads of this process (/proc/self/status Threads:). */
BENCH_UNUSED static long self_threads(void)
{
    long t = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "Threads:", 8))
                t = atol(line + 8);
        fclose(f);
    }
    return t;
}

/* Threads of this process whose name starts with `prefix`, -1 if unknown. */
BENCH_UNUSED static long self_threads_named(const char *prefix)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof name, f) && !strncmp(name, prefix, strlen(prefix)))
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Raises RLIMIT_NOFILE to its hard limit; returns the new soft limit. */
BENCH_UNUSED static long raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0)
        return -1;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
        getrlimit(RLIMIT_NOFILE, &r);
    }
    return (long)r.rlim_cur;
}

/* TCP_NODELAY on this process's TCP sockets: "all", "none", "mixed" or
 * "no sockets" (checked by scanning the open descriptors). */
BENCH_UNUSED static const char *nodelay_state(void)
{
    int on = 0, off = 0;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = 0; fd < max; fd++) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        int type = 0, v = 0;
        socklen_t l = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM)
            continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
            (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
            continue;
        l = sizeof v;
        if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &l) != 0)
            continue;
        if (v) on++; else off++;
    }
    if (!on && !off) return "no sockets";
    return !off ? "all" : !on ? "none" : "mixed";
}

/* Fanout: connection c's frames are due at start + k * period + offset(c),
 * offset(c) = c * period / conns rounded down to a whole millisecond (so with
 * 200 connections and 20 ms, 10 connections share each 1 ms slot). The same
 * schedule in every client; 1 ms is also tokio's timer granularity. */
#define FANOUT_OFFSET_NS(c, period, conns) ((((c) * (period) / (conns)) / 1000000ull) * 1000000ull)

/* ---- payloads ---------------------------------------------------------- */

#define PAT_SLACK 256

static uint8_t *g_pat;   /* binary pattern */
static uint8_t *g_tpat;  /* text pattern (ASCII letters) */

BENCH_UNUSED static void pattern_init(size_t max_len)
{
    size_t n = max_len + PAT_SLACK;
    g_pat = (uint8_t *)malloc(n);
    g_tpat = (uint8_t *)malloc(n);
    uint64_t s = 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        g_pat[i] = (uint8_t)(s >> 24);
        g_tpat[i] = (uint8_t)('a' + (g_pat[i] % 26));
    }
}

static inline void seq_bytes(uint8_t out[8], uint64_t seq, int text)
{
    if (text) {
        static const char hex[] = "0123456789abcdef";
        for (int i = 0; i < 8; i++)
            out[i] = (uint8_t)hex[(seq >> (28 - 4 * i)) & 0xF];
    } else {
        for (int i = 0; i < 8; i++)
            out[i] = (uint8_t)(seq >> (8 * i));
    }
}

/* Writes message `seq` of `len` (>= 8) bytes into buf. */
static inline void fill_msg(uint8_t *buf, uint64_t seq, size_t len, int text)
{
    const uint8_t *p = (text ? g_tpat : g_pat) + seq % 251;
    seq_bytes(buf, seq, text);
    memcpy(buf + 8, p + 8, len - 8);
}

/* Writes bytes [pos, pos+n) of message `seq` into buf. */
static inline void fill_chunk(uint8_t *buf, uint64_t seq, size_t pos, size_t n, int text)
{
    if (pos < 8) {
        uint8_t sb[8];
        seq_bytes(sb, seq, text);
        size_t k = 8 - pos < n ? 8 - pos : n;
        memcpy(buf, sb + pos, k);
        buf += k;
        pos += k;
        n -= k;
    }
    if (n)
        memcpy(buf, (text ? g_tpat : g_pat) + seq % 251 + pos, n);
}

/* Checks `n` bytes at offset `pos` of message `seq` (total length len).
 * Returns 0 when they match. */
static inline int check_chunk(const uint8_t *data, size_t n, size_t pos, uint64_t seq, size_t len, int text)
{
    if (pos + n > len)
        return -1;
    if (pos < 8) {
        uint8_t sb[8];
        seq_bytes(sb, seq, text);
        size_t k = 8 - pos < n ? 8 - pos : n;
        if (memcmp(data, sb + pos, k))
            return -1;
        data += k;
        pos += k;
        n -= k;
    }
    const uint8_t *p = (text ? g_tpat : g_pat) + seq % 251;
    return n ? memcmp(data, p + pos, n) != 0 : 0;
}

static inline int check_msg(const uint8_t *data, size_t n, uint64_t seq, size_t len, int text)
{
    return n != len ? -1 : check_chunk(data, n, 0, seq, len, text);
}

/* Describes what arrived instead of message `seq` (for error reports). */
BENCH_UNUSED static void describe_mismatch(char *out, size_t outsz, const uint8_t *data, size_t n,
                                           uint64_t seq, size_t len, int text)
{
    uint64_t got = 0;
    if (n >= 8 && !text)
        for (int i = 0; i < 8; i++) got |= (uint64_t)data[i] << (8 * i);
    snprintf(out, outsz, "echo %llu: got %zu bytes (want %zu)%s, first 8 bytes decode as %llu",
             (unsigned long long)seq, n, len, text ? " text" : "", (unsigned long long)got);
}

/* ---- statistics -------------------------------------------------------- */

/* Latency histogram: log-linear, 64 sub-buckets per power of two (values
 * below 64 ns exact, otherwise within 1.6 %). Recording is O(1) and the
 * percentiles cost the same for any N, so under callgrind the statistics
 * cancel out of (Ir(N2) - Ir(N1)) instead of adding an N log N sort. */
#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
typedef struct hist {
    uint64_t count[64 * HIST_SUB];
    uint64_t n;
} hist_t;

static inline unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - HIST_SUB_BITS;
    return (e - HIST_SUB_BITS + 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

static inline void hist_add(hist_t *h, uint64_t v)
{
    h->count[hist_index(v)]++;
    h->n++;
}

/* Nearest-rank percentile q (0..1) in µs: the middle of the bucket. */
BENCH_UNUSED static double hist_percentile_us(const hist_t *h, double q)
{
    if (!h->n)
        return NAN;
    uint64_t rank = (uint64_t)ceil(q * (double)h->n);
    if (rank < 1) rank = 1;
    uint64_t cum = 0;
    for (unsigned i = 0; i < 64 * HIST_SUB; i++) {
        cum += h->count[i];
        if (cum >= rank) {
            if (i < HIST_SUB)
                return (double)i / 1000.0;
            unsigned b = i / HIST_SUB, sub = i % HIST_SUB;
            unsigned shift = b - 1;
            double lo = (double)((uint64_t)(HIST_SUB + sub) << shift);
            double hi = (double)((uint64_t)(HIST_SUB + sub + 1) << shift);
            return (lo + hi) / 2.0 / 1000.0;
        }
    }
    return NAN;
}

/* ---- JSON report ------------------------------------------------------- */

static char g_json[16384];
static size_t g_json_len;

BENCH_UNUSED static void json_raw(const char *key, const char *fmt, ...)
{
    if (g_json_len + 64 >= sizeof g_json)
        return;
    g_json_len += (size_t)snprintf(g_json + g_json_len, sizeof g_json - g_json_len, "%s\"%s\": ",
                                   g_json_len > 1 ? ", " : "", key);
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(g_json + g_json_len, sizeof g_json - g_json_len, fmt, ap);
    va_end(ap);
    if (w > 0) g_json_len += (size_t)w;
    if (g_json_len >= sizeof g_json) g_json_len = sizeof g_json - 1;
}

BENCH_UNUSED static void json_str(const char *key, const char *val)
{
    char esc[2048];
    size_t j = 0;
    for (const char *p = val ? val : ""; *p && j + 7 < sizeof esc; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') { esc[j++] = '\\'; esc[j++] = (char)c; }
        else if (c < 0x20) j += (size_t)snprintf(esc + j, sizeof esc - j, "\\u%04x", c);
        else esc[j++] = (char)c;
    }
    esc[j] = 0;
    json_raw(key, "\"%s\"", esc);
}

BENCH_UNUSED static void json_num(const char *key, double v)
{
    if (isnan(v) || isinf(v)) json_raw(key, "null");
    else if (v == (double)(long long)v && fabs(v) < 1e15) json_raw(key, "%lld", (long long)v);
    else json_raw(key, "%.6g", v);
}

BENCH_UNUSED static void json_bool(const char *key, int v)
{
    json_raw(key, v ? "true" : "false");
}

BENCH_UNUSED static void json_begin(void)
{
    g_json[0] = '{';
    g_json[1] = 0;
    g_json_len = 1;
}

BENCH_UNUSED static void json_end(void)
{
    printf("%s}\n", g_json);
    fflush(stdout);
}

/* Starts the JSON line with the fields every run reports. */
BENCH_UNUSED static void json_head(const char *client, const bench_args *a)
{
    json_begin();
    json_str("client", client);
    json_str("workload", a->workload);
    json_str("url", a->url);
    json_num("n", (double)a->n);
    json_num("size", (double)a->size);
}

/* Common fields of an interval measurement: n messages of `size` bytes
 * from t0 to t1, process CPU cpu0..cpu1, server CPU srv0..srv1. */
BENCH_UNUSED static void json_interval(long n, long size, uint64_t t0, uint64_t t1, uint64_t cpu0,
                                       uint64_t cpu1, uint64_t srv0, uint64_t srv1, long server_pid)
{
    double el = (double)(t1 - t0) / 1e9;
    json_num("elapsed_s", el);
    json_num("msgs_per_s", el > 0 ? (double)n / el : NAN);
    json_num("mb_per_s", el > 0 ? (double)n * (double)size / 1e6 / el : NAN);
    json_num("cpu_us_per_msg", n ? (double)(cpu1 - cpu0) / (double)n : NAN);
    json_num("client_cpu_s", (double)(cpu1 - cpu0) / 1e6);
    json_num("client_busy", el > 0 ? (double)(cpu1 - cpu0) / 1e6 / el : NAN);
    if (server_pid > 0 && srv1 >= srv0) {
        double s = (double)(srv1 - srv0) / 1e9;
        json_num("server_cpu_s", s);
        json_num("server_busy", el > 0 ? s / el : NAN);
        json_bool("server_saturated", el > 0 && s / el >= 0.9);
    }
}

#endif /* BENCH_COMMON_H */
