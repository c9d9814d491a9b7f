//! tokio-tungstenite benchmark client (see bench/README.md for the
//! workloads). Same command line, payloads, verification and JSON line as
//! the C clients (bench/clients/common.h).
//!
//! Written the way tokio-tungstenite's documentation and examples do it:
//! `connect_async_tls_with_config` with `disable_nagle = true`, a
//! current-thread tokio runtime (the client is pinned to one core), the
//! stream `split()` into a sink and a stream driven concurrently, and
//! batching through `SinkExt::feed` + one `flush` (messages are written to
//! the socket whenever tungstenite's write buffer fills) for stream/bulk;
//! `SinkExt::send` (feed + flush) where every message must leave at once
//! (pingpong, fanout); `tokio::time::interval` + `select!` for fanout.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Res<T> = Result<T, String>;

// ---- command line ---------------------------------------------------------

#[derive(Clone)]
struct Args {
    workload: String,
    url: String,
    n: i64,
    size: usize,
    warmup: i64,
    conns: i64,
    rate: i64,
    duration: f64,
    server_pid: i64,
    ca: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: tungstenite-client --workload pingpong|stream|bulk|conns|fanout --url ws://HOST:PORT/PATH\n\
         \x20         [--n N] [--size BYTES] [--warmup N] [--conns N] [--rate HZ] [--duration S]\n\
         \x20         [--server-pid PID] [--ca CERT.pem]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let (mut n, mut size, mut warmup) = (-1i64, -1i64, -1i64);
    let mut a = Args {
        workload: String::new(),
        url: String::new(),
        n: 0,
        size: 0,
        warmup: 0,
        conns: 200,
        rate: 50,
        duration: 5.0,
        server_pid: 0,
        ca: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let k = argv[i].as_str();
        let v = argv.get(i + 1).cloned().unwrap_or_else(|| usage());
        i += 2;
        let num = |s: &str| s.parse::<f64>().unwrap_or_else(|_| usage());
        match k {
            "--workload" => a.workload = v,
            "--url" => a.url = v,
            "--n" => n = num(&v) as i64,
            "--size" => size = num(&v) as i64,
            "--warmup" => warmup = num(&v) as i64,
            "--conns" => a.conns = num(&v) as i64,
            "--rate" => a.rate = num(&v) as i64,
            "--duration" => a.duration = num(&v),
            "--server-pid" => a.server_pid = num(&v) as i64,
            "--ca" => a.ca = Some(v),
            _ => usage(),
        }
    }
    if a.workload.is_empty() || a.url.is_empty() {
        usage();
    }
    let d = |v: i64, def: i64| if v < 0 { def } else { v };
    match a.workload.as_str() {
        "pingpong" => (n, size, warmup) = (d(n, 50000), d(size, 64), d(warmup, 2000)),
        "stream" => (n, size) = (d(n, 200000), d(size, 640)),
        "bulk" => (n, size) = (d(n, 2000), d(size, 60 * 1024)),
        "conns" => (n, size) = (d(n, 1000), d(size, 32)),
        "fanout" => {
            (n, size) = (
                d(n, (a.rate as f64 * a.duration + 0.5) as i64),
                d(size, 640),
            )
        }
        _ => usage(),
    }
    a.n = n;
    a.size = size.max(8) as usize;
    a.warmup = warmup.max(0);
    a
}

// ---- clocks, CPU, memory ----------------------------------------------------

fn self_cpu_us() -> u64 {
    // SAFETY: getrusage fills a local struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) as u64 * 1_000_000
            + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) as u64
    }
}

fn self_maxrss_kb() -> i64 {
    // SAFETY: as above.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss
    }
}

/// On-CPU ns of process `pid`, all threads (/proc/PID/task/*/schedstat).
fn proc_cpu_ns(pid: i64) -> u64 {
    if pid <= 0 {
        return 0;
    }
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kb: i64,
    data_kb: i64,
    heap_used: f64,
    heap_arena: f64,
}

