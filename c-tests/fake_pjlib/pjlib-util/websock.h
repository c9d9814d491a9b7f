/* Stand-in for pjlib-util's <pjlib-util/websock.h>, written from the
 * documented ABI (ABI.md: enums, structs, functions and macros of the
 * upstream WebSocket client), not from pjproject's sources; see
 * pj/types.h here. */
#ifndef __PJLIB_UTIL_WEBSOCK_H__
#define __PJLIB_UTIL_WEBSOCK_H__

#include <pj/types.h>
#include <pj/ssl_sock.h>
#include <pjlib-util/http_client.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PJ_WEBSOCK_MAX_HEADERS 16
#define PJ_WEBSOCK_MAX_RX_MSG_SIZE (256 * 1024)
#define PJ_WEBSOCK_RX_BUF_SIZE (64 * 1024)
#define PJ_WEBSOCK_TX_BUF_SIZE (64 * 1024)
#define PJ_WEBSOCK_DEFAULT_PING_INTERVAL 30

typedef enum pj_websock_opcode {
    PJ_WEBSOCK_OP_CONT = 0x0,
    PJ_WEBSOCK_OP_TEXT = 0x1,
    PJ_WEBSOCK_OP_BIN = 0x2,
    PJ_WEBSOCK_OP_CLOSE = 0x8,
    PJ_WEBSOCK_OP_PING = 0x9,
    PJ_WEBSOCK_OP_PONG = 0xA
} pj_websock_opcode;

typedef enum pj_websock_readystate {
    PJ_WEBSOCK_STATE_CONNECTING = 0,
    PJ_WEBSOCK_STATE_OPEN = 1,
    PJ_WEBSOCK_STATE_CLOSING = 2,
    PJ_WEBSOCK_STATE_CLOSED = 3
} pj_websock_readystate;

typedef struct pj_websock pj_websock;

/* 24 bytes */
typedef struct pj_websock_cb {
    void (*on_connect)(pj_websock *ws, pj_status_t status);
    void (*on_rx_msg)(pj_websock *ws, pj_websock_opcode opcode, const void *data, pj_size_t len);
    void (*on_close)(pj_websock *ws, pj_uint16_t status_code, const pj_str_t *reason);
} pj_websock_cb;

/* 80 bytes */
typedef struct pj_websock_param {
    pj_ioqueue_t *ioqueue;
    pj_timer_heap_t *timer_heap;
    pj_websock_cb cb;
    void *user_data;
    pj_size_t max_rx_msg_size;
    pj_ssl_sock_param *ssl_param;
    unsigned ping_interval;
    pj_grp_lock_t *grp_lock;
} pj_websock_param;

/* 1048 bytes */
typedef struct pj_websock_connect_param {
    pj_http_headers extra_hdr;
    pj_str_t subprotocol;
} pj_websock_connect_param;

void pj_websock_param_default(pj_websock_param *param);
void pj_websock_connect_param_default(pj_websock_connect_param *cparam);
pj_status_t pj_websock_create(pj_pool_t *pool, const pj_websock_param *param, pj_websock **p_ws);
pj_status_t pj_websock_connect(pj_websock *ws, const pj_str_t *url, const pj_websock_connect_param *cparam);
pj_status_t pj_websock_send(pj_websock *ws, pj_websock_opcode opcode, const void *data, pj_size_t len);
pj_status_t pj_websock_close(pj_websock *ws, pj_uint16_t status_code, const pj_str_t *reason);
pj_websock_readystate pj_websock_get_state(const pj_websock *ws);
void *pj_websock_get_user_data(const pj_websock *ws);
pj_status_t pj_websock_set_user_data(pj_websock *ws, void *user_data);
pj_status_t pj_websock_destroy(pj_websock *ws);

#ifdef __cplusplus
}
#endif

#endif /* __PJLIB_UTIL_WEBSOCK_H__ */
