/* RFC 6455 client conformance driver (see docs/CONFORMANCE.md).
 *
 * Run through tests/conformance/run.py, which starts the scripted server
 * (tests/conformance/server.py) and writes the case specification:
 *
 *     test_conformance --spec FILE      (or PJWS_CONFORMANCE_SPEC=FILE)
 *
 * Without a spec (e.g. when tests/run_c_tests.py runs every test_* binary)
 * it prints one SKIPPED line and exits 0.
 *
 * For every case: one instance (close timeout from the spec, keep-alive
 * pings off), connect to ws://127.0.0.1:PORT/case/<id>, check on_connect's
 * status, run the case's API calls (send/close with their expected return
 * codes), wait for on_close, then check the messages delivered (exactly, in
 * order), on_close's code and reason, pj_websock_get_close_info(), the
 * handshake getters, callback discipline, and finally ask the server for
 * its verdict (the frames it got, the TCP close order) on the control port.
 * Cases run in parallel ("jobs" worker threads; callbacks come from the
 * library's event thread). One line per case:
 *     ok - <id> | not ok - <id>: <why> | SKIPPED - <id>: <why>
 *
 * Spec lines (hex = lowercase hex bytes, "-" = empty, "null" = NULL):
 *   server <ws-port> <control-port> | close_timeout_ms N | jobs N
 *   case ID ... end, with inside:
 *     skip TEXT | offer HEX | max_rx N | connect STATUS
 *     step send OP HEX RC | step close CODE HEX|null RC | step wait_msgs N
 *     step sleep MS | nmsgs N | msg OP HEX | big OP LEN
 *     on_close CODE|none|any | reason HEX | info FIELD N | http_status N
 *     http_contains HEX | subprotocol HEX | close_ms MIN MAX
 */
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Specification                                                       */

typedef struct blob {
    unsigned char *p;
    size_t n;
    int null;               /* "null": pass NULL */
} blob;

enum { ST_SEND, ST_CLOSE, ST_WAIT_MSGS, ST_SLEEP };

typedef struct step {
    int kind;
    int op;                 /* send: opcode; close: code */
    blob data;
    pj_status_t rc;
    long n;                 /* wait_msgs: count; sleep: ms */
} step;

enum { INFO_INITIATOR, INFO_CLEAN, INFO_CODE_SENT, INFO_CODE_RECEIVED, INFO_STATUS, INFO_N };
static const char *const info_names[INFO_N] = {"initiator", "clean", "code_sent", "code_received", "status"};

enum { CLOSE_NONE, CLOSE_CODE, CLOSE_ANY };

typedef struct ccase {
    char *id;
    char *skip;
    int has_offer;
    blob offer;
    size_t max_rx;
    pj_status_t connect;
    step *steps;
    int nsteps;
    int nmsgs_want;         /* -1: big */
    int *msg_op;
    blob *msg;
    int nmsg;
    int big_op;
    size_t big_len;
    int close_kind;
    unsigned close_code;
    int has_reason;
    blob reason;
    int info_set[INFO_N];
    long info_val[INFO_N];
    int http_status;        /* -1: unchecked */
    blob *contains;
    int ncontains;
    int has_sub;
    blob sub;
    int close_ms_min, close_ms_max; /* -1: unchecked */
} ccase;

static int g_port, g_control, g_close_timeout = 500, g_jobs = 8;
static ccase *g_cases;
static int g_ncases;

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_blob(const char *s, blob *b)
{
    memset(b, 0, sizeof(*b));
    if (!s)
        return -1;
    if (strcmp(s, "null") == 0) {
        b->null = 1;
        return 0;
    }
    if (strcmp(s, "-") == 0)
        return 0;
    size_t len = strlen(s);
    if (len % 2)
        return -1;
    b->p = malloc(len / 2 + 1);
    if (!b->p)
        abort();
    for (size_t i = 0; i < len / 2; ++i) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        b->p[i] = (unsigned char)(hi << 4 | lo);
    }
    b->n = len / 2;
    b->p[b->n] = 0;
    return 0;
}

static void free_blob(blob *b)
{
    free(b->p);
    b->p = NULL;
}

static void *grow(void *p, int n, size_t elem)
{
    void *q = realloc(p, (size_t)(n + 1) * elem);
    if (!q)
        abort();
    return q;
}

