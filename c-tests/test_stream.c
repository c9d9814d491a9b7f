/* Streaming: many messages sent back to back without waiting, and several
 * threads sending on one connection at once. Every message carries its
 * sender and sequence number; the echoes must arrive intact and, per
 * sender, in order. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_BACK_TO_BACK = 10000, N_THREADS = 4, N_PER_THREAD = 2500 };

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void case_back_to_back(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    unsigned char buf[4 + 300];
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");

    double t0 = now_ms();
    for (uint32_t i = 0; i < N_BACK_TO_BACK; ++i) {
        size_t plen = i % 300;
        put_u32(buf, i);
        pat_fill(buf + 4, plen, i);
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, 4 + plen);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send #%u: %s", i, st(rc));
    }
    double t_send = now_ms() - t0;
    T_REQUIRE(tc, tctx_wait_rx(&c, N_BACK_TO_BACK, tmo(60000)), "only %zu of %d echoes after 60 s", c.n_rx,
              N_BACK_TO_BACK);
    for (uint32_t i = 0; i < N_BACK_TO_BACK; ++i) {
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, i, &m), "message %u missing", i);
        T_REQUIRE(tc, m.opcode == PJ_WEBSOCK_OP_BIN, "message %u: opcode %d", i, m.opcode);
        T_REQUIRE(tc, m.len == 4 + i % 300, "message %u: len %zu, want %u", i, m.len, 4 + i % 300);
        T_REQUIRE(tc, get_u32(m.data) == i, "message %u carries sequence %u (out of order)", i, get_u32(m.data));
        long bad = pat_check(m.data + 4, m.len - 4, i);
        T_REQUIRE(tc, bad < 0, "message %u differs at %ld", i, bad);
    }
    printf("# %d sends took %.1f ms\n", N_BACK_TO_BACK, t_send);
    sleep_ms(50);
    T_CHECK(tc, c.n_rx == N_BACK_TO_BACK, "%zu messages, want %d", c.n_rx, N_BACK_TO_BACK);
    T_CHECK(tc, c.n_cb_concurrent == 0, "callbacks overlapped %d times", c.n_cb_concurrent);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

typedef struct sender {
    pthread_t th;
    int id;
    pj_websock *ws;
    pthread_barrier_t *start;
    int n_fail;
    pj_status_t first_err;
    int fail_at;
} sender;

static size_t thread_msg_len(int id, uint32_t seq)
{
    return (size_t)((seq * 13 + (uint32_t)id * 101) % 500);
}

static void *sender_main(void *arg)
{
    sender *s = arg;
    unsigned char buf[9 + 500]; /* text: 9-byte head + up to 499 pattern bytes */
    pthread_barrier_wait(s->start);
    for (uint32_t i = 0; i < N_PER_THREAD; ++i) {
        size_t plen = thread_msg_len(s->id, i);
        pj_websock_opcode op = (i % 2) ? PJ_WEBSOCK_OP_BIN : PJ_WEBSOCK_OP_TEXT;
        if (op == PJ_WEBSOCK_OP_TEXT) {
            /* text: "<id><seq:8 hex>" + printable pattern */
            char head[16];
            snprintf(head, sizeof(head), "%d%08x", s->id, i);
            memcpy(buf, head, 9);
            pat_fill_text(buf + 9, plen, (size_t)s->id * 100000 + i);
            plen += 9;
        } else {
            buf[0] = (unsigned char)s->id;
            put_u32(buf + 1, i);
            pat_fill(buf + 5, plen, (size_t)s->id * 100000 + i);
            plen += 5;
        }
        pj_status_t rc = pj_websock_send(s->ws, op, buf, plen);
        if (rc != PJ_SUCCESS) {
            if (!s->n_fail++) {
                s->first_err = rc;
                s->fail_at = (int)i;
            }
        }
    }
    return NULL;
}

