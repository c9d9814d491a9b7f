//! The `extern "C"` surface: argument checks, the panic guard, and
//! conversion between C and Rust types. Nothing else lives here.
//!
//! Conventions (apply to every function below):
//! - A `pj_websock *` is an `Arc<Client>` turned into a raw pointer by
//!   `pj_websock_create` and released by `pj_websock_destroy`; `handle()`
//!   is the one place that turns it back.
//! - NULL or otherwise invalid arguments return `PJ_EINVAL`; a panic never
//!   crosses into C: the entry point returns `PJ_EBUG` instead.
//! - Output parameters are written only on success.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, Client, ConnectRequest};
use crate::ffi::types::*;
use crate::net::evloop;
use crate::net::url::WsUrl;
use crate::proto::frame::OpCode;
use crate::status::*;

/// The opcode parameter as C passes it: a plain int that may hold any
/// value, so it is checked before it becomes an enum (named
/// `pj_websock_opcode` in the header).
pub type OpcodeArg = c_int;

/// Maximum number of extra headers upstream sends (we send all 32).
#[cfg(not(pjws_have_pj_websock))]
pub const PJ_WEBSOCK_MAX_HEADERS: c_uint = 16;
/// Default and upstream's maximum received message size.
#[cfg(not(pjws_have_pj_websock))]
pub const PJ_WEBSOCK_MAX_RX_MSG_SIZE: c_uint = 256 * 1024;
/// Upstream's receive buffer size (kept for source compatibility).
#[cfg(not(pjws_have_pj_websock))]
pub const PJ_WEBSOCK_RX_BUF_SIZE: c_uint = 64 * 1024;
/// Upstream's send buffer size (kept for source compatibility; no limit here).
#[cfg(not(pjws_have_pj_websock))]
pub const PJ_WEBSOCK_TX_BUF_SIZE: c_uint = 64 * 1024;
/// Default ping interval in seconds.
#[cfg(not(pjws_have_pj_websock))]
pub const PJ_WEBSOCK_DEFAULT_PING_INTERVAL: c_uint = 30;

macro_rules! guard {
    ($fallback:expr, $body:block) => {
        match catch_unwind(AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(_) => $fallback,
        }
    };
}

/// A borrowed `Arc<Client>` behind a `pj_websock *` (no refcount change).
struct Handle(ManuallyDrop<Arc<Client>>);

impl Deref for Handle {
    type Target = Arc<Client>;
    fn deref(&self) -> &Arc<Client> {
        &self.0
    }
}

/// # Safety
/// `ws` must be NULL or a pointer returned by `pj_websock_create` and not
/// yet destroyed.
unsafe fn handle(ws: *const pj_websock) -> Option<Handle> {
    if ws.is_null() {
        None
    } else {
        Some(Handle(ManuallyDrop::new(Arc::from_raw(
            ws as *const Client,
        ))))
    }
}

/// Borrows a `pj_str_t` as bytes; None when it is malformed.
unsafe fn str_bytes<'a>(s: &pj_str_t) -> Option<&'a [u8]> {
    if s.slen < 0 {
        return None;
    }
    if s.slen == 0 {
        return Some(&[]);
    }
    if s.ptr.is_null() {
        return None;
    }
    Some(std::slice::from_raw_parts(
        s.ptr as *const u8,
        s.slen as usize,
    ))
}

/// Initialises `param` with defaults: everything zero except
/// `max_rx_msg_size` (256 KiB) and `ping_interval` (30 s).
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_param_default(param: *mut pj_websock_param) {
    if param.is_null() {
        return;
    }
    std::ptr::write_bytes(param, 0, 1);
    (*param).max_rx_msg_size = PJ_WEBSOCK_MAX_RX_MSG_SIZE as pj_size_t;
    (*param).ping_interval = PJ_WEBSOCK_DEFAULT_PING_INTERVAL;
}

/// Initialises `cparam` to all zero (no extra headers, no subprotocol).
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_connect_param_default(cparam: *mut pj_websock_connect_param) {
    if !cparam.is_null() {
        std::ptr::write_bytes(cparam, 0, 1);
    }
}

/// Creates an instance in the CLOSED state and stores it in `*p_ws`.
///
/// `param` is copied (callbacks, user data, sizes).
///
/// With `param->ioqueue` NULL the library's own event-loop thread drives
/// the connection and runs the callbacks; `pool`, `timer_heap` and
/// `grp_lock` may be NULL and are not used.
///
/// With `param->ioqueue` and `param->timer_heap` set (pjlib mode), the
/// socket is registered with that ioqueue, timers go to that timer heap,
/// and every callback runs inside the application's `pj_ioqueue_poll()` /
/// `pj_timer_heap_poll()`; callbacks of one instance never overlap. The
/// fixed instance record comes from a pool created from `pool`'s factory
/// (so `pool` is required); `grp_lock`, when given, gets a reference and a
/// destroy handler, else the instance creates its own.
///
/// Returns `PJ_SUCCESS`; `PJ_EINVAL` when `param` or `p_ws` is NULL, or in
/// pjlib mode without `timer_heap` or `pool`; `PJ_ENOTSUP` when `ioqueue`
/// is given but pjlib is not in the process.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_create(
    pool: *mut pj_pool_t,
    param: *const pj_websock_param,
    p_ws: *mut *mut pj_websock,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        if param.is_null() || p_ws.is_null() {
            return PJ_EINVAL;
        }
        crate::pjlib::register_strerror();
        match Client::new(pool, &*param) {
            Ok(c) => {
                *p_ws = Arc::into_raw(c) as *mut pj_websock;
                PJ_SUCCESS
            }
            Err(e) => e,
        }
    })
}

