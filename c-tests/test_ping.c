/* Keep-alive pings, counted by raw_server.py's /count-pings (it answers each
 * ping with a pong and reports "pings=N first_after_ms=F avg_interval_ms=A"
 * when sent the text "report"), and dead-peer detection against
 * ws_server.py's /silent (never reads, never answers).
 * Timing cases use generous bounds and are skipped under valgrind. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ping_report {
    int pings, first_ms, avg_ms;
} ping_report;

/* Sends "report" and parses the answer (the next message). */
static int get_report(t_case *tc, tctx *c, ping_report *r)
{
    size_t n = c->n_rx;
    rx_msg m;
    pj_status_t rc = pj_websock_send(c->ws, PJ_WEBSOCK_OP_TEXT, "report", 6);
    if (rc != PJ_SUCCESS) {
        t_fail_at(tc, __FILE__, __LINE__, "send report: %s", st(rc));
        return 0;
    }
    if (!tctx_wait_rx(c, n + 1, tmo(5000)) || !tctx_msg(c, n, &m)) {
        t_fail_at(tc, __FILE__, __LINE__, "no ping report");
        return 0;
    }
    if (sscanf((const char *)m.data, "pings=%d first_after_ms=%d avg_interval_ms=%d", &r->pings, &r->first_ms,
               &r->avg_ms) != 3) {
        t_fail_at(tc, __FILE__, __LINE__, "bad report '%s'", (const char *)m.data);
        return 0;
    }
    printf("# %s\n", (const char *)m.data);
    return 1;
}

typedef struct ping_case {
    unsigned param_s;       /* param->ping_interval */
    int set_ms;             /* -1: do not call set_ping_interval_ms */
    int set_after_open;     /* call it on the open connection */
    int window_ms;
    int min_pings, max_pings;
    int min_first, max_first;
    int min_avg, max_avg;
} ping_case;

static void case_count(t_case *tc, void *arg)
{
    const ping_case *pc = arg;
    char url[512];
    tctx c;
    pj_websock_param p;
    ping_report r;
    tctx_init(&c);
    if (skip_timing_under_valgrind(tc))
        goto out;
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", "/count-pings"))
        goto out;
    tctx_param(&c, &p);
    p.ping_interval = pc->param_s;
    pj_status_t rc = tctx_create(&c, &p, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    if (pc->set_ms >= 0 && !pc->set_after_open) {
        rc = pj_websock_set_ping_interval_ms(c.ws, (unsigned)pc->set_ms);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "set_ping_interval_ms: %s", st(rc));
    }
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    if (pc->set_ms >= 0 && pc->set_after_open) {
        rc = pj_websock_set_ping_interval_ms(c.ws, (unsigned)pc->set_ms);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "set_ping_interval_ms: %s", st(rc));
    }
    sleep_ms(pc->window_ms);
    T_REQUIRE(tc, get_report(tc, &c, &r), "no report");
    T_CHECK(tc, r.pings >= pc->min_pings && r.pings <= pc->max_pings, "%d pings in %d ms, want %d..%d", r.pings,
            pc->window_ms, pc->min_pings, pc->max_pings);
    if (pc->max_pings > 0 && r.pings > 0)
        T_CHECK(tc, r.first_ms >= pc->min_first && r.first_ms <= pc->max_first,
                "first ping %d ms after open, want %d..%d", r.first_ms, pc->min_first, pc->max_first);
    if (pc->max_pings > 1 && r.pings > 1)
        T_CHECK(tc, r.avg_ms >= pc->min_avg && r.avg_ms <= pc->max_avg, "average interval %d ms, want %d..%d",
                r.avg_ms, pc->min_avg, pc->max_avg);
    T_CHECK(tc, c.n_close == 0 && pj_websock_get_state(c.ws) == PJ_WEBSOCK_STATE_OPEN,
            "connection ended (code %u, status %s) although every ping was answered", c.close_code,
            st(c.close_info.status));
    T_CHECK(tc, c.n_bad_opcode == 0, "pong delivered to on_rx_msg");
    tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

