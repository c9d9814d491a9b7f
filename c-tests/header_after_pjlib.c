/* Compile-only check: <pjwebsock/websock.h> included AFTER pjlib's headers.
 *
 * c-tests/fake_pjlib holds stand-ins for pjlib's headers, written from the
 * documented ABI (same include guards, type names and layouts). The header
 * must then skip what pjlib already declared (a second definition of a
 * struct, enum or typedef does not compile), declare the extension API with
 * pjlib's own types, and agree with the upstream prototypes.
 *
 * FAKE_PJLIB_LEVEL selects how much of pjlib comes first:
 *   1  <pj/types.h>
 *   2  + <pj/errno.h>, <pjlib-util/http_client.h>
 *   3  + <pj/ssl_sock.h>, <pjlib-util/websock.h> (default)
 *
 * Built as C11 and as C++11, e.g.:
 *   cc -std=c11 -pedantic -Wall -Wextra -Werror -Ic-tests/fake_pjlib -Iinclude \
 *      -DFAKE_PJLIB_LEVEL=3 -c c-tests/header_after_pjlib.c
 *   c++ -x c++ -std=c++11 -Wall -Wextra -Werror -Ic-tests/fake_pjlib -Iinclude \
 *      -DFAKE_PJLIB_LEVEL=3 -c c-tests/header_after_pjlib.c
 */
#ifndef FAKE_PJLIB_LEVEL
#define FAKE_PJLIB_LEVEL 3
#endif

#include <pj/types.h>
#if FAKE_PJLIB_LEVEL >= 2
#include <pj/errno.h>
#include <pjlib-util/http_client.h>
#endif
#if FAKE_PJLIB_LEVEL >= 3
#include <pj/ssl_sock.h>
#include <pjlib-util/websock.h>
#endif

#include <pjwebsock/websock.h>

#ifdef __cplusplus
#include <cstddef>
#include <type_traits>
#define STATIC_ASSERT(cond, msg) static_assert(cond, msg)
/* 1 when expr has exactly type T */
#define SAME_TYPE(expr, T) (std::is_same<decltype(expr), T>::value)
#else
#include <stddef.h>
#define STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#define SAME_TYPE(expr, T) _Generic((expr), T: 1, default: 0)
#endif

/* The include guards really were those of the stand-ins. */
#if !defined(__PJ_TYPES_H__)
#error "pj/types.h stand-in not included"
#endif
#if FAKE_PJLIB_LEVEL >= 3 && !defined(__PJLIB_UTIL_WEBSOCK_H__)
#error "pjlib-util/websock.h stand-in not included"
#endif

/* ---- upstream prototypes (ABI.md), with pjlib's types ---------------- */

typedef void (*param_default_fn)(pj_websock_param *param);
typedef void (*connect_param_default_fn)(pj_websock_connect_param *cparam);
typedef pj_status_t (*create_fn)(pj_pool_t *pool, const pj_websock_param *param, pj_websock **p_ws);
typedef pj_status_t (*connect_fn)(pj_websock *ws, const pj_str_t *url, const pj_websock_connect_param *cparam);
typedef pj_status_t (*send_fn)(pj_websock *ws, pj_websock_opcode opcode, const void *data, pj_size_t len);
typedef pj_status_t (*close_fn)(pj_websock *ws, pj_uint16_t status_code, const pj_str_t *reason);
typedef pj_websock_readystate (*get_state_fn)(const pj_websock *ws);
typedef void *(*get_user_data_fn)(const pj_websock *ws);
typedef pj_status_t (*set_user_data_fn)(pj_websock *ws, void *user_data);
typedef pj_status_t (*destroy_fn)(pj_websock *ws);

typedef void (*on_connect_fn)(pj_websock *ws, pj_status_t status);
typedef void (*on_rx_msg_fn)(pj_websock *ws, pj_websock_opcode opcode, const void *data, pj_size_t len);
typedef void (*on_close_fn)(pj_websock *ws, pj_uint16_t status_code, const pj_str_t *reason);

STATIC_ASSERT(SAME_TYPE(&pj_websock_param_default, param_default_fn), "pj_websock_param_default");
STATIC_ASSERT(SAME_TYPE(&pj_websock_connect_param_default, connect_param_default_fn),
              "pj_websock_connect_param_default");
STATIC_ASSERT(SAME_TYPE(&pj_websock_create, create_fn), "pj_websock_create");
STATIC_ASSERT(SAME_TYPE(&pj_websock_connect, connect_fn), "pj_websock_connect");
STATIC_ASSERT(SAME_TYPE(&pj_websock_send, send_fn), "pj_websock_send");
STATIC_ASSERT(SAME_TYPE(&pj_websock_close, close_fn), "pj_websock_close");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_state, get_state_fn), "pj_websock_get_state");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_user_data, get_user_data_fn), "pj_websock_get_user_data");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_user_data, set_user_data_fn), "pj_websock_set_user_data");
STATIC_ASSERT(SAME_TYPE(&pj_websock_destroy, destroy_fn), "pj_websock_destroy");