/// Starts connecting to `url` (ws:// or wss://). Never blocks: name
/// resolution, TCP connect and the opening handshake happen in the
/// background and end with `on_connect`.
///
/// `cparam` (may be NULL) supplies extra headers (all `count` ≤ 32 are
/// sent) and the offered subprotocol(s).
///
/// Returns `PJ_SUCCESS` when the attempt started; `PJ_EINVAL` for a NULL
/// argument, a malformed URL (other schemes, userinfo, fragment, bad port),
/// a header name or value with CR/LF, or an extra header named Host,
/// Upgrade, Connection or Sec-WebSocket-*; `PJ_EINVALIDOP` unless CLOSED.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_connect(
    ws: *mut pj_websock,
    url: *const pj_str_t,
    cparam: *const pj_websock_connect_param,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let (Some(c), false) = (handle(ws), url.is_null()) else {
            return PJ_EINVAL;
        };
        let Some(url) = str_bytes(&*url) else {
            return PJ_EINVAL;
        };
        let Ok(url) = WsUrl::parse(url) else {
            return PJ_EINVAL;
        };
        let sp = c.ssl_param();
        let ssl_param = if url.secure && !sp.is_null() {
            Some(read_ssl_param(sp))
        } else {
            None
        };
        let mut req = ConnectRequest {
            url,
            subprotocols: None,
            extra: Vec::new(),
            ssl_param,
        };
        if let Some(cp) = cparam.as_ref() {
            let Some(sp) = str_bytes(&cp.subprotocol) else {
                return PJ_EINVAL;
            };
            if !sp.is_empty() {
                req.subprotocols = Some(sp.to_vec());
            }
            let n = cp.extra_hdr.count as usize;
            if n > cp.extra_hdr.header.len() {
                return PJ_EINVAL;
            }
            for h in &cp.extra_hdr.header[..n] {
                let (Some(name), Some(value)) = (str_bytes(&h.name), str_bytes(&h.value)) else {
                    return PJ_EINVAL;
                };
                req.extra.push((name.to_vec(), value.to_vec()));
            }
        }
        c.connect(req)
    })
}

/// Queues one message and returns at once; it is copied, so `data` may be
/// reused immediately. Messages leave in call order. (One exception to
/// "at once": with the library's own loop thread, a sender in a burst of
/// sends yields its CPU once after a write if more than 1 MiB of incoming
/// data waits unread, so that a loop thread sharing the core catches up.)
///
/// `opcode` is `PJ_WEBSOCK_OP_TEXT` (valid UTF-8), `PJ_WEBSOCK_OP_BIN`, or
/// `PJ_WEBSOCK_OP_PING` / `PJ_WEBSOCK_OP_PONG` (at most 125 bytes). `data`
/// may be NULL when `len` is 0. No size limit other than memory.
///
/// Returns `PJ_SUCCESS`; `PJ_EINVAL` for NULL ws, another opcode, an
/// oversized control frame, invalid UTF-8 in TEXT, or NULL data with len >
/// 0; `PJ_EINVALIDOP` unless OPEN; `PJ_EBUSY` when the bytes still queued
/// plus this message's frame would exceed the high-water mark
/// (`pj_websock_set_max_buffered()`, default 64 MiB), in which case nothing
/// is queued (a message larger than the mark is accepted into an empty
/// queue).
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_send(
    ws: *mut pj_websock,
    opcode: OpcodeArg,
    data: *const c_void,
    len: pj_size_t,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        let op = match opcode {
            0x1 => OpCode::Text,
            0x2 => OpCode::Bin,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return PJ_EINVAL,
        };
        if data.is_null() && len > 0 {
            return PJ_EINVAL;
        }
        if op.is_control() && len > 125 {
            return PJ_EINVAL;
        }
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(data as *const u8, len)
        };
        if op == OpCode::Text && simdutf8::basic::from_utf8(bytes).is_err() {
            return PJ_EINVAL;
        }
        c.send(op, bytes)
    })
}

/// Starts the closing handshake: the close frame is queued after the data
/// already accepted; `on_close` follows once the peer answered and closed
/// TCP, or the close timeout (default 5 s) expired. Messages that still
/// arrive before the peer's close frame are delivered.
///
/// `status_code` is 1000-1003, 1007-1014 or 3000-4999, or 0 for a close
/// frame with no body; `reason` (may be NULL) is UTF-8 of at most 123 bytes
/// and must be empty with code 0. While CONNECTING, the attempt is aborted
/// and `on_connect` reports `PJ_ECANCELLED`.
///
/// Returns `PJ_SUCCESS`; `PJ_EINVAL` for bad arguments; `PJ_EINVALIDOP` when
/// already CLOSING or CLOSED.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_close(
    ws: *mut pj_websock,
    status_code: pj_uint16_t,
    reason: *const pj_str_t,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        let reason: &[u8] = match reason.as_ref() {
            None => &[],
            Some(r) => match str_bytes(r) {
                Some(b) => b,
                None => return PJ_EINVAL,
            },
        };
        if !client::valid_close(status_code, reason) {
            return PJ_EINVAL;
        }
        c.close(status_code, reason)
    })
}

/// The instance's state; `PJ_WEBSOCK_STATE_CLOSED` for NULL.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_state(ws: *const pj_websock) -> pj_websock_readystate {
    guard!(pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED, {
        match handle(ws) {
            Some(c) => c.state(),
            None => pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED,
        }
    })
}

/// The application data; NULL for NULL.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_user_data(ws: *const pj_websock) -> *mut c_void {
    guard!(std::ptr::null_mut(), {
        match handle(ws) {
            Some(c) => c.user_data(),
            None => std::ptr::null_mut(),
        }
    })
}

/// Replaces the application data. Returns `PJ_EINVAL` for NULL ws.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_user_data(
    ws: *mut pj_websock,
    user_data: *mut c_void,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        c.set_user_data(user_data);
        PJ_SUCCESS
    })
}

/// Destroys the instance: the connection, if any, is dropped without a
/// close handshake and no callback is made for it.
///
/// After this returns no callback starts for `ws` and its user data is
/// never touched again. From another thread, it waits for a callback of
/// `ws` that is running to return, so do not hold a lock that your
/// callbacks take while calling it; from inside a callback of `ws` it
/// returns at once and the teardown completes when the callback returns.
///
/// Returns `PJ_SUCCESS`, or `PJ_EINVAL` for NULL.
#[cfg(not(pjws_have_pj_websock))]
#[no_mangle]
pub unsafe extern "C" fn pj_websock_destroy(ws: *mut pj_websock) -> pj_status_t {
    guard!(PJ_EBUG, {
        if ws.is_null() {
            return PJ_EINVAL;
        }
        let c = Arc::from_raw(ws as *const Client);
        c.destroy();
        drop(c);
        PJ_SUCCESS
    })
}

// ----- Extension API (not in upstream pjlib-util) ------------------------

