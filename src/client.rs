//! One WebSocket instance: the object behind `pj_websock *`.
//!
//! It owns the protocol state (`proto`), the transport (socket and send
//! queue) and the timers, and turns protocol events into application
//! callbacks.
//!
//! Threading: API calls may come from any thread and take `inner`'s lock
//! briefly. Socket reads, timers and every callback run on the event-loop
//! thread. A callback is never invoked with `inner` locked, so it may call
//! back into any API function. Teardown of a socket (epoll deregistration)
//! happens only on the loop thread; API threads post it there.

use std::ffi::c_void;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ffi::types::*;
use crate::net::evloop::{self, Handler, LoopCtx, TimerId, Token};
use crate::net::pjdrv::{self, PjDrv, PjEvent, PjIo, PjSock};
use crate::net::sock::Socket;
use crate::net::tls::{self, HandshakeStep, SockIo, TlsConfig, TlsIoError, TlsSession, TlsStream};
use crate::net::txqueue::{TxQueue, MAX_IOV};
use crate::net::url::WsUrl;
use crate::net::worker;
use crate::proto::close;
use crate::proto::conn::{Conn, Event, Payload};
use crate::proto::frame::{masked_frame_len, OpCode, MAX_HEADER_LEN};
use crate::proto::handshake::{Handshake, HandshakeError};
use crate::status::*;

/// Number of instances whose memory has not been released yet.
pub static LIVE: AtomicUsize = AtomicUsize::new(0);

pub const DEFAULT_MAX_RX: usize = 256 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// Payloads with at least this much still due are read straight into
/// the message buffer (plain TCP, own loop).
const DIRECT_READ_MIN: usize = 16 * 1024;
/// Whole messages of one read delivered per release of the instance lock.
const DELIVER_BATCH: usize = 32;
/// Reads per readiness event before other connections get their turn.
const READS_PER_EVENT: usize = 4;
/// Messages above this size, and send queues backed up beyond it, leave
/// large buffers behind for reuse...
const SHED_MIN: usize = 64 * 1024;
/// ...which the connection gives back this long after (later while the
/// buffers are still in use), whether or not it pings.
const SHED_AFTER: Duration = Duration::from_secs(1);
/// Sends closer together than this (ns) are a burst and get coalesced.
const BURST_GAP_NS: u64 = 50_000;
/// A sender that filled a write (`COALESCE_BYTES`) this recently (ns) is
/// streaming: a longer gap before its next send (its thread was busy
/// with the replies, or preempted) does not end the burst.
const STREAMING_NS: u64 = 1_000_000;
/// A burst is written once this much is queued (at most half the
/// high-water mark, so a sender at the mark never waits for the deadline)...
const COALESCE_BYTES: usize = 128 * 1024;
/// ...or at the latest this long after its first unwritten message.
const COALESCE_DELAY: Duration = Duration::from_micros(200);
/// A message this large is written at once (with whatever is queued before
/// it): holding it back saves no syscall worth the wait.
const LARGE_FRAME: usize = 32 * 1024;
/// A sender in a burst yields its core once after a write when more than
/// this is waiting unread in the socket: the loop thread has fallen behind.
const RX_BACKLOG: usize = 1024 * 1024;
/// How often senders yielded to the loop thread (tests).
#[cfg(test)]
pub(crate) static SENDER_YIELDS: AtomicUsize = AtomicUsize::new(0);

const EV_IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const EV_OUT: u32 = libc::EPOLLOUT as u32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while locked fails one connection; it must not poison the API.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings that live as long as the instance.
#[derive(Clone, Copy)]
struct Config {
    max_rx: usize,
    ping_interval: Option<Duration>,
    connect_timeout: Duration,
    close_timeout: Duration,
    max_buffered: usize,
}

/// Everything `pj_websock_connect` validated, ready to go.
pub struct ConnectRequest {
    pub url: WsUrl,
    pub subprotocols: Option<Vec<u8>>,
    pub extra: Vec<(Vec<u8>, Vec<u8>)>,
    /// The application's `pj_ssl_sock_param`, when it gave one.
    pub ssl_param: Option<SslParamView>,
}

/// TLS settings made through the extension API.
#[derive(Clone, Default)]
struct TlsExt {
    ca_file: Option<String>,
    ca_dir: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    key_password: Option<String>,
    pins: Vec<[u8; 32]>,
    force_verify: bool,
}

/// What a wss:// connection needs besides the socket.
struct TlsPlan {
    cfg: TlsConfig,
    sess: TlsSession,
    timeout: Option<Duration>,
}

/// Outcome of one socket read or write.
enum Io {
    Done(usize),
    WouldBlock,
    Eof,
    Failed(pj_status_t),
}

/// A connection's socket: on the own event loop, or registered with the
/// application's pjlib ioqueue.
enum Sock {
    Os(Socket),
    Pj(Box<PjSock>),
}

impl Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Os(s) => s.read(buf),
            Sock::Pj(p) => p.read(buf),
        }
    }

    fn writev(&mut self, iov: &[libc::iovec]) -> std::io::Result<usize> {
        match self {
            Sock::Os(s) => s.writev(iov),
            Sock::Pj(p) => p.writev(iov),
        }
    }

    /// The result of the connect: PJ_SUCCESS when connected.
    fn connect_result(&self) -> pj_status_t {
        match self {
            Sock::Os(s) => from_os(s.take_error()),
            Sock::Pj(p) => p.connect_result(),
        }
    }

    /// Sets the readiness the connection waits for (EPOLLIN is always on;
    /// EPOLLOUT while `events` has it).
    fn set_interest(&mut self, token: Token, events: u32) {
        match self {
            Sock::Os(s) => {
                if let Some(lp) = evloop::try_get() {
                    let _ = lp.modify(s.fd(), token, events);
                }
            }
            Sock::Pj(p) => p.want_out = events & EV_OUT != 0,
        }
    }

    /// The transport under a TLS stream on this socket.
    fn tls_io(&mut self) -> SockIo {
        match self {
            Sock::Os(s) => SockIo::Fd(s.fd()),
            Sock::Pj(p) => SockIo::Pj(PjIo(&mut **p as *mut PjSock)),
        }
    }
}

/// Buffers of a thread that runs connections: the own loop keeps them in
/// its context, pjlib's polling threads in a thread-local.
#[derive(Default)]
pub struct Bufs {
    rx_buf: Vec<u8>,
    scratch: Vec<u8>,
}

/// The context loop-side code runs in: the own event loop's (which owns
/// the epoll registrations), or a pjlib polling thread's.
enum Cx<'a> {
    Own(&'a mut LoopCtx),
    Pj(&'a mut Bufs),
}

impl Cx<'_> {
    /// The shared receive buffer (taken while in use) and the scratch
    /// space for replies the protocol engine writes.
    fn bufs(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>) {
        match self {
            Cx::Own(c) => (&mut c.rx_buf, &mut c.scratch),
            Cx::Pj(b) => (&mut b.rx_buf, &mut b.scratch),
        }
    }
}

thread_local! {
    static PJ_BUFS: std::cell::Cell<Option<Box<Bufs>>> = const { std::cell::Cell::new(None) };
}

type Cmd = Box<dyn FnOnce(&Arc<Client>, &mut Cx<'_>) + Send>;

/// Serialises an instance's work in pjlib mode: events that arrive on
/// several polling threads at once run one after the other, on whichever
/// thread got there first, so callbacks of one instance never overlap.
#[derive(Default)]
struct Exec {
    busy: bool,
    events: Vec<PjEvent>,
    cmds: Vec<Cmd>,
    /// Destroyed: nothing more runs.
    closed: bool,
}

/// An instance driven by the application's pjlib ioqueue and timer heap.
struct PjMode {
    drv: PjDrv,
    exec: Mutex<Exec>,
}

impl PjMode {
    /// Nothing more runs for the instance; queued work (which holds
    /// references to it) is dropped outside the lock.
    fn close_exec(&self) {
        let cmds = {
            let mut x = lock(&self.exec);
            x.closed = true;
            std::mem::take(&mut x.cmds)
        };
        drop(cmds);
    }
}

/// Holds the instance's group lock (pjlib mode) for an API call, so the
/// lock order is always group lock, then the instance's own lock.
struct GrpGuard<'a>(Option<&'a PjDrv>);

impl Drop for GrpGuard<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.0 {
            d.unlock();
        }
    }
}

fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Resolving,
    Connecting,
    TlsHandshaking,
    Handshaking,
    Open,
    Closing,
}

/// One connection attempt and, if it succeeds, the connection.
struct Link {
    phase: Phase,
    attempt: u64,
    host: String,
    port: u16,
    ip: Option<IpAddr>,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    last_err: pj_status_t,
    sock: Option<(Sock, Token)>,
    masks: Masks,
    tls_plan: Option<TlsPlan>,
    tls_ctx: Option<openssl::ssl::SslContext>,
    tls: Option<Box<TlsStream>>,
    tls_deadline: Option<Instant>,
    hs: Option<Handshake>,
    request: Vec<u8>,
    conn: Option<Box<Conn>>,
    tx: TxQueue,
    out_armed: bool,
    /// A write on an API thread failed; the loop finishes the connection.
    write_err: Option<pj_status_t>,
    /// The protocol engine queued a reply (pong, close) to write.
    reply_pending: bool,
    cancel: bool,
    connect_deadline: Option<Instant>,
    addr_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    /// When coalesced sends must be written at the latest.
    flush_deadline: Option<Instant>,
    /// When buffers left by large messages or a backed-up queue are shed.
    shed_at: Option<Instant>,
    /// `mono_ns()` of the last send (0 = none).
    last_send: u64,
    /// Until when (`mono_ns`) sends count as a burst whatever their gap.
    streaming_until: u64,
    next_ping: Option<Instant>,
    ping_sent_at: Option<u64>,
    /// `mono_ns()` of the last read from the peer.
    last_rx: u64,
    /// The scheduled timer (own loop: its id) and its deadline.
    timer: Option<(Option<TimerId>, Instant)>,
    close_received: Option<(u16, String)>,
}