STATIC_ASSERT(SAME_TYPE(((pj_websock_param *)0)->cb.on_connect, on_connect_fn), "cb.on_connect");
STATIC_ASSERT(SAME_TYPE(((pj_websock_param *)0)->cb.on_rx_msg, on_rx_msg_fn), "cb.on_rx_msg");
STATIC_ASSERT(SAME_TYPE(((pj_websock_param *)0)->cb.on_close, on_close_fn), "cb.on_close");
STATIC_ASSERT(SAME_TYPE(((pj_websock_connect_param *)0)->subprotocol, pj_str_t), "subprotocol is pj_str_t");
STATIC_ASSERT(SAME_TYPE(((pj_websock_connect_param *)0)->extra_hdr, pj_http_headers), "extra_hdr");

/* ---- layouts (x86-64 LP64, ABI.md) ----------------------------------- */

STATIC_ASSERT(sizeof(pj_str_t) == 16, "pj_str_t");
STATIC_ASSERT(sizeof(pj_time_val) == 16, "pj_time_val");
STATIC_ASSERT(sizeof(pj_http_header_elmt) == 32, "pj_http_header_elmt");
STATIC_ASSERT(sizeof(pj_http_headers) == 1032, "pj_http_headers");
STATIC_ASSERT(sizeof(pj_websock_cb) == 24, "pj_websock_cb");
STATIC_ASSERT(sizeof(pj_websock_param) == 80, "pj_websock_param");
STATIC_ASSERT(offsetof(pj_websock_param, ping_interval) == 64, "ping_interval");
STATIC_ASSERT(offsetof(pj_websock_param, grp_lock) == 72, "grp_lock");
STATIC_ASSERT(sizeof(pj_websock_connect_param) == 1048, "pj_websock_connect_param");
STATIC_ASSERT(offsetof(pj_websock_connect_param, subprotocol) == 1032, "subprotocol");
STATIC_ASSERT(PJ_HTTP_HEADER_SIZE == 32, "PJ_HTTP_HEADER_SIZE");
STATIC_ASSERT(PJ_WEBSOCK_MAX_HEADERS == 16, "PJ_WEBSOCK_MAX_HEADERS");
STATIC_ASSERT(PJ_WEBSOCK_MAX_RX_MSG_SIZE == 256 * 1024, "PJ_WEBSOCK_MAX_RX_MSG_SIZE");
STATIC_ASSERT(PJ_WEBSOCK_DEFAULT_PING_INTERVAL == 30, "PJ_WEBSOCK_DEFAULT_PING_INTERVAL");
STATIC_ASSERT(PJ_WEBSOCK_OP_PONG == 0xA && PJ_WEBSOCK_STATE_CLOSED == 3, "enum values");

/* ---- the extension API is declared, with pjlib's types --------------- */

typedef pj_status_t (*get_close_info_fn)(const pj_websock *ws, pj_websock_close_info *info);
typedef pj_size_t (*get_buffered_amount_fn)(const pj_websock *ws);
typedef pj_status_t (*set_u_fn)(pj_websock *ws, unsigned int v);
typedef pj_status_t (*set_max_buffered_fn)(pj_websock *ws, pj_size_t bytes);
typedef int (*get_int_fn)(const pj_websock *ws);
typedef pj_ssize_t (*get_text_fn)(const pj_websock *ws, char *buf, pj_size_t size);
typedef pj_str_t (*strerror_fn)(pj_status_t status, char *buf, pj_size_t bufsize);
typedef pj_status_t (*set_tls_ca_fn)(pj_websock *ws, const char *ca_file, const char *ca_dir);
typedef pj_status_t (*set_tls_cert_fn)(pj_websock *ws, const char *cert, const char *key, const char *pw);
typedef pj_status_t (*add_tls_pin_fn)(pj_websock *ws, const uint8_t *sha256);
typedef pj_status_t (*set_tls_verify_fn)(pj_websock *ws, pj_bool_t force);
typedef void (*set_log_func_fn)(void (*func)(int level, const char *msg));
typedef unsigned int (*get_live_count_fn)(void);

STATIC_ASSERT(SAME_TYPE(&pj_websock_get_close_info, get_close_info_fn), "pj_websock_get_close_info");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_buffered_amount, get_buffered_amount_fn),
              "pj_websock_get_buffered_amount");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_max_buffered, set_max_buffered_fn), "pj_websock_set_max_buffered");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_connect_timeout, set_u_fn), "pj_websock_set_connect_timeout");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_close_timeout, set_u_fn), "pj_websock_set_close_timeout");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_ping_interval_ms, set_u_fn), "pj_websock_set_ping_interval_ms");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_http_status, get_int_fn), "pj_websock_get_http_status");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_http_response, get_text_fn), "pj_websock_get_http_response");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_subprotocol, get_text_fn), "pj_websock_get_subprotocol");
