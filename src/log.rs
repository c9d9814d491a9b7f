//! Library log messages (warnings such as "TLS verification is off").
//!
//! Destination, first that applies: the application's function set with
//! `pj_websock_set_log_func()`; pjlib's log when pjlib is in the process;
//! standard error for warnings and errors (levels 1-2) only.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Application log function: level (1 error, 2 warning, 3 info, 4 debug)
/// and a NUL-terminated message.
pub type LogFunc = unsafe extern "C" fn(level: c_int, msg: *const c_char);

static FUNC: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    fn pjws_pj_log(level: c_int, msg: *const c_char) -> c_int;
}

pub fn set_func(f: Option<LogFunc>) {
    FUNC.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

pub const WARNING: c_int = 2;

/// Emits one message at `level`.
pub fn log(level: c_int, msg: &str) {
    let Ok(c) = CString::new(msg) else { return };
    let f = FUNC.load(Ordering::Acquire);
    // SAFETY: FUNC holds 0 or a LogFunc stored by set_func; the shim call
    // passes a valid C string.
    unsafe {
        if f != 0 {
            let f: LogFunc = std::mem::transmute::<usize, LogFunc>(f);
            f(level, c.as_ptr());
        } else if pjws_pj_log(level, c.as_ptr()) == 0 && level <= WARNING {
            eprintln!("libpjwebsock: {}", msg);
        }
    }
}