fn mem_now() -> Mem {
    let mut m = Mem::default();
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for l in s.lines() {
            let val = |p: &str| {
                l[p.len()..]
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0)
            };
            if l.starts_with("VmRSS:") {
                m.rss_kb = val("VmRSS:");
            } else if l.starts_with("VmData:") {
                m.data_kb = val("VmData:");
            }
        }
    }
    // SAFETY: mallinfo2 has no preconditions.
    let mi = unsafe { libc::mallinfo2() };
    m.heap_used = (mi.uordblks + mi.hblkhd) as f64;
    m.heap_arena = (mi.arena + mi.hblkhd) as f64;
    m
}

fn self_threads() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l[8..].trim().parse().ok())
        })
        .unwrap_or(-1)
}

fn raise_nofile() -> i64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return -1;
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
        r.rlim_cur as i64
    }
}

/// TCP_NODELAY on this process's TCP sockets: "all", "none", "mixed".
fn nodelay_state() -> &'static str {
    let (mut on, mut off) = (0, 0);
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return "unknown";
    };
    for e in rd.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: getsockopt/getsockname on a descriptor we own, into locals.
        unsafe {
            let mut ty: libc::c_int = 0;
            let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut ty as *mut libc::c_int).cast(),
                &mut l,
            ) != 0
                || ty != libc::SOCK_STREAM
            {
                continue;
            }
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut sl) != 0
                || (ss.ss_family as i32 != libc::AF_INET && ss.ss_family as i32 != libc::AF_INET6)
            {
                continue;
            }
            let mut v: libc::c_int = 0;
            l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut v as *mut libc::c_int).cast(),
                &mut l,
            ) != 0
            {
                continue;
            }
            if v != 0 {
                on += 1
            } else {
                off += 1
            }
        }
    }
    match (on, off) {
        (0, 0) => "no sockets",
        (_, 0) => "all",
        (0, _) => "none",
        _ => "mixed",
    }
}

// ---- payloads (same as common.h) -------------------------------------------------

struct Pat {
    bin: Vec<u8>,
    text: Vec<u8>,
}

impl Pat {
    fn new(max_len: usize) -> Pat {
        let n = max_len + 256;
        let mut s: u64 = 0x9E3779B97F4A7C15 | 1;
        let mut bin = Vec::with_capacity(n);
        for _ in 0..n {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bin.push((s >> 24) as u8);
        }
        let text = bin.iter().map(|b| b'a' + b % 26).collect();
        Pat { bin, text }
    }

    fn seq_bytes(seq: u64, text: bool) -> [u8; 8] {
        if text {
            let hex = b"0123456789abcdef";
            std::array::from_fn(|i| hex[((seq >> (28 - 4 * i)) & 0xF) as usize])
        } else {
            seq.to_le_bytes()
        }
    }

    fn fill(&self, buf: &mut Vec<u8>, seq: u64, len: usize, text: bool) {
        let off = (seq % 251) as usize;
        let p = if text { &self.text } else { &self.bin };
        buf.clear();
        buf.extend_from_slice(&Self::seq_bytes(seq, text));
        buf.extend_from_slice(&p[off + 8..off + len]);
    }

    fn check(&self, data: &[u8], seq: u64, len: usize, text: bool) -> Res<()> {
        let off = (seq % 251) as usize;
        let p = if text { &self.text } else { &self.bin };
        if data.len() == len
            && data[..8] == Self::seq_bytes(seq, text)
            && data[8..] == p[off + 8..off + len]
        {
            return Ok(());
        }
        let got = if data.len() >= 8 {
            u64::from_le_bytes(data[..8].try_into().unwrap())
        } else {
            0
        };
        Err(format!(
            "echo {seq}: got {} bytes (want {len}){}, first 8 bytes decode as {got}",
            data.len(),
            if text { " text" } else { "" }
        ))
    }
}

/// Latency histogram, the same as `hist_t` in common.h: log-linear, 64
/// sub-buckets per power of two; O(1) per sample, percentiles cost the same
/// for any N (so they cancel out of the callgrind difference).
struct Hist {
    count: Vec<u64>,
    n: u64,
}

