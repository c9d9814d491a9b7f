//! The pjlib driver: connections of an instance created with an `ioqueue`
//! and a `timer_heap` do their socket I/O through the application's
//! `pj_ioqueue_t` and their timers through its `pj_timer_heap_t`, so every
//! callback runs inside the application's `pj_ioqueue_poll` /
//! `pj_timer_heap_poll`.
//!
//! The client core is written against a readiness model (read until
//! would-block, write what the socket takes); pjlib's ioqueue is a
//! proactor. `PjSock` bridges the two with one pending receive into a
//! per-connection inbox and one pending send from a per-connection outbox:
//! the core reads from and writes to those buffers, completions become
//! readiness events for the core. TLS runs over the same buffers (OpenSSL
//! never touches the socket), so pjlib's ssl_sock is not used.
//!
//! pjlib is found at run time (src/pjlib_shim.c: weak references, then
//! `dlsym`); nothing here is a link-time dependency.
//!
//! Lifetime: the instance record (timer entries, op keys) comes from a pool
//! created from the application's pool factory and holds a strong reference
//! to the client; both go when the group lock's last reference does (its
//! destroy handler), i.e. after every pending ioqueue and timer callback.

use std::ffi::{c_char, c_int, c_long, c_void, CStr};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::ffi::types::{pj_size_t, pj_ssize_t, pj_status_t};
use crate::net::sock::{sockaddr, Socket};
use crate::status::*;

/// `pj_time_val`.
#[repr(C)]
struct TimeVal {
    sec: c_long,
    msec: c_long,
}

type P = *mut c_void;
type ReadCb = unsafe extern "C" fn(P, P, pj_ssize_t);
type ConnectCb = unsafe extern "C" fn(P, pj_status_t);
type TimerCb = unsafe extern "C" fn(P, P);

/// `pj_ioqueue_callback` (32 bytes: four function pointers).
#[repr(C)]
struct IoCallback {
    on_read_complete: Option<ReadCb>,
    on_write_complete: Option<ReadCb>,
    on_accept_complete: Option<unsafe extern "C" fn(P, P, c_long, pj_status_t)>,
    on_connect_complete: Option<ConnectCb>,
}

/// The pjlib functions the driver calls, resolved once.
struct Api {
    register_sock2:
        unsafe extern "C" fn(P, P, c_long, P, P, *const IoCallback, *mut P) -> pj_status_t,
    unregister: unsafe extern "C" fn(P) -> pj_status_t,
    op_key_init: unsafe extern "C" fn(P, pj_size_t),
    recv: unsafe extern "C" fn(P, P, P, *mut pj_ssize_t, u32) -> pj_status_t,
    send: unsafe extern "C" fn(P, P, *const c_void, *mut pj_ssize_t, u32) -> pj_status_t,
    connect: unsafe extern "C" fn(P, *const c_void, c_int) -> pj_status_t,
    get_user_data: unsafe extern "C" fn(P) -> P,
    timer_entry_init: unsafe extern "C" fn(P, c_int, P, TimerCb) -> P,
    schedule_dbg: Option<
        unsafe extern "C" fn(P, P, *const TimeVal, c_int, P, *const c_char, c_int) -> pj_status_t,
    >,
    schedule: Option<unsafe extern "C" fn(P, P, *const TimeVal, c_int, P) -> pj_status_t>,
    cancel_if_active: unsafe extern "C" fn(P, P, c_int) -> c_int,
    grp_create: unsafe extern "C" fn(P, P, *mut P) -> pj_status_t,
    grp_add_ref: Option<unsafe extern "C" fn(P) -> pj_status_t>,
    grp_add_ref_dbg: Option<unsafe extern "C" fn(P, *const c_char, c_int) -> pj_status_t>,
    grp_dec_ref: Option<unsafe extern "C" fn(P) -> pj_status_t>,
    grp_dec_ref_dbg: Option<unsafe extern "C" fn(P, *const c_char, c_int) -> pj_status_t>,
    grp_add_handler: unsafe extern "C" fn(P, P, P, unsafe extern "C" fn(P)) -> pj_status_t,
    grp_acquire: unsafe extern "C" fn(P) -> pj_status_t,
    grp_release: unsafe extern "C" fn(P) -> pj_status_t,
    pool_create: unsafe extern "C" fn(P, *const c_char, pj_size_t, pj_size_t, P) -> P,
    pool_release: unsafe extern "C" fn(P),
    pool_calloc: unsafe extern "C" fn(P, pj_size_t, pj_size_t) -> P,
}

