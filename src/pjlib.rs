//! Optional cooperation with pjlib when it is present in the process.
//!
//! Nothing here is a link-time dependency: the functions are found through
//! weak references (src/pjlib_shim.c) or, failing that, `dlsym`.

use std::cell::Cell;
use std::ffi::{c_char, c_long, c_void, CStr};
use std::sync::OnceLock;

use crate::ffi::types::{pj_size_t, pj_status_t, pj_str_t};

type ThreadRegisterFn =
    unsafe extern "C" fn(*const c_char, *mut c_long, *mut *mut c_void) -> pj_status_t;
type ThreadIsRegisteredFn = unsafe extern "C" fn() -> i32;
type ErrorCallback = unsafe extern "C" fn(pj_status_t, *mut c_char, pj_size_t) -> pj_str_t;
type RegisterStrerrorFn =
    unsafe extern "C" fn(pj_status_t, pj_status_t, ErrorCallback) -> pj_status_t;

extern "C" {
    fn pjws_weak_thread_register() -> Option<ThreadRegisterFn>;
    fn pjws_weak_thread_is_registered() -> Option<ThreadIsRegisteredFn>;
    fn pjws_weak_register_strerror() -> Option<RegisterStrerrorFn>;
}

struct Api {
    thread_register: Option<ThreadRegisterFn>,
    thread_is_registered: Option<ThreadIsRegisteredFn>,
    register_strerror: Option<RegisterStrerrorFn>,
}

fn dlsym(name: &CStr) -> *mut c_void {
    // SAFETY: RTLD_DEFAULT lookup of a NUL-terminated name.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: the shim returns either NULL or the address of the pjlib
        // function with the declared signature; dlsym likewise.
        unsafe {
            Api {
                thread_register: pjws_weak_thread_register().or_else(|| {
                    std::mem::transmute::<*mut c_void, Option<ThreadRegisterFn>>(dlsym(
                        c"pj_thread_register",
                    ))
                }),
                thread_is_registered: pjws_weak_thread_is_registered().or_else(|| {
                    std::mem::transmute::<*mut c_void, Option<ThreadIsRegisteredFn>>(dlsym(
                        c"pj_thread_is_registered",
                    ))
                }),
                register_strerror: pjws_weak_register_strerror().or_else(|| {
                    std::mem::transmute::<*mut c_void, Option<RegisterStrerrorFn>>(dlsym(
                        c"pj_register_strerror",
                    ))
                }),
            }
        }
    })
}

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Registers the calling library thread with pjlib (once it succeeds), so
/// that application callbacks running on it may call pjlib functions.
/// Cheap to call repeatedly; a no-op without pjlib.
pub fn register_thread() {
    if REGISTERED.with(|r| r.get()) {
        return;
    }
    let a = api();
    let (Some(reg), Some(is_reg)) = (a.thread_register, a.thread_is_registered) else {
        REGISTERED.with(|r| r.set(true)); // nothing to register with, ever
        return;
    };
    // SAFETY: pjlib's documented API; the descriptor is leaked because it
    // must outlive the thread's registration, i.e. the thread.
    unsafe {
        if is_reg() != 0 {
            REGISTERED.with(|r| r.set(true));
            return;
        }
        let desc: &'static mut [c_long; 64] = Box::leak(Box::new([0; 64]));
        let mut thread: *mut c_void = std::ptr::null_mut();
        // Fails harmlessly (and is retried later) before pj_init().
        if reg(c"pjwebsock".as_ptr(), desc.as_mut_ptr(), &mut thread) == 0 {
            REGISTERED.with(|r| r.set(true));
        } else {
            drop(Box::from_raw(desc as *mut [c_long; 64]));
        }
    }
}

/// Lets `pj_strerror()` name libpjwebsock's status codes.
pub fn register_strerror() {
    if let Some(f) = api().register_strerror {
        // SAFETY: pjlib API; a second registration just returns an error.
        unsafe {
            f(
                crate::status::PJ_WEBSOCK_ERRNO_START,
                50000,
                crate::ffi::api::pj_websock_strerror,
            );
        }
    }
}
