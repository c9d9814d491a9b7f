//! The library's own event loop: one epoll loop shared by every instance
//! that was created without a pjlib ioqueue. It runs on a thread of its
//! own (the default) or, in poll mode, on whichever application thread
//! calls [`EventLoop::poll`] (one at a time).
//!
//! Contract with handlers:
//! - `on_io` and `on_timer` run on the loop thread only (in poll mode: the
//!   thread inside `poll`), with the loop's context, so a handler may
//!   register and deregister sockets there.
//! - Any thread may `post` a closure to run on the loop thread, and may
//!   schedule or cancel a handler's single timer.
//! - A socket's epoll token carries a generation, so an event that was
//!   already queued for a socket closed earlier in the same batch is
//!   recognised as stale and dropped.
//! - A registered handler is kept alive (strong `Arc`) until it is
//!   deregistered; deregistered handlers are dropped only after the batch
//!   of events that might still name them.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::net::fdtable;

/// Size of the receive buffer shared by every connection of the loop.
/// Small enough that a read's bytes, the kernel's skbs they came from and
/// the send queue stay in L2 while the messages are delivered: streaming
/// small frames, 64 KiB used 17-38 % less CPU per message than 256 KiB
/// (32 KiB and 128 KiB were in between); bulk reads go straight into the
/// message and TLS reads a record at a time, so neither cares.
pub const RX_BUF_SIZE: usize = 64 * 1024;

const WAKE_TOKEN: u64 = u64::MAX;

/// What the loop calls back into (implemented by the WebSocket client).
pub trait Handler: Send + Sync {
    /// Readiness on a socket registered with `token`.
    fn on_io(self: Arc<Self>, ctx: &mut LoopCtx, token: Token, events: u32);
    /// The handler's timer expired.
    fn on_timer(self: Arc<Self>, ctx: &mut LoopCtx);
    /// A panic escaped `on_io` or `on_timer`: fail just this handler.
    fn on_panic(self: Arc<Self>, ctx: &mut LoopCtx);
}

/// Identifies one registration of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(u64);

impl Token {
    /// A token for a registration elsewhere (a pjlib ioqueue key), never
    /// seen by this loop.
    pub fn foreign(v: usize) -> Token {
        Token(v as u64)
    }

    fn new(idx: u32, gen: u32) -> Token {
        Token(idx as u64 | ((gen as u64) << 32))
    }
    fn idx(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Identifies one scheduled timer so it can be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerId {
    idx: u32,
    gen: u32,
}

/// Pending timers: a slab whose slots carry a generation, so a cancelled
/// timer's heap entry is recognised as stale when it comes up.
struct TimerSlot {
    gen: u32,
    handler: Option<Arc<dyn Handler>>,
}

struct Slot {
    gen: u32,
    fd: RawFd,
    handler: Option<Arc<dyn Handler>>,
}

type Command = Box<dyn FnOnce(&mut LoopCtx) + Send>;

struct Shared {
    commands: Vec<Command>,
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    timers: Vec<TimerSlot>,
    free_timers: Vec<u32>,
}

impl Shared {
    fn is_live(&self, id: TimerId) -> bool {
        self.timers
            .get(id.idx as usize)
            .is_some_and(|t| t.gen == id.gen && t.handler.is_some())
    }

    fn take(&mut self, id: TimerId) -> Option<Arc<dyn Handler>> {
        let slot = self.timers.get_mut(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let h = slot.handler.take()?;
        self.free_timers.push(id.idx);
        Some(h)
    }
}

/// State owned by the loop thread.
pub struct LoopCtx {
    lp: &'static EventLoop,
    slots: Vec<Slot>,
    free: Vec<u32>,
    graveyard: Vec<Arc<dyn Handler>>,
    /// Receive buffer shared by all connections (taken while in use).
    pub rx_buf: Vec<u8>,
    /// Scratch space for replies the protocol engine writes.
    pub scratch: Vec<u8>,
    /// epoll_wait's output (taken while a batch is handled).
    events: Vec<libc::epoll_event>,
}

/// The process-wide event loop.
pub struct EventLoop {
    epfd: RawFd,
    wakefd: RawFd,
    shared: Mutex<Shared>,
    notified: AtomicBool,
    /// pthread_self() of the loop thread (0 until it runs; in poll mode
    /// the thread that polls, or polled last). Compared without
    /// std::thread::current(), which would allocate a handle on every
    /// application thread that calls in.
    thread: AtomicUsize,
    /// Poll mode: the loop's context between `poll` calls (None: the
    /// loop has a thread of its own).
    polled: OnceLock<Mutex<LoopCtx>>,
}

/// How the loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On a thread of its own, started with the loop.
    Thread,
    /// Inside `poll`, on the application's thread.
    Poll,
}

/// Why `poll` did not run the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollError {
    /// The loop runs on its own thread.
    NotPollMode,
    /// Another thread is polling.
    Busy,
    /// Called from a callback inside `poll`.
    Reentered,
}

thread_local! {
    /// Set while this thread is inside `poll`.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

static LOOP: OnceLock<Result<&'static EventLoop, i32>> = OnceLock::new();

/// The shared loop, started on first use (on its own thread unless
/// `init(Mode::Poll)` came first).
pub fn get() -> Result<&'static EventLoop, i32> {
    init(Mode::Thread)
}

/// The shared loop, started in `mode` if this is its first use; an
/// existing loop is returned whatever its mode.
pub fn init(mode: Mode) -> Result<&'static EventLoop, i32> {
    *LOOP.get_or_init(|| EventLoop::start(mode).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)))
}