/// How the last connection ended (valid once `on_close` was called, or
/// after a failed connect). Returns `PJ_EINVAL` for NULL arguments.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_close_info(
    ws: *const pj_websock,
    info: *mut pj_websock_close_info,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        if info.is_null() {
            return PJ_EINVAL;
        }
        *info = c.close_info();
        PJ_SUCCESS
    })
}

/// Bytes accepted by `pj_websock_send()` but not yet written to the socket
/// (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_buffered_amount(ws: *const pj_websock) -> pj_size_t {
    guard!(0, {
        match handle(ws) {
            Some(c) => c.buffered_amount(),
            None => 0,
        }
    })
}

/// Sets the send-queue high-water mark in bytes (default 64 MiB):
/// `pj_websock_send()` returns `PJ_EBUSY` rather than let the bytes queued
/// exceed it. A single message larger than the mark is accepted into an
/// empty queue.
///
/// The default lets bursts queue without `PJ_EBUSY`. A sender that
/// produces faster than the network takes (bulk uploads, replaying a file)
/// is faster with a small mark, e.g. 256 KiB, waiting on `PJ_EBUSY` with
/// `pj_websock_wait_buffered()`: the kernel's socket buffer keeps the
/// connection busy meanwhile, and a short queue stays in the CPU cache (a
/// queue of many MiB costs up to 1.5x the CPU per message).
/// Returns `PJ_EINVAL` for NULL or 0.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_max_buffered(
    ws: *mut pj_websock,
    bytes: pj_size_t,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        if bytes == 0 {
            return PJ_EINVAL;
        }
        c.set_max_buffered(bytes);
        PJ_SUCCESS
    })
}

/// Waits until at most `at_most` bytes are queued for sending (see
/// `pj_websock_get_buffered_amount()`), for at most `timeout_ms`
/// milliseconds (0: do not wait). The way for a sender that got
/// `PJ_EBUSY` to wait for room without sleeping blindly: the call returns
/// as soon as the event loop's writes bring the queue down to the level.
/// Sends held back to be coalesced into one write go out at once.
///
/// `pj_websock_send()` accepts a message when the queue is empty or the
/// message's frame (its length plus at most 14 bytes of header) fits under
/// the high-water mark: to wait for room for a message of `len` bytes,
/// `at_most` is `mark - len - 14`, or 0 when the message is that large.
///
/// In poll mode the calling thread runs the loop meanwhile, as
/// `pj_websock_poll()` does, and at least once even when it need not wait
/// (without waiting then): callbacks run inside this call (if another
/// thread is polling, the call waits for its progress instead). In thread
/// mode and with a pjlib ioqueue another thread drives the connection;
/// with an ioqueue polled only by the calling thread, nothing drains the
/// queue and the call times out. `pj_websock_destroy()` from another
/// thread ends the wait (the call must have begun before it).
///
/// Returns `PJ_SUCCESS` once at most `at_most` bytes are queued,
/// `PJ_ETIMEDOUT` when the time ran out first, `PJ_EINVALIDOP` when there
/// is no open or closing connection (also when it ends during the wait:
/// `on_close` tells how) or when called where waiting would stop the
/// loop that drains the queue (from a callback, or on the library's event
/// thread), `PJ_EINVAL` for NULL.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_wait_buffered(
    ws: *mut pj_websock,
    at_most: pj_size_t,
    timeout_ms: c_uint,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        // Holds the instance while waiting, should destroy come meanwhile.
        let c: Arc<Client> = Arc::clone(&c);
        c.wait_buffered(at_most, Duration::from_millis(timeout_ms.into()))
    })
}

/// Sets the time allowed for name resolution, TCP connect, TLS and the
/// opening handshake together (default 30000 ms), for the next connect.
/// When the host has several addresses they are tried in turn; each but
/// the last gets its share of the time left, at most 5 s and at most half
/// of it, so one black-holed address cannot use up the whole budget.
/// Returns `PJ_EINVAL` for NULL or 0.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_connect_timeout(
    ws: *mut pj_websock,
    msec: c_uint,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        if msec == 0 {
            return PJ_EINVAL;
        }
        c.set_connect_timeout(Duration::from_millis(msec as u64));
        PJ_SUCCESS
    })
}

/// Sets how long the closing handshake may take (default 5000 ms).
/// Returns `PJ_EINVAL` for NULL or 0.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_close_timeout(
    ws: *mut pj_websock,
    msec: c_uint,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        if msec == 0 {
            return PJ_EINVAL;
        }
        c.set_close_timeout(Duration::from_millis(msec as u64));
        PJ_SUCCESS
    })
}

/// Sets the ping interval in milliseconds (0 = off), overriding
/// `param->ping_interval`; applies at once to an open connection. When
/// nothing at all arrives within one interval after a ping, the connection
/// is failed (`on_close` with code 0, status `PJ_WEBSOCK_EPINGTIMEOUT`).
/// Returns `PJ_EINVAL` for NULL.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_ping_interval_ms(
    ws: *mut pj_websock,
    msec: c_uint,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        c.set_ping_interval(if msec == 0 {
            None
        } else {
            Some(Duration::from_millis(msec as u64))
        });
        PJ_SUCCESS
    })
}

/// The HTTP status of the last handshake response (101 when open, e.g. 401
/// after `PJ_WEBSOCK_EHS_STATUS`), 0 when none arrived or for NULL.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_http_status(ws: *const pj_websock) -> c_int {
    guard!(0, {
        match handle(ws) {
            Some(c) => c.http_response().0 as c_int,
            None => 0,
        }
    })
}

/// Copies the raw head (status line and headers) of a rejected handshake
/// response into `buf` (NUL-terminated, truncated to `size` - 1 bytes) and
/// returns its full length; -1 for NULL ws.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_http_response(
    ws: *const pj_websock,
    buf: *mut c_char,
    size: pj_size_t,
) -> pj_ssize_t {
    guard!(-1, {
        let Some(c) = handle(ws) else { return -1 };
        let head = c.http_response().1;
        copy_out(&head, buf, size);
        head.len() as pj_ssize_t
    })
}