STATIC_ASSERT(SAME_TYPE(&pj_websock_strerror, strerror_fn), "pj_websock_strerror");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_tls_ca, set_tls_ca_fn), "pj_websock_set_tls_ca");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_tls_cert, set_tls_cert_fn), "pj_websock_set_tls_cert");
STATIC_ASSERT(SAME_TYPE(&pj_websock_add_tls_pin, add_tls_pin_fn), "pj_websock_add_tls_pin");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_tls_verify, set_tls_verify_fn), "pj_websock_set_tls_verify");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_tls_verify_result, get_int_fn), "pj_websock_get_tls_verify_result");
STATIC_ASSERT(SAME_TYPE(&pj_websock_set_log_func, set_log_func_fn), "pj_websock_set_log_func");
STATIC_ASSERT(SAME_TYPE(&pj_websock_get_live_count, get_live_count_fn), "pj_websock_get_live_count");

STATIC_ASSERT(SAME_TYPE(((pj_websock_close_info *)0)->clean, pj_bool_t), "close_info.clean");
STATIC_ASSERT(SAME_TYPE(((pj_websock_close_info *)0)->code_sent, pj_uint16_t), "close_info.code_sent");
STATIC_ASSERT(SAME_TYPE(((pj_websock_close_info *)0)->status, pj_status_t), "close_info.status");
STATIC_ASSERT(PJ_WEBSOCK_CLOSE_PROTOCOL == 5, "pj_websock_close_initiator");

/* status codes: pjlib's and the extension's own */
STATIC_ASSERT(PJ_SUCCESS == 0 && PJ_EINVAL == 70004 && PJ_EBUSY == 70011 && PJ_EINVALIDOP == 70013 &&
                  PJ_ECANCELLED == 70014 && PJ_ETIMEDOUT == 70009 && PJ_ERESOLVE == 70018,
              "pjlib status codes");
STATIC_ASSERT(PJ_STATUS_FROM_OS(111) == 120111 && PJ_STATUS_FROM_OS(0) == PJ_SUCCESS, "PJ_STATUS_FROM_OS");
STATIC_ASSERT(PJ_WEBSOCK_ERRNO_START == 570000, "PJ_WEBSOCK_ERRNO_START");
STATIC_ASSERT(PJ_WEBSOCK_EHS_STATUS == 570001 && PJ_WEBSOCK_ECONNCLOSED == 570009 &&
                  PJ_WEBSOCK_ECONNECTTIMEOUT == 570015 && PJ_WEBSOCK_ELOOP == 570016 &&
                  PJ_WEBSOCK_ETLS == 570020 && PJ_WEBSOCK_ETLS_CONFIG == 570026,
              "PJ_WEBSOCK_E* status codes");

/* ---- and they are usable together ------------------------------------ */

static void on_connect(pj_websock *ws, pj_status_t status)
{
    (void)ws;
    (void)status;
}

int header_after_pjlib_check(pj_pool_t *pool, const pj_str_t *url);

int header_after_pjlib_check(pj_pool_t *pool, const pj_str_t *url)
{
    /* upstream prototypes held in pointers of the types ABI.md gives */
    create_fn create = &pj_websock_create;
    connect_fn connect = &pj_websock_connect;
    send_fn send = &pj_websock_send;
    destroy_fn destroy = &pj_websock_destroy;
    get_buffered_amount_fn buffered = &pj_websock_get_buffered_amount;
    strerror_fn describe = &pj_websock_strerror;
    pj_websock_param param;
    pj_websock_connect_param cparam;
    pj_websock_close_info info;
    pj_websock *ws = NULL;
    char buf[80];

    pj_websock_param_default(&param);
    param.cb.on_connect = &on_connect;
    pj_websock_connect_param_default(&cparam);
    cparam.extra_hdr.header[0].name = *url; /* pjlib's pj_str_t in our struct */
    pj_status_t rc = create(pool, &param, &ws);
    if (rc != PJ_SUCCESS)
        return rc;
    rc = connect(ws, url, &cparam);
    if (rc == PJ_SUCCESS)
        rc = send(ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
    if (rc == PJ_EBUSY || rc == PJ_EINVALIDOP)
        rc = PJ_SUCCESS;
    pj_size_t n = buffered(ws);
    (void)pj_websock_get_close_info(ws, &info);
    pj_str_t text = describe(PJ_WEBSOCK_ECONNECTTIMEOUT, buf, sizeof(buf));
    (void)destroy(ws);
    return rc + (int)n + (int)text.slen + (int)info.initiator;
}