/// The loop if it was started already (no side effects).
pub fn try_get() -> Option<&'static EventLoop> {
    LOOP.get().and_then(|r| r.ok())
}

impl EventLoop {
    /// A new loop, leaked. In thread mode its thread is started here.
    pub fn start(mode: Mode) -> io::Result<&'static EventLoop> {
        // SAFETY: plain syscalls; the fds are owned by the leaked loop.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let wakefd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wakefd < 0 {
            let e = io::Error::last_os_error();
            unsafe { libc::close(epfd) };
            return Err(e);
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, wakefd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            unsafe {
                libc::close(epfd);
                libc::close(wakefd);
            }
            return Err(e);
        }
        // The loop lives for the rest of the process: instances may exist
        // until exit, and a static lets handlers reach it without counting.
        let lp: &'static EventLoop = Box::leak(Box::new(EventLoop {
            epfd,
            wakefd,
            shared: Mutex::new(Shared {
                commands: Vec::new(),
                heap: BinaryHeap::new(),
                timers: Vec::new(),
                free_timers: Vec::new(),
            }),
            notified: AtomicBool::new(false),
            thread: AtomicUsize::new(0),
            polled: OnceLock::new(),
        }));
        if mode == Mode::Poll {
            let _ = lp.polled.set(Mutex::new(LoopCtx::new(lp)));
            return Ok(lp);
        }
        std::thread::Builder::new()
            .name("pjwebsock-loop".into())
            .stack_size(256 * 1024)
            .spawn(move || lp.run())?;
        Ok(lp)
    }

    /// How this loop runs.
    pub fn mode(&self) -> Mode {
        if self.polled.get().is_some() {
            Mode::Poll
        } else {
            Mode::Thread
        }
    }

    /// Poll mode: runs one round of the loop on the calling thread. Waits
    /// at most `timeout` (less if a timer is due sooner) for sockets to
    /// become ready, then handles what is ready, the posted commands and
    /// the due timers. Returns how many of those it handled.
    pub fn poll(&'static self, timeout: Duration) -> Result<usize, PollError> {
        let Some(m) = self.polled.get() else {
            return Err(PollError::NotPollMode);
        };
        if POLLING.with(|p| p.get()) {
            return Err(PollError::Reentered);
        }
        let mut ctx = match m.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(PollError::Busy),
        };
        self.become_loop_thread();
        POLLING.with(|p| p.set(true));
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                POLLING.with(|p| p.set(false));
            }
        }
        let _reset = Reset;
        Ok(self.run_once(&mut ctx, Some(timeout)))
    }

    /// Is the caller running on the loop thread?
    pub fn on_loop_thread(&self) -> bool {
        // SAFETY: pthread_self has no preconditions.
        self.thread.load(Ordering::Relaxed) == unsafe { libc::pthread_self() } as usize
    }

    fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.wakefd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    /// Runs `f` on the loop thread, after the current batch of events.
    pub fn post(&self, f: impl FnOnce(&mut LoopCtx) + Send + 'static) {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commands
            .push(Box::new(f));
        self.wake();
    }

    /// Schedules `handler.on_timer` at `at`; returns an id for `cancel_timer`.
    pub fn schedule(&self, handler: Arc<dyn Handler>, at: Instant) -> TimerId {
        let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let idx = match sh.free_timers.pop() {
            Some(i) => i,
            None => {
                sh.timers.push(TimerSlot {
                    gen: 0,
                    handler: None,
                });
                (sh.timers.len() - 1) as u32
            }
        };
        let slot = &mut sh.timers[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.handler = Some(handler);
        let id = TimerId { idx, gen: slot.gen };
        let earliest = sh.heap.peek().map(|Reverse((t, _))| *t);
        sh.heap.push(Reverse((at, id)));
        drop(sh);
        // A new earliest deadline must shorten the loop's current wait.
        if !self.on_loop_thread() && earliest.is_none_or(|e| at < e) {
            self.wake();
        }
        id
    }

    /// Cancels a timer (a no-op if it already fired).
    pub fn cancel_timer(&self, id: TimerId) {
        let removed = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(id);
        drop(removed); // dropping the handler outside the lock
    }

    /// Changes the epoll interest of a registered socket (any thread).
    pub fn modify(&self, fd: RawFd, token: Token, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: token.0,
        };
        // SAFETY: valid epoll fd and event struct.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the calling thread the loop thread (until another one polls)
    /// and registers it with pjlib when pjlib is in the process.
    fn become_loop_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        self.thread
            .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
        crate::pjlib::register_thread();
    }

    fn run(&'static self) {
        self.become_loop_thread();
        // Before the first burst of connects can reach the end of a small
        // descriptor table (see net::fdtable).
        fdtable::reserve_now(fdtable::How::Worker);
        let mut ctx = LoopCtx::new(self);
        loop {
            self.run_once(&mut ctx, None);
        }
    }

    /// One round: waits for readiness (at most `limit`, `None` for no
    /// limit, and never past the next timer), handles the ready sockets,
    /// then the posted commands and the due timers. Returns how many of
    /// those it handled.
    fn run_once(&self, ctx: &mut LoopCtx, limit: Option<Duration>) -> usize {
        let timeout = match (self.next_timeout(), limit) {
            (None, l) => l,
            (t, None) => t,
            (Some(t), Some(l)) => Some(t.min(l)),
        };
        let mut events = std::mem::take(&mut ctx.events);
        let n = wait_events(self.epfd, &mut events, timeout);
        if n < 0 {
            let e = io::Error::last_os_error();
            ctx.events = events;
            if e.kind() != io::ErrorKind::Interrupted && limit.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            return 0;
        }
        let mut handled = 0;
        let mut woken = false;
        for ev in &events[..n as usize] {
            let (flags, data) = (ev.events, ev.u64);
            if data == WAKE_TOKEN {
                woken = true;
                continue;
            }
            let token = Token(data);
            let handler = match ctx.slots.get(token.idx()) {
                Some(slot) if slot.gen == token.gen() => slot.handler.clone(),
                _ => None,
            };
            if let Some(h) = handler {
                handled += 1;
                let h2 = h.clone();
                if catch_unwind(AssertUnwindSafe(|| h.on_io(ctx, token, flags))).is_err() {
                    ctx.after_panic();
                    if catch_unwind(AssertUnwindSafe(|| h2.on_panic(ctx))).is_err() {
                        ctx.after_panic();
                    }
                    // However on_panic went, the socket stops reporting
                    // to a handler that failed (a level-triggered fd
                    // would otherwise spin the loop).
                    ctx.deregister_token(token);
                }
            }
        }
        if woken {
            let mut buf = 0u64;
            // SAFETY: reads 8 bytes into a valid u64.
            unsafe { libc::read(self.wakefd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
            self.notified.store(false, Ordering::Release);
        }
        handled += self.run_commands(ctx);
        handled += self.run_timers(ctx);
        ctx.graveyard.clear();
        if n as usize == events.len() && events.len() < 4096 {
            events.resize(events.len() * 2, libc::epoll_event { events: 0, u64: 0 });
        }
        ctx.events = events;
        handled
    }

    fn run_commands(&self, ctx: &mut LoopCtx) -> usize {
        let mut ran = 0;
        loop {
            let cmds = std::mem::take(
                &mut self
                    .shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .commands,
            );
            if cmds.is_empty() {
                return ran;
            }
            ran += cmds.len();
            for c in cmds {
                // A panicking command must not take the loop down.
                if catch_unwind(AssertUnwindSafe(|| c(ctx))).is_err() {
                    ctx.after_panic();
                }
            }
        }
    }

    fn run_timers(&self, ctx: &mut LoopCtx) -> usize {
        let now = Instant::now();
        let mut fired = 0;
        loop {
            let due = {
                let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                let mut due = None;
                while let Some(Reverse((t, id))) = sh.heap.peek().copied() {
                    if !sh.is_live(id) {
                        sh.heap.pop(); // cancelled
                        continue;
                    }
                    if t > now {
                        break;
                    }
                    sh.heap.pop();
                    due = sh.take(id);
                    break;
                }
                due
            };
            match due {
                Some(h) => {
                    fired += 1;
                    let h2 = h.clone();
                    if catch_unwind(AssertUnwindSafe(|| h.on_timer(ctx))).is_err() {
                        ctx.after_panic();
                        if catch_unwind(AssertUnwindSafe(|| h2.on_panic(ctx))).is_err() {
                            ctx.after_panic();
                        }
                    }
                }
                None => return fired,
            }
        }
    }

    /// Time left until the earliest live timer, `None` without one.
    fn next_timeout(&self) -> Option<Duration> {
        let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Reverse((t, id))) = sh.heap.peek().copied() {
            if !sh.is_live(id) {
                sh.heap.pop();
                continue;
            }
            return Some(t.saturating_duration_since(Instant::now()));
        }
        None
    }
}