struct Inner {
    state: pj_websock_readystate,
    cfg: Config,
    link: Option<Box<Link>>,
    attempt: u64,
    info: pj_websock_close_info,
    subprotocol: Option<String>,
    http_status: u16,
    response_head: Vec<u8>,
    tls_ext: TlsExt,
    verify_result: i32,
    /// Threads in `wait_buffered` and the highest level one waits for.
    drain_waiters: u32,
    drain_level: usize,
}

/// Keeps callbacks and destroy apart without a lock per callback: a
/// callback starts only if `destroyed` is unset after `running` was
/// raised, and destroy waits (on `cv`) while `running` is raised after
/// setting `destroyed` — sequentially consistent, so one of the two sees
/// the other.
struct Gate {
    destroyed: AtomicBool,
    /// Callbacks in progress (one thread delivers at a time).
    running: AtomicUsize,
    /// pthread_self() of the thread running a callback.
    thread: AtomicUsize,
    mu: Mutex<()>,
    cv: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            destroyed: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            thread: AtomicUsize::new(0),
            mu: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Before a callback: false if the instance is destroyed (then the
    /// callback must not run).
    fn enter(&self) -> bool {
        self.thread.store(this_thread(), Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.destroyed.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 && self.destroyed.load(Ordering::SeqCst)
        {
            let _g = lock(&self.mu);
            self.cv.notify_all();
        }
    }

    /// Marks the instance destroyed and waits for a callback running on
    /// another thread to return (one on this thread is the caller).
    fn close(&self) {
        self.destroyed.store(true, Ordering::SeqCst);
        let me = this_thread();
        let mut g = lock(&self.mu);
        while self.running.load(Ordering::SeqCst) > 0 && self.thread.load(Ordering::Relaxed) != me {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The object behind `pj_websock *`.
pub struct Client {
    inner: Mutex<Inner>,
    cb: pj_websock_cb,
    user_data: AtomicPtr<c_void>,
    /// The application's `pj_ssl_sock_param *` (read at each connect, as
    /// upstream does), stored as an address.
    ssl_param: usize,
    gate: Gate,
    /// Set when the application's ioqueue and timer heap drive the
    /// instance; None on the own event loop.
    pj: Option<Box<PjMode>>,
    /// Signalled (with `inner`) when the send queue drains to a waiting
    /// thread's level or the connection ends.
    drain: Condvar,
}

/// A callback to make once the lock is released.
enum Deliver<'a> {
    Connect(pj_status_t),
    Message(OpCode, Payload<'a>),
    Close(u16, String),
}

/// Monotonic time in nanoseconds: cheaper than `Instant` arithmetic on
/// the per-message paths.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and output struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The masking keys of a connection's frames, drawn from the CSPRNG 16 at
/// a time: one thread-local RNG access per 16 frames instead of one per
/// frame (a stream of small frames spends measurable time there). Each
/// key is used once.
struct Masks {
    keys: [u8; 64],
    next: u8,
}

impl Masks {
    fn new() -> Masks {
        Masks {
            keys: [0; 64],
            next: 64,
        }
    }

    fn take(&mut self) -> [u8; 4] {
        if usize::from(self.next) >= self.keys.len() {
            rand::fill(&mut self.keys[..]);
            self.next = 0;
        }
        let i = usize::from(self.next);
        self.next += 4;
        let k = self.keys.get(i..i + 4).unwrap_or_default();
        [k[0], k[1], k[2], k[3]]
    }
}

/// `wait_buffered`'s answer when it need not wait: the queue is down to
/// the level, or there is no open (or closing) connection.
fn drain_status(g: &Inner, at_most: usize) -> Option<pj_status_t> {
    use pj_websock_readystate::{PJ_WEBSOCK_STATE_CLOSING, PJ_WEBSOCK_STATE_OPEN};
    match (g.link.as_ref(), g.state) {
        (Some(l), PJ_WEBSOCK_STATE_OPEN | PJ_WEBSOCK_STATE_CLOSING) => {
            (l.buffered() <= at_most).then_some(PJ_SUCCESS)
        }
        _ => Some(PJ_EINVALIDOP),
    }
}

fn handshake_status(e: &HandshakeError) -> pj_status_t {
    match e {
        HandshakeError::BadHeader => PJ_EINVAL,
        HandshakeError::Malformed => PJ_WEBSOCK_EHS_MALFORMED,
        HandshakeError::TooLarge => PJ_WEBSOCK_EHS_TOOLARGE,
        HandshakeError::BadStatus(_) => PJ_WEBSOCK_EHS_STATUS,
        HandshakeError::BadUpgrade => PJ_WEBSOCK_EHS_UPGRADE,
        HandshakeError::BadConnection => PJ_WEBSOCK_EHS_CONNECTION,
        HandshakeError::BadAccept => PJ_WEBSOCK_EHS_ACCEPT,
        HandshakeError::BadSubprotocol => PJ_WEBSOCK_EHS_SUBPROTOCOL,
        HandshakeError::BadExtension => PJ_WEBSOCK_EHS_EXTENSION,
    }
}

fn protocol_status(code: u16) -> pj_status_t {
    match code {
        1007 => PJ_WEBSOCK_EUTF8,
        1009 => PJ_WEBSOCK_EMSGTOOBIG,
        _ => PJ_WEBSOCK_EPROTOCOL,
    }
}

fn io_status(e: &std::io::Error) -> pj_status_t {
    from_os(e.raw_os_error().unwrap_or(libc::EIO))
}

fn no_close_info() -> pj_websock_close_info {
    pj_websock_close_info {
        initiator: pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_NONE,
        clean: 0,
        code_sent: 0,
        code_received: 0,
        status: PJ_SUCCESS,
    }
}

/// A TLS read's result as an `Io`.
fn tls_read_outcome(r: Result<usize, TlsIoError>) -> Io {
    match r {
        Ok(0) | Err(TlsIoError::Eof) => Io::Eof,
        Ok(n) => Io::Done(n),
        Err(TlsIoError::WouldBlock) => Io::WouldBlock,
        Err(TlsIoError::Failed(s)) => Io::Failed(s),
    }
}

/// A socket read's result as an `Io`; None for EINTR (read again).
fn read_outcome(r: std::io::Result<usize>) -> Option<Io> {
    match r {
        Ok(0) => Some(Io::Eof),
        Ok(n) => Some(Io::Done(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(Io::WouldBlock),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Err(e) => Some(Io::Failed(io_status(&e))),
    }
}

impl Link {
    fn new(
        attempt: u64,
        url: &WsUrl,
        hs: Handshake,
        request: Vec<u8>,
        deadline: Instant,
        tls_plan: Option<TlsPlan>,
    ) -> Link {
        Link {
            phase: Phase::Resolving,
            attempt,
            host: url.host.clone(),
            port: url.port,
            ip: url.host.parse::<IpAddr>().ok(),
            addrs: Vec::new(),
            next_addr: 0,
            last_err: PJ_ERESOLVE,
            sock: None,
            masks: Masks::new(),
            tls_plan,
            tls_ctx: None,
            tls: None,
            tls_deadline: None,
            hs: Some(hs),
            request,
            conn: None,
            tx: TxQueue::default(),
            out_armed: false,
            write_err: None,
            reply_pending: false,
            cancel: false,
            connect_deadline: Some(deadline),
            addr_deadline: None,
            close_deadline: None,
            flush_deadline: None,
            shed_at: None,
            last_send: 0,
            streaming_until: 0,
            next_ping: None,
            ping_sent_at: None,
            last_rx: mono_ns(),
            timer: None,
            close_received: None,
        }
    }

    fn buffered(&self) -> usize {
        self.tx.len() + self.tls.as_ref().map_or(0, |t| t.out_pending())
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        [
            self.connect_deadline,
            self.addr_deadline,
            self.tls_deadline,
            self.close_deadline,
            self.flush_deadline,
            self.shed_at,
            self.next_ping,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn io_read(&mut self, buf: &mut [u8]) -> Io {
        let Some((sock, _)) = self.sock.as_mut() else {
            return Io::Eof;
        };
        if let Some(t) = self.tls.as_mut() {
            return tls_read_outcome(t.read(buf));
        }
        loop {
            if let Some(io) = read_outcome(sock.read(buf)) {
                return io;
            }
        }
    }

    /// The own loop (plain TCP or TLS) with a large payload due: reads
    /// into the message buffer (`Conn::payload_room`). None when that does not
    /// apply; else the read's outcome and the event it completed. Replies
    /// the engine generates go to `out`.
    fn read_direct(&mut self, out: &mut Vec<u8>) -> Option<(Io, Option<Event<'static>>, usize)> {
        let (Some((Sock::Os(sock), _)), Some(conn)) = (self.sock.as_ref(), self.conn.as_mut())
        else {
            return None;
        };
        let room = conn.payload_room(DIRECT_READ_MIN)?;
        let asked = room.len();
        let io = match self.tls.as_mut() {
            // OpenSSL decrypts straight into the message (a record at a time).
            Some(t) => tls_read_outcome(t.read_uninit(room)),
            None => loop {
                if let Some(io) = read_outcome(sock.read_uninit(room)) {
                    break io;
                }
            },
        };
        let ev = match io {
            // SAFETY: the kernel wrote n bytes at the start of `room`.
            Io::Done(n) => unsafe { conn.payload_filled(n, out, &mut || self.masks.take()) },
            _ => None,
        };
        Some((io, ev, asked))
    }

    /// Gives a delivered message's buffer back to the engine for the
    /// next message. True when it is large and started the shedding
    /// clock (the caller rearms the timer).
    fn recycle(&mut self, buf: Vec<u8>) -> bool {
        let big = buf.capacity() > SHED_MIN;
        if let Some(conn) = self.conn.as_mut() {
            conn.recycle(buf);
        }
        big && self.shed_later()
    }

    /// Large buffers are kept for reuse: schedule giving them back. True
    /// when the timer must be rearmed.
    fn shed_later(&mut self) -> bool {
        if self.shed_at.is_some() {
            return false;
        }
        self.shed_at = Some(Instant::now() + SHED_AFTER);
        true
    }

    /// Gives back the buffers large messages or a backed-up queue left
    /// behind; false while some are still in use (try again later).
    fn shed(&mut self) -> bool {
        let rx = self.conn.as_mut().is_none_or(|c| c.shed(SHED_MIN));
        let tx = self.tx.shed();
        if let Some(t) = self.tls.as_mut() {
            t.trim();
        }
        rx && tx
    }

    /// The close handshake has begun: no more pings; the connection ends
    /// by the close timeout at the latest (the caller rearms the timer).
    fn enter_closing(&mut self, close_timeout: Duration) {
        self.phase = Phase::Closing;
        self.next_ping = None;
        self.close_deadline = Some(Instant::now() + close_timeout);
    }

    /// Writes from the front of the send queue: several chunks at once
    /// over TCP, the front chunk through TLS.
    fn write_some(&mut self) -> Io {
        let Some((sock, _)) = self.sock.as_mut() else {
            return Io::Eof;
        };
        if let Some(t) = self.tls.as_mut() {
            return match t.write(self.tx.front()) {
                Ok(n) => Io::Done(n),
                Err(TlsIoError::WouldBlock) => Io::WouldBlock,
                Err(TlsIoError::Eof) => Io::Failed(PJ_EEOF),
                Err(TlsIoError::Failed(s)) => Io::Failed(s),
            };
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let n = self.tx.iovecs(&mut iov);
        loop {
            return match sock.writev(&iov[..n]) {
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Io::WouldBlock,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Io::Failed(io_status(&e)),
            };
        }
    }

    /// Writes as much of the send queue as the socket takes and keeps the
    /// EPOLLOUT interest in step with what is left. Callable from any
    /// thread with the instance locked.
    fn flush(&mut self) -> Result<(), pj_status_t> {
        if self.sock.is_none() {
            return Ok(());
        }
        if let Some(t) = self.tls.as_mut() {
            match t.send_pending() {
                Ok(()) | Err(TlsIoError::WouldBlock) => {}
                Err(TlsIoError::Eof) => return Err(PJ_EEOF),
                Err(TlsIoError::Failed(e)) => return Err(e),
            }
        }
        while !self.tx.is_empty() {
            match self.write_some() {
                Io::Done(n) => self.tx.consume(n),
                Io::WouldBlock => break,
                Io::Eof => return Err(PJ_EEOF),
                Io::Failed(e) => return Err(e),
            }
        }
        let pending = !self.tx.is_empty();
        if !pending {
            self.flush_deadline = None;
        }
        // TLS may need the socket writable to make progress on a read, or
        // to send the records of a corked write.
        let pending = pending
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.want_write || t.out_pending() > 0);
        if pending != self.out_armed && self.phase != Phase::Connecting {
            self.interest(if pending { EV_IN | EV_OUT } else { EV_IN });
            self.out_armed = pending;
        }
        Ok(())
    }

    fn interest(&mut self, events: u32) {
        if let Some((sock, token)) = self.sock.as_mut() {
            sock.set_interest(*token, events);
        }
    }
}

impl Client {
    /// A new instance. With `param->ioqueue` (and `timer_heap`) set it is
    /// driven by the application's pjlib objects: that needs pjlib in the
    /// process (else PJ_ENOTSUP) and a pool (else PJ_EINVAL).
    pub fn new(pool: *mut pj_pool_t, param: &pj_websock_param) -> Result<Arc<Client>, pj_status_t> {
        let pj = if param.ioqueue.is_null() {
            None
        } else {
            if param.timer_heap.is_null() {
                return Err(PJ_EINVAL);
            }
            if !pjdrv::available() {
                return Err(PJ_ENOTSUP);
            }
            let drv = PjDrv::new(
                pool as *mut c_void,
                param.ioqueue as *mut c_void,
                param.timer_heap as *mut c_void,
                param.grp_lock as *mut c_void,
            )?;
            Some(Box::new(PjMode {
                drv,
                exec: Mutex::new(Exec::default()),
            }))
        };
        LIVE.fetch_add(1, Ordering::Relaxed);
        let ping = match param.ping_interval {
            0 => None,
            s => Some(Duration::from_secs(s as u64)),
        };
        let c = Arc::new(Client {
            inner: Mutex::new(Inner {
                state: pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED,
                cfg: Config {
                    max_rx: if param.max_rx_msg_size == 0 {
                        DEFAULT_MAX_RX
                    } else {
                        param.max_rx_msg_size
                    },
                    ping_interval: ping,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    close_timeout: DEFAULT_CLOSE_TIMEOUT,
                    max_buffered: DEFAULT_MAX_BUFFERED,
                },
                link: None,
                attempt: 0,
                info: no_close_info(),
                subprotocol: None,
                http_status: 0,
                response_head: Vec::new(),
                tls_ext: TlsExt::default(),
                verify_result: 0,
                drain_waiters: 0,
                drain_level: 0,
            }),
            cb: param.cb,
            user_data: AtomicPtr::new(param.user_data),
            ssl_param: param.ssl_param as usize,
            gate: Gate::new(),
            pj,
            drain: Condvar::new(),
        });
        if let Some(pj) = c.pj.as_ref() {
            pj.drv
                .attach::<Client>(Arc::into_raw(c.clone()) as *const c_void);
        }
        Ok(c)
    }

    /// Takes the group lock for an API call in pjlib mode.
    fn api_guard(&self) -> GrpGuard<'_> {
        match self.pj.as_ref() {
            Some(pj) => {
                pjdrv::enter_thread();
                pj.drv.lock();
                GrpGuard(Some(&pj.drv))
            }
            None => GrpGuard(None),
        }
    }

    /// Runs `f` on the thread that drives the instance: the own loop, or
    /// (pjlib mode) a polling thread, through the timer heap.
    fn post(self: &Arc<Self>, f: impl FnOnce(&Arc<Client>, &mut Cx<'_>) + Send + 'static) {
        match self.pj.as_ref() {
            None => {
                let me = self.clone();
                if let Ok(lp) = evloop::get() {
                    lp.post(move |ctx| f(&me, &mut Cx::Own(ctx)));
                }
            }
            Some(pj) => {
                {
                    let mut x = lock(&pj.exec);
                    if x.closed {
                        return;
                    }
                    x.cmds.push(Box::new(f));
                }
                pj.drv.kick();
            }
        }
    }

    // ----- API (any thread) -------------------------------------------

    pub fn state(&self) -> pj_websock_readystate {
        lock(&self.inner).state
    }

    pub fn user_data(&self) -> *mut c_void {
        self.user_data.load(Ordering::Acquire)
    }

    pub fn set_user_data(&self, p: *mut c_void) {
        self.user_data.store(p, Ordering::Release)
    }

    pub fn close_info(&self) -> pj_websock_close_info {
        lock(&self.inner).info
    }

    pub fn buffered_amount(&self) -> usize {
        lock(&self.inner).link.as_ref().map_or(0, |l| l.buffered())
    }

    /// Waits until at most `at_most` bytes are queued (PJ_SUCCESS), the
    /// connection is gone or not open (PJ_EINVALIDOP) or `timeout` passed
    /// (PJ_ETIMEDOUT). In poll mode the caller's thread runs the loop
    /// meanwhile. A call that would wait on the thread the instance's
    /// events need gets PJ_EINVALIDOP instead.
    pub fn wait_buffered(self: &Arc<Self>, at_most: usize, timeout: Duration) -> pj_status_t {
        let deadline = Instant::now().checked_add(timeout);
        let lp = match self.pj.as_ref() {
            None => evloop::try_get(),
            Some(_) => None,
        };
        // Poll mode: the loop this thread runs while it waits.
        let poller = lp.filter(|l| l.mode() == evloop::Mode::Poll);
        {
            // A burst held back for coalescing goes out now rather than at
            // its deadline (as send does when the mark is reached).
            let _gl = self.api_guard();
            let mut g = lock(&self.inner);
            if let Some(st) = drain_status(&g, at_most) {
                drop(g);
                drop(_gl);
                // Poll mode: run the loop once anyway, so that a caller
                // retrying a send in a loop (say, with a level above what
                // its next message needs) cannot starve it.
                if let Some(l) = poller {
                    let _ = l.poll(Duration::ZERO);
                }
                return st;
            }
            if let Some(link) = g.link.as_mut() {
                if link.flush_deadline.is_some() && !link.out_armed && link.write_err.is_none() {
                    if let Err(e) = link.flush() {
                        self.defer_write_error(link, e);
                    }
                }
            }
        }
        let own_thread = match lp {
            Some(l) if poller.is_none() => l.on_loop_thread(),
            _ => {
                self.gate.running.load(Ordering::SeqCst) > 0
                    && self.gate.thread.load(Ordering::Relaxed) == this_thread()
            }
        };
        loop {
            let mut g = lock(&self.inner);
            if let Some(st) = drain_status(&g, at_most) {
                return st;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return PJ_ETIMEDOUT;
            }
            if own_thread {
                return PJ_EINVALIDOP; // nothing would drain the queue
            }
            if let Some(l) = poller {
                drop(g);
                match l.poll(left.min(Duration::from_secs(3600))) {
                    Ok(_) => continue,
                    Err(evloop::PollError::Busy) => {
                        // Another thread polls: wait for its progress.
                        g = lock(&self.inner);
                        if let Some(st) = drain_status(&g, at_most) {
                            return st;
                        }
                    }
                    Err(_) => return PJ_EINVALIDOP, // inside a callback
                }
            }
            g.drain_waiters += 1;
            g.drain_level = g.drain_level.max(at_most);
            // Polled by another thread: look again now and then, as its
            // poll may end before ours could start.
            let nap = if poller.is_some() {
                left.min(Duration::from_millis(10))
            } else {
                left
            };
            let (mut g, _) = self
                .drain
                .wait_timeout(g, nap)
                .unwrap_or_else(|e| e.into_inner());
            g.drain_waiters -= 1;
            if g.drain_waiters == 0 {
                g.drain_level = 0;
            }
        }
    }

    /// Wakes the threads in `wait_buffered` once one of them need not
    /// wait any longer: the queue is down to the highest level waited
    /// for, or the connection ended or was destroyed.
    fn wake_drained(&self, g: &Inner) {
        if g.drain_waiters > 0 && drain_status(g, g.drain_level).is_some() {
            self.drain.notify_all();
        }
    }

    pub fn subprotocol(&self) -> Option<String> {
        lock(&self.inner).subprotocol.clone()
    }

    pub fn http_response(&self) -> (u16, Vec<u8>) {
        let g = lock(&self.inner);
        (g.http_status, g.response_head.clone())
    }

    /// The application's `pj_ssl_sock_param *` (may be NULL).
    pub fn ssl_param(&self) -> *const pj_ssl_sock_param {
        self.ssl_param as *const pj_ssl_sock_param
    }

    pub fn set_tls_ca(&self, file: Option<String>, dir: Option<String>) {
        let mut g = lock(&self.inner);
        g.tls_ext.ca_file = file;
        g.tls_ext.ca_dir = dir;
    }

    pub fn set_tls_cert(
        &self,
        cert: Option<String>,
        key: Option<String>,
        password: Option<String>,
    ) {
        let mut g = lock(&self.inner);
        g.tls_ext.cert_file = cert;
        g.tls_ext.key_file = key;
        g.tls_ext.key_password = password;
    }

    pub fn add_tls_pin(&self, pin: Option<[u8; 32]>) {
        let mut g = lock(&self.inner);
        match pin {
            Some(p) => g.tls_ext.pins.push(p),
            None => g.tls_ext.pins.clear(),
        }
    }

    pub fn set_tls_force_verify(&self, on: bool) {
        lock(&self.inner).tls_ext.force_verify = on;
    }

    pub fn tls_verify_result(&self) -> i32 {
        lock(&self.inner).verify_result
    }

    pub fn set_max_buffered(&self, n: usize) {
        lock(&self.inner).cfg.max_buffered = n;
    }

    pub fn set_connect_timeout(&self, d: Duration) {
        lock(&self.inner).cfg.connect_timeout = d;
    }

    pub fn set_close_timeout(&self, d: Duration) {
        lock(&self.inner).cfg.close_timeout = d;
    }

    /// Takes effect for the open connection at its next ping.
    pub fn set_ping_interval(self: &Arc<Self>, d: Option<Duration>) {
        let _gl = self.api_guard();
        let mut g = lock(&self.inner);
        g.cfg.ping_interval = d;
        if let Some(link) = g.link.as_mut() {
            if link.phase == Phase::Open {
                link.next_ping = d.map(|d| Instant::now() + d);
                link.ping_sent_at = None;
                self.rearm(link);
            }
        }
    }

    pub fn connect(self: &Arc<Self>, req: ConnectRequest) -> pj_status_t {
        if self.pj.is_none() && evloop::get().is_err() {
            return PJ_WEBSOCK_ELOOP;
        }
        let _gl = self.api_guard();
        let mut key = [0u8; 16];
        rand::fill(&mut key);
        let extra: Vec<(&[u8], &[u8])> = req
            .extra
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let (hs, request) = match Handshake::new(
            &req.url.host_header(),
            &req.url.resource,
            req.subprotocols.as_deref(),
            &extra,
            key,
        ) {
            Ok(x) => x,
            Err(_) => return PJ_EINVAL,
        };
        let mut g = lock(&self.inner);
        if g.state != pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED || g.link.is_some() {
            return PJ_EINVALIDOP;
        }
        let plan = if req.url.secure {
            match tls_plan(&g.tls_ext, &req) {
                Ok(p) => Some(p),
                Err(e) => return e,
            }
        } else {
            None
        };
        g.attempt += 1;
        g.verify_result = 0;
        let attempt = g.attempt;
        let deadline = Instant::now() + g.cfg.connect_timeout;
        let mut link = Box::new(Link::new(attempt, &req.url, hs, request, deadline, plan));
        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CONNECTING;
        g.info = no_close_info();
        g.subprotocol = None;
        g.http_status = 0;
        g.response_head = Vec::new();
        self.rearm(&mut link);
        g.link = Some(link);
        drop(g);
        self.post(move |me, cx| me.start(cx, attempt));
        PJ_SUCCESS
    }

    pub fn send(self: &Arc<Self>, op: OpCode, data: &[u8]) -> pj_status_t {
        let _gl = self.api_guard();
        let mut g = lock(&self.inner);
        if g.state != pj_websock_readystate::PJ_WEBSOCK_STATE_OPEN {
            return PJ_EINVALIDOP;
        }
        let max = g.cfg.max_buffered;
        let Some(link) = g.link.as_mut() else {
            return PJ_EINVALIDOP;
        };
        if link.conn.as_ref().is_none_or(|c| c.close_sent()) {
            return PJ_EINVALIDOP;
        }
        // The mark bounds the bytes queued, frame headers included.
        let frame = masked_frame_len(data.len());
        let over_mark = |queued: usize| queued > 0 && queued.saturating_add(frame) > max;
        let mut buffered = link.buffered();
        if over_mark(buffered) {
            // A burst held back for coalescing goes out now rather than
            // make the sender wait for its deadline.
            if link.flush_deadline.is_none() || link.out_armed || link.write_err.is_some() {
                return PJ_EBUSY;
            }
            if let Err(e) = link.flush() {
                self.defer_write_error(link, e);
                return PJ_EBUSY;
            }
            buffered = link.buffered();
            if over_mark(buffered) {
                return PJ_EBUSY;
            }
        }
        let Some(conn) = link.conn.as_mut() else {
            return PJ_EINVALIDOP;
        };
        let coalescing = link.flush_deadline.is_some() && buffered > 0;
        link.tx.append_with(data.len() + MAX_HEADER_LEN, |b| {
            conn.send_frame(op, data, link.masks.take(), b)
        });
        if (data.len() > SHED_MIN || link.tx.len() > SHED_MIN) && link.shed_later() {
            self.rearm(link);
        }
        if link.out_armed || link.write_err.is_some() {
            return PJ_SUCCESS; // the loop drains the queue when writable
        }
        // A send right after another is part of a burst: coalesce it with
        // the next ones into one write instead of a syscall per message.
        // Within a burst already being coalesced the clock is not needed.
        let burst = coalescing || {
            let now = mono_ns();
            let b = link.last_send != 0 && now.saturating_sub(link.last_send) < BURST_GAP_NS
                || now < link.streaming_until;
            link.last_send = now;
            b
        };
        let full = link.buffered() >= COALESCE_BYTES.min(max / 2);
        if burst && full && frame < LARGE_FRAME {
            link.streaming_until = mono_ns() + STREAMING_NS;
        }
        let mut behind = false;
        if !burst || frame >= LARGE_FRAME || full {
            if let Err(e) = link.flush() {
                self.defer_write_error(link, e);
            }
            behind = burst && frame < LARGE_FRAME && self.loop_behind(link);
        } else if link.flush_deadline.is_none() {
            link.flush_deadline = Some(Instant::now() + COALESCE_DELAY);
            self.rearm(link);
        }
        if behind {
            // A sender sharing a core with the loop thread can keep it for
            // milliseconds while megabytes of replies pile up unread (and
            // leave the caches): let the loop catch up now. Elsewhere the
            // loop runs on its own core and this returns at once.
            drop(g);
            #[cfg(test)]
            SENDER_YIELDS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        }
        PJ_SUCCESS
    }

    /// The connection's socket (own loop), for tests to tune.
    #[cfg(test)]
    pub(crate) fn socket_fd(&self) -> Option<std::os::fd::RawFd> {
        match lock(&self.inner).link.as_ref()?.sock.as_ref()? {
            (Sock::Os(s), _) => Some(s.fd()),
            (Sock::Pj(_), _) => None,
        }
    }

    /// On a sending thread with the own loop running on its own thread:
    /// has the loop fallen behind reading this connection?
    fn loop_behind(&self, link: &Link) -> bool {
        let Some((Sock::Os(s), _)) = link.sock.as_ref() else {
            return false; // pjlib mode: the application's threads read
        };
        evloop::try_get()
            .is_some_and(|lp| lp.mode() == evloop::Mode::Thread && !lp.on_loop_thread())
            && s.unread() > RX_BACKLOG
    }

    /// A write failed on an API thread: let the loop end the connection.
    fn defer_write_error(self: &Arc<Self>, link: &mut Link, e: pj_status_t) {
        link.write_err = Some(e);
        // EPOLLOUT on a failed socket fires at once (pjlib mode: at the
        // next kick); the loop sees write_err.
        link.interest(EV_IN | EV_OUT);
        link.out_armed = true;
        if self.pj.is_some() {
            self.post(|_, _| {});
        }
    }

    pub fn close(self: &Arc<Self>, code: u16, reason: &[u8]) -> pj_status_t {
        let _gl = self.api_guard();
        let mut g = lock(&self.inner);
        match g.state {
            pj_websock_readystate::PJ_WEBSOCK_STATE_OPEN => {}
            pj_websock_readystate::PJ_WEBSOCK_STATE_CONNECTING => {
                // Abort the attempt; on_connect(PJ_ECANCELLED) follows.
                let Some(link) = g.link.as_mut() else {
                    return PJ_EINVALIDOP;
                };
                if link.cancel {
                    return PJ_EINVALIDOP;
                }
                link.cancel = true;
                let attempt = link.attempt;
                drop(g);
                self.post(move |me, cx| me.abort(cx, attempt));
                return PJ_SUCCESS;
            }
            _ => return PJ_EINVALIDOP,
        }
        let close_timeout = g.cfg.close_timeout;
        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSING;
        g.info.initiator = pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_LOCAL;
        g.info.code_sent = code;
        let Some(link) = g.link.as_mut() else {
            return PJ_EINVALIDOP;
        };
        let Some(conn) = link.conn.as_mut() else {
            return PJ_EINVALIDOP;
        };
        let code = if code == 0 { None } else { Some(code) };
        link.tx.append_with(2 + reason.len() + MAX_HEADER_LEN, |b| {
            conn.send_close(code, reason, link.masks.take(), b)
        });
        link.enter_closing(close_timeout);
        if !link.out_armed && link.write_err.is_none() {
            if let Err(e) = link.flush() {
                self.defer_write_error(link, e);
            }
        }
        self.rearm(link);
        PJ_SUCCESS
    }

    /// Stops all callbacks and releases the transport. After this returns
    /// no callback starts; one running on another thread has returned.
    pub fn destroy(self: &Arc<Self>) {
        // From inside a callback (its thread is this one) there is
        // nothing to wait for.
        self.gate.close();
        if let Some(pj) = self.pj.as_ref() {
            // pjlib mode: the socket leaves the application's ioqueue and
            // the timers its heap before this returns, as upstream does.
            let gl = self.api_guard();
            let link = {
                let mut g = lock(&self.inner);
                g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED;
                self.wake_drained(&g);
                g.link.take()
            };
            pj.close_exec();
            if let Some(link) = link {
                let mut bufs = Bufs::default();
                self.release(&mut Cx::Pj(&mut bufs), link);
            }
            drop(gl);
            pj.drv.detach();
            return;
        }
        let mut g = lock(&self.inner);
        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED;
        self.wake_drained(&g);
        if g.link.is_some() {
            drop(g);
            self.post(|me, cx| {
                let link = lock(&me.inner).link.take();
                if let Some(link) = link {
                    me.release(cx, link);
                }
            });
        }
    }

    fn is_destroyed(&self) -> bool {
        self.gate.destroyed.load(Ordering::SeqCst)
    }

    // ----- loop thread ------------------------------------------------

    /// Closes the socket and cancels the timer of a finished link.
    fn release(&self, cx: &mut Cx<'_>, mut link: Box<Link>) {
        if let Some((id, _)) = link.timer.take() {
            self.cancel_timer(id);
        }
        // The TLS stream refers to the socket: it goes first.
        link.tls = None;
        self.close_sock(cx, &mut link);
    }

    /// Closes a link's socket (deregistering it from the own loop, or
    /// unregistering it from the application's ioqueue).
    fn close_sock(&self, cx: &mut Cx<'_>, link: &mut Link) {
        match (link.sock.take(), cx) {
            (Some((Sock::Os(sock), token)), Cx::Own(ctx)) => {
                ctx.deregister(sock.fd(), token);
                drop(sock);
            }
            (s, _) => drop(s), // a PjSock unregisters on drop
        }
    }

    fn cancel_timer(&self, id: Option<TimerId>) {
        match (self.pj.as_ref(), id) {
            (Some(pj), _) => pj.drv.set_timer(None),
            (None, Some(id)) => {
                if let Some(lp) = evloop::try_get() {
                    lp.cancel_timer(id);
                }
            }
            (None, None) => {}
        }
    }

    /// (Re)schedules the instance's single timer at its earliest deadline.
    fn rearm(self: &Arc<Self>, link: &mut Link) {
        let want = link.earliest_deadline();
        match (link.timer, want) {
            (Some((_, at)), Some(w)) if at == w => {}
            (cur, want) => {
                if let Some(pj) = self.pj.as_ref() {
                    pj.drv.set_timer(want);
                    link.timer = want.map(|w| (None, w));
                    return;
                }
                let Some(lp) = evloop::try_get() else { return };
                if let Some((Some(id), _)) = cur {
                    lp.cancel_timer(id);
                }
                link.timer = want.map(|w| (Some(lp.schedule(self.clone(), w)), w));
            }
        }
    }

    fn start(self: &Arc<Self>, cx: &mut Cx<'_>, attempt: u64) {
        let mut g = lock(&self.inner);
        let Some(link) = g.link.as_mut() else { return };
        if link.attempt != attempt || link.phase != Phase::Resolving || link.cancel {
            return;
        }
        let tls_cfg = link.tls_plan.as_ref().map(|p| p.cfg.clone());
        if let (Some(ip), None) = (link.ip, &tls_cfg) {
            // Plain ws:// to an IP literal: nothing blocking to do.
            link.addrs = vec![SocketAddr::new(ip, link.port)];
            let d = self.try_next_addr(cx, &mut g);
            drop(g);
            self.deliver_all(d);
            return;
        }
        let (host, port, ip) = (link.host.clone(), link.port, link.ip);
        drop(g);
        let me = self.clone();
        if let Some(pj) = self.pj.as_ref() {
            // The record must outlive the job's hand-back.
            pj.drv.add_ref();
        }
        worker::run(move || {
            let tls = tls_cfg.map(|c| tls::context(&c));
            let addrs = match ip {
                Some(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                None => worker::lookup(&host, port),
            };
            me.post(move |me, cx| me.on_resolved(cx, attempt, addrs, tls));
            if let Some(pj) = me.pj.as_ref() {
                pjdrv::enter_thread();
                pj.drv.unref();
            }
        });
    }

    fn on_resolved(
        self: &Arc<Self>,
        cx: &mut Cx<'_>,
        attempt: u64,
        res: Result<Vec<SocketAddr>, ()>,
        tls: Option<Result<openssl::ssl::SslContext, pj_status_t>>,
    ) {
        let mut g = lock(&self.inner);
        let Some(link) = g.link.as_mut() else { return };
        if link.attempt != attempt || link.phase != Phase::Resolving {
            return;
        }
        let d = match (res, tls) {
            (_, Some(Err(e))) => self.fail_connect(cx, &mut g, e),
            (Ok(addrs), tls) => {
                link.addrs = addrs;
                link.tls_ctx = tls.and_then(|t| t.ok());
                self.try_next_addr(cx, &mut g)
            }
            (Err(()), _) => self.fail_connect(cx, &mut g, PJ_ERESOLVE),
        };
        drop(g);
        self.deliver_all(d);
    }

    fn abort(self: &Arc<Self>, cx: &mut Cx<'_>, attempt: u64) {
        let mut g = lock(&self.inner);
        let Some(link) = g.link.as_ref() else { return };
        if link.attempt != attempt || matches!(link.phase, Phase::Open | Phase::Closing) {
            return;
        }
        let d = self.fail_connect(cx, &mut g, PJ_ECANCELLED);
        drop(g);
        self.deliver_all(d);
    }

    /// Starts a TCP connect to the next resolved address, or fails the
    /// attempt when none is left.
    fn try_next_addr(self: &Arc<Self>, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        self.close_sock(cx, link);
        while link.next_addr < link.addrs.len() {
            let addr = link.addrs[link.next_addr];
            link.next_addr += 1;
            match self.open_sock(cx, &addr) {
                Ok((sock, token)) => {
                    let now = Instant::now();
                    let remaining = link.connect_deadline.map_or(DEFAULT_CONNECT_TIMEOUT, |d| {
                        d.saturating_duration_since(now)
                    });
                    let left = (link.addrs.len() - link.next_addr + 1) as u32;
                    // The last address gets what remains. Others share the
                    // budget (at least 3 s each on a slow network), but get
                    // at most 5 s (a black-holed address must not hold up
                    // the rest) and at most half of what remains.
                    let per = if left <= 1 {
                        remaining
                    } else {
                        (remaining / left)
                            .max(remaining.min(Duration::from_secs(3)))
                            .min(Duration::from_secs(5))
                            .min(remaining / 2)
                    };
                    link.sock = Some((sock, token));
                    link.phase = Phase::Connecting;
                    link.out_armed = true;
                    link.addr_deadline = Some(now + per);
                    self.rearm(link);
                    return None;
                }
                Err(e) => link.last_err = e,
            }
        }
        let err = link.last_err;
        self.fail_connect(cx, g, err)
    }

    /// Creates a socket, starts connecting it to `addr` and registers it
    /// with the loop or the application's ioqueue.
    fn open_sock(
        self: &Arc<Self>,
        cx: &mut Cx<'_>,
        addr: &SocketAddr,
    ) -> Result<(Sock, Token), pj_status_t> {
        if let Some(pj) = self.pj.as_ref() {
            let (ps, _) = pj.drv.open(addr)?;
            let token = Token::foreign(ps.key());
            return Ok((Sock::Pj(Box::new(ps)), token));
        }
        let Cx::Own(ctx) = cx else {
            return Err(PJ_EBUG);
        };
        let (sock, _) = Socket::connect(addr).map_err(|e| io_status(&e))?;
        // Both directions: EPOLLOUT reports the connect's completion.
        let token = ctx
            .register(sock.fd(), self.clone(), EV_IN | EV_OUT)
            .map_err(|e| io_status(&e))?;
        Ok((Sock::Os(sock), token))
    }

    /// Ends a connect attempt with `status`.
    fn fail_connect(
        &self,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        status: pj_status_t,
    ) -> Option<Deliver<'static>> {
        let link = g.link.take()?;
        self.release(cx, link);
        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED;
        g.info.status = status;
        self.wake_drained(g);
        Some(Deliver::Connect(status))
    }

    /// Ends an open (or closing) connection and reports it to on_close.
    fn finish(
        &self,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        initiator: Option<pj_websock_close_initiator>,
        status: pj_status_t,
    ) -> Option<Deliver<'static>> {
        let mut link = g.link.take()?;
        let received = link.close_received.clone();
        let sent = link.conn.as_ref().is_some_and(|c| c.close_sent());
        if let Some(t) = link.tls.as_mut() {
            if status == PJ_SUCCESS || received.is_some() {
                t.shutdown(); // close_notify
            }
        }
        self.release(cx, link);
        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSED;
        self.wake_drained(g);
        if let Some(i) = initiator {
            g.info.initiator = i;
        }
        g.info.clean = (sent && received.is_some() && status == PJ_SUCCESS) as pj_bool_t;
        if g.info.status == PJ_SUCCESS {
            g.info.status = status;
        }
        let (code, reason) = match received {
            Some((c, r)) => (c, r),
            None if g.info.initiator == pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_PROTOCOL => {
                (g.info.code_sent, String::new())
            }
            None => (0, String::new()),
        };
        Some(Deliver::Close(code, reason))
    }

    fn on_connected(self: &Arc<Self>, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        link.addr_deadline = None;
        if let Some(plan) = link.tls_plan.take() {
            let (Some(tctx), Some((sock, _))) = (link.tls_ctx.take(), link.sock.as_mut()) else {
                return self.fail_connect(cx, g, PJ_WEBSOCK_ETLS_CONFIG);
            };
            match TlsStream::new(&tctx, sock.tls_io(), plan.sess, plan.cfg.verify) {
                Ok(t) => link.tls = Some(Box::new(t)),
                Err(e) => return self.fail_connect(cx, g, e),
            }
            link.phase = Phase::TlsHandshaking;
            link.tls_deadline = plan.timeout.map(|d| Instant::now() + d);
            return self.tls_step(cx, g);
        }
        self.start_ws_handshake(cx, g)
    }

    /// Advances the TLS handshake; when it completes, the WebSocket
    /// handshake starts.
    fn tls_step(self: &Arc<Self>, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        let tls = link.tls.as_mut()?;
        match tls.handshake() {
            HandshakeStep::Done => {
                link.tls_deadline = None;
                // Bytes read ahead with the last handshake records are not
                // reported by epoll: read them after this.
                let token = link.sock.as_ref().map(|s| s.1);
                if let (Some(token), None, true) = (token, self.pj.as_ref(), tls.has_pending()) {
                    self.post(move |me, cx| me.read_loop(cx, token));
                }
                self.start_ws_handshake(cx, g)
            }
            HandshakeStep::Pending { want_write } => {
                link.interest(if want_write { EV_IN | EV_OUT } else { EV_IN });
                link.out_armed = want_write;
                self.rearm(link);
                None
            }
            HandshakeStep::Failed(st) => {
                g.verify_result = tls.verify_result();
                self.fail_connect(cx, g, st)
            }
        }
    }

    fn start_ws_handshake(
        self: &Arc<Self>,
        cx: &mut Cx<'_>,
        g: &mut Inner,
    ) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        link.phase = Phase::Handshaking;
        link.out_armed = false;
        let request = std::mem::take(&mut link.request);
        link.tx.push(&request);
        link.interest(EV_IN);
        if let Err(e) = link.flush() {
            // A server that refused us may have sent its alert and reset
            // the connection before our request went out.
            let e = link
                .tls
                .as_mut()
                .and_then(|t| t.pending_alert())
                .unwrap_or(e);
            return self.fail_connect(cx, g, e);
        }
        self.rearm(link);
        None
    }

    /// Feeds received bytes to the handshake or the protocol engine until
    /// one callback is due. Returns the bytes consumed.
    fn process<'a>(
        self: &Arc<Self>,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        input: &'a [u8],
    ) -> (usize, Option<Deliver<'a>>) {
        let max_rx = g.cfg.max_rx;
        let ping = g.cfg.ping_interval;
        let Some(link) = g.link.as_mut() else {
            return (input.len(), None);
        };
        match link.phase {
            Phase::Handshaking => {
                let Some(hs) = link.hs.as_mut() else {
                    return (input.len(), None);
                };
                match hs.feed(input) {
                    Ok(None) => (input.len(), None),
                    Ok(Some((used, resp))) => {
                        link.hs = None;
                        link.phase = Phase::Open;
                        // The request's buffer is not needed any more: an
                        // idle connection holds no send buffer.
                        link.tx.trim();
                        link.conn = Some(Box::new(Conn::new(max_rx)));
                        link.connect_deadline = None;
                        link.next_ping = ping.map(|d| Instant::now() + d);
                        self.rearm(link);
                        g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_OPEN;
                        g.subprotocol = resp.subprotocol;
                        g.http_status = resp.status;
                        (used, Some(Deliver::Connect(PJ_SUCCESS)))
                    }
                    Err(e) => {
                        g.response_head = hs.response_head().to_vec();
                        g.http_status = match e {
                            HandshakeError::BadStatus(s) => s,
                            _ => status_of(&g.response_head),
                        };
                        (input.len(), self.fail_connect(cx, g, handshake_status(&e)))
                    }
                }
            }
            Phase::Open | Phase::Closing => {
                let Some(conn) = link.conn.as_mut() else {
                    return (input.len(), None);
                };
                let scratch = cx.bufs().1;
                let (used, ev) = conn.feed(input, scratch, &mut || link.masks.take());
                (used, self.on_frames(cx, g, ev))
            }
            _ => (input.len(), None),
        }
    }

    /// Takes what the protocol engine produced from received bytes: the
    /// replies it queued in the scratch buffer and its event.
    fn on_frames<'a>(
        self: &Arc<Self>,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        ev: Option<Event<'a>>,
    ) -> Option<Deliver<'a>> {
        let close_timeout = g.cfg.close_timeout;
        let link = g.link.as_mut()?;
        let scratch = cx.bufs().1;
        if !scratch.is_empty() {
            link.tx.push(scratch);
            scratch.clear();
            link.reply_pending = true;
        }
        match ev? {
            Event::Message { opcode, data } => Some(Deliver::Message(opcode, data)),
            Event::Ping | Event::Pong { .. } => None,
            Event::Close { code, reason } => {
                link.close_received = Some((code, reason));
                g.info.code_received = code;
                if g.state == pj_websock_readystate::PJ_WEBSOCK_STATE_OPEN {
                    g.info.initiator = pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_PEER;
                    g.info.code_sent = if code == 1005 { 0 } else { code };
                    g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSING;
                }
                // Now the server closes TCP first; wait for it.
                link.enter_closing(close_timeout);
                self.rearm(link);
                None
            }
            Event::ProtocolError { code, .. } => {
                if g.state == pj_websock_readystate::PJ_WEBSOCK_STATE_OPEN {
                    g.info.code_sent = code;
                }
                g.info.initiator = pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_PROTOCOL;
                g.info.status = protocol_status(code);
                g.state = pj_websock_readystate::PJ_WEBSOCK_STATE_CLOSING;
                link.enter_closing(close_timeout);
                self.rearm(link);
                None
            }
        }
    }

    fn handle_io(self: &Arc<Self>, cx: &mut Cx<'_>, token: Token, events: u32) {
        let Some(mut g) = self.lock_current(token) else {
            return;
        };
        let Some(link) = g.link.as_mut() else { return };
        if link.phase == Phase::Connecting {
            if events & (EV_OUT | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) == 0 {
                return;
            }
            let st = link.sock.as_ref().map_or(PJ_EBUG, |s| s.0.connect_result());
            if st == PJ_EPENDING {
                return; // pjlib mode: the connect has not completed
            }
            let d = if st == PJ_SUCCESS {
                self.on_connected(cx, &mut g)
            } else {
                link.last_err = st;
                self.try_next_addr(cx, &mut g)
            };
            drop(g);
            self.deliver_all(d);
            return;
        }
        if link.phase == Phase::TlsHandshaking {
            let d = self.tls_step(cx, &mut g);
            drop(g);
            self.deliver_all(d);
            return;
        }
        if let Some(e) = link.write_err {
            let d = self.transport_failed(cx, &mut g, e);
            drop(g);
            self.deliver_all(d);
            return;
        }
        // A TLS read that wanted the socket writable retries on EPOLLOUT.
        let mut retry_read = false;
        if events & EV_OUT != 0 {
            if let Some(t) = link.tls.as_mut() {
                retry_read = std::mem::take(&mut t.want_write);
            }
            if let Err(e) = link.flush() {
                let d = self.transport_failed(cx, &mut g, e);
                drop(g);
                self.deliver_all(d);
                return;
            }
            self.wake_drained(&g);
        }
        if events & (EV_IN | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) == 0 && !retry_read {
            return;
        }
        drop(g);
        self.read_loop(cx, token);
    }

    fn read_loop(self: &Arc<Self>, cx: &mut Cx<'_>, token: Token) {
        let mut buf = std::mem::take(cx.bufs().0);
        if buf.is_empty() {
            buf = vec![0; evloop::RX_BUF_SIZE];
        }
        let mut recycled: Option<Vec<u8>> = None;
        // A burst the application was already coalescing when this batch
        // began keeps its deadline (see `flush_after_read`): that deadline,
        // taken under the first lock.
        let mut at_start: Option<Option<Instant>> = None;
        'reads: for round in 1..=READS_PER_EVENT {
            let Some(mut g) = self.lock_current(token) else {
                break;
            };
            let Some(link) = g.link.as_mut() else { break };
            let held = *at_start.get_or_insert(link.flush_deadline);
            if let Some(v) = recycled.take() {
                if link.recycle(v) {
                    self.rearm(link);
                }
            }
            // A large payload is due: read it straight into the message
            // buffer rather than through `buf`.
            let plain = link.tls.is_none();
            let (io, direct) = match link.read_direct(cx.bufs().1) {
                Some((io, ev, asked)) => (io, Some((ev, asked))),
                None => (link.io_read(&mut buf), None),
            };
            let n = match io {
                Io::Done(n) => n,
                Io::WouldBlock => {
                    let d = self.flush_after_read(cx, &mut g, held);
                    drop(g);
                    self.deliver_all(d);
                    break;
                }
                Io::Eof => {
                    let d = self.peer_eof(cx, &mut g);
                    drop(g);
                    self.deliver_all(d);
                    break;
                }
                Io::Failed(e) => {
                    let d = self.transport_failed(cx, &mut g, e);
                    drop(g);
                    self.deliver_all(d);
                    break;
                }
            };
            link.last_rx = mono_ns();
            let short = if let Some((ev, asked)) = direct {
                let d = self.on_frames(cx, &mut g, ev);
                if self.hand_over(cx, g, d, &mut recycled) {
                    break 'reads;
                }
                let Some(relocked) = self.lock_current(token) else {
                    break 'reads;
                };
                g = relocked;
                n < asked
            } else {
                let mut pos = 0;
                while pos < n {
                    // Whole data messages at the front of the buffer are taken
                    // together and delivered with the lock released once.
                    let mut batch = [(OpCode::Bin, 0usize, 0usize); DELIVER_BATCH];
                    let mut taken = 0;
                    if let Some(conn) = g
                        .link
                        .as_ref()
                        .filter(|l| matches!(l.phase, Phase::Open | Phase::Closing))
                        .and_then(|l| l.conn.as_deref())
                    {
                        while taken < DELIVER_BATCH {
                            let Some((op, data, used)) = conn.whole_message(&buf[pos..n]) else {
                                break;
                            };
                            batch[taken] = (op, pos + used - data.len(), data.len());
                            taken += 1;
                            pos += used;
                        }
                    }
                    if taken > 0 {
                        drop(g);
                        if !self.deliver_messages(&buf, &batch[..taken]) {
                            break 'reads;
                        }
                        let Some(relocked) = self.lock_current(token) else {
                            break 'reads;
                        };
                        g = relocked;
                        continue;
                    }
                    let (used, d) = self.process(cx, &mut g, &buf[pos..n]);
                    pos += used;
                    if d.is_some() {
                        if self.hand_over(cx, g, d, &mut recycled) {
                            break 'reads;
                        }
                        let Some(relocked) = self.lock_current(token) else {
                            break 'reads;
                        };
                        g = relocked;
                    } else if used == 0 {
                        break;
                    }
                }
                n < buf.len()
            };
            let d = self.flush_after_read(cx, &mut g, held);
            if d.is_some() {
                drop(g);
                self.deliver_all(d);
                break;
            }
            // A short read drained the socket, but TLS may hold more
            // decrypted bytes (a TLS read returns one record at most): only
            // plain TCP can stop early.
            if short && plain {
                break;
            }
            // Out of rounds while TLS holds bytes it read ahead from the
            // socket (epoll will not report those): go on after the other
            // connections' events. (The pjlib driver does not read ahead.)
            if round == READS_PER_EVENT
                && self.pj.is_none()
                && g.link
                    .as_ref()
                    .and_then(|l| l.tls.as_ref())
                    .is_some_and(|t| t.has_pending())
            {
                drop(g);
                self.post(move |me, cx| me.read_loop(cx, token));
                break;
            }
        }
        // The buffer of the last message delivered serves the next one.
        if let Some(v) = recycled {
            if let Some(link) = self
                .lock_current(token)
                .as_deref_mut()
                .and_then(|g| g.link.as_mut())
            {
                if link.recycle(v) {
                    self.rearm(link);
                }
            }
        }
        *cx.bufs().0 = buf;
    }

    /// The instance lock, if the connection still reads the socket
    /// `token` (a callback may have ended or replaced it).
    fn lock_current(&self, token: Token) -> Option<MutexGuard<'_, Inner>> {
        let g = lock(&self.inner);
        let current = g
            .link
            .as_ref()
            .and_then(|l| l.sock.as_ref())
            .is_some_and(|s| s.1 == token);
        current.then_some(g)
    }

    /// After received bytes produced `d`: the replies the engine queued
    /// (pong, close echo) go out first, then, without the lock, the
    /// callback for `d` and those a failed write causes. True when reading
    /// must stop: the connection ended or the instance was destroyed.
    fn hand_over(
        &self,
        cx: &mut Cx<'_>,
        mut g: MutexGuard<'_, Inner>,
        d: Option<Deliver<'_>>,
        recycled: &mut Option<Vec<u8>>,
    ) -> bool {
        let failed = self.flush_replies(cx, &mut g);
        drop(g);
        let ended = failed.is_some()
            || matches!(d, Some(Deliver::Close(..)))
            || matches!(d, Some(Deliver::Connect(s)) if s != PJ_SUCCESS);
        if let Some(v) = d.and_then(|d| self.deliver(d)) {
            *recycled = Some(v);
        }
        self.deliver_all(failed);
        ended || self.is_destroyed()
    }

    /// Writes what the protocol engine queued (pong, close echo) if
    /// anything; a failed write ends the connection.
    fn flush_replies(&self, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        if !std::mem::take(&mut link.reply_pending) {
            return None;
        }
        self.flush_locked(cx, g)
    }

    /// After a read batch: replies, and sends the callbacks of this batch
    /// queued, leave in one write. A burst the application was coalescing
    /// before the batch (deadline `held`, set by a sending thread or
    /// before `pj_websock_poll()`) is left to its deadline or size unless
    /// a reply goes out anyway, and so are callback sends that joined it:
    /// flushing it here would send whatever few frames the sender queued
    /// since its last write, a small write that costs both ends a wake-up.
    fn flush_after_read(
        &self,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        held: Option<Instant>,
    ) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        let waiting =
            link.flush_deadline.is_some() && link.flush_deadline != held && !link.out_armed;
        if !std::mem::take(&mut link.reply_pending) && !waiting {
            return None;
        }
        self.flush_locked(cx, g)
    }

    /// Flushes the send queue; a failed write ends the connection.
    fn flush_locked(&self, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let link = g.link.as_mut()?;
        match link.flush() {
            Ok(()) => {
                self.wake_drained(g);
                None
            }
            Err(e) => self.transport_failed(cx, g, e),
        }
    }

    /// The peer closed TCP: a transport failure whose status says so.
    fn peer_eof(&self, cx: &mut Cx<'_>, g: &mut Inner) -> Option<Deliver<'static>> {
        let connecting = matches!(
            g.link.as_ref()?.phase,
            Phase::Resolving | Phase::Connecting | Phase::TlsHandshaking | Phase::Handshaking
        );
        let status = if connecting {
            PJ_WEBSOCK_ECONNCLOSED
        } else {
            PJ_EEOF
        };
        self.transport_failed(cx, g, status)
    }

    fn transport_failed(
        &self,
        cx: &mut Cx<'_>,
        g: &mut Inner,
        status: pj_status_t,
    ) -> Option<Deliver<'static>> {
        let link = g.link.as_ref()?;
        match link.phase {
            Phase::Resolving | Phase::Connecting | Phase::TlsHandshaking | Phase::Handshaking => {
                self.fail_connect(cx, g, status)
            }
            Phase::Open => self.finish(
                cx,
                g,
                Some(pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_TRANSPORT),
                status,
            ),
            Phase::Closing => {
                // After the close handshake a reset is as good as a FIN.
                let st = if link.close_received.is_some() {
                    PJ_SUCCESS
                } else {
                    status
                };
                self.finish(cx, g, None, st)
            }
        }
    }

    fn handle_timer(self: &Arc<Self>, cx: &mut Cx<'_>) {
        let mut g = lock(&self.inner);
        let ping = g.cfg.ping_interval;
        let Some(link) = g.link.as_mut() else { return };
        // The timer that fired may not be the one recorded: an API thread
        // can rearm (cancel and schedule anew) between the loop taking a
        // due timer and this handler getting the lock. Cancelling the
        // recorded one (a no-op if it is the one that fired) leaves no
        // timer untracked, holding the instance until its deadline.
        if let Some((Some(id), _)) = link.timer.take() {
            self.cancel_timer(Some(id));
        }
        let now = Instant::now();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(link.flush_deadline) {
            link.flush_deadline = None;
            if !link.out_armed && link.write_err.is_none() {
                if let Err(e) = link.flush() {
                    let d = self.transport_failed(cx, &mut g, e);
                    drop(g);
                    self.deliver_all(d);
                    return;
                }
                self.wake_drained(&g);
            }
        }
        let Some(link) = g.link.as_mut() else { return };
        if due(link.shed_at) {
            link.shed_at = None;
            if !link.shed() {
                link.shed_at = Some(now + SHED_AFTER);
            }
        }
        let d = if due(link.connect_deadline) && !matches!(link.phase, Phase::Open | Phase::Closing)
        {
            self.fail_connect(cx, &mut g, PJ_WEBSOCK_ECONNECTTIMEOUT)
        } else if due(link.tls_deadline) && link.phase == Phase::TlsHandshaking {
            self.fail_connect(cx, &mut g, PJ_WEBSOCK_ETLS_TIMEOUT)
        } else if due(link.addr_deadline) && link.phase == Phase::Connecting {
            link.addr_deadline = None;
            link.last_err = PJ_ETIMEDOUT;
            self.try_next_addr(cx, &mut g)
        } else if due(link.close_deadline) && link.phase == Phase::Closing {
            if link.close_received.is_some() {
                self.finish(cx, &mut g, None, PJ_SUCCESS)
            } else if g.info.initiator == pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_PROTOCOL {
                // We failed the connection; the peer's silence changes nothing.
                let st = g.info.status;
                self.finish(cx, &mut g, None, st)
            } else {
                g.info.status = PJ_WEBSOCK_ECLOSETIMEOUT;
                self.finish(
                    cx,
                    &mut g,
                    Some(pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_TIMEOUT),
                    PJ_WEBSOCK_ECLOSETIMEOUT,
                )
            }
        } else if due(link.next_ping) && link.phase == Phase::Open {
            if link.ping_sent_at.is_some_and(|t| link.last_rx < t) {
                g.info.status = PJ_WEBSOCK_EPINGTIMEOUT;
                self.finish(
                    cx,
                    &mut g,
                    Some(pj_websock_close_initiator::PJ_WEBSOCK_CLOSE_TIMEOUT),
                    PJ_WEBSOCK_EPINGTIMEOUT,
                )
            } else {
                // A connection quiet for a whole interval gives its buffers
                // back; they grow again with the traffic.
                if link.buffered() == 0 && mono_ns().saturating_sub(link.last_send) >= 1_000_000_000
                {
                    link.tx.trim();
                    if let Some(t) = link.tls.as_mut() {
                        t.trim();
                    }
                    if let Some(conn) = link.conn.as_mut() {
                        conn.shrink();
                    }
                }
                if let Some(conn) = link.conn.as_mut() {
                    link.tx.append_with(MAX_HEADER_LEN, |b| {
                        conn.send_frame(OpCode::Ping, &[], link.masks.take(), b)
                    });
                }
                link.ping_sent_at = Some(mono_ns());
                link.next_ping = ping.map(|d| now + d);
                self.flush_locked(cx, &mut g)
            }
        } else {
            None
        };
        if let Some(link) = g.link.as_mut() {
            self.rearm(link);
        }
        drop(g);
        self.deliver_all(d);
    }

    // ----- callbacks --------------------------------------------------

    fn deliver_all(&self, d: Option<Deliver<'_>>) {
        if let Some(d) = d {
            self.deliver(d);
        }
    }

    /// Runs `f` (which calls application callbacks) through the gate:
    /// not at all if the instance is destroyed (None). In pjlib mode
    /// callbacks run without the group lock (as upstream's do), so they
    /// may block on the application's own locks.
    fn with_callbacks<R>(&self, f: impl FnOnce(*mut pj_websock) -> R) -> Option<R> {
        if !self.gate.enter() {
            return None;
        }
        crate::pjlib::register_thread();
        if let Some(pj) = self.pj.as_ref() {
            pj.drv.unlock();
        }
        let r = f(self as *const Client as *mut pj_websock);
        self.gate.leave();
        if let Some(pj) = self.pj.as_ref() {
            pj.drv.lock();
        }
        Some(r)
    }

    /// Calls `on_rx_msg` (inside `with_callbacks`).
    fn rx_msg(&self, ws: *mut pj_websock, op: OpCode, data: &[u8]) {
        if let Some(f) = self.cb.on_rx_msg {
            let opc = if op == OpCode::Text {
                pj_websock_opcode::PJ_WEBSOCK_OP_TEXT
            } else {
                pj_websock_opcode::PJ_WEBSOCK_OP_BIN
            };
            // SAFETY: the application's callback, called with a live
            // instance and a payload valid for the duration of the call.
            unsafe { f(ws, opc, data.as_ptr() as *const c_void, data.len()) };
        }
    }

    /// Invokes one application callback unless the instance was destroyed.
    /// Returns an owned message buffer for reuse.
    fn deliver(&self, d: Deliver<'_>) -> Option<Vec<u8>> {
        self.with_callbacks(|ws| match d {
            Deliver::Connect(status) => {
                if let Some(f) = self.cb.on_connect {
                    // SAFETY: the application's callback, with a live instance.
                    unsafe { f(ws, status) };
                }
                None
            }
            Deliver::Message(op, data) => {
                self.rx_msg(ws, op, data.as_slice());
                match data {
                    Payload::Owned(v) => Some(v),
                    Payload::Borrowed(_) => None,
                }
            }
            Deliver::Close(code, reason) => {
                if let Some(f) = self.cb.on_close {
                    let s = pj_str_t {
                        ptr: reason.as_ptr() as *mut _,
                        slen: reason.len() as pj_ssize_t,
                    };
                    // SAFETY: the application's callback, with a live
                    // instance and a reason valid for the call.
                    unsafe { f(ws, code, &s) };
                }
                None
            }
        })
        .flatten()
    }

    /// Delivers whole data messages (opcode, offset, length) from `buf`,
    /// in order, with one pass through the gate for all of them. False
    /// once the instance is destroyed (the rest are not delivered).
    fn deliver_messages(&self, buf: &[u8], batch: &[(OpCode, usize, usize)]) -> bool {
        self.with_callbacks(|ws| {
            for &(op, at, len) in batch {
                // A callback may have destroyed the instance, or another
                // thread may be waiting in destroy for this one to return.
                if self.is_destroyed() {
                    return;
                }
                self.rx_msg(ws, op, &buf[at..at + len]);
            }
        });
        !self.is_destroyed()
    }

    // ----- pjlib mode: events from the application's polling threads ---

    /// Runs a pjlib event, and whatever else is queued for the instance,
    /// unless another thread is doing so already (it will pick this one
    /// up). Holds the group lock, except around callbacks.
    fn pj_run(self: &Arc<Self>, ev: PjEvent) {
        let Some(pj) = self.pj.as_ref() else { return };
        {
            let mut x = lock(&pj.exec);
            if x.closed {
                return;
            }
            x.events.push(ev);
            if x.busy {
                return;
            }
            x.busy = true;
        }
        // Our own reference: destroy from a callback may drop the last
        // other one while this runs.
        pj.drv.add_ref();
        pj.drv.lock();
        let mut bufs = PJ_BUFS.with(|b| b.take()).unwrap_or_default();
        let mut more = false;
        let mut rounds = 0;
        loop {
            let (events, cmds) = {
                let mut x = lock(&pj.exec);
                (std::mem::take(&mut x.events), std::mem::take(&mut x.cmds))
            };
            let mut cx = Cx::Pj(&mut bufs);
            if events.is_empty() && cmds.is_empty() {
                // Readiness of the connection's socket, level-triggered
                // as epoll reports it, until the socket has nothing more
                // (a runaway connection yields; a kick continues it).
                let ready = self.pj_ready();
                if let Some((token, ev)) = ready {
                    rounds += 1;
                    if rounds > 4096 {
                        more = true;
                    } else {
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            self.handle_io(&mut cx, token, ev)
                        }));
                        if r.is_err() {
                            self.pj_failed(&mut cx);
                        }
                        continue;
                    }
                }
                let mut x = lock(&pj.exec);
                if x.events.is_empty() && x.cmds.is_empty() {
                    x.busy = false;
                    break;
                }
                continue;
            }
            for c in cmds {
                if std::panic::catch_unwind(AssertUnwindSafe(|| c(self, &mut cx))).is_err() {
                    cx.bufs().1.clear();
                }
            }
            for ev in events {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| self.pj_apply(&mut cx, ev)));
                if r.is_err() {
                    self.pj_failed(&mut cx);
                }
            }
        }
        PJ_BUFS.with(|b| b.set(Some(bufs)));
        pj.drv.unlock();
        if more && !lock(&pj.exec).closed {
            pj.drv.kick();
        }
        pj.drv.unref();
    }

    /// pjlib mode: handling an event panicked. As on the own loop, only
    /// this connection fails (`PJ_EBUG`), and nothing the handler left in
    /// the shared scratch buffer goes out.
    fn pj_failed(self: &Arc<Self>, cx: &mut Cx<'_>) {
        cx.bufs().1.clear();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut g = lock(&self.inner);
            let d = self.transport_failed(cx, &mut g, PJ_EBUG);
            drop(g);
            self.deliver_all(d);
        }));
        if r.is_err() {
            cx.bufs().1.clear();
        }
    }

    /// Applies one pjlib event: completions update the socket (their
    /// readiness is taken up by `pj_ready`), timers run.
    fn pj_apply(self: &Arc<Self>, cx: &mut Cx<'_>, ev: PjEvent) {
        match ev {
            PjEvent::Timer => self.handle_timer(cx),
            PjEvent::Kick => {}
            PjEvent::Read(key, _) | PjEvent::Wrote(key, _) | PjEvent::Connected(key, _) => {
                let mut g = lock(&self.inner);
                if let Some(Some((Sock::Pj(ps), _))) = g.link.as_mut().map(|l| l.sock.as_mut()) {
                    if ps.key() == key {
                        ps.complete(ev);
                    }
                }
            }
        }
    }

    /// The readiness events the connection's socket would report now.
    fn pj_ready(&self) -> Option<(Token, u32)> {
        let mut g = lock(&self.inner);
        let link = g.link.as_mut()?;
        let failed = link.write_err.is_some();
        let (Sock::Pj(ps), token) = link.sock.as_mut()? else {
            return None;
        };
        let (r, w) = ps.poll();
        let ev = if r { EV_IN } else { 0 } | if w || failed { EV_OUT } else { 0 };
        (ev != 0).then_some((*token, ev))
    }
}

