// Compile-only check: the public header works from C++ (extern "C", no C-only
// constructs). Built with: g++ -std=c++11 -Wall -Wextra -Werror -Iinclude -c
#include <pjwebsock/websock.h>

#include <cstddef>
#include <cstring>

static_assert(sizeof(pj_websock_param) == 80, "pj_websock_param size");
static_assert(sizeof(pj_websock_connect_param) == 1048, "pj_websock_connect_param size");
static_assert(offsetof(pj_websock_param, ping_interval) == 64, "ping_interval offset");
static_assert(PJ_WEBSOCK_OP_BIN == 2, "opcode value");

namespace {

struct Session {
    int opened = 0;
    int messages = 0;
};

extern "C" void on_connect(pj_websock *ws, pj_status_t status)
{
    Session *s = static_cast<Session *>(pj_websock_get_user_data(ws));
    if (s && status == PJ_SUCCESS)
        s->opened = 1;
}

extern "C" void on_rx_msg(pj_websock *ws, pj_websock_opcode op, const void *, pj_size_t)
{
    Session *s = static_cast<Session *>(pj_websock_get_user_data(ws));
    if (s && (op == PJ_WEBSOCK_OP_TEXT || op == PJ_WEBSOCK_OP_BIN))
        s->messages++;
}

extern "C" void on_close(pj_websock *, pj_uint16_t, const pj_str_t *)
{
}

} // namespace

int header_cxx_check(const char *url);

int header_cxx_check(const char *url)
{
    Session session;
    pj_websock_param param;
    pj_websock_param_default(&param);
    param.cb.on_connect = on_connect;
    param.cb.on_rx_msg = on_rx_msg;
    param.cb.on_close = on_close;
    param.user_data = &session;

    pj_websock *ws = nullptr;
    pj_status_t rc = pj_websock_create(nullptr, &param, &ws);
    if (rc != PJ_SUCCESS)
        return rc;
    pj_str_t u;
    u.ptr = const_cast<char *>(url);
    u.slen = static_cast<pj_ssize_t>(std::strlen(url));
    rc = pj_websock_connect(ws, &u, nullptr);
    pj_websock_readystate state = pj_websock_get_state(ws);
    pj_websock_close_initiator who = PJ_WEBSOCK_CLOSE_NONE;
    pj_websock_close_info info;
    if (pj_websock_get_close_info(ws, &info) == PJ_SUCCESS)
        who = info.initiator;
    (void)pj_websock_set_connect_timeout(ws, 1000);
    (void)pj_websock_send(ws, PJ_WEBSOCK_OP_TEXT, "x", 1);
    (void)pj_websock_close(ws, 1000, nullptr);
    pj_websock_destroy(ws);
    return rc + static_cast<int>(state) + static_cast<int>(who);
}