extern "C" {
    fn pjws_pj_sym(i: u32) -> P;
    fn pjws_pj_sym_name(i: u32) -> *const c_char;
}

/// Symbol `i` of the shim's list: its weak reference, else `dlsym`.
fn sym(i: u32) -> P {
    // SAFETY: the shim's accessors take any index; names are NUL-terminated.
    unsafe {
        let p = pjws_pj_sym(i);
        if !p.is_null() {
            return p;
        }
        let name = pjws_pj_sym_name(i);
        if name.is_null() {
            return std::ptr::null_mut();
        }
        libc::dlsym(libc::RTLD_DEFAULT, name)
    }
}

/// The symbol address `p` as the function pointer type `F` (an
/// `Option<fn>` turns NULL into None).
///
/// # Safety
/// `p` is NULL (only for an `Option` type) or the address of a function
/// with the prototype `F` declares.
unsafe fn sym_as<F: Copy>(p: P) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<P>()) };
    // SAFETY: same size (checked above); validity is the caller's promise.
    unsafe { std::mem::transmute_copy(&p) }
}

fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        // The order is the shim's PJWS_SYMS list.
        let s: Vec<P> = (0..22).map(sym).collect();
        debug_assert_eq!(
            // SAFETY: index 21 exists and its name is a C string.
            unsafe { CStr::from_ptr(pjws_pj_sym_name(21)) },
            c"pj_ioqueue_get_user_data"
        );
        macro_rules! req {
            ($i:expr) => {{
                if s[$i].is_null() {
                    return None;
                }
                // SAFETY: a non-NULL address of the pjlib function of
                // this index, whose prototype the field declares.
                unsafe { sym_as(s[$i]) }
            }};
        }
        macro_rules! opt {
            ($i:expr) => {
                // SAFETY: as above; NULL becomes None.
                unsafe { sym_as(s[$i]) }
            };
        }
        let a = Api {
            register_sock2: req!(0),
            unregister: req!(1),
            op_key_init: req!(2),
            recv: req!(3),
            send: req!(4),
            connect: req!(5),
            timer_entry_init: req!(6),
            schedule_dbg: opt!(7),
            schedule: opt!(8),
            cancel_if_active: req!(9),
            grp_create: req!(10),
            grp_add_ref: opt!(11),
            grp_add_ref_dbg: opt!(12),
            grp_dec_ref: opt!(13),
            grp_dec_ref_dbg: opt!(14),
            grp_add_handler: req!(15),
            grp_acquire: req!(16),
            grp_release: req!(17),
            pool_create: req!(18),
            pool_release: req!(19),
            pool_calloc: req!(20),
            get_user_data: req!(21),
        };
        let complete = (a.schedule_dbg.is_some() || a.schedule.is_some())
            && (a.grp_add_ref.is_some() || a.grp_add_ref_dbg.is_some())
            && (a.grp_dec_ref.is_some() || a.grp_dec_ref_dbg.is_some());
        complete.then_some(a)
    })
    .as_ref()
}

/// Is pjlib (with everything the driver needs) in the process?
pub fn available() -> bool {
    api().is_some()
}

const FILE: &CStr = c"pjdrv.rs";