/// Copies the subprotocol the server selected into `buf` (NUL-terminated,
/// truncated to `size` - 1 bytes) and returns its length: 0 when none was
/// selected, -1 for NULL ws.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_subprotocol(
    ws: *const pj_websock,
    buf: *mut c_char,
    size: pj_size_t,
) -> pj_ssize_t {
    guard!(-1, {
        let Some(c) = handle(ws) else { return -1 };
        let p = c.subprotocol().unwrap_or_default();
        copy_out(p.as_bytes(), buf, size);
        p.len() as pj_ssize_t
    })
}

unsafe fn copy_out(src: &[u8], buf: *mut c_char, size: pj_size_t) {
    if buf.is_null() || size == 0 {
        return;
    }
    let n = src.len().min(size - 1);
    std::ptr::copy_nonoverlapping(src.as_ptr(), buf as *mut u8, n);
    *buf.add(n) = 0;
}

/// Describes `status` (libpjwebsock's codes, pjlib's common codes and OS
/// errors) into `buf`, NUL-terminated, and returns it as a `pj_str_t`. Has
/// the signature of pjlib's `pj_error_callback`, and is registered with
/// `pj_register_strerror()` when pjlib is in the process.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_strerror(
    status: pj_status_t,
    buf: *mut c_char,
    bufsize: pj_size_t,
) -> pj_str_t {
    guard!(pj_str_t { ptr: buf, slen: 0 }, {
        if buf.is_null() || bufsize == 0 {
            return pj_str_t { ptr: buf, slen: 0 };
        }
        let msg = describe(status).unwrap_or_else(|| format!("Unknown error {}", status));
        copy_out(msg.as_bytes(), buf, bufsize);
        pj_str_t {
            ptr: buf,
            slen: msg.len().min(bufsize - 1) as pj_ssize_t,
        }
    })
}

/// Reads an optional C string argument; Err for invalid UTF-8.
unsafe fn opt_cstr(p: *const c_char) -> Result<Option<String>, ()> {
    if p.is_null() {
        return Ok(None);
    }
    match std::ffi::CStr::from_ptr(p).to_str() {
        Ok("") => Ok(None),
        Ok(s) => Ok(Some(s.to_string())),
        Err(_) => Err(()),
    }
}

/// Sets the trusted CA certificates for wss:// (PEM file and/or a hashed
/// directory as made by `openssl rehash`), replacing the system store for
/// this instance. NULL for both restores the system store. Files are read
/// at the next connect, off the caller's thread; a file that cannot be
/// loaded fails that connect with `PJ_WEBSOCK_ETLS_CONFIG`.
/// Returns `PJ_EINVAL` for NULL ws.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_tls_ca(
    ws: *mut pj_websock,
    ca_file: *const c_char,
    ca_dir: *const c_char,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        let (Ok(f), Ok(d)) = (opt_cstr(ca_file), opt_cstr(ca_dir)) else {
            return PJ_EINVAL;
        };
        c.set_tls_ca(f, d);
        PJ_SUCCESS
    })
}

/// Sets the client certificate (PEM chain file) and private key (PEM file;
/// NULL = in the certificate file; `key_password` NULL for none) presented
/// for mutual TLS. NULL `cert_file` removes it. Returns `PJ_EINVAL` for
/// NULL ws.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_tls_cert(
    ws: *mut pj_websock,
    cert_file: *const c_char,
    key_file: *const c_char,
    key_password: *const c_char,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        let (Ok(cert), Ok(key), Ok(pw)) = (
            opt_cstr(cert_file),
            opt_cstr(key_file),
            opt_cstr(key_password),
        ) else {
            return PJ_EINVAL;
        };
        if cert.is_none() && key.is_some() {
            return PJ_EINVAL;
        }
        c.set_tls_cert(cert, key, pw);
        PJ_SUCCESS
    })
}

/// Adds a public-key pin: the SHA-256 of the server certificate's
/// SubjectPublicKeyInfo (DER), 32 bytes, as `openssl x509 -pubkey | openssl
/// pkey -pubin -outform der | openssl dgst -sha256` prints it. With pins
/// set, a wss:// server whose key matches none fails with
/// `PJ_WEBSOCK_ETLS_PIN` (in addition to normal verification). NULL
/// `sha256` removes all pins. Returns `PJ_EINVAL` for NULL ws.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_add_tls_pin(
    ws: *mut pj_websock,
    sha256: *const u8,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        let pin = if sha256.is_null() {
            None
        } else {
            let mut p = [0u8; 32];
            std::ptr::copy_nonoverlapping(sha256, p.as_mut_ptr(), 32);
            Some(p)
        };
        c.add_tls_pin(pin);
        PJ_SUCCESS
    })
}

/// Forces certificate verification on (`force` non-zero) even when
/// `param->ssl_param->verify_peer` is 0 — which is what
/// `pj_ssl_sock_param_default()` leaves it at. Returns `PJ_EINVAL` for NULL.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_tls_verify(
    ws: *mut pj_websock,
    force: pj_bool_t,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        let Some(c) = handle(ws) else {
            return PJ_EINVAL;
        };
        c.set_tls_force_verify(force != 0);
        PJ_SUCCESS
    })
}

/// OpenSSL's certificate verification result (`X509_V_*`, 0 = OK) of the
/// last failed wss:// handshake; 0 otherwise or for NULL.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_get_tls_verify_result(ws: *const pj_websock) -> c_int {
    guard!(0, {
        match handle(ws) {
            Some(c) => c.tls_verify_result(),
            None => 0,
        }
    })
}

/// Sends the library's log messages (level 1 error, 2 warning, 3 info, 4
/// debug; NUL-terminated text) to `func`, process-wide; NULL restores the
/// default: pjlib's log when pjlib is in the process, else warnings and
/// errors on standard error.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_set_log_func(
    func: Option<unsafe extern "C" fn(level: c_int, msg: *const c_char)>,
) {
    crate::log::set_func(func);
}

/// Number of instances created and not yet completely freed (teardown
/// finishes on the event thread shortly after `pj_websock_destroy()`).
#[no_mangle]
pub extern "C" fn pj_websock_get_live_count() -> c_uint {
    client::LIVE.load(Ordering::Relaxed) as c_uint
}