static int load_spec(const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    ccase *cur = NULL;
    int lineno = 0, bad = 0;
    if (!f) {
        printf("# cannot open spec %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (!len || line[0] == '#')
            continue;
        if (strncmp(line, "skip ", 5) == 0 && cur) {
            free(cur->skip);
            cur->skip = strdup(line + 5);
            continue;
        }
        char *save = NULL;
        char *kw = strtok_r(line, " ", &save);
        char *a = strtok_r(NULL, " ", &save);
        char *b = strtok_r(NULL, " ", &save);
        char *c = strtok_r(NULL, " ", &save);
        char *d = strtok_r(NULL, " ", &save);
        if (!kw)
            continue;
        if (strcmp(kw, "server") == 0 && a && b) {
            g_port = atoi(a);
            g_control = atoi(b);
        } else if (strcmp(kw, "close_timeout_ms") == 0 && a) {
            g_close_timeout = atoi(a);
        } else if (strcmp(kw, "jobs") == 0 && a) {
            g_jobs = atoi(a);
        } else if (strcmp(kw, "case") == 0 && a) {
            g_cases = grow(g_cases, g_ncases, sizeof(*g_cases));
            cur = &g_cases[g_ncases++];
            memset(cur, 0, sizeof(*cur));
            cur->id = strdup(a);
            cur->http_status = -1;
            cur->close_ms_min = cur->close_ms_max = -1;
        } else if (!cur) {
            bad = 1;
        } else if (strcmp(kw, "end") == 0) {
            cur = NULL;
        } else if (strcmp(kw, "offer") == 0) {
            cur->has_offer = 1;
            bad |= parse_blob(a, &cur->offer);
        } else if (strcmp(kw, "max_rx") == 0 && a) {
            cur->max_rx = (size_t)strtoul(a, NULL, 10);
        } else if (strcmp(kw, "connect") == 0 && a) {
            cur->connect = atoi(a);
        } else if (strcmp(kw, "step") == 0 && a) {
            cur->steps = grow(cur->steps, cur->nsteps, sizeof(step));
            step *s = &cur->steps[cur->nsteps++];
            memset(s, 0, sizeof(*s));
            if (strcmp(a, "send") == 0 && b && c && d) {
                s->kind = ST_SEND;
                s->op = atoi(b);
                bad |= parse_blob(c, &s->data);
                s->rc = atoi(d);
            } else if (strcmp(a, "close") == 0 && b && c && d) {
                s->kind = ST_CLOSE;
                s->op = atoi(b);
                bad |= parse_blob(c, &s->data);
                s->rc = atoi(d);
            } else if (strcmp(a, "wait_msgs") == 0 && b) {
                s->kind = ST_WAIT_MSGS;
                s->n = atol(b);
            } else if (strcmp(a, "sleep") == 0 && b) {
                s->kind = ST_SLEEP;
                s->n = atol(b);
            } else {
                bad = 1;
            }
        } else if (strcmp(kw, "nmsgs") == 0 && a) {
            cur->nmsgs_want = atoi(a);
        } else if (strcmp(kw, "msg") == 0 && a && b) {
            cur->msg_op = grow(cur->msg_op, cur->nmsg, sizeof(int));
            cur->msg = grow(cur->msg, cur->nmsg, sizeof(blob));
            cur->msg_op[cur->nmsg] = atoi(a);
            bad |= parse_blob(b, &cur->msg[cur->nmsg]);
            cur->nmsg++;
        } else if (strcmp(kw, "big") == 0 && a && b) {
            cur->nmsgs_want = -1;
            cur->big_op = atoi(a);
            cur->big_len = (size_t)strtoul(b, NULL, 10);
        } else if (strcmp(kw, "on_close") == 0 && a) {
            if (strcmp(a, "none") == 0)
                cur->close_kind = CLOSE_NONE;
            else if (strcmp(a, "any") == 0)
                cur->close_kind = CLOSE_ANY;
            else {
                cur->close_kind = CLOSE_CODE;
                cur->close_code = (unsigned)atoi(a);
            }
        } else if (strcmp(kw, "reason") == 0) {
            cur->has_reason = 1;
            bad |= parse_blob(a, &cur->reason);
        } else if (strcmp(kw, "info") == 0 && a && b) {
            int k;
            for (k = 0; k < INFO_N; ++k)
                if (strcmp(a, info_names[k]) == 0)
                    break;
            if (k == INFO_N) {
                bad = 1;
            } else {
                cur->info_set[k] = 1;
                cur->info_val[k] = atol(b);
            }
        } else if (strcmp(kw, "http_status") == 0 && a) {
            cur->http_status = atoi(a);
        } else if (strcmp(kw, "http_contains") == 0) {
            cur->contains = grow(cur->contains, cur->ncontains, sizeof(blob));
            bad |= parse_blob(a, &cur->contains[cur->ncontains++]);
        } else if (strcmp(kw, "subprotocol") == 0) {
            cur->has_sub = 1;
            bad |= parse_blob(a, &cur->sub);
        } else if (strcmp(kw, "close_ms") == 0 && a && b) {
            cur->close_ms_min = atoi(a);
            cur->close_ms_max = atoi(b);
        } else {
            bad = 1;
        }
        if (bad) {
            printf("# spec %s:%d: cannot parse line starting with '%s'\n", path, lineno, kw);
            break;
        }
    }
    free(line);
    fclose(f);
    return bad || !g_port ? -1 : 0;
}

static void free_spec(void)
{
    for (int i = 0; i < g_ncases; ++i) {
        ccase *c = &g_cases[i];
        free(c->id);
        free(c->skip);
        free_blob(&c->offer);
        for (int k = 0; k < c->nsteps; ++k)
            free_blob(&c->steps[k].data);
        free(c->steps);
        for (int k = 0; k < c->nmsg; ++k)
            free_blob(&c->msg[k]);
        free(c->msg);
        free(c->msg_op);
        free_blob(&c->reason);
        for (int k = 0; k < c->ncontains; ++k)
            free_blob(&c->contains[k]);
        free(c->contains);
        free_blob(&c->sub);
    }
    free(g_cases);
}

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

/* Up to 48 bytes of b as hex, for messages. */
static const char *hexs(const void *p, size_t n, char *buf, size_t size)
{
    const unsigned char *b = p;
    size_t k = 0;
    for (size_t i = 0; i < n && i < 48 && k + 3 < size; ++i)
        k += (size_t)snprintf(buf + k, size - k, "%02x", b[i]);
    if (n > 48 && k + 4 < size)
        snprintf(buf + k, size - k, "...");
    if (!n && size)
        snprintf(buf, size, "(empty)");
    return buf;
}

static const void *memfind(const void *hay, size_t hn, const void *needle, size_t nn)
{
    if (nn == 0)
        return hay;
    for (size_t i = 0; i + nn <= hn; ++i)
        if (memcmp((const char *)hay + i, needle, nn) == 0)
            return (const char *)hay + i;
    return NULL;
}

/* Asks the server for its verdict on case `id`: 1 = ok, 0 = failed (why
 * filled), -1 = could not ask. */
static int server_verdict(const char *id, char *why, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    struct timeval tv = {under_valgrind() ? 600 : 60, 0};
    char req[300], buf[4096];
    size_t got = 0;
    if (fd < 0) {
        snprintf(why, size, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)g_control);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(why, size, "control connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    int n = snprintf(req, sizeof(req), "verdict %s\n", id);
    if (write(fd, req, (size_t)n) != n) {
        snprintf(why, size, "control write: %s", strerror(errno));
        close(fd);
        return -1;
    }
    while (got + 1 < sizeof(buf)) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (memchr(buf, '\n', got))
            break;
    }
    close(fd);
    buf[got] = '\0';
    char *nl = strchr(buf, '\n');
    if (!nl) {
        snprintf(why, size, "no verdict from the server (%.200s)", got ? buf : "connection closed");
        return -1;
    }
    *nl = '\0';
    if (strcmp(buf, "ok") == 0)
        return 1;
    snprintf(why, size, "%.900s", strncmp(buf, "fail ", 5) == 0 ? buf + 5 : buf);
    return 0;
}

static int pred_rx_n(tctx *c, void *arg)
{
    return c->n_rx >= *(size_t *)arg || c->n_close > 0;
}

/* ------------------------------------------------------------------ */
/* One case                                                            */

static pthread_mutex_t g_out_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_passed, g_failed, g_skipped;

static void run_case(ccase *cc)
{
    t_case tc;
    tctx c;
    pj_websock_param p;
    pj_websock_connect_param cp;
    char url[512], hb[200];
    pj_status_t rc;
    int wait_ms = tmo(5000);

    memset(&tc, 0, sizeof(tc));
    tc.name = cc->id;
    tctx_init(&c);
    if (cc->skip) {
        pthread_mutex_lock(&g_out_mu);
        g_skipped++;
        printf("SKIPPED - %s: %s\n", cc->id, cc->skip);
        fflush(stdout);
        pthread_mutex_unlock(&g_out_mu);
        tctx_free(&c);
        return;
    }

    tctx_param(&c, &p);
    p.ping_interval = 0;
    if (cc->max_rx)
        p.max_rx_msg_size = cc->max_rx;
    rc = tctx_create(&c, &p, NULL);
    T_REQUIRE(&tc, rc == PJ_SUCCESS, "pj_websock_create: %s", st(rc));
    pj_websock_set_close_timeout(c.ws, (unsigned)g_close_timeout);
    pj_websock_set_connect_timeout(c.ws, (unsigned)tmo(10000));
    pj_websock_connect_param_default(&cp);
    if (cc->has_offer) {
        cp.subprotocol.ptr = (char *)cc->offer.p;
        cp.subprotocol.slen = (pj_ssize_t)cc->offer.n;
    }
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/case/%s", g_port, cc->id);
    rc = tctx_connect(&c, url, &cp);
    T_REQUIRE(&tc, rc == PJ_SUCCESS, "pj_websock_connect: %s", st(rc));
    T_REQUIRE(&tc, tctx_wait_connect(&c, tmo(10000)), "no on_connect within 10 s");
    T_REQUIRE(&tc, c.connect_status == cc->connect, "on_connect(%s), want %s", st(c.connect_status), st(cc->connect));

    if (cc->connect != PJ_SUCCESS) {
        /* A rejected handshake: getters, and no on_close. */
        char head[20000];
        pj_ssize_t hl = pj_websock_get_http_response(c.ws, head, sizeof(head));
        int hs = pj_websock_get_http_status(c.ws);
        if (cc->http_status >= 0)
            T_CHECK(&tc, hs == cc->http_status, "pj_websock_get_http_status %d, want %d", hs, cc->http_status);
        for (int k = 0; k < cc->ncontains; ++k)
            T_CHECK(&tc, hl > 0 && memfind(head, strlen(head), cc->contains[k].p, cc->contains[k].n),
                    "pj_websock_get_http_response (%ld bytes) lacks '%.*s'", (long)hl, (int)cc->contains[k].n,
                    (const char *)cc->contains[k].p);
        pj_websock_close_info info;
        T_CHECK(&tc, pj_websock_get_close_info(c.ws, &info) == PJ_SUCCESS && info.status == cc->connect,
                "close_info.status %s after the failed connect, want %s", st(info.status), st(cc->connect));
        sleep_ms(50);
        T_CHECK(&tc, c.n_close == 0, "on_close called after a failed connect");
        T_CHECK(&tc, c.n_connect == 1, "on_connect called %d times", c.n_connect);
        T_CHECK(&tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s after a failed connect",
                state_name(pj_websock_get_state(c.ws)));
        goto out;
    }

    T_CHECK(&tc, c.state_in_connect == PJ_WEBSOCK_STATE_OPEN, "state %s in on_connect", state_name(c.state_in_connect));
    if (cc->has_sub) {
        char sub[256];
        pj_ssize_t sl = pj_websock_get_subprotocol(c.ws, sub, sizeof(sub));
        T_CHECK(&tc, sl == (pj_ssize_t)cc->sub.n && memcmp(sub, cc->sub.p ? (char *)cc->sub.p : "", cc->sub.n) == 0,
                "pj_websock_get_subprotocol '%s' (%ld), want '%s'", sl >= 0 ? sub : "", (long)sl,
                cc->sub.p ? (char *)cc->sub.p : "");
    }
    if (cc->http_status >= 0)
        T_CHECK(&tc, pj_websock_get_http_status(c.ws) == cc->http_status, "http status %d, want %d",
                pj_websock_get_http_status(c.ws), cc->http_status);

    for (int k = 0; k < cc->nsteps; ++k) {
        step *s = &cc->steps[k];
        switch (s->kind) {
        case ST_SEND:
            rc = pj_websock_send(c.ws, (pj_websock_opcode)s->op, s->data.p, s->data.n);
            T_CHECK(&tc, rc == s->rc, "step %d: pj_websock_send(op %d, %s) = %s, want %s", k + 1, s->op,
                    hexs(s->data.p, s->data.n, hb, sizeof(hb)), st(rc), st(s->rc));
            break;
        case ST_CLOSE: {
            pj_str_t r = {(char *)s->data.p, (pj_ssize_t)s->data.n};
            if (!s->data.p)
                r.ptr = (char *)"";
            rc = pj_websock_close(c.ws, (pj_uint16_t)s->op, s->data.null ? NULL : &r);
            T_CHECK(&tc, rc == s->rc, "step %d: pj_websock_close(%d, %zu-byte reason) = %s, want %s", k + 1, s->op,
                    s->data.n, st(rc), st(s->rc));
            if (rc != PJ_SUCCESS && s->rc != PJ_SUCCESS)
                T_CHECK(&tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN,
                        "step %d: state %s after a refused close", k + 1, state_name(pj_websock_get_state(c.ws)));
            break;
        }
        case ST_WAIT_MSGS: {
            size_t n = (size_t)s->n;
            T_CHECK(&tc, tctx_wait_until(&c, pred_rx_n, &n, wait_ms) && c.n_rx >= n,
                    "step %d: %zu of %zu messages arrived", k + 1, c.n_rx, n);
            break;
        }
        case ST_SLEEP:
            sleep_ms((int)s->n);
            break;
        }
    }

    T_REQUIRE(&tc, tctx_wait_close(&c, cc->nmsgs_want < 0 ? tmo(60000) : wait_ms),
              "no on_close within %d ms (state %s, %zu messages, close_info.code_sent %u)",
              cc->nmsgs_want < 0 ? tmo(60000) : wait_ms, state_name(pj_websock_get_state(c.ws)), c.n_rx,
              c.close_info.code_sent);
    sleep_ms(30);  /* a second on_close or a late message would show now */

    /* on_close and close_info */
    T_CHECK(&tc, c.n_close == 1, "on_close called %d times", c.n_close);
    T_CHECK(&tc, c.state_in_close == PJ_WEBSOCK_STATE_CLOSED, "state %s in on_close", state_name(c.state_in_close));
    if (cc->close_kind == CLOSE_CODE)
        T_CHECK(&tc, c.close_code == cc->close_code, "on_close code %u, want %u", c.close_code, cc->close_code);
    if (cc->has_reason)
        T_CHECK(&tc, c.close_reason_len == (long)cc->reason.n &&
                         memcmp(c.close_reason, cc->reason.p ? (char *)cc->reason.p : "", cc->reason.n) == 0,
                "on_close reason '%s' (%ld bytes), want %zu bytes '%.60s'", c.close_reason, c.close_reason_len,
                cc->reason.n, cc->reason.p ? (char *)cc->reason.p : "");
    T_CHECK(&tc, c.close_info_rc == PJ_SUCCESS, "pj_websock_get_close_info in on_close: %s", st(c.close_info_rc));
    {
        const pj_websock_close_info *ci = &c.close_info;
        long got[INFO_N] = {(long)ci->initiator, (long)(ci->clean != 0), (long)ci->code_sent,
                            (long)ci->code_received, (long)ci->status};
        for (int k = 0; k < INFO_N; ++k) {
            if (!cc->info_set[k] || got[k] == cc->info_val[k])
                continue;
            if (k == INFO_STATUS)
                T_CHECK(&tc, 0, "close_info.status %s, want %s", st((pj_status_t)got[k]),
                        st((pj_status_t)cc->info_val[k]));
            else
                T_CHECK(&tc, 0, "close_info.%s %ld, want %ld", info_names[k], got[k], cc->info_val[k]);
        }
    }
    if (cc->close_ms_min >= 0) {
        double dt = c.t_close - c.t_connect;
        T_CHECK(&tc, dt >= cc->close_ms_min && dt <= cc->close_ms_max, "on_close %.0f ms after on_connect, want %d-%d",
                dt, cc->close_ms_min, cc->close_ms_max);
    }

    /* messages: exactly these, in order */
    if (cc->nmsgs_want < 0) {
        rx_msg m;
        T_CHECK(&tc, c.n_msgs == 1, "%zu messages delivered, want 1", c.n_msgs);
        if (tctx_msg(&c, 0, &m)) {
            long bad = m.len == cc->big_len ? pat_check_text(m.data, m.len, 0) : -2;
            T_CHECK(&tc, m.opcode == cc->big_op && m.len == cc->big_len && bad == -1,
                    "big message: opcode %d, %zu bytes (want %d, %zu), first wrong byte %ld", m.opcode, m.len,
                    cc->big_op, cc->big_len, bad);
        }
    } else {
        T_CHECK(&tc, c.n_msgs == (size_t)cc->nmsg, "%zu messages delivered, want %d", c.n_msgs, cc->nmsg);
        for (int k = 0; k < cc->nmsg && (size_t)k < c.n_msgs; ++k) {
            rx_msg m;
            char h1[120], h2[120];
            if (!tctx_msg(&c, (size_t)k, &m))
                break;
            int same = m.opcode == cc->msg_op[k] && m.len == cc->msg[k].n &&
                       (m.len == 0 || memcmp(m.data, cc->msg[k].p, m.len) == 0);
            T_CHECK(&tc, same, "message %d: op %d %zu bytes %s, want op %d %zu bytes %s", k + 1, m.opcode, m.len,
                    hexs(m.data, m.len, h1, sizeof(h1)), cc->msg_op[k], cc->msg[k].n,
                    hexs(cc->msg[k].p, cc->msg[k].n, h2, sizeof(h2)));
        }
        for (int k = cc->nmsg; (size_t)k < c.n_msgs && k < cc->nmsg + 2; ++k) {
            rx_msg m;
            char h1[120];
            if (tctx_msg(&c, (size_t)k, &m))
                T_CHECK(&tc, 0, "extra message %d: op %d %zu bytes %s", k + 1, m.opcode, m.len,
                        hexs(m.data, m.len, h1, sizeof(h1)));
        }
    }
    T_CHECK(&tc, c.n_bad_opcode == 0, "%d messages with an opcode other than TEXT/BIN", c.n_bad_opcode);

    /* After on_close: CLOSED, calls refused. */
    T_CHECK(&tc, pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_CLOSED, "state %s after on_close",
            state_name(pj_websock_get_state(c.ws)));
    rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
    T_CHECK(&tc, rc == PJ_EINVALIDOP, "send after on_close: %s", st(rc));

out:
    T_CHECK(&tc, c.n_cb_concurrent == 0 && c.n_wrong_ws == 0, "callbacks overlapped (%d) or for another instance (%d)",
            c.n_cb_concurrent, c.n_wrong_ws);
    if (c.ws)
        tctx_destroy(&c);
    T_CHECK(&tc, c.n_after_destroy == 0, "callback after pj_websock_destroy");
    {
        char why[1024];
        int v = server_verdict(cc->id, why, sizeof(why));
        if (v != 1)
            T_CHECK(&tc, 0, "server: %s", why);
    }
    tctx_free(&c);

    pthread_mutex_lock(&g_out_mu);
    if (tc.failed) {
        g_failed++;
        printf("not ok - %s: %s\n", cc->id, tc.why);
    } else {
        g_passed++;
        printf("ok - %s\n", cc->id);
    }
    fflush(stdout);
    pthread_mutex_unlock(&g_out_mu);
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */

static pthread_mutex_t g_next_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_next;

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g_next_mu);
        int i = g_next < g_ncases ? g_next++ : -1;
        pthread_mutex_unlock(&g_next_mu);
        if (i < 0)
            return NULL;
        run_case(&g_cases[i]);
    }
}

