/* Shared helpers for libpjwebsock's C tests (not part of the library).
 *
 * - a TAP-like reporter: every case prints exactly one line,
 *   "ok - <name>", "not ok - <name>: <why>" or "SKIPPED - <name>: <why>";
 *   t_done() returns the exit status (0 only when no case failed);
 * - a per-case watchdog, so a hang names the case that hung;
 * - server URLs from the environment (set by tests/run_c_tests.py):
 *     WS_ECHO_URL, WS_ECHO6_URL, WS_RAW_URL, WS_BLACKHOLE_URL, WS_REFUSED_URL;
 *   PJWS_UNDER_VALGRIND=1 when the binary runs under valgrind;
 * - tctx: a per-test callback context (mutex + condvar, counters, copies of
 *   the received messages) installed as user_data, with waits that time out;
 * - a byte-pattern generator/checker, a monotonic clock, VmRSS.
 */
#ifndef PJWS_CTEST_COMMON_H
#define PJWS_CTEST_COMMON_H

#include <pjwebsock/websock.h>

#include "testutil.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifndef PJ_STATUS_FROM_OS
#define PJ_STATUS_FROM_OS(e) ((e) == 0 ? 0 : (e) + 120000)
#endif

#define KiB ((size_t)1024)
#define MiB ((size_t)1024 * 1024)

/* ------------------------------------------------------------------ */
/* Reporter                                                            */

typedef struct t_case {
    const char *name;
    int failed;
    int skipped;
    char why[1024];
} t_case;

/* Records a failure (the first one is reported; later ones are appended
 * while there is room). */