/// Chooses how the library's own event loop runs, process-wide. Call it
/// before the first `pj_websock_connect()` of an instance without an
/// ioqueue (the loop starts then, in thread mode unless this chose
/// otherwise). Returns `PJ_SUCCESS` when the loop runs in `mode` (calling
/// it again with the same mode is harmless), `PJ_EINVALIDOP` when the
/// loop already runs in the other mode, `PJ_EINVAL` for an unknown mode,
/// or the OS error if the loop cannot be created.
#[no_mangle]
pub extern "C" fn pj_websock_set_loop_mode(mode: c_int) -> pj_status_t {
    guard!(PJ_EBUG, {
        let want = match mode {
            0 => evloop::Mode::Thread,
            1 => evloop::Mode::Poll,
            _ => return PJ_EINVAL,
        };
        match evloop::init(want) {
            Ok(lp) if lp.mode() == want => PJ_SUCCESS,
            Ok(_) => PJ_EINVALIDOP,
            Err(e) => crate::status::from_os(e),
        }
    })
}

/// Poll mode (`PJ_WEBSOCK_LOOP_POLL`): runs the library's event loop on
/// the calling thread. Waits at most `timeout_ms` milliseconds (less when
/// a library timer is due sooner; 0 does not wait) for sockets to become
/// ready, then handles everything that is ready: received data, queued
/// sends, connects, timers, teardown after `pj_websock_destroy()`. The
/// callbacks run inside this call. `*p_count` (may be NULL) receives the
/// number of events handled, 0 when the wait timed out.
///
/// One thread polls at a time: a second thread polling concurrently gets
/// `PJ_EBUSY`, a call from inside a callback `PJ_EINVALIDOP`, and so does
/// a call when the loop is not in poll mode. The other API functions may
/// still be called from any thread; a call that needs the loop (connect,
/// destroy's teardown) takes effect at the next poll.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_poll(timeout_ms: c_uint, p_count: *mut c_uint) -> pj_status_t {
    guard!(PJ_EBUG, {
        poll_for(Duration::from_millis(timeout_ms.into()), p_count)
    })
}

/// Same as `pj_websock_poll()` with the timeout in microseconds, for
/// applications that pace their sends more finely than a millisecond
/// (say, the next of many streams' 20 ms audio frames is due in 300 µs):
/// the wait ends when sockets become ready or at that instant, not at the
/// next whole millisecond. On Linux before 5.11 (no `epoll_pwait2`) the
/// wait is rounded up to a whole millisecond; it never ends early.
#[no_mangle]
pub unsafe extern "C" fn pj_websock_poll_us(
    timeout_us: c_uint,
    p_count: *mut c_uint,
) -> pj_status_t {
    guard!(PJ_EBUG, {
        poll_for(Duration::from_micros(timeout_us.into()), p_count)
    })
}

