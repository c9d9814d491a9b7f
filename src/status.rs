//! Every status code the library returns, in one place.
//!
//! pjlib's own values are used where one fits; WebSocket-specific failures
//! live in the free pjlib error space starting at 570000
//! (`PJ_ERRNO_START_USER + PJ_ERRNO_SPACE_SIZE * 8`). OS errors are
//! reported as pjlib does: `PJ_STATUS_FROM_OS(errno)` = errno + 120000.

use crate::ffi::types::pj_status_t;

#[cfg(not(pjws_have_pj_errno))]
pub const PJ_SUCCESS: pj_status_t = 0;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EUNKNOWN: pj_status_t = 70001;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EPENDING: pj_status_t = 70002;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EINVAL: pj_status_t = 70004;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ENOMEM: pj_status_t = 70007;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EBUG: pj_status_t = 70008;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ETIMEDOUT: pj_status_t = 70009;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ETOOMANY: pj_status_t = 70010;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EBUSY: pj_status_t = 70011;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ENOTSUP: pj_status_t = 70012;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EINVALIDOP: pj_status_t = 70013;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ECANCELLED: pj_status_t = 70014;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EEOF: pj_status_t = 70016;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ETOOBIG: pj_status_t = 70017;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ERESOLVE: pj_status_t = 70018;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ETOOSMALL: pj_status_t = 70019;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EIGNORED: pj_status_t = 70020;
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_EGONE: pj_status_t = 70023;
/// Start of pjlib's OS error space: `PJ_STATUS_FROM_OS(e)` = e + this.
#[cfg(not(pjws_have_pj_errno))]
pub const PJ_ERRNO_START_SYS: pj_status_t = 120000;

/// First status code of libpjwebsock's own error space.
pub const PJ_WEBSOCK_ERRNO_START: pj_status_t = 570000;
/// The server answered the opening handshake with a status other than 101
/// (see `pj_websock_get_http_status()` for the response).
pub const PJ_WEBSOCK_EHS_STATUS: pj_status_t = 570001;
/// The handshake response is not valid HTTP/1.1.
pub const PJ_WEBSOCK_EHS_MALFORMED: pj_status_t = 570002;
/// The handshake response head exceeded 16 KiB.
pub const PJ_WEBSOCK_EHS_TOOLARGE: pj_status_t = 570003;
/// The handshake response lacks `Upgrade: websocket`.
pub const PJ_WEBSOCK_EHS_UPGRADE: pj_status_t = 570004;
/// The handshake response's Connection header lacks the `upgrade` token.
pub const PJ_WEBSOCK_EHS_CONNECTION: pj_status_t = 570005;
/// Sec-WebSocket-Accept is missing or does not match the key sent.
pub const PJ_WEBSOCK_EHS_ACCEPT: pj_status_t = 570006;
/// The server selected a subprotocol that was not offered.
pub const PJ_WEBSOCK_EHS_SUBPROTOCOL: pj_status_t = 570007;
/// The server selected an extension that was not offered.
pub const PJ_WEBSOCK_EHS_EXTENSION: pj_status_t = 570008;
/// The peer closed the connection before the handshake completed.
pub const PJ_WEBSOCK_ECONNCLOSED: pj_status_t = 570009;
/// The peer violated the protocol; the connection was closed with 1002.
pub const PJ_WEBSOCK_EPROTOCOL: pj_status_t = 570010;
/// The peer sent invalid UTF-8; the connection was closed with 1007.
pub const PJ_WEBSOCK_EUTF8: pj_status_t = 570011;
/// The peer's message exceeded `max_rx_msg_size`; closed with 1009.
pub const PJ_WEBSOCK_EMSGTOOBIG: pj_status_t = 570012;
/// Nothing arrived from the peer within a ping interval after a ping.
pub const PJ_WEBSOCK_EPINGTIMEOUT: pj_status_t = 570013;
/// The close handshake did not complete within the close timeout.
pub const PJ_WEBSOCK_ECLOSETIMEOUT: pj_status_t = 570014;
/// Connect and opening handshake did not complete within the connect timeout.
pub const PJ_WEBSOCK_ECONNECTTIMEOUT: pj_status_t = 570015;
/// The library's own event loop could not be started.
pub const PJ_WEBSOCK_ELOOP: pj_status_t = 570016;
/// The TLS handshake or a TLS record failed (alert, protocol error).
pub const PJ_WEBSOCK_ETLS: pj_status_t = 570020;
/// The server's certificate chain did not verify (see
/// `pj_websock_get_tls_verify_result()` for OpenSSL's reason).
pub const PJ_WEBSOCK_ETLS_VERIFY: pj_status_t = 570021;
/// The server's certificate is not valid for the host name or address.
pub const PJ_WEBSOCK_ETLS_NAME: pj_status_t = 570022;
/// The server's public key matches none of the pins.
pub const PJ_WEBSOCK_ETLS_PIN: pj_status_t = 570023;
/// The TLS handshake did not complete within `ssl_param->timeout`.
pub const PJ_WEBSOCK_ETLS_TIMEOUT: pj_status_t = 570024;
/// `ssl_param->proto` allows only versions older than TLS 1.2.
pub const PJ_WEBSOCK_ETLS_PROTO: pj_status_t = 570025;
/// The TLS settings are unusable (CA, certificate or key file, ciphers).
pub const PJ_WEBSOCK_ETLS_CONFIG: pj_status_t = 570026;