impl Api {
    unsafe fn add_ref(&self, g: P) {
        match (self.grp_add_ref, self.grp_add_ref_dbg) {
            (Some(f), _) => f(g),
            (None, Some(f)) => f(g, FILE.as_ptr(), 0),
            _ => 0,
        };
    }

    unsafe fn dec_ref(&self, g: P) {
        match (self.grp_dec_ref, self.grp_dec_ref_dbg) {
            (Some(f), _) => f(g),
            (None, Some(f)) => f(g, FILE.as_ptr(), 0),
            _ => 0,
        };
    }

    unsafe fn schedule(&self, th: P, e: P, d: &TimeVal, g: P) -> pj_status_t {
        match (self.schedule_dbg, self.schedule) {
            (Some(f), _) => f(th, e, d, 1, g, FILE.as_ptr(), 0),
            (None, Some(f)) => f(th, e, d, 1, g),
            _ => PJ_ENOTSUP,
        }
    }
}

/// `pj_timer_entry`: 32 bytes in the default configuration; room is left
/// for builds that add fields.
const TIMER_ENTRY_WORDS: usize = 16;
/// `pj_ioqueue_op_key_t`: 272 bytes.
const OP_KEY_SIZE: usize = 272;

/// The fixed instance record, allocated from the instance's pjlib pool.
#[repr(C)]
struct Rec {
    timer: [usize; TIMER_ENTRY_WORDS],
    kick: [usize; TIMER_ENTRY_WORDS],
    rd_op: [usize; OP_KEY_SIZE / 8],
    wr_op: [usize; OP_KEY_SIZE / 8],
    /// Strong reference to the client (`Arc::into_raw`), released by the
    /// group lock's destroy handler.
    owner: *const c_void,
    pool: P,
    /// The kick entry is scheduled (pjlib logs a warning for every attempt
    /// to schedule an entry twice).
    kick_armed: AtomicBool,
}

/// What pjlib reported, turned into an event for the client.
#[derive(Clone, Copy, Debug)]
pub enum PjEvent {
    Read(usize, pj_ssize_t),
    Wrote(usize, pj_ssize_t),
    Connected(usize, pj_status_t),
    Timer,
    Kick,
}

/// Implemented by the client: receives the driver's events on the
/// application's polling threads.
pub trait Owner: Send + Sync {
    /// An event for the instance behind `ptr`.
    ///
    /// # Safety
    /// `ptr` is the pointer given to `PjDrv::attach`, a strong reference
    /// still held (the callee must not consume it).
    unsafe fn pj_event(ptr: *const c_void, ev: PjEvent);
    /// The group lock is being destroyed: drop the strong reference.
    ///
    /// # Safety
    /// `ptr` is the pointer given to `PjDrv::attach`; called once, after
    /// which nothing uses it.
    unsafe fn pj_release(ptr: *const c_void);
}

/// One instance's binding to the application's ioqueue and timer heap.
pub struct PjDrv {
    api: &'static Api,
    ioq: P,
    th: P,
    grp: P,
    rec: *mut Rec,
}

// SAFETY: the pointers are pjlib objects (thread-safe by pjlib's contract)
// and the record, whose fields are touched under the client's locks.
unsafe impl Send for PjDrv {}
unsafe impl Sync for PjDrv {}

unsafe extern "C" fn on_read_complete(key: P, op: P, n: pj_ssize_t) {
    let _ = op;
    dispatch(key, |k| PjEvent::Read(k, n));
}

unsafe extern "C" fn on_write_complete(key: P, op: P, n: pj_ssize_t) {
    let _ = op;
    dispatch(key, |k| PjEvent::Wrote(k, n));
}

unsafe extern "C" fn on_connect_complete(key: P, st: pj_status_t) {
    dispatch(key, |k| PjEvent::Connected(k, st));
}

static CALLBACKS: IoCallback = IoCallback {
    on_read_complete: Some(on_read_complete),
    on_write_complete: Some(on_write_complete),
    on_accept_complete: None,
    on_connect_complete: Some(on_connect_complete),
};

