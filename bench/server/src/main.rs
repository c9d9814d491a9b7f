//! Echo server for the libpjwebsock benchmarks.
//!
//! Every client under test talks to this one program, so it must never be
//! the bottleneck. It therefore echoes at the *frame* level instead of
//! through a full WebSocket library: each data frame's header is rewritten
//! (mask bit cleared) and its payload is unmasked straight into the output
//! buffer as it arrives, so even a 1 MiB frame is streamed back without
//! being buffered whole, and everything read in one `read()` goes back in
//! one `write()`. Fragmented messages come back with the same fragments, so
//! message boundaries, opcodes, bytes and order are preserved exactly.
//!
//! It still checks what a server must check (RFC 6455 §5): the opening
//! handshake, the mask bit, RSV bits (no extension is negotiated), opcodes,
//! control-frame size and FIN, and continuation sequencing; a violation is
//! logged on stderr and answered with close 1002. Pings get pongs, a close
//! frame is echoed and the server then closes TCP (as RFC 6455 §7.1.1 asks).
//!
//! A write that stays blocked for 10 ms makes it read what waits unread
//! into its read buffer (`write_out`), so that a client flooding small
//! segments cannot stall the connection.
//!
//! Single-threaded (tokio current_thread runtime), meant to be pinned to one
//! core with `taskset`. TCP_NODELAY on every accepted socket, listen backlog
//! 8192 by default (the kernel caps it at net.core.somaxconn), RLIMIT_NOFILE
//! raised to the hard limit.
//!
//! Usage: pjws-echo-server [--listen 127.0.0.1:0] [--backlog N]
//!                         [--tls CERT.pem KEY.pem] [--verbose] [--corrupt N]
//! `--corrupt N` flips one bit in the last payload byte of every Nth data
//! frame: the smoke test uses it to check that every client notices.
//! Prints `listening PORT` on stdout once it accepts connections.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_openssl::SslStream;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MIN_BUF: usize = 4096;
const MAX_BUF: usize = 256 * 1024;
const MAX_HEAD: usize = 16 * 1024;
/// How long a write may stay blocked before what waits unread is drained
/// into the read buffer...
const DRAIN_CHECK: Duration = Duration::from_millis(10);
/// ...up to this much (a client that never reads its echoes).
const MAX_DRAINED: usize = 256 * 1024 * 1024;

struct Args {
    listen: SocketAddr,
    backlog: u32,
    tls: Option<(String, String)>,
    verbose: bool,
    corrupt: u64,
}

fn usage() -> ! {
    eprintln!("usage: pjws-echo-server [--listen ADDR:PORT] [--backlog N] [--tls CERT.pem KEY.pem] [--verbose]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:0".parse().unwrap(),
        backlog: 8192,
        tls: None,
        verbose: false,
        corrupt: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--listen" => {
                a.listen = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--port" => {
                let p: u16 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                a.listen.set_port(p);
            }
            "--backlog" => {
                a.backlog = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--tls" => {
                let c = it.next().unwrap_or_else(|| usage());
                let k = it.next().unwrap_or_else(|| usage());
                a.tls = Some((c, k));
            }
            "--verbose" | "-v" => a.verbose = true,
            "--corrupt" => {
                a.corrupt = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    a
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() {
    let args = parse_args();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(args)) {
        eprintln!("pjws-echo-server: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> io::Result<()> {
    let sock = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(args.listen)?;
    let listener = sock.listen(args.backlog)?;
    let acceptor = match &args.tls {
        None => None,
        Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(io::Error::other)?),
    };
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?.port())?;
        out.flush()?;
    }
    let verbose = args.verbose;
    let corrupt = args.corrupt;
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                eprintln!("pjws-echo-server: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let acc = acceptor.clone();
        tokio::spawn(async move {
            let fd = s.as_raw_fd();
            let r = match acc {
                None => echo_conn(s, fd, corrupt).await,
                Some(a) => match tls_accept(&a, s).await {
                    Ok(t) => {
                        if verbose {
                            let ssl = t.ssl();
                            eprintln!(
                                "pjws-echo-server: {peer}: {} {}",
                                ssl.version_str(),
                                ssl.current_cipher().map_or("?", |c| c.name())
                            );
                        }
                        echo_conn(t, fd, corrupt).await
                    }
                    Err(e) => Err(io::Error::other(format!("TLS accept: {e}"))),
                },
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    eprintln!("pjws-echo-server: {peer}: protocol error: {e}")
                }
                Err(e) if verbose => eprintln!("pjws-echo-server: {peer}: {e}"),
                Err(_) => {}
            }
        });
    }
}