impl Hist {
    const SUB_BITS: u32 = 6;
    const SUB: u64 = 1 << Self::SUB_BITS;

    fn new() -> Hist {
        Hist {
            count: vec![0; 64 * Self::SUB as usize],
            n: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < Self::SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let shift = e - Self::SUB_BITS;
        ((e - Self::SUB_BITS + 1) as u64 * Self::SUB + ((v >> shift) - Self::SUB)) as usize
    }

    fn add(&mut self, v: u64) {
        self.count[Self::index(v)] += 1;
        self.n += 1;
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.count.iter_mut().zip(&o.count) {
            *a += b;
        }
        self.n += o.n;
    }

    /// Nearest-rank percentile in µs (middle of the bucket).
    fn percentile_us(&self, q: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.n as f64).ceil() as u64).max(1);
        let mut cum = 0;
        for (i, &c) in self.count.iter().enumerate() {
            cum += c;
            if cum >= rank {
                let i = i as u64;
                if i < Self::SUB {
                    return i as f64 / 1000.0;
                }
                let (b, sub) = (i / Self::SUB, i % Self::SUB);
                let lo = ((Self::SUB + sub) << (b - 1)) as f64;
                let hi = ((Self::SUB + sub + 1) << (b - 1)) as f64;
                return (lo + hi) / 2.0 / 1000.0;
            }
        }
        f64::NAN
    }
}

// ---- JSON --------------------------------------------------------------------------

struct Json(String);

impl Json {
    fn new() -> Json {
        Json(String::from("{"))
    }
    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push_str(", ");
        }
        let _ = write!(self.0, "\"{k}\": ");
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' | '\\' => {
                    self.0.push('\\');
                    self.0.push(c)
                }
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }
    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if !v.is_finite() {
            self.0.push_str("null");
        } else if v == v.trunc() && v.abs() < 1e15 {
            let _ = write!(self.0, "{}", v as i64);
        } else {
            let _ = write!(self.0, "{v:.6}");
        }
    }
    fn boolean(&mut self, k: &str, v: bool) {
        self.key(k);
        self.0.push_str(if v { "true" } else { "false" });
    }
    fn print(mut self) {
        self.0.push('}');
        println!("{}", self.0);
    }
}

struct Interval {
    t0: Instant,
    t1: Instant,
    cpu0: u64,
    cpu1: u64,
    srv0: u64,
    srv1: u64,
}

fn put_interval(j: &mut Json, a: &Args, n: i64, iv: &Interval) {
    let el = (iv.t1 - iv.t0).as_secs_f64();
    j.num("elapsed_s", el);
    j.num("msgs_per_s", n as f64 / el);
    j.num("mb_per_s", n as f64 * a.size as f64 / 1e6 / el);
    j.num("cpu_us_per_msg", (iv.cpu1 - iv.cpu0) as f64 / n as f64);
    j.num("client_cpu_s", (iv.cpu1 - iv.cpu0) as f64 / 1e6);
    j.num("client_busy", (iv.cpu1 - iv.cpu0) as f64 / 1e6 / el);
    if a.server_pid > 0 && iv.srv1 >= iv.srv0 {
        let s = (iv.srv1 - iv.srv0) as f64 / 1e9;
        j.num("server_cpu_s", s);
        j.num("server_busy", s / el);
        j.boolean("server_saturated", s / el >= 0.9);
    }
}

// ---- connections ------------------------------------------------------------------

fn connector(a: &Args) -> Res<Option<Connector>> {
    if !a.url.to_ascii_lowercase().starts_with("wss://") {
        return Ok(None);
    }
    let mut b = native_tls::TlsConnector::builder();
    if let Some(ca) = &a.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| format!("{ca}: {e}"))?;
        b.add_root_certificate(cert);
    }
    Ok(Some(Connector::NativeTls(
        b.build().map_err(|e| e.to_string())?,
    )))
}