/// Hooks filled in by the owner type at attach time (one owner type).
struct Hooks {
    event: unsafe fn(*const c_void, PjEvent),
    release: unsafe fn(*const c_void),
}
static HOOKS: OnceLock<Hooks> = OnceLock::new();

unsafe fn dispatch(key: P, ev: impl FnOnce(usize) -> PjEvent) {
    let Some(a) = api() else { return };
    let rec = (a.get_user_data)(key) as *mut Rec;
    deliver(rec, ev(key as usize));
}

unsafe fn deliver(rec: *mut Rec, ev: PjEvent) {
    if rec.is_null() || (*rec).owner.is_null() {
        return;
    }
    let Some(h) = HOOKS.get() else { return };
    // A panic must not unwind into pjlib's C frames.
    let _ = std::panic::catch_unwind(|| (h.event)((*rec).owner, ev));
}

unsafe extern "C" fn on_timer(_th: P, entry: P) {
    let rec = (entry as *mut u8).sub(std::mem::offset_of!(Rec, timer)) as *mut Rec;
    deliver(rec, PjEvent::Timer);
}

unsafe extern "C" fn on_kick(_th: P, entry: P) {
    let rec = (entry as *mut u8).sub(std::mem::offset_of!(Rec, kick)) as *mut Rec;
    (*rec).kick_armed.store(false, Ordering::Release);
    deliver(rec, PjEvent::Kick);
}

/// The group lock's destroy handler: nothing refers to the record any more.
unsafe extern "C" fn on_grp_destroy(p: P) {
    let rec = p as *mut Rec;
    let owner = std::mem::replace(&mut (*rec).owner, std::ptr::null());
    let pool = (*rec).pool;
    if let Some(a) = api() {
        (a.pool_release)(pool);
    }
    if let (false, Some(h)) = (owner.is_null(), HOOKS.get()) {
        let _ = std::panic::catch_unwind(|| (h.release)(owner));
    }
}

/// Registers the calling thread with pjlib if needed: pjlib asserts on
/// threads it does not know (locks record their owner).
pub fn enter_thread() {
    crate::pjlib::register_thread();
}

impl PjDrv {
    /// Sets up the record and the group lock. `pool` gives the pool
    /// factory (`pj_pool_t.factory`, at offset 48 on x86-64).
    pub fn new(pool: P, ioq: P, th: P, grp: P) -> Result<PjDrv, pj_status_t> {
        let a = api().ok_or(PJ_ENOTSUP)?;
        if pool.is_null() {
            return Err(PJ_EINVAL);
        }
        enter_thread();
        // SAFETY: pjlib API on the application's live objects; the pool
        // factory is the pool's third field (after the list links and the
        // 32-byte name).
        unsafe {
            let factory = *((pool as *const u8).add(48) as *const P);
            let own_pool = (a.pool_create)(
                factory,
                c"websock%p".as_ptr(),
                1024,
                1024,
                std::ptr::null_mut(),
            );
            if own_pool.is_null() {
                return Err(PJ_ENOMEM);
            }
            let rec = (a.pool_calloc)(own_pool, 1, std::mem::size_of::<Rec>()) as *mut Rec;
            if rec.is_null() {
                (a.pool_release)(own_pool);
                return Err(PJ_ENOMEM);
            }
            (*rec).pool = own_pool;
            let mut g = grp;
            if g.is_null() {
                let st = (a.grp_create)(own_pool, std::ptr::null_mut(), &mut g);
                if st != PJ_SUCCESS {
                    (a.pool_release)(own_pool);
                    return Err(st);
                }
            }
            (a.timer_entry_init)((*rec).timer.as_mut_ptr() as P, 0, rec as P, on_timer);
            (a.timer_entry_init)((*rec).kick.as_mut_ptr() as P, 0, rec as P, on_kick);
            (a.op_key_init)((*rec).rd_op.as_mut_ptr() as P, OP_KEY_SIZE);
            (a.op_key_init)((*rec).wr_op.as_mut_ptr() as P, OP_KEY_SIZE);
            Ok(PjDrv {
                api: a,
                ioq,
                th,
                grp: g,
                rec,
            })
        }
    }