static void case_threads(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    sender snd[N_THREADS];
    pthread_barrier_t bar;
    int started = 0;
    tctx_init(&c);
    memset(snd, 0, sizeof(snd));
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");

    pthread_barrier_init(&bar, NULL, N_THREADS);
    for (int t = 0; t < N_THREADS; ++t) {
        snd[t].id = t;
        snd[t].ws = c.ws;
        snd[t].start = &bar;
        if (pthread_create(&snd[t].th, NULL, sender_main, &snd[t]) != 0) {
            t_fail_at(tc, __FILE__, __LINE__, "pthread_create");
            break;
        }
        started++;
    }
    for (int t = 0; t < started; ++t)
        pthread_join(snd[t].th, NULL);
    pthread_barrier_destroy(&bar);
    T_REQUIRE(tc, started == N_THREADS, "threads not started");
    for (int t = 0; t < N_THREADS; ++t)
        T_CHECK(tc, snd[t].n_fail == 0, "thread %d: %d sends failed, first #%d: %s", t, snd[t].n_fail,
                snd[t].fail_at, st(snd[t].first_err));

    const size_t total = (size_t)N_THREADS * N_PER_THREAD;
    T_REQUIRE(tc, tctx_wait_rx(&c, total, tmo(60000)), "only %zu of %zu echoes", c.n_rx, total);

    uint32_t next[N_THREADS] = {0};
    for (size_t k = 0; k < total; ++k) {
        rx_msg m;
        int id;
        uint32_t seq;
        size_t hdr;
        T_REQUIRE(tc, tctx_msg(&c, k, &m), "message %zu missing", k);
        if (m.opcode == PJ_WEBSOCK_OP_TEXT) {
            char hex[9];
            T_REQUIRE(tc, m.len >= 9 && m.data[0] >= '0' && m.data[0] < '0' + N_THREADS,
                      "message %zu: bad text header", k);
            id = m.data[0] - '0';
            memcpy(hex, m.data + 1, 8);
            hex[8] = '\0';
            seq = (uint32_t)strtoul(hex, NULL, 16);
            hdr = 9;
        } else {
            T_REQUIRE(tc, m.opcode == PJ_WEBSOCK_OP_BIN, "message %zu: opcode %d", k, m.opcode);
            T_REQUIRE(tc, m.len >= 5 && m.data[0] < N_THREADS, "message %zu: bad binary header", k);
            id = m.data[0];
            seq = get_u32(m.data + 1);
            hdr = 5;
        }
        T_REQUIRE(tc, seq == next[id], "thread %d: got seq %u, want %u (reordered or lost)", id, seq, next[id]);
        T_REQUIRE(tc, (m.opcode == PJ_WEBSOCK_OP_BIN) == (seq % 2 == 1), "thread %d seq %u: wrong opcode %d", id,
                  seq, m.opcode);
        T_REQUIRE(tc, m.len == hdr + thread_msg_len(id, seq), "thread %d seq %u: len %zu, want %zu", id, seq, m.len,
                  hdr + thread_msg_len(id, seq));
        long bad = m.opcode == PJ_WEBSOCK_OP_TEXT
                       ? pat_check_text(m.data + hdr, m.len - hdr, (size_t)id * 100000 + seq)
                       : pat_check(m.data + hdr, m.len - hdr, (size_t)id * 100000 + seq);
        T_REQUIRE(tc, bad < 0, "thread %d seq %u: payload differs at %ld (interleaved frames?)", id, seq, bad);
        next[id]++;
    }
    for (int t = 0; t < N_THREADS; ++t)
        T_CHECK(tc, next[t] == N_PER_THREAD, "thread %d: %u messages", t, next[t]);
    T_CHECK(tc, c.n_close == 0, "unexpected on_close(%u)", c.close_code);
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* In a process with threads, each doubling of the descriptor table waits
 * for an RCU grace period (milliseconds) in the thread that needs the new
 * slot. The loop has a worker grow the table ahead as its thread starts,
 * so a burst of connects does not stall the loop thread.
 * Runs first: the table never shrinks. */
static void case_fd_table_reserved(t_case *tc, void *arg)
{
    (void)arg;
    char url[512];
    tctx c;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    long before, want;
    if (!need_small_fd_table(tc, &before, &want))
        goto out;
    pj_websock_param p;
    tctx_param(&c, &p);
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    long after = fd_table_wait(want, tmo(2000));
    printf("# descriptor table: %ld slots before the first connection, %ld after\n", before, after);
    T_CHECK(tc, after >= want, "%ld slots (want %ld)", after, want);
    unsigned char msg[64];
    pat_fill(msg, sizeof(msg), 3);
    T_REQUIRE(tc, pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, msg, sizeof(msg)) == PJ_SUCCESS, "send");
    T_REQUIRE(tc, tctx_wait_rx(&c, 1, tmo(5000)), "no echo");
    rx_msg m;
    T_CHECK(tc, tctx_msg(&c, 0, &m) && m.len == sizeof(msg) && pat_check(m.data, m.len, 3) < 0, "echo differs");
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

/* A large message leaves buffers behind for the next one (the send
 * queue's chunk, the receive buffer): with pings off, nothing else would
 * ever give them back. They go about a second after the last use. */
static void case_shed_large_buffers(t_case *tc, void *arg)
{
    (void)arg;
    enum { BIG = 3 * 1024 * 1024 };
    char url[512];
    tctx c;
    unsigned char *buf = NULL;
    tctx_init(&c);
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/"))
        goto out;
    if (under_valgrind() || under_asan()) {
        t_skip(tc, "measures malloc, which %s replaces", under_asan() ? "ASan" : "valgrind");
        goto out;
    }
    pj_websock_param p;
    tctx_param(&c, &p);
    p.ping_interval = 0;
    p.max_rx_msg_size = 2 * BIG;
    T_REQUIRE(tc, tctx_open(tc, &c, &p, url, NULL), "open failed");
    buf = malloc(BIG);
    T_REQUIRE(tc, buf, "malloc");
    for (int i = 0; i < 2; ++i) {
        pat_fill(buf, BIG, (size_t)i);
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, buf, BIG);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
        T_REQUIRE(tc, tctx_wait_rx(&c, (size_t)i + 1, tmo(10000)), "no echo #%d", i);
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m) && m.len == BIG, "echo #%d: wrong length", i);
        T_REQUIRE(tc, pat_check(m.data, m.len, (size_t)i) < 0, "echo #%d differs", i);
    }
    free(buf);
    buf = NULL;
    sleep_ms(100); /* the receive buffer is recycled after the callback */
    long kept = heap_in_use();
    sleep_ms(1600);
    long after = heap_in_use();
    printf("# heap in use after the echoes %ld KiB, 1.6 s later %ld KiB\n", kept / 1024, after / 1024);
    /* one buffer each way, each at least the message size */
    T_CHECK(tc, kept - after >= 2L * BIG, "only %ld KiB given back", (kept - after) / 1024);
    /* and the connection still works, reusing nothing stale */
    unsigned char small[100];
    pat_fill(small, sizeof(small), 9);
    T_REQUIRE(tc, pj_websock_send(c.ws, PJ_WEBSOCK_OP_BIN, small, sizeof(small)) == PJ_SUCCESS, "send");
    T_REQUIRE(tc, tctx_wait_rx(&c, 3, tmo(5000)), "no echo after shedding");
    rx_msg m;
    T_CHECK(tc, tctx_msg(&c, 2, &m) && m.len == sizeof(small) && pat_check(m.data, m.len, 9) < 0,
            "echo after shedding differs");
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    free(buf);
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

int main(void)
{
    t_run("the descriptor table is grown ahead of the loop's sockets, off the loop thread",
          case_fd_table_reserved, NULL);
    t_run("10000 messages back to back echo intact and in order", case_back_to_back, NULL);
    t_run("4 threads sending concurrently: intact, per-thread order kept", case_threads, NULL);
    t_run("large-message buffers are given back a second after use (pings off)", case_shed_large_buffers, NULL);
    return t_done();
}