/// Converts an OS errno into a pjlib status.
pub fn from_os(errno: i32) -> pj_status_t {
    if errno == 0 {
        0
    } else {
        PJ_ERRNO_START_SYS + errno
    }
}

/// The OS error number a status carries (the inverse of `from_os`).
pub fn to_os(status: pj_status_t) -> Option<i32> {
    (status > PJ_ERRNO_START_SYS && status < PJ_ERRNO_START_SYS + 50000)
        .then(|| status - PJ_ERRNO_START_SYS)
}

/// The last OS error as a pjlib status.
pub fn last_os_error() -> pj_status_t {
    from_os(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// A human-readable description of `status`; None when unknown.
pub fn describe(status: pj_status_t) -> Option<String> {
    let s = match status {
        PJ_SUCCESS => "Success",
        PJ_EUNKNOWN => "Unknown error (PJ_EUNKNOWN)",
        PJ_EPENDING => "Pending operation (PJ_EPENDING)",
        PJ_EINVAL => "Invalid argument (PJ_EINVAL)",
        PJ_ENOMEM => "Not enough memory (PJ_ENOMEM)",
        PJ_EBUG => "Internal error (PJ_EBUG)",
        PJ_ETIMEDOUT => "Operation timed out (PJ_ETIMEDOUT)",
        PJ_ETOOMANY => "Too many objects (PJ_ETOOMANY)",
        PJ_EBUSY => "Send queue above its high-water mark (PJ_EBUSY)",
        PJ_ENOTSUP => "Not supported (PJ_ENOTSUP)",
        PJ_EINVALIDOP => "Invalid operation in this state (PJ_EINVALIDOP)",
        PJ_ECANCELLED => "Operation cancelled (PJ_ECANCELLED)",
        PJ_EEOF => "End of file (PJ_EEOF)",
        PJ_ETOOBIG => "Size too big (PJ_ETOOBIG)",
        PJ_ERESOLVE => "Unable to resolve host name (PJ_ERESOLVE)",
        PJ_ETOOSMALL => "Size too small (PJ_ETOOSMALL)",
        PJ_EIGNORED => "Ignored (PJ_EIGNORED)",
        PJ_EGONE => "Object no longer exists (PJ_EGONE)",
        PJ_WEBSOCK_EHS_STATUS => "WebSocket handshake rejected: HTTP status is not 101 (PJ_WEBSOCK_EHS_STATUS)",
        PJ_WEBSOCK_EHS_MALFORMED => "WebSocket handshake response is malformed (PJ_WEBSOCK_EHS_MALFORMED)",
        PJ_WEBSOCK_EHS_TOOLARGE => "WebSocket handshake response is too large (PJ_WEBSOCK_EHS_TOOLARGE)",
        PJ_WEBSOCK_EHS_UPGRADE => "WebSocket handshake response lacks Upgrade: websocket (PJ_WEBSOCK_EHS_UPGRADE)",
        PJ_WEBSOCK_EHS_CONNECTION => "WebSocket handshake response lacks Connection: upgrade (PJ_WEBSOCK_EHS_CONNECTION)",
        PJ_WEBSOCK_EHS_ACCEPT => "WebSocket handshake: bad Sec-WebSocket-Accept (PJ_WEBSOCK_EHS_ACCEPT)",
        PJ_WEBSOCK_EHS_SUBPROTOCOL => "WebSocket handshake: server chose a subprotocol not offered (PJ_WEBSOCK_EHS_SUBPROTOCOL)",
        PJ_WEBSOCK_EHS_EXTENSION => "WebSocket handshake: server chose an extension not offered (PJ_WEBSOCK_EHS_EXTENSION)",
        PJ_WEBSOCK_ECONNCLOSED => "Connection closed by peer during the handshake (PJ_WEBSOCK_ECONNCLOSED)",
        PJ_WEBSOCK_EPROTOCOL => "WebSocket protocol violation by peer, closed with 1002 (PJ_WEBSOCK_EPROTOCOL)",
        PJ_WEBSOCK_EUTF8 => "Peer sent invalid UTF-8, closed with 1007 (PJ_WEBSOCK_EUTF8)",
        PJ_WEBSOCK_EMSGTOOBIG => "Peer's message too big, closed with 1009 (PJ_WEBSOCK_EMSGTOOBIG)",
        PJ_WEBSOCK_EPINGTIMEOUT => "No response from peer after ping (PJ_WEBSOCK_EPINGTIMEOUT)",
        PJ_WEBSOCK_ECLOSETIMEOUT => "Close handshake timed out (PJ_WEBSOCK_ECLOSETIMEOUT)",
        PJ_WEBSOCK_ECONNECTTIMEOUT => "Connect or opening handshake timed out (PJ_WEBSOCK_ECONNECTTIMEOUT)",
        PJ_WEBSOCK_ELOOP => "Unable to start the WebSocket event loop (PJ_WEBSOCK_ELOOP)",
        PJ_WEBSOCK_ETLS => "TLS handshake or record failure (PJ_WEBSOCK_ETLS)",
        PJ_WEBSOCK_ETLS_VERIFY => "TLS certificate verification failed (PJ_WEBSOCK_ETLS_VERIFY)",
        PJ_WEBSOCK_ETLS_NAME => "TLS certificate does not match the host (PJ_WEBSOCK_ETLS_NAME)",
        PJ_WEBSOCK_ETLS_PIN => "TLS public key matches no pin (PJ_WEBSOCK_ETLS_PIN)",
        PJ_WEBSOCK_ETLS_TIMEOUT => "TLS handshake timed out (PJ_WEBSOCK_ETLS_TIMEOUT)",
        PJ_WEBSOCK_ETLS_PROTO => "Only TLS versions older than 1.2 allowed (PJ_WEBSOCK_ETLS_PROTO)",
        PJ_WEBSOCK_ETLS_CONFIG => "Unusable TLS settings: CA, certificate, key or ciphers (PJ_WEBSOCK_ETLS_CONFIG)",
        s if to_os(s).is_some() => {
            let e = s - PJ_ERRNO_START_SYS;
            return Some(format!("{} (errno {})", std::io::Error::from_raw_os_error(e), e));
        }
        _ => return None,
    };
    Some(s.to_string())
}

/// Is `status` one of the codes this library defines in its own space?
pub fn is_own(status: pj_status_t) -> bool {
    (PJ_WEBSOCK_ERRNO_START..PJ_WEBSOCK_ERRNO_START + 50000).contains(&status)
}