    /// Ties the record to its owner: `owner` (a strong reference) is
    /// released by the group lock's destroy handler. Adds the instance's
    /// reference to the group lock (dropped by `detach`).
    pub fn attach<O: Owner>(&self, owner: *const c_void) {
        let _ = HOOKS.set(Hooks {
            event: O::pj_event,
            release: O::pj_release,
        });
        // SAFETY: live record and group lock. The handler item comes from
        // the group lock's own pool (NULL pool), which outlives the call.
        unsafe {
            (*self.rec).owner = owner;
            self.api.add_ref(self.grp);
            (self.api.grp_add_handler)(
                self.grp,
                std::ptr::null_mut(),
                self.rec as P,
                on_grp_destroy,
            );
        }
    }

    /// Drops the instance's group-lock reference (pj_websock_destroy):
    /// the record goes once pending callbacks are done.
    pub fn detach(&self) {
        // SAFETY: the reference taken by attach.
        unsafe {
            let a = self.api;
            if (a.cancel_if_active)(self.th, (*self.rec).kick.as_mut_ptr() as P, 1) > 0 {
                (*self.rec).kick_armed.store(false, Ordering::Release);
            }
            a.dec_ref(self.grp);
        }
    }

    /// Takes a group-lock reference for work that outlives the caller
    /// (a resolver job); `unref` gives it back.
    pub fn add_ref(&self) {
        // SAFETY: live group lock.
        unsafe { self.api.add_ref(self.grp) }
    }

    pub fn unref(&self) {
        // SAFETY: a reference taken by add_ref.
        unsafe { self.api.dec_ref(self.grp) }
    }

    pub fn lock(&self) {
        // SAFETY: live group lock (recursive).
        unsafe { (self.api.grp_acquire)(self.grp) };
    }

    pub fn unlock(&self) {
        // SAFETY: paired with lock.
        unsafe { (self.api.grp_release)(self.grp) };
    }

    /// (Re)schedules the instance's timer at `at`, or cancels it.
    pub fn set_timer(&self, at: Option<Instant>) {
        // SAFETY: the entry lives in the record; the heap holds a group
        // lock reference while it is scheduled.
        unsafe {
            let e = (*self.rec).timer.as_mut_ptr() as P;
            (self.api.cancel_if_active)(self.th, e, 1);
            if let Some(at) = at {
                let d = at.saturating_duration_since(Instant::now());
                // Round up: a timer must not fire before its deadline.
                let ms = d.as_millis() as u64 + u64::from(d.as_nanos() % 1_000_000 != 0);
                let tv = TimeVal {
                    sec: (ms / 1000) as c_long,
                    msec: (ms % 1000) as c_long,
                };
                self.api.schedule(self.th, e, &tv, self.grp);
            }
        }
    }

    /// Asks for a `Kick` event from the next `pj_timer_heap_poll`; false
    /// if it could not be scheduled.
    pub fn kick(&self) -> bool {
        enter_thread();
        let tv = TimeVal { sec: 0, msec: 0 };
        // SAFETY: as set_timer, for the kick entry.
        unsafe {
            if (*self.rec).kick_armed.swap(true, Ordering::AcqRel) {
                return true;
            }
            let e = (*self.rec).kick.as_mut_ptr() as P;
            let st = self.api.schedule(self.th, e, &tv, self.grp);
            if st != PJ_SUCCESS {
                (*self.rec).kick_armed.store(false, Ordering::Release);
            }
            st == PJ_SUCCESS
        }
    }

