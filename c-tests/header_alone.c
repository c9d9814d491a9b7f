/* Compile-only check: the public header is self-contained C99.
 * Built with: cc -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -c
 * It includes nothing but the header, then uses its types and functions. */
#include <pjwebsock/websock.h>

static void on_connect(pj_websock *ws, pj_status_t status)
{
    (void)ws;
    (void)status;
}

static void on_rx_msg(pj_websock *ws, pj_websock_opcode op, const void *data, pj_size_t len)
{
    (void)ws;
    (void)op;
    (void)data;
    (void)len;
}

static void on_close(pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    (void)ws;
    (void)code;
    (void)reason;
}

int header_alone_check(void);

int header_alone_check(void)
{
    pj_websock_param param;
    pj_websock_connect_param cparam;
    pj_websock_close_info info;
    pj_websock *ws = 0;
    pj_status_t rc;
    char buf[64];
    pj_str_t msg;

    pj_websock_param_default(&param);
    param.cb.on_connect = &on_connect;
    param.cb.on_rx_msg = &on_rx_msg;
    param.cb.on_close = &on_close;
    pj_websock_connect_param_default(&cparam);
    cparam.extra_hdr.count = 1;
    cparam.extra_hdr.header[0].name.ptr = (char *)"X-A";
    cparam.extra_hdr.header[0].name.slen = 3;
    rc = pj_websock_create((pj_pool_t *)0, &param, &ws);
    if (rc != PJ_SUCCESS)
        return rc;
    (void)pj_websock_get_close_info(ws, &info);
    (void)pj_websock_get_state(ws);
    (void)pj_websock_get_buffered_amount(ws);
    msg = pj_websock_strerror(PJ_WEBSOCK_EHS_STATUS, buf, sizeof(buf));
    (void)msg;
    return pj_websock_destroy(ws) + (int)info.initiator + (int)PJ_WEBSOCK_OP_TEXT
           + (int)PJ_WEBSOCK_STATE_OPEN + (int)pj_websock_get_live_count();
}