impl Handler for Client {
    fn on_io(self: Arc<Self>, ctx: &mut LoopCtx, token: Token, events: u32) {
        self.handle_io(&mut Cx::Own(ctx), token, events);
    }

    fn on_timer(self: Arc<Self>, ctx: &mut LoopCtx) {
        self.handle_timer(&mut Cx::Own(ctx));
    }

    fn on_panic(self: Arc<Self>, ctx: &mut LoopCtx) {
        let mut g = lock(&self.inner);
        let d = self.transport_failed(&mut Cx::Own(ctx), &mut g, PJ_EBUG);
        drop(g);
        self.deliver_all(d);
    }
}

impl pjdrv::Owner for Client {
    unsafe fn pj_event(ptr: *const c_void, ev: PjEvent) {
        // Borrow the record's strong reference without consuming it.
        let me = std::mem::ManuallyDrop::new(Arc::from_raw(ptr as *const Client));
        let me: Arc<Client> = Arc::clone(&me);
        me.pj_run(ev);
    }

    unsafe fn pj_release(ptr: *const c_void) {
        let me = Arc::from_raw(ptr as *const Client);
        // Queued work holds references to the instance: drop it first.
        if let Some(pj) = me.pj.as_ref() {
            pj.close_exec();
        }
        drop(me);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The status code of an HTTP response head ("HTTP/1.1 101 ..."), 0 if
/// there is none.
fn status_of(head: &[u8]) -> u16 {
    let mut parts = head.splitn(3, |&b| b == b' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with(b"HTTP/") && code.len() == 3 => {
            std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// Works out the TLS settings of a wss:// connect: pjlib's
/// `pj_ssl_sock_param` when given (verification as it says: upstream's
/// semantics), else verification on; the extension settings on top.
fn tls_plan(ext: &TlsExt, req: &ConnectRequest) -> Result<TlsPlan, pj_status_t> {
    let sp = req.ssl_param.clone();
    let verify = ext.force_verify || sp.as_ref().is_none_or(|p| p.verify_peer);
    let name = sp
        .as_ref()
        .and_then(|p| p.server_name.clone())
        .unwrap_or_else(|| req.url.host.clone());
    let cfg = TlsConfig {
        verify,
        proto: sp.as_ref().map_or(0, |p| p.proto),
        ciphers: sp.as_ref().map_or(Vec::new(), |p| p.ciphers.clone()),
        ca_file: ext.ca_file.clone(),
        ca_dir: ext.ca_dir.clone(),
        cert_file: ext.cert_file.clone(),
        key_file: ext.key_file.clone(),
        key_password: ext.key_password.clone(),
    };
    tls::validate(&cfg)?;
    if !verify {
        crate::log::log(
            crate::log::WARNING,
            &format!(
                "TLS certificate verification is OFF for wss://{} (ssl_param->verify_peer is 0); \
                 use pj_websock_set_tls_verify() to force it on",
                req.url.host
            ),
        );
    }
    Ok(TlsPlan {
        cfg,
        sess: TlsSession {
            name,
            pins: ext.pins.clone(),
        },
        timeout: sp.and_then(|p| p.timeout),
    })
}

/// Validates a close code and reason for `pj_websock_close`.
pub fn valid_close(code: u16, reason: &[u8]) -> bool {
    (code == 0 || close::is_valid_send_code(code))
        && reason.len() <= close::MAX_REASON_LEN
        && (code != 0 || reason.is_empty())
        && std::str::from_utf8(reason).is_ok()
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Client>();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle connections must stay small (the conns benchmark target is
    /// 4 KiB resident per connection, all included).
    #[test]
    fn instance_is_small() {
        let (c, i, l, k) = (
            size_of::<Client>(),
            size_of::<Inner>(),
            size_of::<Link>(),
            size_of::<Conn>(),
        );
        println!("Client {c} (Inner {i}), Link {l}, Conn {k}");
        assert!(c + l + k < 2048, "Client {c} + Link {l} + Conn {k}");
    }
}