    /// Creates a socket for `addr`, registers it with the ioqueue and
    /// starts connecting. Ok(true) when connected at once.
    pub fn open(&self, addr: &SocketAddr) -> Result<(PjSock, bool), pj_status_t> {
        let sock =
            Socket::for_addr(addr).map_err(|e| from_os(e.raw_os_error().unwrap_or(libc::EIO)))?;
        // pjlib programs have threads: the table grows on a worker.
        crate::net::fdtable::opened(sock.fd(), crate::net::fdtable::How::Worker);
        let a = self.api;
        let mut key: P = std::ptr::null_mut();
        // SAFETY: pjlib API; on success the ioqueue owns the socket and
        // closes it in pj_ioqueue_unregister.
        let st = unsafe {
            (a.register_sock2)(
                (*self.rec).pool,
                self.ioq,
                sock.fd() as c_long,
                self.grp,
                self.rec as P,
                &CALLBACKS,
                &mut key,
            )
        };
        if st != PJ_SUCCESS {
            return Err(st); // sock closes on drop
        }
        sock.into_raw();
        let mut ps = PjSock {
            api: a,
            rec: self.rec,
            key,
            connected: false,
            connect_status: None,
            connect_seen: false,
            inbox: Vec::new(),
            in_pos: 0,
            in_len: 0,
            rx_size: RX_MIN,
            recv_pending: false,
            rx_end: None,
            out: Vec::new(),
            out_off: 0,
            stage: Vec::new(),
            send_pending: false,
            tx_err: None,
            want_out: false,
        };
        let (ss, len) = sockaddr(addr);
        // SAFETY: ss holds a valid address of length len.
        let st = unsafe { (a.connect)(key, &ss as *const _ as *const c_void, len as c_int) };
        match st {
            PJ_SUCCESS => {
                ps.connected = true;
                ps.connect_status = Some(PJ_SUCCESS);
                Ok((ps, true))
            }
            PJ_EPENDING => Ok((ps, false)),
            e => Err(e), // ps unregisters on drop
        }
    }
}

/// Receive sizes: an idle connection keeps a small pending receive; a
/// busy one reads in larger pieces.
const RX_MIN: usize = 2 * 1024;
const RX_MAX: usize = 64 * 1024;
/// Bytes the outbox takes before writes report would-block.
const OUT_CAP: usize = 256 * 1024;
/// Largest single pj_ioqueue_send.
const SEND_CHUNK: usize = 4 * 1024;

/// A socket registered with the application's ioqueue, seen by the core
/// as a non-blocking socket.
pub struct PjSock {
    api: &'static Api,
    rec: *mut Rec,
    key: P,
    connected: bool,
    connect_status: Option<pj_status_t>,
    /// The core was told about the connect's outcome.
    connect_seen: bool,
    /// Received bytes not yet read by the core: inbox[in_pos..in_len].
    inbox: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    rx_size: usize,
    recv_pending: bool,
    /// End of the receive side: Some(PJ_SUCCESS) for end of stream.
    rx_end: Option<pj_status_t>,
    /// Bytes handed to pj_ioqueue_send: out[out_off..] not sent yet.
    out: Vec<u8>,
    out_off: usize,
    /// Bytes written while a send is pending.
    stage: Vec<u8>,
    send_pending: bool,
    tx_err: Option<pj_status_t>,
    /// The core waits for room to write (EPOLLOUT interest).
    pub want_out: bool,
}

// SAFETY: used under the client's lock; the pointers are pjlib objects
// and the instance record.
unsafe impl Send for PjSock {}