typedef struct dead_case {
    int timing;             /* check the time bounds */
} dead_case;

static void case_dead_peer(t_case *tc, void *arg)
{
    const dead_case *dc = arg;
    char url[512];
    tctx c;
    pj_websock_param p;
    tctx_init(&c);
    if (dc->timing && skip_timing_under_valgrind(tc))
        goto out;
    if (!need_url(tc, url, sizeof(url), "WS_ECHO_URL", "/silent"))
        goto out;
    tctx_param(&c, &p);
    p.ping_interval = 0;
    pj_status_t rc = tctx_create(&c, &p, NULL);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "create: %s", st(rc));
    rc = pj_websock_set_ping_interval_ms(c.ws, 300);
    T_REQUIRE(tc, rc == PJ_SUCCESS, "set_ping_interval_ms: %s", st(rc));
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");
    double t_open = c.t_connect;
    T_REQUIRE(tc, tctx_wait_close(&c, dc->timing ? 5000 : 60000), "no on_close within %d s from a dead peer",
              dc->timing ? 5 : 60);
    double dt = c.t_close - t_open;
    printf("# on_close %.0f ms after open\n", dt);
    T_CHECK(tc, c.close_code == 0, "on_close code %u, want 0", c.close_code);
    T_CHECK(tc, c.close_reason_len == 0, "on_close reason length %ld, want an empty reason", c.close_reason_len);
    T_CHECK(tc, c.close_info_rc == PJ_SUCCESS, "get_close_info in on_close: %s", st(c.close_info_rc));
    T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_TIMEOUT, "initiator %d, want TIMEOUT",
            (int)c.close_info.initiator);
    T_CHECK(tc, c.close_info.status == PJ_WEBSOCK_EPINGTIMEOUT, "status %s, want PJ_WEBSOCK_EPINGTIMEOUT",
            st(c.close_info.status));
    T_CHECK(tc, !c.close_info.clean, "close reported clean");
    T_CHECK(tc, c.state_in_close == PJ_WEBSOCK_STATE_CLOSED, "state in on_close %s", state_name(c.state_in_close));
    if (dc->timing)
        T_CHECK(tc, dt >= 300 && dt <= 3000, "dead peer detected after %.0f ms, want 300..3000", dt);
    sleep_ms(100);
    T_CHECK(tc, c.n_close == 1, "on_close called %d times", c.n_close);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

int main(void)
{
    static const ping_case every_300ms = {30, 300, 0, 3000, 6, 12, 150, 900, 200, 450};
    static const ping_case param_1s = {1, -1, 0, 3500, 2, 4, 600, 1600, 700, 1400};
    static const ping_case param_0 = {0, -1, 0, 2000, 0, 0, 0, 0, 0, 0};
    static const ping_case set_0 = {1, 0, 0, 2500, 0, 0, 0, 0, 0, 0};
    static const ping_case set_on_open = {0, 200, 1, 1500, 4, 9, 100, 700, 130, 320};
    static const dead_case dead_timed = {1};
    static const dead_case dead_untimed = {0};
    t_run("set_ping_interval_ms(300): ~10 pings in 3 s", case_count, (void *)&every_300ms);
    t_run("param ping_interval = 1 s: ~3 pings in 3.5 s", case_count, (void *)&param_1s);
    t_run("param ping_interval = 0: no pings", case_count, (void *)&param_0);
    t_run("set_ping_interval_ms(0) overrides param: no pings", case_count, (void *)&set_0);
    t_run("set_ping_interval_ms(200) on an open connection applies at once", case_count, (void *)&set_on_open);
    t_run("dead peer detected within 0.3-3 s (TIMEOUT, EPINGTIMEOUT, code 0)", case_dead_peer, (void *)&dead_timed);
    t_run("dead peer detected (no timing bounds)", case_dead_peer, (void *)&dead_untimed);
    return t_done();
}