void t_fail_at(t_case *tc, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Marks the case skipped (only if it has not failed). */
void t_skip(t_case *tc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define T_CHECK(tc, cond, ...)                                           \
    do {                                                                 \
        if (!(cond))                                                     \
            t_fail_at((tc), __FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)

/* Like T_CHECK but jumps to the case's "out:" label on failure. */
#define T_REQUIRE(tc, cond, ...)                                         \
    do {                                                                 \
        if (!(cond)) {                                                   \
            t_fail_at((tc), __FILE__, __LINE__, __VA_ARGS__);            \
            goto out;                                                    \
        }                                                                \
    } while (0)

typedef void (*t_fn)(t_case *tc, void *arg);

/* Runs one case and prints its line. The watchdog fails the case and
 * exits the process if it runs longer than t_case_timeout_s() seconds. */
void t_run(const char *name, t_fn fn, void *arg);
/* Same, with a printf-formatted name. */
void t_runf(t_fn fn, void *arg, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prints a case line directly (for a case decided without running). */
void t_report_skip(const char *name, const char *why);
/* Call at the end of main(): returns the process exit status. */
int t_done(void);

/* Sets the per-case watchdog limit (default 120 s, 900 s under valgrind). */
void t_set_case_timeout_s(int seconds);

/* ------------------------------------------------------------------ */
/* Environment (under_valgrind, tmo, now_ms, sleep_ms: testutil.h)     */

/* The env var's value, or NULL if unset or empty. */
const char *env_url(const char *var);
/* buf = $var + path. Returns 0 (and an empty buf) if the variable is unset. */
int url_make(char *buf, size_t size, const char *var, const char *path);
/* Port number of a ws:// URL ("ws://host:port/..."), or -1. */
int url_port(const char *url);
/* If $var is unset, marks tc skipped and returns 0. */
int need_url(t_case *tc, char *buf, size_t size, const char *var, const char *path);
/* Under valgrind marks tc skipped ("timing case") and returns 1. */
int skip_timing_under_valgrind(t_case *tc);
/* Bytes malloc'ed and in use, all arenas (OpenSSL and Rust use malloc;
 * meaningless under valgrind, which replaces malloc). */
long heap_in_use(void);

/* ------------------------------------------------------------------ */
/* Small utilities                                                     */

long rss_kb(void);                   /* VmRSS of this process, -1 if unknown */
/* For the descriptor-table cases: *before = FDSize now, *want = the slots
 * the library reserves (min(1024, RLIMIT_NOFILE)). Returns 0 (tc failed,
 * or skipped if the table is that big already) unless *before < *want. */
int need_small_fd_table(t_case *tc, long *before, long *want);
pj_str_t pjstr(const char *s);       /* pj_str_t view of a C string (NULL ok) */
/* "70004 (text)" using pj_websock_strerror; valid until 8 more calls. */
const char *st(pj_status_t status);
const char *state_name(pj_websock_readystate s);

/* Byte pattern shared with the Python servers: byte i of a pattern with
 * offset `off` is ((i + off) * 7) % 251. */
void pat_fill(void *buf, size_t len, size_t off);
/* Offset of the first byte that differs, or -1 if all match. */
long pat_check(const void *buf, size_t len, size_t off);
/* Printable-ASCII pattern for TEXT messages: 0x20 + ((i + off) * 7) % 95. */
void pat_fill_text(void *buf, size_t len, size_t off);
long pat_check_text(const void *buf, size_t len, size_t off);

/* Sends n binary messages of 1 MiB (zeros), stopping at the first refused
 * one: PJ_SUCCESS, or that send's status (*n_sent, if not NULL, counts the
 * accepted ones). PJ_ENOMEM if the buffer cannot be allocated. */
pj_status_t send_mib(pj_websock *ws, int n, int *n_sent);

/* Finds ["<name>", "<value>"] (name case-insensitive) in the JSON sent by
 * ws_server.py's /info and copies value into out. Returns 1 if found. With
 * nth > 0 the nth (0-based) such header is used. */
int info_header(const char *json, const char *name, int nth, char *out, size_t outsz);
/* Value of a top-level "key": "string" in /info's JSON, or "null". */
int info_field(const char *json, const char *key, char *out, size_t outsz);

/* ------------------------------------------------------------------ */
/* Callback context                                                    */

typedef struct rx_msg {
    int opcode;
    size_t len;
    unsigned char *data;   /* copy (NUL-terminated), NULL if !keep_msgs */
    double t_ms;
} rx_msg;

typedef struct tctx tctx;
struct tctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pj_websock *ws;             /* the instance the callbacks should see */

    int n_connect;
    pj_status_t connect_status;
    double t_connect;
    pj_websock_readystate state_in_connect;

    size_t n_rx;
    size_t rx_bytes;
    int keep_msgs;              /* default 1: copy every message */
    rx_msg *msgs;
    size_t n_msgs;              /* messages stored in msgs */
    size_t msgs_cap;
    int n_bad_opcode;           /* on_rx_msg with an opcode not TEXT/BIN */

    int n_close;
    unsigned close_code;
    char close_reason[256];
    long close_reason_len;      /* -1 if reason was NULL */
    double t_close;
    pj_websock_readystate state_in_close;
    pj_websock_close_info close_info;
    pj_status_t close_info_rc;

    int n_wrong_ws;             /* callback for an instance other than ws */
    int destroyed;              /* set by the test once destroy returned */
    int n_after_destroy;        /* callbacks after that: must stay 0 */
    int n_cb_concurrent;        /* callbacks that overlapped: must stay 0 */
    int in_cb;

    /* Optional hooks, called on the event thread after the event has been
     * recorded, without the mutex held. */
    void (*connect_hook)(tctx *c, pj_websock *ws, pj_status_t status);
    void (*rx_hook)(tctx *c, pj_websock *ws, pj_websock_opcode op, const void *data, pj_size_t len);
    void (*close_hook)(tctx *c, pj_websock *ws, pj_uint16_t code, const pj_str_t *reason);
    void *arg;
    pj_status_t hook_status;    /* result of an API call made by a hook */
};

void tctx_init(tctx *c);
void tctx_free(tctx *c);
/* Forgets the received messages (counters too). */
void tctx_clear_msgs(tctx *c);
/* Resets connect/close records (for a reconnect on the same instance). */
void tctx_reset_events(tctx *c);

/* pj_websock_param_default() + the tctx callbacks + user_data = c. */
void tctx_param(tctx *c, pj_websock_param *p);
/* pj_websock_create with p (or tctx_param defaults if p is NULL);
 * sets c->ws. */
pj_status_t tctx_create(tctx *c, const pj_websock_param *p, pj_websock **out);
pj_status_t tctx_connect(tctx *c, const char *url, const pj_websock_connect_param *cp);
/* Destroys c->ws and marks the context destroyed. */
pj_status_t tctx_destroy(tctx *c);

/* Wait (up to ms) until the condition holds; return 1 if it does. */
int tctx_wait_connect(tctx *c, int ms);
int tctx_wait_close(tctx *c, int ms);
int tctx_wait_rx(tctx *c, size_t n, int ms);
int tctx_wait_until(tctx *c, int (*pred)(tctx *c, void *arg), void *arg, int ms);
/* Set by a test that runs the library in PJ_WEBSOCK_LOOP_POLL mode: the
 * tctx waits then call pj_websock_poll() instead of sleeping. */
extern int g_tctx_poll;

/* Creates (p or defaults), connects to url, waits for on_connect(success).
 * Failures are reported into tc. Returns 1 when OPEN. */
int tctx_open(t_case *tc, tctx *c, const pj_websock_param *p, const char *url,
              const pj_websock_connect_param *cp);
/* Closes with (code, reason) and waits for on_close. Returns 1 if it came. */
int tctx_close_wait(t_case *tc, tctx *c, pj_uint16_t code, const char *reason);

/* Thread-safe snapshot of message i (copy of the struct; data still owned
 * by c). Returns 0 if there is no such message. */
int tctx_msg(tctx *c, size_t i, rx_msg *out);

#endif