async fn connect(a: &Args, conn: Option<Connector>) -> Res<Ws> {
    let mut cfg = WebSocketConfig::default();
    // Allow the bulk workload's 1 MiB messages (defaults: 64 MiB / 16 MiB).
    cfg = cfg
        .max_message_size(Some((2 * a.size).max(64 << 20)))
        .max_frame_size(Some((2 * a.size).max(16 << 20)));
    let (ws, _resp) =
        tokio_tungstenite::connect_async_tls_with_config(a.url.as_str(), Some(cfg), true, conn)
            .await
            .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

/// Next data message; pings/pongs are skipped (tungstenite answers pings).
async fn next_data<S>(rx: &mut S) -> Res<Message>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(c))) => {
                return Err(format!("connection closed unexpectedly: {c:?}"))
            }
            Some(Err(e)) => return Err(format!("receive: {e}")),
            None => return Err("connection closed unexpectedly (EOF)".into()),
        }
    }
}

fn check_msg(pat: &Pat, m: &Message, seq: u64, len: usize, text: bool) -> Res<()> {
    match (m, text) {
        (Message::Text(t), true) => pat.check(t.as_bytes(), seq, len, true),
        (Message::Binary(b), false) => pat.check(b, seq, len, false),
        _ => Err(format!(
            "echo {seq}: wrong opcode ({})",
            if text {
                "binary, want text"
            } else {
                "text, want binary"
            }
        )),
    }
}

// ---- workloads --------------------------------------------------------------------

async fn pingpong(a: &Args, pat: &Pat, j: &mut Json) -> Res<()> {
    let mut ws = connect(a, connector(a)?).await?;
    let total = (a.warmup + a.n) as u64;
    let mut lat = Hist::new();
    let mut buf = Vec::with_capacity(a.size);
    let mut iv = Interval {
        t0: Instant::now(),
        t1: Instant::now(),
        cpu0: 0,
        cpu1: 0,
        srv0: 0,
        srv1: 0,
    };
    for seq in 0..total {
        pat.fill(&mut buf, seq, a.size, true);
        // The payload is ASCII by construction (a String is what a Rust
        // application would have in hand).
        let s = String::from_utf8(buf.clone()).map_err(|e| e.to_string())?;
        if seq == a.warmup as u64 {
            iv.cpu0 = self_cpu_us();
            iv.srv0 = proc_cpu_ns(a.server_pid);
            iv.t0 = Instant::now();
        }
        let ts = Instant::now();
        ws.send(Message::text(s))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let m = next_data(&mut ws).await?;
        let t = Instant::now();
        check_msg(pat, &m, seq, a.size, true)?;
        if seq >= a.warmup as u64 {
            lat.add((t - ts).as_nanos() as u64);
        }
        if seq + 1 == total {
            iv.t1 = t;
        }
    }
    iv.cpu1 = self_cpu_us();
    iv.srv1 = proc_cpu_ns(a.server_pid);
    put_interval(j, a, a.n, &iv);
    j.num("warmup", a.warmup as f64);
    j.num("rtt_median_us", lat.percentile_us(0.5));
    j.num("rtt_p99_us", lat.percentile_us(0.99));
    j.num("maxrss_kb", self_maxrss_kb() as f64);
    j.str("nodelay", nodelay_state());
    let _ = ws.close(None).await;
    Ok(())
}

