//! `#[repr(C)]` mirrors of the pjlib / pjlib-util types the API uses.
//!
//! Layouts must match pjproject's headers byte for byte (see ABI.md); the
//! tests at the bottom and `c-tests/test_abi.c` check every size and offset.
//!
//! The `cfg(not(pjws_*))` attributes never hide anything from Rust (those
//! cfgs are never set); cbindgen turns them into `#if !defined(<pjlib
//! include guard>)` so that the header can be included after pjlib's own
//! headers without redefining what they already declared.
#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_long, c_uint, c_ushort, c_void, size_t};

/// pjlib's status type: 0 is success, anything else an error code.
#[cfg(not(pjws_have_pj_types))]
pub type pj_status_t = c_int;
/// pjlib's boolean (0 false, non-zero true).
#[cfg(not(pjws_have_pj_types))]
pub type pj_bool_t = c_int;
#[cfg(not(pjws_have_pj_types))]
pub type pj_size_t = size_t;
#[cfg(not(pjws_have_pj_types))]
pub type pj_ssize_t = c_long;
#[cfg(not(pjws_have_pj_types))]
pub type pj_uint16_t = c_ushort;

/// A length-delimited string; `ptr` is not NUL-terminated.
#[cfg(not(pjws_have_pj_types))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_str_t {
    pub ptr: *mut c_char,
    pub slen: pj_ssize_t,
}

/// A time value: seconds and milliseconds.
#[cfg(not(pjws_have_pj_types))]
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct pj_time_val {
    pub sec: c_long,
    pub msec: c_long,
}

/// Opaque pjlib memory pool.
#[cfg(not(pjws_have_pj_types))]
pub struct pj_pool_t {
    _opaque: [u8; 0],
}
/// Opaque pjlib I/O queue.
#[cfg(not(pjws_have_pj_types))]
pub struct pj_ioqueue_t {
    _opaque: [u8; 0],
}
/// Opaque pjlib timer heap.
#[cfg(not(pjws_have_pj_types))]
pub struct pj_timer_heap_t {
    _opaque: [u8; 0],
}
/// Opaque pjlib group lock.
#[cfg(not(pjws_have_pj_types))]
pub struct pj_grp_lock_t {
    _opaque: [u8; 0],
}
/// pjlib's TLS socket settings (`pj/ssl_sock.h`); read by field offset.
#[cfg(not(pjws_have_pj_ssl_sock))]
pub struct pj_ssl_sock_param {
    _opaque: [u8; 0],
}

/// Maximum number of headers in `pj_http_headers`.
#[cfg(not(pjws_have_pj_http_client))]
pub const PJ_HTTP_HEADER_SIZE: c_uint = 32;

/// One HTTP header: name and value.
#[cfg(not(pjws_have_pj_http_client))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_http_header_elmt {
    pub name: pj_str_t,
    pub value: pj_str_t,
}

/// A list of HTTP headers (`count` entries of `header` are used).
#[cfg(not(pjws_have_pj_http_client))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_http_headers {
    pub count: c_uint,
    pub header: [pj_http_header_elmt; 32],
}

/// The WebSocket instance (opaque).
#[cfg(not(pjws_have_pj_websock))]
pub struct pj_websock {
    _opaque: [u8; 0],
}

/// WebSocket frame opcodes.
#[cfg(not(pjws_have_pj_websock))]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pj_websock_opcode {
    PJ_WEBSOCK_OP_CONT = 0x0,
    PJ_WEBSOCK_OP_TEXT = 0x1,
    PJ_WEBSOCK_OP_BIN = 0x2,
    PJ_WEBSOCK_OP_CLOSE = 0x8,
    PJ_WEBSOCK_OP_PING = 0x9,
    PJ_WEBSOCK_OP_PONG = 0xA,
}

/// Connection state.
#[cfg(not(pjws_have_pj_websock))]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pj_websock_readystate {
    PJ_WEBSOCK_STATE_CONNECTING = 0,
    PJ_WEBSOCK_STATE_OPEN = 1,
    PJ_WEBSOCK_STATE_CLOSING = 2,
    PJ_WEBSOCK_STATE_CLOSED = 3,
}