/// Set once epoll_pwait2 turned out to be missing (Linux before 5.11, or
/// a seccomp filter that does not know it).
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// Waits for events on `epfd` for at most `timeout` (`None`: no limit).
/// A timeout that is not a whole number of milliseconds is kept to the
/// nanosecond with epoll_pwait2; without it, epoll_wait rounds it up to
/// the next millisecond, so a wait never ends early. Returns what the
/// system call returned (-1 with errno set on failure).
fn wait_events(epfd: RawFd, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> i32 {
    let max = events.len().min(i32::MAX as usize) as i32;
    let ptr = events.as_mut_ptr();
    let sub_ms = timeout.is_some_and(|d| d.subsec_nanos() % 1_000_000 != 0);
    if let Some(d) = timeout.filter(|_| sub_ms) {
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            let ts = libc::timespec {
                tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as _,
            };
            // SAFETY: `events` has room for `max` entries; `ts` outlives
            // the call; a null signal mask leaves the mask alone.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    ptr,
                    max,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return n as i32;
            }
            let errno = io::Error::last_os_error().raw_os_error();
            if !matches!(errno, Some(libc::ENOSYS) | Some(libc::EPERM)) {
                return -1;
            }
            NO_PWAIT2.store(true, Ordering::Relaxed);
        }
    }
    let ms = match timeout {
        None => -1,
        Some(d) => (d.as_millis() + u128::from(sub_ms)).min(i32::MAX as u128) as i32,
    };
    // SAFETY: `events` has room for `max` entries.
    unsafe { libc::epoll_wait(epfd, ptr, max, ms) }
}