/// pjlib reports a read or write that readiness promised but another
/// polling thread's I/O took away as a failed operation with EAGAIN.
fn transient(st: pj_status_t) -> bool {
    [libc::EAGAIN, libc::EWOULDBLOCK, libc::EINTR]
        .map(from_os)
        .contains(&st)
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// A pj_status_t as an io::Error (OS errors keep their errno).
pub fn status_error(st: pj_status_t) -> io::Error {
    io::Error::from_raw_os_error(to_os(st).unwrap_or(libc::ECONNRESET))
}

impl PjSock {
    /// The identity of this registration in events.
    pub fn key(&self) -> usize {
        self.key as usize
    }

    /// The connect's result once known: 0 connected, else a status.
    pub fn connect_result(&self) -> pj_status_t {
        self.connect_status.unwrap_or(PJ_EPENDING)
    }

    /// Applies a completion (already matched to this socket).
    pub fn complete(&mut self, ev: PjEvent) {
        match ev {
            PjEvent::Read(_, n) => {
                self.recv_pending = false;
                if n > 0 {
                    self.in_pos = 0;
                    self.in_len = n as usize;
                } else if n < 0 && transient(-n as pj_status_t) {
                    // Another polling thread took the data the readiness
                    // was about (pjlib reports that as a failed read):
                    // the next poll posts a new receive.
                } else {
                    self.rx_end = Some(if n == 0 {
                        PJ_SUCCESS
                    } else {
                        -n as pj_status_t
                    });
                }
            }
            PjEvent::Wrote(_, n) => {
                self.send_pending = false;
                if n >= 0 {
                    self.out_off += n as usize;
                } else if !transient(-n as pj_status_t) {
                    self.tx_err = Some(-n as pj_status_t);
                }
                // A transient failure sent nothing (each send is at most
                // one SEND_CHUNK, which a writable socket takes whole):
                // send it again.
                self.pump();
            }
            PjEvent::Connected(_, st) => {
                self.connect_seen = false;
                self.connect_status = Some(st);
                self.connected = st == PJ_SUCCESS;
            }
            PjEvent::Timer | PjEvent::Kick => {}
        }
    }

    /// Readiness as epoll would report it now (level-triggered), posting a
    /// receive when none is pending so that data and end of stream are
    /// noticed. Returns (readable, writable).
    pub fn poll(&mut self) -> (bool, bool) {
        if !std::mem::replace(&mut self.connect_seen, true) {
            // The connect's outcome reads as writability, once.
            return (false, self.connect_status.is_some());
        }
        if !self.connected {
            return (false, false);
        }
        if self.needs_recv() {
            self.post_recv();
        }
        let readable = self.in_pos < self.in_len || self.rx_end.is_some();
        let writable = self.want_out && (self.queued() < OUT_CAP || self.tx_err.is_some());
        (readable, writable)
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_off + self.stage.len()
    }

    /// Connected, inbox drained, no receive pending, stream not ended.
    fn needs_recv(&self) -> bool {
        self.connected && self.in_pos == self.in_len && !self.recv_pending && self.rx_end.is_none()
    }

    /// Starts a receive into the inbox; data that is there at once is
    /// available right away.
    fn post_recv(&mut self) {
        // Grow after a full read, shrink after small ones.
        if self.in_len == self.inbox.len() && self.in_len > 0 {
            self.rx_size = (self.rx_size * 2).min(RX_MAX);
        } else if self.in_len < self.rx_size / 4 {
            self.rx_size = (self.rx_size / 2).max(RX_MIN);
        }
        if self.inbox.len() != self.rx_size {
            self.inbox = vec![0; self.rx_size];
        }
        self.in_pos = 0;
        self.in_len = 0;
        let mut len = self.inbox.len() as pj_ssize_t;
        // SAFETY: the inbox is not touched while the receive is pending
        // (recv_pending), and lives in the link until unregistration.
        let st = unsafe {
            (self.api.recv)(
                self.key,
                (*self.rec).rd_op.as_mut_ptr() as P,
                self.inbox.as_mut_ptr() as P,
                &mut len,
                0,
            )
        };
        match st {
            PJ_SUCCESS if len > 0 => self.in_len = len as usize,
            PJ_SUCCESS => self.rx_end = Some(PJ_SUCCESS),
            PJ_EPENDING => self.recv_pending = true,
            e => self.rx_end = Some(e),
        }
    }

    /// Non-blocking read, as recv(2) would do it.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.needs_recv() {
            self.post_recv();
        }
        if self.in_pos < self.in_len {
            let n = buf.len().min(self.in_len - self.in_pos);
            buf[..n].copy_from_slice(&self.inbox[self.in_pos..self.in_pos + n]);
            self.in_pos += n;
            return Ok(n);
        }
        match self.rx_end {
            Some(PJ_SUCCESS) => Ok(0),
            Some(e) => Err(status_error(e)),
            None => Err(would_block()),
        }
    }

    /// Non-blocking write: takes what fits in the outbox.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.tx_err {
            return Err(status_error(e));
        }
        let room = OUT_CAP.saturating_sub(self.queued());
        if room == 0 {
            return Err(would_block());
        }
        let n = buf.len().min(room);
        if self.send_pending {
            self.stage.extend_from_slice(&buf[..n]);
        } else {
            if self.out_off == self.out.len() {
                self.out.clear();
                self.out_off = 0;
            }
            self.out.extend_from_slice(&buf[..n]);
            self.pump();
        }
        Ok(n)
    }

    /// Gathers several buffers into the outbox.
    pub fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        let mut total = 0;
        for v in iov {
            // SAFETY: the caller's iovecs point to live buffers.
            let s = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            match self.write(s) {
                Ok(n) => {
                    total += n;
                    if n < s.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    /// Hands the outbox to pj_ioqueue_send until it is all sent or a send
    /// is pending.
    fn pump(&mut self) {
        loop {
            if !self.send_pending && self.out_off == self.out.len() && !self.stage.is_empty() {
                self.out.clear();
                self.out_off = 0;
                std::mem::swap(&mut self.out, &mut self.stage);
            }
            if self.send_pending || self.tx_err.is_some() || self.out_off >= self.out.len() {
                break;
            }
            // A pending send that pjlib's dispatch finds unwritable fails
            // with EAGAIN and forgets what it had written: keep each one
            // small enough for a writable socket to take whole.
            let mut len = (self.out.len() - self.out_off).min(SEND_CHUNK) as pj_ssize_t;
            // SAFETY: out is not modified while the send is pending
            // (send_pending: new bytes go to stage).
            let st = unsafe {
                (self.api.send)(
                    self.key,
                    (*self.rec).wr_op.as_mut_ptr() as P,
                    self.out.as_ptr().add(self.out_off) as *const c_void,
                    &mut len,
                    0,
                )
            };
            match st {
                PJ_SUCCESS => self.out_off += len.max(0) as usize,
                PJ_EPENDING => self.send_pending = true,
                e => self.tx_err = Some(e),
            }
        }
        if !self.send_pending && self.out_off == self.out.len() {
            self.out.clear();
            self.out_off = 0;
            if self.out.capacity() > 4 * OUT_CAP {
                self.out = Vec::new();
            }
        }
    }

    /// Drops buffers an idle connection does not need.
    pub fn trim(&mut self) {
        if !self.send_pending && self.out.is_empty() {
            self.out = Vec::new();
            self.stage = Vec::new();
        }
    }
}

impl Drop for PjSock {
    fn drop(&mut self) {
        // SAFETY: our registration; pjlib closes the socket, and no
        // callback for the key starts after this (pending ones hold group
        // lock references, and find the key gone from the link).
        unsafe { (self.api.unregister)(self.key) };
    }
}

/// The socket as OpenSSL's BIO sees it in this mode.
pub struct PjIo(pub *mut PjSock);

// SAFETY: the PjSock is boxed in the same link as the TLS stream and only
// used under the client's lock.
unsafe impl Send for PjIo {}

impl io::Read for PjIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: see the type.
        unsafe { (*self.0).read(buf) }
    }
}

impl io::Write for PjIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: see the type.
        unsafe { (*self.0).write(buf) }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