/// Application callbacks. Any of them may be NULL.
///
/// Callbacks of one instance never overlap and arrive in order; no
/// library lock is held while they run, so they may call any
/// `pj_websock_*` function, `pj_websock_destroy()` included.
#[cfg(not(pjws_have_pj_websock))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_websock_cb {
    /// The connect attempt finished: `PJ_SUCCESS` when the connection is
    /// open, otherwise why it failed (DNS, TCP, TLS, handshake, timeout).
    pub on_connect: Option<unsafe extern "C" fn(ws: *mut pj_websock, status: pj_status_t)>,
    /// A whole TEXT or BIN message arrived. `data` is valid only during
    /// the call. Pings and pongs are handled internally.
    pub on_rx_msg: Option<
        unsafe extern "C" fn(
            ws: *mut pj_websock,
            opcode: pj_websock_opcode,
            data: *const c_void,
            len: pj_size_t,
        ),
    >,
    /// The open connection ended. `status_code` is the peer's close code
    /// (1005 for a close frame without one); when the library failed the
    /// connection because the peer broke the protocol, the code it sent
    /// (1002, 1007 or 1009); 0 when the transport failed, the peer went
    /// silent or the close handshake timed out without a close frame.
    /// `reason` is valid only during the call. Called once per connection.
    pub on_close: Option<
        unsafe extern "C" fn(
            ws: *mut pj_websock,
            status_code: pj_uint16_t,
            reason: *const pj_str_t,
        ),
    >,
}

/// Instance settings for `pj_websock_create()`; initialise with
/// `pj_websock_param_default()`.
#[cfg(not(pjws_have_pj_websock))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_websock_param {
    /// pjlib I/O queue; NULL selects the library's own event loop.
    pub ioqueue: *mut pj_ioqueue_t,
    /// pjlib timer heap; NULL selects the library's own event loop.
    pub timer_heap: *mut pj_timer_heap_t,
    /// Callbacks (copied).
    pub cb: pj_websock_cb,
    /// Application data, see `pj_websock_get_user_data()`.
    pub user_data: *mut c_void,
    /// Largest message accepted from the peer; larger ones close the
    /// connection with 1009. 0 means the default (256 KiB).
    pub max_rx_msg_size: pj_size_t,
    /// TLS settings for wss:// (may be NULL).
    pub ssl_param: *mut pj_ssl_sock_param,
    /// Seconds between keep-alive pings, 0 = off (default 30).
    pub ping_interval: c_uint,
    /// pjlib group lock (may be NULL).
    pub grp_lock: *mut pj_grp_lock_t,
}

/// Per-connection settings for `pj_websock_connect()`; initialise with
/// `pj_websock_connect_param_default()`.
#[cfg(not(pjws_have_pj_websock))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pj_websock_connect_param {
    /// Extra request headers (all `count` ≤ 32 entries are sent).
    pub extra_hdr: pj_http_headers,
    /// Offered subprotocol(s), comma-separated; empty for none.
    pub subprotocol: pj_str_t,
}

/// How the library's own event loop runs (for instances created without
/// a pjlib ioqueue). See `pj_websock_set_loop_mode()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pj_websock_loop_mode {
    /// The library starts one thread that runs the loop and calls every
    /// callback (the default).
    PJ_WEBSOCK_LOOP_THREAD = 0,
    /// No thread is started: the application runs the loop by calling
    /// `pj_websock_poll()`, and the callbacks run inside that call, on the
    /// application's thread.
    PJ_WEBSOCK_LOOP_POLL = 1,
}

/// Who ended the connection (see `pj_websock_get_close_info()`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pj_websock_close_initiator {
    /// Not closed (yet).
    PJ_WEBSOCK_CLOSE_NONE = 0,
    /// `pj_websock_close()` started the close handshake.
    PJ_WEBSOCK_CLOSE_LOCAL = 1,
    /// The peer sent a close frame first.
    PJ_WEBSOCK_CLOSE_PEER = 2,
    /// TCP/TLS failed or ended without a close handshake.
    PJ_WEBSOCK_CLOSE_TRANSPORT = 3,
    /// Dead peer (no traffic after a ping) or close-handshake timeout.
    PJ_WEBSOCK_CLOSE_TIMEOUT = 4,
    /// We failed the connection because the peer broke the protocol.
    PJ_WEBSOCK_CLOSE_PROTOCOL = 5,
}