/// Mozilla's "intermediate" server configuration, version 5: TLS 1.2 and
/// 1.3, and the client's preferred cipher suite (a current production server
/// setup; the older version 4, which native-tls uses, disables TLS 1.3 and
/// forces ChaCha20-Poly1305 on every client).
fn tls_acceptor(cert: &str, key: &str) -> Result<SslAcceptor, ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    b.set_certificate_chain_file(cert)?;
    b.set_private_key_file(key, SslFiletype::PEM)?;
    b.check_private_key()?;
    // Fill OpenSSL's record buffer per read() instead of reading each
    // record's 5-byte header and its body with two calls.
    b.set_read_ahead(true);
    Ok(b.build())
}

async fn tls_accept(acc: &SslAcceptor, s: TcpStream) -> io::Result<SslStream<TcpStream>> {
    let ssl = Ssl::new(acc.context()).map_err(io::Error::other)?;
    let mut t = SslStream::new(ssl, s).map_err(io::Error::other)?;
    Pin::new(&mut t).accept().await.map_err(io::Error::other)?;
    Ok(t)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Checks the opening handshake request and builds the 101 response.
fn handshake_response(head: &[u8]) -> io::Result<Vec<u8>> {
    let text = std::str::from_utf8(head).map_err(|_| bad("handshake is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let req = lines.next().unwrap_or("");
    if !req.starts_with("GET ") || !req.ends_with(" HTTP/1.1") {
        return Err(bad("request line is not GET ... HTTP/1.1"));
    }
    let (mut key, mut upgrade, mut version) = (None, false, false);
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = value == "13";
        }
    }
    let key = key.ok_or_else(|| bad("no Sec-WebSocket-Key"))?;
    if !upgrade || !version {
        return Err(bad(
            "missing Upgrade: websocket or Sec-WebSocket-Version: 13",
        ));
    }
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    let accept = base64(&h.digest().bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

/// XOR-unmasks `src` (payload position `off`) onto the end of `out`.
#[inline]
fn unmask_append(out: &mut Vec<u8>, src: &[u8], mask: [u8; 4], off: usize) {
    let r = off & 3;
    let m = [
        mask[r],
        mask[(r + 1) & 3],
        mask[(r + 2) & 3],
        mask[(r + 3) & 3],
    ];
    let w = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    out.reserve(src.len());
    let (chunks, tail) = src.as_chunks::<8>();
    for c in chunks {
        out.extend_from_slice(&(u64::from_ne_bytes(*c) ^ w).to_ne_bytes());
    }
    for (i, b) in tail.iter().enumerate() {
        out.push(b ^ m[i & 3]);
    }
}

fn put_header(out: &mut Vec<u8>, b0: u8, len: u64) {
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

#[derive(Default)]
struct Echo {
    /// Payload bytes of the current data frame still to come.
    rem: u64,
    mask: [u8; 4],
    off: usize,
    /// Inside a fragmented message (a CONT frame is due).
    in_msg: bool,
    /// Self-test: corrupt every Nth data frame (0 = never).
    corrupt: u64,
    frames: u64,
}

enum Step {
    More,
    Close,
}

impl Echo {
    /// Consumes as much of `input` as possible, appending the echo to `out`.
    /// Returns the bytes consumed; `Step::Close` after a close frame.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<(usize, Step)> {
        let mut i = 0;
        loop {
            if self.rem > 0 {
                let n = (input.len() - i).min(self.rem.min(usize::MAX as u64) as usize);
                if n == 0 {
                    return Ok((i, Step::More));
                }
                unmask_append(out, &input[i..i + n], self.mask, self.off);
                self.off += n;
                self.rem -= n as u64;
                i += n;
                if self.rem == 0 && self.corrupt != 0 && self.frames.is_multiple_of(self.corrupt) {
                    if let Some(b) = out.last_mut() {
                        *b ^= 1;
                    }
                }
                continue;
            }
            let b = &input[i..];
            if b.len() < 2 {
                return Ok((i, Step::More));
            }
            let (b0, b1) = (b[0], b[1]);
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0F;
            if b0 & 0x70 != 0 {
                return Err(bad("RSV bit set"));
            }
            if b1 & 0x80 == 0 {
                return Err(bad("unmasked client frame"));
            }
            let (len, mut hl) = match b1 & 0x7F {
                126 => match b.get(2..4) {
                    Some(x) => (u64::from(u16::from_be_bytes([x[0], x[1]])), 4),
                    None => return Ok((i, Step::More)),
                },
                127 => match b.get(2..10) {
                    Some(x) => (u64::from_be_bytes(x.try_into().unwrap()), 10),
                    None => return Ok((i, Step::More)),
                },
                l => (u64::from(l), 2),
            };
            if len >> 63 != 0 {
                return Err(bad("64-bit length with the top bit set"));
            }
            let Some(m) = b.get(hl..hl + 4) else {
                return Ok((i, Step::More));
            };
            let mask: [u8; 4] = m.try_into().unwrap();
            hl += 4;
            match op {
                0 | 1 | 2 => {
                    if (op == 0) != self.in_msg {
                        return Err(bad(if op == 0 {
                            "CONT without a message"
                        } else {
                            "new message inside a fragmented one"
                        }));
                    }
                    self.in_msg = !fin;
                    self.frames += 1;
                    put_header(out, b0 & 0x8F, len);
                    self.rem = len;
                    self.mask = mask;
                    self.off = 0;
                    i += hl;
                }
                8 | 9 | 10 => {
                    if !fin || len > 125 {
                        return Err(bad("fragmented or oversized control frame"));
                    }
                    let len = len as usize;
                    let Some(p) = b.get(hl..hl + len) else {
                        return Ok((i, Step::More));
                    };
                    i += hl + len;
                    match op {
                        9 => {
                            put_header(out, 0x8A, len as u64);
                            unmask_append(out, p, mask, 0);
                        }
                        10 => {}
                        _ => {
                            if len == 1 {
                                return Err(bad("close frame with a 1-byte body"));
                            }
                            // Echo the close code (not the reason) back.
                            let n = len.min(2);
                            put_header(out, 0x88, n as u64);
                            unmask_append(out, &p[..n], mask, 0);
                            return Ok((i, Step::Close));
                        }
                    }
                }
                _ => return Err(bad("reserved opcode")),
            }
        }
    }
}

/// Bytes received on `fd` and not read yet.
fn unread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return 0;
    }
    n.max(0) as usize
}

/// Writes all of `out`. While the client's window keeps the write
/// blocked, what it sent meanwhile is read into `buf` (and later echoed)
/// rather than left in the kernel: an echo server that stops
/// reading whenever its write blocks lets a flood of small segments fill
/// its receive queue until the kernel prunes it and drops segments, and
/// then both directions of the connection can stall for good (see
/// bench/README.md). Normally the write completes first and nothing
/// changes. True when data was read into `buf`.
async fn write_out<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    fd: RawFd,
    out: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut sent = 0;
    let mut drained = false;
    while sent < out.len() {
        match tokio::time::timeout(DRAIN_CHECK, s.write(&out[sent..])).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // Blocked for DRAIN_CHECK: take what waits unread now.
                let mut want = unread(fd);
                while want > 0 && buf.len() < MAX_DRAINED {
                    buf.reserve(MAX_BUF);
                    match tokio::time::timeout(DRAIN_CHECK, s.read_buf(buf)).await {
                        Ok(Ok(0)) | Err(_) => break,
                        Ok(Ok(n)) => {
                            drained = true;
                            want = want.saturating_sub(n);
                        }
                        Ok(Err(e)) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(drained)
}

async fn echo_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    fd: RawFd,
    corrupt: u64,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(MIN_BUF);
    let head_len = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("handshake request too large"));
        }
        buf.reserve(MIN_BUF);
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let resp = match handshake_response(&buf[..head_len]) {
        Ok(r) => r,
        Err(e) => {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return Err(e);
        }
    };
    s.write_all(&resp).await?;
    buf.drain(..head_len);

    let mut echo = Echo {
        corrupt,
        ..Echo::default()
    };
    let mut out: Vec<u8> = Vec::new();
    let mut cap = MIN_BUF;
    loop {
        let (used, step) = match echo.process(&buf, &mut out) {
            Ok(x) => x,
            Err(e) => {
                out.clear();
                out.extend_from_slice(&[0x88, 2, 0x03, 0xEA]); // close 1002
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
                return Err(e);
            }
        };
        buf.drain(..used);
        if buf.capacity() > 2 * MAX_BUF && buf.len() <= MAX_BUF {
            buf.shrink_to(MAX_BUF); // after a drain
        }
        let mut drained = false;
        if !out.is_empty() {
            drained = write_out(&mut s, fd, &out, &mut buf).await?;
            out.clear();
            if out.capacity() > 2 * MAX_BUF {
                out.shrink_to(MAX_BUF);
            }
        }
        if let Step::Close = step {
            s.flush().await?;
            let _ = s.shutdown().await;
            return Ok(());
        }
        if drained {
            continue; // echo what was drained before reading more
        }
        // Grow the read buffer while reads fill it (bulk traffic), up to
        // MAX_BUF; idle connections keep a small one.
        let n = {
            buf.reserve(cap.saturating_sub(buf.len()));
            s.read_buf(&mut buf).await?
        };
        if n == 0 {
            return Ok(());
        }
        if buf.len() >= cap && cap < MAX_BUF {
            cap *= 2;
        }
    }
}
