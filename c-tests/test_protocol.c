/* What the client accepts from a peer, byte for byte: raw_server.py's
 * /send?hex=... sends exactly the given bytes after a correct handshake,
 * then echoes (and answers the client's close frame with the same code).
 * Protocol violations must fail the connection with the right close code
 * (1002 protocol error, 1007 invalid UTF-8), report it in close_info and
 * never deliver the offending message; tricky but valid input (fragments,
 * UTF-8 split across fragments, empty fragments, unsolicited pongs) must be
 * delivered intact. A first selection; the RFC 6455 conformance suite can
 * extend the table. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct proto_case {
    const char *name;
    const char *hex;            /* bytes the server sends */
    unsigned code;              /* close code the client must send; 0: none (stays open) */
    unsigned alt_code;          /* also accepted, 0: none */
    pj_status_t status;         /* close_info.status when code != 0 */
    int n_msgs;                 /* messages to deliver before/instead */
    int op[2];
    const char *payload_hex[2];
} proto_case;

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t unhex(const char *hex, unsigned char *out, size_t max)
{
    size_t n = 0;
    for (const char *p = hex; p[0] && p[1] && n < max;) {
        if (p[0] == ' ') {
            p++;
            continue;
        }
        out[n++] = (unsigned char)(hexval(p[0]) << 4 | hexval(p[1]));
        p += 2;
    }
    return n;
}

static void case_proto(t_case *tc, void *arg)
{
    const proto_case *pc = arg;
    char path[1024], url[1200];
    size_t k = 0;
    tctx c;
    tctx_init(&c);
    /* hex digits; spaces ignored; "z<n>" stands for n zero bytes */
    k += (size_t)snprintf(path + k, sizeof(path) - k, "/send?hex=");
    for (const char *p = pc->hex; *p && k + 3 < sizeof(path); ++p) {
        if (*p == ' ')
            continue;
        if (*p == 'z') {
            char *end;
            long n = strtol(p + 1, &end, 10);
            for (long i = 0; i < n && k + 3 < sizeof(path); ++i) {
                path[k++] = '0';
                path[k++] = '0';
            }
            p = end - 1;
            continue;
        }
        path[k++] = *p;
    }
    path[k] = '\0';
    if (!need_url(tc, url, sizeof(url), "WS_RAW_URL", path))
        goto out;
    T_REQUIRE(tc, tctx_open(tc, &c, NULL, url, NULL), "open failed");

    if (pc->code) {
        T_REQUIRE(tc, tctx_wait_close(&c, tmo(5000)), "connection not failed (state %s, %zu messages)",
                  state_name(pj_websock_get_state(c.ws)), c.n_rx);
        T_CHECK(tc, c.close_info.code_sent == pc->code || (pc->alt_code && c.close_info.code_sent == pc->alt_code),
                "client sent close code %u, want %u", c.close_info.code_sent, pc->code);
        if (c.close_info.code_sent == pc->code)
            T_CHECK(tc, c.close_info.status == pc->status, "status %s, want %s", st(c.close_info.status),
                    st(pc->status));
        T_CHECK(tc, c.close_info.initiator == PJ_WEBSOCK_CLOSE_PROTOCOL, "initiator %d, want PROTOCOL",
                (int)c.close_info.initiator);
        T_CHECK(tc, c.n_rx == (size_t)pc->n_msgs, "%zu messages delivered, want %d", c.n_rx, pc->n_msgs);
        sleep_ms(100);
        T_CHECK(tc, c.n_close == 1, "on_close called %d times", c.n_close);
    } else {
        T_REQUIRE(tc, tctx_wait_rx(&c, (size_t)pc->n_msgs, tmo(5000)), "%zu of %d messages delivered (close %u)",
                  c.n_rx, pc->n_msgs, c.close_info.code_sent);
        /* and the connection still works */
        pj_status_t rc = pj_websock_send(c.ws, PJ_WEBSOCK_OP_TEXT, "still-open", 10);
        T_REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
        T_REQUIRE(tc, tctx_wait_rx(&c, (size_t)pc->n_msgs + 1, tmo(5000)), "no echo after the input (close %u)",
                  c.close_info.code_sent);
        T_CHECK(tc, c.n_rx == (size_t)pc->n_msgs + 1, "%zu messages, want %d", c.n_rx, pc->n_msgs + 1);
        T_CHECK(tc, c.n_close == 0, "on_close(%u)", c.close_code);
    }
    for (int i = 0; i < pc->n_msgs && i < 2; ++i) {
        unsigned char want[256];
        size_t wl = unhex(pc->payload_hex[i], want, sizeof(want));
        rx_msg m;
        T_REQUIRE(tc, tctx_msg(&c, (size_t)i, &m), "message %d missing", i);
        T_CHECK(tc, m.opcode == pc->op[i], "message %d: opcode %d, want %d", i, m.opcode, pc->op[i]);
        T_CHECK(tc, m.len == wl && memcmp(m.data, want, wl) == 0, "message %d: %zu bytes, want %zu", i, m.len, wl);
    }
    if (!pc->code)
        tctx_close_wait(tc, &c, 1000, NULL);
out:
    if (c.ws)
        pj_websock_destroy(c.ws);
    tctx_free(&c);
}