/// How the last connection ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pj_websock_close_info {
    /// Who or what ended it.
    pub initiator: pj_websock_close_initiator,
    /// Non-zero when close frames went both ways and TCP was then closed.
    pub clean: pj_bool_t,
    /// Close code we sent; 0 if none or an empty close body.
    pub code_sent: pj_uint16_t,
    /// Close code received; 0 if none, 1005 for an empty close body.
    pub code_received: pj_uint16_t,
    /// `PJ_SUCCESS` for a clean close, otherwise why it ended.
    pub status: pj_status_t,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_abi() {
        assert_eq!(size_of::<pj_str_t>(), 16);
        assert_eq!(size_of::<pj_time_val>(), 16);
        assert_eq!(size_of::<pj_http_header_elmt>(), 32);
        assert_eq!(size_of::<pj_http_headers>(), 1032);
        assert_eq!(offset_of!(pj_http_headers, header), 8);
        assert_eq!(size_of::<pj_websock_cb>(), 24);
        assert_eq!(size_of::<pj_websock_param>(), 80);
        assert_eq!(offset_of!(pj_websock_param, cb), 16);
        assert_eq!(offset_of!(pj_websock_param, user_data), 40);
        assert_eq!(offset_of!(pj_websock_param, max_rx_msg_size), 48);
        assert_eq!(offset_of!(pj_websock_param, ssl_param), 56);
        assert_eq!(offset_of!(pj_websock_param, ping_interval), 64);
        assert_eq!(offset_of!(pj_websock_param, grp_lock), 72);
        assert_eq!(size_of::<pj_websock_connect_param>(), 1048);
        assert_eq!(offset_of!(pj_websock_connect_param, subprotocol), 1032);
        assert_eq!(size_of::<pj_websock_opcode>(), 4);
        assert_eq!(size_of::<pj_websock_readystate>(), 4);
    }
}

/// The `pj_ssl_sock_param` fields libpjwebsock honours, read by offset
/// (pjproject 2.16-era layout, x86-64; see ABI.md).
#[derive(Clone, Debug, Default)]
pub struct SslParamView {
    pub proto: u32,
    pub ciphers: Vec<u16>,
    pub timeout: Option<std::time::Duration>,
    pub verify_peer: bool,
    pub server_name: Option<String>,
}

const SSL_PROTO_OFF: usize = 96;
const SSL_CIPHERS_NUM_OFF: usize = 128;
const SSL_CIPHERS_OFF: usize = 136;
const SSL_TIMEOUT_OFF: usize = 200;
const SSL_VERIFY_PEER_OFF: usize = 216;
const SSL_SERVER_NAME_OFF: usize = 224;

/// Reads the honoured fields of a `pj_ssl_sock_param`.
///
/// # Safety
/// `p` must point to a live `pj_ssl_sock_param` of the documented layout.
pub unsafe fn read_ssl_param(p: *const pj_ssl_sock_param) -> SslParamView {
    let base = p as *const u8;
    let rd_u32 = |off: usize| std::ptr::read_unaligned(base.add(off) as *const u32);
    let proto = rd_u32(SSL_PROTO_OFF);
    let n = rd_u32(SSL_CIPHERS_NUM_OFF) as usize;
    let cptr = std::ptr::read_unaligned(base.add(SSL_CIPHERS_OFF) as *const *const c_int);
    let ciphers = if n > 0 && !cptr.is_null() && n <= 1024 {
        std::slice::from_raw_parts(cptr, n)
            .iter()
            .map(|&c| c as u16)
            .collect()
    } else {
        Vec::new()
    };
    let tv = std::ptr::read_unaligned(base.add(SSL_TIMEOUT_OFF) as *const pj_time_val);
    let ms = tv.sec.max(0) as u64 * 1000 + tv.msec.max(0) as u64;
    let timeout = (ms > 0).then(|| std::time::Duration::from_millis(ms));
    let verify_peer =
        std::ptr::read_unaligned(base.add(SSL_VERIFY_PEER_OFF) as *const pj_bool_t) != 0;
    let sn = std::ptr::read_unaligned(base.add(SSL_SERVER_NAME_OFF) as *const pj_str_t);
    let server_name = if sn.slen > 0 && !sn.ptr.is_null() && sn.slen < 256 {
        let b = std::slice::from_raw_parts(sn.ptr as *const u8, sn.slen as usize);
        std::str::from_utf8(b).ok().map(str::to_string)
    } else {
        None
    };
    SslParamView {
        proto,
        ciphers,
        timeout,
        verify_peer,
        server_name,
    }
}