async fn stream(a: &Args, pat: &Pat, j: &mut Json) -> Res<()> {
    let ws = connect(a, connector(a)?).await?;
    let (mut tx, mut rx) = ws.split();
    let n = a.n as u64;
    let cpu0 = self_cpu_us();
    let srv0 = proc_cpu_ns(a.server_pid);
    let t0 = Instant::now();
    let writer = async {
        let mut buf = Vec::with_capacity(a.size);
        for seq in 0..n {
            pat.fill(&mut buf, seq, a.size, false);
            tx.feed(Message::binary(buf.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        tx.flush().await.map_err(|e| format!("flush: {e}"))?;
        Ok::<(), String>(())
    };
    let reader = async {
        for seq in 0..n {
            let m = next_data(&mut rx).await?;
            check_msg(pat, &m, seq, a.size, false)?;
        }
        Ok::<Instant, String>(Instant::now())
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    let t1 = r?;
    let iv = Interval {
        t0,
        t1,
        cpu0,
        cpu1: self_cpu_us(),
        srv0,
        srv1: proc_cpu_ns(a.server_pid),
    };
    put_interval(j, a, a.n, &iv);
    j.num("maxrss_kb", self_maxrss_kb() as f64);
    j.str("nodelay", nodelay_state());
    let mut ws = tx.reunite(rx).map_err(|e| e.to_string())?;
    let _ = ws.close(None).await;
    Ok(())
}

async fn conns(a: &Args, pat: &Pat, j: &mut Json) -> Res<()> {
    let lim = raise_nofile();
    j.num("nofile", lim as f64);
    let n = a.n as usize;
    if lim < n as i64 + 64 {
        return Err(format!(
            "RLIMIT_NOFILE {lim} is too low for {n} connections"
        ));
    }
    // One connection first so one-time allocations are in the baseline.
    let warm = connect(a, connector(a)?).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m0 = mem_now();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let a2 = a.clone();
        let c = connector(a)?;
        set.spawn(async move { connect(&a2, c).await.map(|ws| (i, ws, Instant::now())) });
    }
    let mut socks: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut t1 = t0;
    while let Some(r) = set.join_next().await {
        let (i, ws, t) = r.map_err(|e| e.to_string())??;
        socks[i] = Some(ws);
        t1 = t1.max(t);
    }
    let mut socks: Vec<Ws> = socks.into_iter().map(Option::unwrap).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m1 = mem_now();
    let size = a.size;
    let results =
        futures_util::future::join_all(socks.iter_mut().enumerate().map(|(i, ws)| async move {
            let mut buf = Vec::with_capacity(size);
            pat.fill(&mut buf, i as u64, size, false);
            ws.send(Message::binary(buf))
                .await
                .map_err(|e| format!("send: {e}"))?;
            let m = next_data(ws).await?;
            check_msg(pat, &m, i as u64, size, false)
        }))
        .await;
    results.into_iter().collect::<Res<Vec<()>>>()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m2 = mem_now();
    let nf = n as f64;
    let ct = (t1 - t0).as_secs_f64();
    j.num("connect_total_ms", ct * 1e3);
    j.num("connects_per_s", nf / ct);
    j.num(
        "rss_per_conn_b",
        (m1.rss_kb - m0.rss_kb) as f64 * 1024.0 / nf,
    );
    j.num(
        "vmdata_per_conn_b",
        (m1.data_kb - m0.data_kb) as f64 * 1024.0 / nf,
    );
    j.num("malloc_per_conn_b", (m1.heap_used - m0.heap_used) / nf);
    j.num(
        "malloc_arena_per_conn_b",
        (m1.heap_arena - m0.heap_arena) / nf,
    );
    j.num(
        "rss_per_conn_after_echo_b",
        (m2.rss_kb - m0.rss_kb) as f64 * 1024.0 / nf,
    );
    j.num(
        "malloc_per_conn_after_echo_b",
        (m2.heap_used - m0.heap_used) / nf,
    );
    j.num("rss_base_kb", m0.rss_kb as f64);
    j.num("vmdata_base_kb", m0.data_kb as f64);
    j.num("threads", self_threads() as f64);
    j.str("nodelay", nodelay_state());
    drop(socks);
    drop(warm);
    Ok(())
}

async fn fanout(a: &Args, pat: &Pat, j: &mut Json) -> Res<()> {
    raise_nofile();
    let c_n = a.conns as usize;
    let k_n = a.n as u64;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..c_n {
        let a2 = a.clone();
        let c = connector(a)?;
        set.spawn(async move { connect(&a2, c).await.map(|ws| (i, ws)) });
    }
    let mut socks: Vec<Option<Ws>> = (0..c_n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, ws) = r.map_err(|e| e.to_string())??;
        socks[i] = Some(ws);
    }
    let period = Duration::from_nanos(1_000_000_000 / a.rate as u64);
    let start = Instant::now() + Duration::from_millis(20);
    let cpu0 = self_cpu_us();
    let srv0 = proc_cpu_ns(a.server_pid);
    let pat = std::sync::Arc::new(Pat {
        bin: pat.bin.clone(),
        text: Vec::new(),
    });
    let size = a.size;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, ws) in socks.into_iter().enumerate() {
        let mut ws = ws.unwrap();
        let pat = pat.clone();
        // Offsets on a 1 ms grid, as in every client (see FANOUT_OFFSET_NS in common.h).
        let off_ms = (period.as_nanos() as u64 * c as u64 / c_n as u64) / 1_000_000;
        let first = start + Duration::from_millis(off_ms);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(first), period);
            let mut sent_at: Vec<Instant> = Vec::with_capacity(k_n as usize);
            let mut lat = Hist::new();
            let mut got: u64 = 0;
            let mut late_max = Duration::ZERO;
            let mut buf = Vec::with_capacity(size);
            let mut last = Instant::now();
            while got < k_n {
                tokio::select! {
                    due = tick.tick(), if (sent_at.len() as u64) < k_n => {
                        let k = sent_at.len() as u64;
                        pat.fill(&mut buf, ((c as u64) << 32) | k, size, false);
                        let t = Instant::now();
                        late_max = late_max.max(t.saturating_duration_since(due.into_std()));
                        sent_at.push(t);
                        ws.send(Message::binary(buf.clone())).await.map_err(|e| format!("send: {e}"))?;
                    }
                    m = next_data(&mut ws) => {
                        let m = m?;
                        let t = Instant::now();
                        let k = got;
                        if k >= sent_at.len() as u64 {
                            return Err(format!("conn {c}: echo {k} before it was sent"));
                        }
                        check_msg(&pat, &m, ((c as u64) << 32) | k, size, false)?;
                        lat.add((t - sent_at[k as usize]).as_nanos() as u64);
                        got += 1;
                        last = t;
                    }
                }
            }
            Ok::<_, String>((ws, lat, last, late_max))
        });
    }
    let mut all_lat = Hist::new();
    let mut t1 = start;
    let mut late_max = Duration::ZERO;
    let mut done = Vec::with_capacity(c_n);
    while let Some(r) = tasks.join_next().await {
        let (ws, lat, last, lm) = r.map_err(|e| e.to_string())??;
        all_lat.merge(&lat);
        t1 = t1.max(last);
        late_max = late_max.max(lm);
        done.push(ws);
    }
    let iv = Interval {
        t0: start,
        t1,
        cpu0,
        cpu1: self_cpu_us(),
        srv0,
        srv1: proc_cpu_ns(a.server_pid),
    };
    j.num("conns", c_n as f64);
    j.num("rate", a.rate as f64);
    j.num("duration_s", a.duration);
    put_interval(j, a, (c_n as u64 * k_n) as i64, &iv);
    j.num("lat_median_us", all_lat.percentile_us(0.5));
    j.num("lat_p99_us", all_lat.percentile_us(0.99));
    j.num("send_late_max_us", late_max.as_secs_f64() * 1e6);
    j.str("nodelay", nodelay_state());
    futures_util::future::join_all(done.iter_mut().map(|ws| ws.close(None))).await;
    Ok(())
}

fn main() {
    let a = parse_args();
    let pat = Pat::new(a.size.max(64));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut j = Json::new();
    j.str("client", "tokio-tungstenite");
    j.str("workload", &a.workload);
    j.str("url", &a.url);
    j.num("n", a.n as f64);
    j.num("size", a.size as f64);
    let r = rt.block_on(async {
        match a.workload.as_str() {
            "pingpong" => pingpong(&a, &pat, &mut j).await,
            "stream" | "bulk" => stream(&a, &pat, &mut j).await,
            "conns" => conns(&a, &pat, &mut j).await,
            "fanout" => fanout(&a, &pat, &mut j).await,
            _ => usage(),
        }
    });
    j.boolean("ok", r.is_ok());
    if let Err(e) = &r {
        j.str("error", e);
    }
    j.print();
    std::process::exit(if r.is_ok() { 0 } else { 1 });
}