/// `pj_websock_poll()` and `pj_websock_poll_us()` (inside their guard).
unsafe fn poll_for(timeout: Duration, p_count: *mut c_uint) -> pj_status_t {
    let Some(lp) = evloop::try_get() else {
        return PJ_EINVALIDOP;
    };
    match lp.poll(timeout) {
        Ok(n) => {
            if !p_count.is_null() {
                *p_count = n.min(c_uint::MAX as usize) as c_uint;
            }
            PJ_SUCCESS
        }
        Err(evloop::PollError::Busy) => PJ_EBUSY,
        Err(_) => PJ_EINVALIDOP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::resume_unwind;

    /// An instance on the own loop, without pings, with the callbacks
    /// `set` puts in its parameters.
    #[cfg(not(pjws_have_pj_websock))]
    fn create_with(set: impl FnOnce(&mut pj_websock_cb)) -> *mut pj_websock {
        let mut p = std::mem::MaybeUninit::<pj_websock_param>::uninit();
        let mut ws = std::ptr::null_mut();
        // SAFETY: param_default initialises the whole struct.
        unsafe {
            pj_websock_param_default(p.as_mut_ptr());
            let mut p = p.assume_init();
            p.ping_interval = 0;
            set(&mut p.cb);
            assert_eq!(
                pj_websock_create(std::ptr::null_mut(), &p, &mut ws),
                PJ_SUCCESS
            );
        }
        ws
    }

    /// Test peer: reads an upgrade request from `s`; returns its key.
    #[cfg(not(pjws_have_pj_websock))]
    fn read_upgrade_request(s: &mut std::net::TcpStream) -> String {
        use std::io::Read;
        let mut req = vec![];
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "request cut short");
            req.push(b[0]);
        }
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "));
        key.unwrap().to_string()
    }

    /// Test peer: reads an upgrade request from `s` and answers 101.
    #[cfg(not(pjws_have_pj_websock))]
    fn accept_upgrade(s: &mut std::net::TcpStream) {
        use std::io::Write;
        let key = read_upgrade_request(s);
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            crate::proto::handshake::accept_key(&key)
        );
        s.write_all(resp.as_bytes()).unwrap();
    }

    /// Checks `f` every `every` until it holds; fails after 20 s.
    #[cfg(not(pjws_have_pj_websock))]
    fn wait_until(what: &str, every: Duration, f: &dyn Fn() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
            std::thread::sleep(every);
        }
    }

    /// Test peer: reads `s` until EOF; returns how many bytes came.
    #[cfg(not(pjws_have_pj_websock))]
    fn count_until_eof(mut s: impl std::io::Read) -> usize {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    }

    /// Starts connecting `ws` to `url`.
    #[cfg(not(pjws_have_pj_websock))]
    fn connect_to(ws: *mut pj_websock, url: &str) {
        let u = pj_str_t {
            ptr: url.as_ptr() as *mut c_char,
            slen: url.len() as pj_ssize_t,
        };
        // SAFETY: live instance, valid url for the call.
        assert_eq!(
            unsafe { pj_websock_connect(ws, &u, std::ptr::null()) },
            PJ_SUCCESS
        );
    }

    /// Calls `f` behind the guard the entry points use.
    fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
        guard!(fallback, { f() })
    }

    #[test]
    fn guard_returns_the_fallback_instead_of_unwinding() {
        // Every fallback an entry point uses, with `panic!` (panic hook
        // runs) and `resume_unwind` (no hook).
        let boom = || -> pj_status_t { panic!("boom") };
        assert_eq!(guarded(PJ_EBUG, boom), PJ_EBUG);
        assert_eq!(guarded(PJ_EBUG, || resume_unwind(Box::new(1u8))), PJ_EBUG);
        assert_eq!(
            guarded(pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED, || {
                panic!("in get_state")
            }),
            pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED
        );
        assert!(guarded(std::ptr::null_mut::<c_void>(), || panic!("x")).is_null());
        assert_eq!(guarded::<pj_size_t>(0, || panic!("x")), 0);
        assert_eq!(guarded::<pj_ssize_t>(-1, || panic!("x")), -1);
        assert_eq!(guarded::<c_int>(0, || panic!("x")), 0);
        let mut buf = [0 as c_char; 8];
        let s = guarded(
            pj_str_t {
                ptr: buf.as_mut_ptr(),
                slen: 0,
            },
            || panic!("in strerror"),
        );
        assert_eq!((s.ptr, s.slen), (buf.as_mut_ptr(), 0));
        // Without a panic the body's value comes through, and `return` in
        // the body returns that value (as the entry points use it).
        assert_eq!(guarded(PJ_EBUG, || PJ_EINVAL), PJ_EINVAL);
        let early = |x: i32| -> pj_status_t {
            guard!(PJ_EBUG, {
                if x < 0 {
                    return PJ_EINVAL;
                }
                if x == 0 {
                    resume_unwind(Box::new("zero"));
                }
                PJ_SUCCESS
            })
        };
        assert_eq!(
            (early(-1), early(0), early(1)),
            (PJ_EINVAL, PJ_EBUG, PJ_SUCCESS)
        );
        // A panic holding a lock leaves it usable (poisoned locks are
        // entered anyway by the client), and the thread goes on.
        let m = std::sync::Mutex::new(1);
        let r = guarded(PJ_EBUG, || {
            let _g = m.lock().unwrap();
            panic!("while locked")
        });
        assert_eq!(r, PJ_EBUG);
        assert_eq!(*m.lock().unwrap_or_else(|e| e.into_inner()), 1);
    }

    /// Every `extern "C"` entry point in this file runs its body behind
    /// `guard!`, with `PJ_EBUG` as the fallback of those returning a
    /// status, except the few that cannot panic (listed with the reason).
    #[test]
    fn every_entry_point_is_guarded() {
        const UNGUARDED: [&str; 4] = [
            "pj_websock_param_default",         // write_bytes and two stores
            "pj_websock_connect_param_default", // write_bytes
            "pj_websock_set_log_func",          // one atomic store
            "pj_websock_get_live_count",        // one atomic load
        ];
        let src = include_str!("api.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        let mut seen = vec![];
        for (at, _) in src.match_indices("extern \"C\" fn pj_websock_") {
            let rest = &src[at + "extern \"C\" fn ".len()..];
            let name = &rest[..rest.find('(').unwrap()];
            // The signature ends at the body's opening brace.
            let sig_end = rest.find(" {\n").unwrap();
            let sig = &rest[..sig_end];
            let body = rest[sig_end + 3..].trim_start();
            seen.push(name);
            if UNGUARDED.contains(&name) {
                assert!(!body.starts_with("guard!"), "{name} is guarded now");
                continue;
            }
            assert!(body.starts_with("guard!("), "{name} is not guarded");
            if sig.ends_with("-> pj_status_t") {
                assert!(body.starts_with("guard!(PJ_EBUG, {"), "{name}");
            }
        }
        assert!(seen.len() >= 27, "{seen:?}");
        for n in UNGUARDED {
            assert!(seen.contains(&n), "{n}");
        }
    }

    /// End to end through the C API, with the library's own event loop:
    /// when the loop contains a panic in one connection's handler
    /// (`Handler::on_panic`, which the loop calls after catching it), that
    /// connection alone fails with `PJ_EBUG` — a connecting one through
    /// `on_connect`, an open one through `on_close` (code 0) — its socket
    /// is closed, the instance stays usable, and another open connection
    /// carries on.
    #[cfg(not(pjws_have_pj_websock))]
    #[test]
    fn loop_panic_fails_only_that_connection() {
        use crate::net::evloop::{self, Handler};
        use crate::proto::frame::{apply_mask, decode_header};
        use std::io::{ErrorKind, Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::Mutex;
        use std::time::Instant;

        /// (instance, callback, status or code or opcode, data).
        type Call = (usize, &'static str, i64, Vec<u8>);
        static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());
        fn record(ws: *mut pj_websock, what: &'static str, v: i64, data: Vec<u8>) {
            CALLS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((ws as usize, what, v, data));
        }
        unsafe extern "C" fn on_connect(ws: *mut pj_websock, status: pj_status_t) {
            record(ws, "connect", status.into(), vec![]);
        }
        unsafe extern "C" fn on_rx_msg(
            ws: *mut pj_websock,
            opcode: pj_websock_opcode,
            data: *const c_void,
            len: pj_size_t,
        ) {
            let d = std::slice::from_raw_parts(data as *const u8, len).to_vec();
            record(ws, "rx", opcode as i64, d);
        }
        unsafe extern "C" fn on_close(ws: *mut pj_websock, code: pj_uint16_t, _r: *const pj_str_t) {
            record(ws, "close", code.into(), vec![]);
        }
        let calls_of = |ws: *mut pj_websock| -> Vec<(&'static str, i64, Vec<u8>)> {
            let calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
            calls
                .iter()
                .filter(|c| c.0 == ws as usize)
                .map(|c| (c.1, c.2, c.3.clone()))
                .collect()
        };
        let wait_calls = |ws: *mut pj_websock, n: usize| {
            let t = Instant::now();
            loop {
                let got = calls_of(ws);
                if got.len() >= n {
                    return got;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "{got:?}");
                std::thread::sleep(Duration::from_millis(2));
            }
        };

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("ws://127.0.0.1:{}/p", listener.local_addr().unwrap().port());
        let accept = || -> TcpStream {
            let t = Instant::now();
            loop {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        return s;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        assert!(t.elapsed() < Duration::from_secs(10), "no connection");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        // The peer sees the connection end (FIN or reset), nothing hangs.
        let sees_end = |s: &mut TcpStream| {
            let mut b = [0u8; 256];
            loop {
                match s.read(&mut b) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("connection not closed: {e}"),
                }
            }
        };
        let create = || {
            create_with(|cb| {
                cb.on_connect = Some(on_connect);
                cb.on_rx_msg = Some(on_rx_msg);
                cb.on_close = Some(on_close);
            })
        };
        let connect = |ws: *mut pj_websock| connect_to(ws, &url);
        // What the loop does after catching a panic in ws's handler.
        let fail_on_loop = |ws: *mut pj_websock| {
            // SAFETY: live instance.
            let c: Arc<Client> = Arc::clone(&unsafe { handle(ws) }.unwrap());
            evloop::get().unwrap().post(move |ctx| c.on_panic(ctx));
        };
        let state = |ws: *mut pj_websock| unsafe { pj_websock_get_state(ws) };
        let info = |ws: *mut pj_websock| {
            let mut i = std::mem::MaybeUninit::uninit();
            // SAFETY: live instance, valid out pointer.
            assert_eq!(
                unsafe { pj_websock_get_close_info(ws, i.as_mut_ptr()) },
                PJ_SUCCESS
            );
            unsafe { i.assume_init() }
        };
        use pj_websock_readystate::*;

        // `a` waits for the handshake response, `b` is open.
        let (a, b, idle) = (create(), create(), create());
        connect(a);
        let mut sa = accept();
        read_upgrade_request(&mut sa);
        connect(b);
        let mut sb = accept();
        accept_upgrade(&mut sb);
        assert_eq!(wait_calls(b, 1), [("connect", PJ_SUCCESS.into(), vec![])]);
        assert_eq!(state(a), PJ_WEBSOCK_STATE_CONNECTING);
        assert_eq!(state(b), PJ_WEBSOCK_STATE_OPEN);

        // Connecting `a` fails with PJ_EBUG; `b` and `idle` hear nothing.
        fail_on_loop(a);
        assert_eq!(wait_calls(a, 1), [("connect", PJ_EBUG.into(), vec![])]);
        assert_eq!(state(a), PJ_WEBSOCK_STATE_CLOSED);
        assert_eq!(info(a).status, PJ_EBUG);
        sees_end(&mut sa);
        // A closed instance has no connection to fail.
        fail_on_loop(idle);
        assert_eq!(state(idle), PJ_WEBSOCK_STATE_CLOSED);

        // `b` still works both ways.
        sb.write_all(b"\x81\x05hello").unwrap();
        let got = wait_calls(b, 2);
        assert_eq!(got[1], ("rx", 1, b"hello".to_vec()));
        assert_eq!(
            unsafe { pj_websock_send(b, 2, b"ok".as_ptr().cast(), 2) },
            PJ_SUCCESS
        );
        let mut f = [0u8; 8];
        sb.read_exact(&mut f).unwrap();
        let (h, n) = decode_header(&f).unwrap().unwrap();
        let mut p = f[n..].to_vec();
        apply_mask(&mut p, h.mask.unwrap(), 0);
        assert_eq!((h.opcode, p.as_slice()), (2, &b"ok"[..]));

        // Then open `b` fails: on_close with code 0, status PJ_EBUG.
        fail_on_loop(b);
        assert_eq!(wait_calls(b, 3)[2], ("close", 0, vec![]));
        assert_eq!(state(b), PJ_WEBSOCK_STATE_CLOSED);
        let i = info(b);
        assert_eq!(
            (i.initiator, i.status),
            (
                pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_TRANSPORT,
                PJ_EBUG
            )
        );
        sees_end(&mut sb);

        // Each connection failed once, `idle` was never called, and the
        // failed instance connects again.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls_of(a).len(), 1);
        assert_eq!(calls_of(b).len(), 3);
        assert!(calls_of(idle).is_empty());
        connect(a);
        let mut sa = accept();
        read_upgrade_request(&mut sa);
        assert_eq!(state(a), PJ_WEBSOCK_STATE_CONNECTING);
        for ws in [a, b, idle] {
            // SAFETY: live instances, destroyed once.
            assert_eq!(unsafe { pj_websock_destroy(ws) }, PJ_SUCCESS);
        }
        sees_end(&mut sa);
        assert_eq!(calls_of(a).len(), 1, "destroy makes no callback");
    }

    /// Thread mode: a sender bursting small messages while more than
    /// 1 MiB of the peer's messages waits unread (on_rx_msg holds the loop
    /// thread) yields to the loop after its writes, dropping the instance
    /// lock mid-send; nothing is lost: the peer gets every byte sent, and
    /// every one of its messages arrives intact and in order.
    #[cfg(not(pjws_have_pj_websock))]
    #[test]
    fn burst_sender_yields_to_a_lagging_loop() {
        use crate::client::SENDER_YIELDS;
        use crate::proto::frame::masked_frame_len;
        use std::io::Write;
        use std::net::TcpListener;
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
        use std::sync::Mutex;
        use std::time::Instant;

        const FLOOD: usize = 64; // messages from the peer...
        const BIG: usize = 64 * 1024; // ...of this size: 4 MiB
        const SMALL: usize = 640;
        const SENDS: usize = 2000; // of this size, 1.3 MB in all
        static CONNECTED: AtomicI64 = AtomicI64::new(i64::MIN);
        static HOLD: AtomicBool = AtomicBool::new(true);
        static RX: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        let payload = |i: usize| -> Vec<u8> { (0..BIG).map(|k| (k * 7 + i * 13) as u8).collect() };

        unsafe extern "C" fn on_connect(_ws: *mut pj_websock, status: pj_status_t) {
            CONNECTED.store(status.into(), Ordering::SeqCst);
        }
        unsafe extern "C" fn on_rx_msg(
            _ws: *mut pj_websock,
            _op: pj_websock_opcode,
            data: *const c_void,
            len: pj_size_t,
        ) {
            let d = std::slice::from_raw_parts(data as *const u8, len).to_vec();
            RX.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            let t = Instant::now();
            while HOLD.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            HOLD.store(false, Ordering::SeqCst); // once, even if the test failed
        }
        let wait = |what: &str, f: &dyn Fn() -> bool| wait_until(what, Duration::from_millis(2), f);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://127.0.0.1:{}/p", listener.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            accept_upgrade(&mut s);
            // Reads (and counts) what the client sends while flooding it.
            let r = s.try_clone().unwrap();
            let reader = std::thread::spawn(move || count_until_eof(r));
            for i in 0..FLOOD {
                let mut f = vec![0x82, 127];
                f.extend_from_slice(&(BIG as u64).to_be_bytes());
                f.extend_from_slice(&payload(i));
                s.write_all(&f).unwrap();
            }
            reader.join().unwrap()
        });

        let ws = create_with(|cb| {
            cb.on_connect = Some(on_connect);
            cb.on_rx_msg = Some(on_rx_msg);
        });
        connect_to(ws, &url);
        wait("connect", &|| CONNECTED.load(Ordering::SeqCst) != i64::MIN);
        assert_eq!(CONNECTED.load(Ordering::SeqCst), i64::from(PJ_SUCCESS));
        // SAFETY: live instance.
        let c = unsafe { handle(ws) }.unwrap();
        let fd = c.socket_fd().unwrap();
        // A fixed 4 MiB receive buffer lets the flood pile up while the
        // loop thread is held (SO_RCVBUFFORCE past net.core.rmem_max where
        // the process may).
        let sz: libc::c_int = 4 * 1024 * 1024;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let mut got: libc::c_int = 0;
        let mut got_len = len;
        // SAFETY: valid fd, option values and lengths.
        unsafe {
            let v = &sz as *const _ as *const c_void;
            if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v, len);
            }
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut got_len,
            );
        }
        assert!(
            got >= 3 * 1024 * 1024,
            "receive buffer {got} bytes: too small for a 1 MiB backlog \
             (net.core.rmem_max too low and no CAP_NET_ADMIN)"
        );
        let unread = || crate::net::sock::unread(fd);
        wait("1 MiB unread", &|| unread() > 1024 * 1024);

        let before = SENDER_YIELDS.load(Ordering::SeqCst);
        let msg = [0x5au8; SMALL];
        for i in 0..SENDS {
            // SAFETY: live instance, valid buffer.
            let st = unsafe { pj_websock_send(ws, 2, msg.as_ptr().cast(), SMALL as pj_size_t) };
            assert_eq!(st, PJ_SUCCESS, "send {i}");
        }
        let yields = SENDER_YIELDS.load(Ordering::SeqCst) - before;
        HOLD.store(false, Ordering::SeqCst);
        assert!(
            yields > 0,
            "{SENDS} sends with {} bytes unread: no yield",
            unread()
        );

        wait("the flood", &|| RX.lock().unwrap().len() == FLOOD);
        for (i, m) in RX.lock().unwrap().iter().enumerate() {
            assert!(*m == payload(i), "message {i} differs");
        }
        // SAFETY: live instance.
        wait(
            "the queue to drain",
            &|| unsafe { pj_websock_get_buffered_amount(ws) } == 0,
        );
        // SAFETY: live instance, destroyed once.
        assert_eq!(unsafe { pj_websock_destroy(ws) }, PJ_SUCCESS);
        assert_eq!(server.join().unwrap(), SENDS * masked_frame_len(SMALL));
    }

    /// A sender that just filled a write is streaming: a pause longer
    /// than the burst gap (its thread was busy or preempted) does not end
    /// the burst, so its next small send waits for the coalescing deadline
    /// instead of going out in a write of its own. After a millisecond of
    /// quiet a lone send is written at once again. Every byte arrives.
    #[cfg(not(pjws_have_pj_websock))]
    #[test]
    fn streaming_sender_keeps_coalescing_across_a_pause() {
        use crate::proto::frame::masked_frame_len;
        use std::net::TcpListener;
        use std::sync::atomic::{AtomicI64, Ordering};
        use std::time::Instant;

        const SMALL: usize = 640;
        const BURST: usize = 250; // 160 KiB: one write of 128 KiB, then coalescing
        const ATTEMPTS: usize = 50;
        static CONNECTED: AtomicI64 = AtomicI64::new(i64::MIN);
        unsafe extern "C" fn on_connect(_ws: *mut pj_websock, status: pj_status_t) {
            CONNECTED.store(status.into(), Ordering::SeqCst);
        }
        let wait =
            |what: &str, f: &dyn Fn() -> bool| wait_until(what, Duration::from_micros(100), f);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://127.0.0.1:{}/p", listener.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            accept_upgrade(&mut s);
            count_until_eof(s)
        });
        let ws = create_with(|cb| cb.on_connect = Some(on_connect));
        connect_to(ws, &url);
        wait("connect", &|| CONNECTED.load(Ordering::SeqCst) != i64::MIN);
        assert_eq!(CONNECTED.load(Ordering::SeqCst), i64::from(PJ_SUCCESS));
        let msg = [0x3cu8; SMALL];
        // SAFETY (both): live instance, valid buffer.
        let send = || unsafe { pj_websock_send(ws, 2, msg.as_ptr().cast(), SMALL as pj_size_t) };
        let buffered = || unsafe { pj_websock_get_buffered_amount(ws) };
        let mut sent = 0usize;
        let mut checked = 0;
        for _ in 0..ATTEMPTS {
            // Quiet: the queue drained and no send for 2 ms.
            wait("the queue to drain", &|| buffered() == 0);
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(send(), PJ_SUCCESS);
            sent += 1;
            assert_eq!(
                buffered(),
                0,
                "a lone send after 2 ms of quiet was held back"
            );
            std::thread::sleep(Duration::from_millis(2));
            // A burst that fills a write, then a pause of 300 us (the burst
            // gap is 50 us), then one more send.
            let start = Instant::now();
            for i in 0..BURST {
                assert_eq!(send(), PJ_SUCCESS, "burst send {i}");
            }
            sent += BURST;
            while start.elapsed() < Duration::from_micros(300) {
                std::hint::spin_loop();
            }
            wait("the burst's deadline", &|| buffered() == 0);
            let paused = start.elapsed();
            assert_eq!(send(), PJ_SUCCESS);
            sent += 1;
            let queued = buffered();
            // The streaming window (1 ms from the burst's full write) only
            // covers this send if the thread was not held up for longer:
            // such attempts prove nothing and are not counted.
            if start.elapsed() < Duration::from_micros(800) && paused >= Duration::from_micros(300)
            {
                assert_eq!(
                    queued,
                    masked_frame_len(SMALL),
                    "a send {paused:?} into a streaming burst was not held for coalescing"
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 5,
            "only {checked} of {ATTEMPTS} attempts paused for 300-800 us (machine too busy)"
        );
        wait("the queue to drain", &|| buffered() == 0);
        // SAFETY: live instance, destroyed once.
        assert_eq!(unsafe { pj_websock_destroy(ws) }, PJ_SUCCESS);
        assert_eq!(server.join().unwrap(), sent * masked_frame_len(SMALL));
    }
}