#define T PJ_WEBSOCK_OP_TEXT
#define B PJ_WEBSOCK_OP_BIN

int main(void)
{
    static const proto_case cases[] = {
        /* valid input */
        {"fragmented BIN in 3 frames", "02020102 000103 800104", 0, 0, 0, 1, {B, 0}, {"01020304", ""}},
        {"UTF-8 character split across fragments", "0101e2 800282ac", 0, 0, 0, 1, {T, 0}, {"e282ac", ""}},
        {"empty TEXT fragments", "0100 0000 8000", 0, 0, 0, 1, {T, 0}, {"", ""}},
        {"unsolicited pong is ignored", "8a03616263 81026f6b", 0, 0, 0, 1, {T, 0}, {"6f6b", ""}},
        {"ping between fragments, 125-byte ping", "0101 61 897d z125 800162", 0, 0, 0, 1, {T, 0}, {"6162", ""}},
        {"16-bit length for a short payload", "817e0002 6869", 0, 0, 0, 1, {T, 0}, {"6869", ""}},
        {"two messages in one segment", "81016182026263", 0, 0, 0, 2, {T, B}, {"61", "6263"}},
        /* UTF-8 */
        {"invalid UTF-8 TEXT -> 1007", "8102fffe", 1007, 0, PJ_WEBSOCK_EUTF8, 0, {0, 0}, {"", ""}},
        {"invalid UTF-8 across fragments -> 1007", "0101e2 80028228", 1007, 0, PJ_WEBSOCK_EUTF8, 0, {0, 0},
         {"", ""}},
        {"truncated UTF-8 at message end -> 1007", "8102e282", 1007, 0, PJ_WEBSOCK_EUTF8, 0, {0, 0}, {"", ""}},
        {"surrogate in TEXT -> 1007", "8103eda080", 1007, 0, PJ_WEBSOCK_EUTF8, 0, {0, 0}, {"", ""}},
        {"invalid UTF-8 close reason -> 1007", "880403e8fffe", 1007, 1002, PJ_WEBSOCK_EUTF8, 0, {0, 0}, {"", ""}},
        /* framing */
        {"masked server frame -> 1002", "818501020304696768686e", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0},
         {"", ""}},
        {"RSV1 set -> 1002", "c1026869", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"RSV2 set -> 1002", "a1026869", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"RSV3 set -> 1002", "91026869", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"reserved data opcode 3 -> 1002", "8300", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"reserved control opcode 0xB -> 1002", "8b00", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"continuation without a start -> 1002", "80026869", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"new message inside a fragmented one -> 1002", "010161 810162", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0},
         {"", ""}},
        {"fragmented ping -> 1002", "0900", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"126-byte ping -> 1002", "897e007e z126", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"64-bit length with the top bit set -> 1002", "827f8000000000000001", 1002, 1009, PJ_WEBSOCK_EPROTOCOL, 0,
         {0, 0}, {"", ""}},
        /* close frames */
        {"close with a 1-byte body -> 1002", "880103", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"close code 1005 on the wire -> 1002", "880203ed", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"close code 999 -> 1002", "880203e7", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"close code 1004 -> 1002", "880203ec", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
        {"close code 5000 -> 1002", "88021388", 1002, 0, PJ_WEBSOCK_EPROTOCOL, 0, {0, 0}, {"", ""}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i)
        t_run(cases[i].name, case_proto, (void *)&cases[i]);
    return t_done();
}