impl LoopCtx {
    fn new(lp: &'static EventLoop) -> LoopCtx {
        LoopCtx {
            lp,
            slots: Vec::new(),
            free: Vec::new(),
            graveyard: Vec::new(),
            rx_buf: vec![0; RX_BUF_SIZE],
            scratch: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        }
    }

    /// The loop this context belongs to.
    pub fn event_loop(&self) -> &'static EventLoop {
        self.lp
    }

    /// Adds `fd` to epoll with `events`; the handler stays alive until
    /// `deregister`.
    pub fn register(
        &mut self,
        fd: RawFd,
        handler: Arc<dyn Handler>,
        events: u32,
    ) -> io::Result<Token> {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    fd: -1,
                    handler: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        let token = Token::new(idx, slot.gen);
        let mut ev = libc::epoll_event {
            events,
            u64: token.0,
        };
        // SAFETY: valid epoll fd and event struct.
        if unsafe { libc::epoll_ctl(self.lp.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            self.free.push(idx);
            return Err(e);
        }
        slot.handler = Some(handler);
        slot.fd = fd;
        // The loop's own thread must not wait for a grace period; a
        // polling thread in a single-threaded program has none to wait for.
        let how = match self.lp.mode() {
            Mode::Thread => fdtable::How::Worker,
            Mode::Poll => fdtable::How::Inline,
        };
        fdtable::opened(fd, how);
        Ok(token)
    }

    /// Drops what a panicking handler may have left half-written in the
    /// shared buffers, so that nothing of it reaches another connection.
    fn after_panic(&mut self) {
        self.scratch.clear();
    }

    /// Removes `token`'s fd from epoll if `token` is still registered.
    fn deregister_token(&mut self, token: Token) {
        let fd = match self.slots.get(token.idx()) {
            Some(slot) if slot.gen == token.gen() && slot.handler.is_some() => slot.fd,
            _ => return,
        };
        self.deregister(fd, token);
    }

    /// Removes `fd` (registered as `token`) from epoll. The caller closes fd.
    pub fn deregister(&mut self, fd: RawFd, token: Token) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid epoll fd; errors (fd already gone) are harmless.
        unsafe { libc::epoll_ctl(self.lp.epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if let Some(slot) = self.slots.get_mut(token.idx()) {
            if slot.gen == token.gen() {
                if let Some(h) = slot.handler.take() {
                    self.graveyard.push(h);
                }
                self.free.push(token.idx() as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::resume_unwind;
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::thread::ThreadId;

    const WAIT: Duration = Duration::from_secs(10);

    /// What the loop reported to a probe handler.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Io(&'static str),
        Timer(&'static str),
        Panic(&'static str),
        Barrier(u32, ThreadId),
    }

    /// A handler reading one pipe, told where to panic. Panics use
    /// `resume_unwind` (no panic hook, so no noise on standard error); the
    /// loop contains them exactly like `panic!`.
    struct Probe {
        name: &'static str,
        /// Read end of its pipe; the write end is `wfd`.
        fd: RawFd,
        wfd: RawFd,
        panic_io: bool,
        panic_timer: bool,
        /// `on_panic` itself panics (after deregistering).
        panic_again: bool,
        token: Mutex<Option<Token>>,
        seen: Mutex<Sender<Seen>>,
    }

    impl Probe {
        fn new(name: &'static str, seen: &Sender<Seen>) -> Probe {
            let mut fds = [0; 2];
            // SAFETY: fds has room for the two descriptors.
            let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            assert_eq!(r, 0);
            Probe {
                name,
                fd: fds[0],
                wfd: fds[1],
                panic_io: false,
                panic_timer: false,
                panic_again: false,
                token: Mutex::new(None),
                seen: Mutex::new(seen.clone()),
            }
        }

        fn report(&self, s: Seen) {
            let _ = self.seen.lock().unwrap_or_else(|e| e.into_inner()).send(s);
        }

        /// Makes its pipe readable.
        fn poke(&self) {
            // SAFETY: writes one byte from a valid buffer to our pipe.
            assert_eq!(unsafe { libc::write(self.wfd, b"x".as_ptr().cast(), 1) }, 1);
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            // SAFETY: both descriptors are ours.
            unsafe {
                libc::close(self.fd);
                libc::close(self.wfd);
            }
        }
    }

    impl Handler for Probe {
        fn on_io(self: Arc<Self>, _ctx: &mut LoopCtx, _token: Token, _events: u32) {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a valid buffer (drains the pipe, so a
            // level-triggered registration does not fire again).
            while unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            self.report(Seen::Io(self.name));
            if self.panic_io {
                resume_unwind(Box::new("probe panics in on_io"));
            }
        }

        fn on_timer(self: Arc<Self>, _ctx: &mut LoopCtx) {
            self.report(Seen::Timer(self.name));
            if self.panic_timer {
                resume_unwind(Box::new("probe panics in on_timer"));
            }
        }

        fn on_panic(self: Arc<Self>, ctx: &mut LoopCtx) {
            // Fail just this handler, as the client does: stop its I/O.
            let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = token {
                ctx.deregister(self.fd, t);
            }
            self.report(Seen::Panic(self.name));
            if self.panic_again {
                resume_unwind(Box::new("probe panics in on_panic"));
            }
        }
    }

    /// Registers the probe's pipe from the loop thread.
    fn register(lp: &'static EventLoop, p: &Arc<Probe>) {
        let (tx, rx) = mpsc::channel();
        let p2 = p.clone();
        lp.post(move |ctx| {
            let h: Arc<dyn Handler> = p2.clone();
            let t = ctx.register(p2.fd, h, libc::EPOLLIN as u32);
            *p2.token.lock().unwrap() = t.as_ref().ok().copied();
            let _ = tx.send(t.is_ok());
        });
        assert_eq!(rx.recv_timeout(WAIT), Ok(true));
    }

    /// Runs a command on the loop and collects everything reported before
    /// it; returns those reports and the loop thread's id.
    fn barrier(
        lp: &'static EventLoop,
        seen: &Sender<Seen>,
        rx: &Receiver<Seen>,
    ) -> (Vec<Seen>, ThreadId) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let tx = seen.clone();
        lp.post(move |_| {
            let _ = tx.send(Seen::Barrier(n, std::thread::current().id()));
        });
        let mut before = vec![];
        loop {
            match rx.recv_timeout(WAIT).expect("the loop thread stopped") {
                Seen::Barrier(m, id) if m == n => return (before, id),
                s => before.push(s),
            }
        }
    }

    /// Waits until `want` was reported; returns everything up to it.
    fn wait_for(rx: &Receiver<Seen>, want: &Seen) -> Vec<Seen> {
        let mut got = vec![];
        while got.last() != Some(want) {
            got.push(
                rx.recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("no {want:?} after {got:?}")),
            );
        }
        got
    }

    /// The loop drops a failed handler once the batch that failed it ends.
    fn wait_released(p: &Arc<Probe>) {
        let t = Instant::now();
        while Arc::strong_count(p) > 1 {
            assert!(t.elapsed() < WAIT, "{} still held by the loop", p.name);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A handler panicking in `on_io` gets `on_panic` (and nothing else),
    /// is dropped once deregistered, and the same loop thread keeps serving
    /// the other handlers, commands and timers. Also when `on_panic`
    /// panics in turn, and when a posted command panics.
    #[test]
    fn panic_in_io_fails_only_that_handler() {
        let lp = get().unwrap();
        let (seen, rx) = mpsc::channel();
        let mut bad = Probe::new("bad", &seen);
        bad.panic_io = true;
        let bad = Arc::new(bad);
        let good = Arc::new(Probe::new("good", &seen));
        let mut worse = Probe::new("worse", &seen);
        worse.panic_io = true;
        worse.panic_again = true;
        let worse = Arc::new(worse);
        for p in [&bad, &good, &worse] {
            register(lp, p);
        }
        let (none, loop_thread) = barrier(lp, &seen, &rx);
        assert!(none.is_empty(), "{none:?}");
        assert_ne!(loop_thread, std::thread::current().id());

        bad.poke();
        assert_eq!(
            wait_for(&rx, &Seen::Panic("bad")),
            [Seen::Io("bad"), Seen::Panic("bad")]
        );
        wait_released(&bad);
        good.poke();
        assert_eq!(wait_for(&rx, &Seen::Io("good")), [Seen::Io("good")]);
        // The failed handler hears nothing more.
        bad.poke();
        good.poke();
        assert_eq!(wait_for(&rx, &Seen::Io("good")), [Seen::Io("good")]);
        assert_eq!(barrier(lp, &seen, &rx), (vec![], loop_thread));

        // on_panic panicking too does not take the loop down.
        worse.poke();
        assert_eq!(
            wait_for(&rx, &Seen::Panic("worse")),
            [Seen::Io("worse"), Seen::Panic("worse")]
        );
        wait_released(&worse);
        worse.poke();
        good.poke();
        assert_eq!(wait_for(&rx, &Seen::Io("good")), [Seen::Io("good")]);

        // A panicking command: the commands posted with it still run.
        let tx = seen.clone();
        lp.post(|_| resume_unwind(Box::new("command panics")));
        lp.post(move |_| {
            let _ = tx.send(Seen::Timer("command after"));
        });
        assert_eq!(
            wait_for(&rx, &Seen::Timer("command after")),
            [Seen::Timer("command after")]
        );
        assert_eq!(barrier(lp, &seen, &rx), (vec![], loop_thread));

        // Good is still registered: deregister it and check it is released.
        let g = good.clone();
        let (tx, done) = mpsc::channel();
        lp.post(move |ctx| {
            let t = g.token.lock().unwrap().take().unwrap();
            ctx.deregister(g.fd, t);
            drop(g);
            let _ = tx.send(());
        });
        done.recv_timeout(WAIT).unwrap();
        wait_released(&good);
        assert!(rx.try_recv().is_err());
    }

    /// A handler panicking in `on_timer` gets `on_panic`; other timers
    /// (earlier, same time, later) still fire on the same loop thread.
    #[test]
    fn panic_in_timer_fails_only_that_handler() {
        let lp = get().unwrap();
        let (seen, rx) = mpsc::channel();
        let mut bad = Probe::new("bad timer", &seen);
        bad.panic_timer = true;
        let bad = Arc::new(bad);
        let first = Arc::new(Probe::new("first", &seen));
        let same = Arc::new(Probe::new("same", &seen));
        let later = Arc::new(Probe::new("later", &seen));
        let (_, loop_thread) = barrier(lp, &seen, &rx);
        let at = Instant::now() + Duration::from_millis(30);
        lp.schedule(first.clone(), at - Duration::from_millis(10));
        lp.schedule(bad.clone(), at);
        lp.schedule(same.clone(), at);
        lp.schedule(later.clone(), at + Duration::from_millis(20));
        let mut got = wait_for(&rx, &Seen::Timer("later"));
        let fired = got.iter().position(|s| *s == Seen::Timer("bad timer"));
        let failed = got.iter().position(|s| *s == Seen::Panic("bad timer"));
        assert_eq!(fired.map(|i| i + 1), failed, "{got:?}");
        // Timers due at the same instant may run in either order.
        got[1..4].sort_by_key(|s| format!("{s:?}"));
        assert_eq!(
            got,
            [
                Seen::Timer("first"),
                Seen::Panic("bad timer"),
                Seen::Timer("bad timer"),
                Seen::Timer("same"),
                Seen::Timer("later")
            ]
        );
        assert!(
            !matches!(
                rx.try_recv(),
                Ok(Seen::Timer(_) | Seen::Panic(_) | Seen::Io(_))
            ),
            "nothing more fires"
        );
        for p in [&bad, &first, &same, &later] {
            wait_released(p);
        }
        // The panicking handler can be scheduled again; the loop is intact.
        let mut again = Probe::new("again", &seen);
        again.panic_timer = true;
        let again = Arc::new(again);
        lp.schedule(again.clone(), Instant::now());
        assert_eq!(
            wait_for(&rx, &Seen::Panic("again")),
            [Seen::Timer("again"), Seen::Panic("again")]
        );
        let id = lp.schedule(later.clone(), Instant::now() + Duration::from_millis(5));
        assert_eq!(wait_for(&rx, &Seen::Timer("later")), [Seen::Timer("later")]);
        lp.cancel_timer(id); // already fired: a no-op
        assert_eq!(barrier(lp, &seen, &rx), (vec![], loop_thread));
    }
}