int main(int argc, char **argv)
{
    const char *spec = getenv("PJWS_CONFORMANCE_SPEC");
    for (int i = 1; i < argc; ++i)
        if (strcmp(argv[i], "--spec") == 0 && i + 1 < argc)
            spec = argv[++i];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!spec || !*spec) {
        printf("SKIPPED - conformance: no case specification; run tests/conformance/run.py "
               "(make test-conformance)\n");
        return 0;
    }
    if (load_spec(spec) != 0) {
        printf("not ok - conformance: bad specification %s\n", spec);
        free_spec();
        return 1;
    }
    int jobs = g_jobs < 1 ? 1 : g_jobs > 64 ? 64 : g_jobs;
    pthread_t th[64];
    int started = 0;
    double t0 = now_ms();
    printf("# %d cases, %d jobs, close timeout %d ms, server port %d\n", g_ncases, jobs, g_close_timeout, g_port);
    for (int i = 0; i < jobs; ++i)
        if (pthread_create(&th[started], NULL, worker, NULL) == 0)
            started++;
    if (!started)
        worker(NULL);
    for (int i = 0; i < started; ++i)
        pthread_join(th[i], NULL);
    /* teardown finishes on the event thread shortly after destroy */
    for (int i = 0; i < 100 && pj_websock_get_live_count() > 0; ++i)
        sleep_ms(20);
    if (pj_websock_get_live_count() > 0)
        printf("# %u instances still alive at exit\n", pj_websock_get_live_count());
    printf("# %d passed, %d failed, %d skipped in %.1f s\n", g_passed, g_failed, g_skipped, (now_ms() - t0) / 1000);
    free_spec();
    return g_failed ? 1 : 0;
}
