//! TLS for wss:// through OpenSSL.
//!
//! - `TlsConfig`: what the application asked for (pjlib's
//!   `pj_ssl_sock_param` fields plus our extension settings).
//! - `context()`: builds, or reuses, the `SslContext` for a configuration.
//!   Loading CA bundles is slow, so callers run it on a worker thread.
//! - `TlsStream`: one connection's OpenSSL state over a non-blocking socket,
//!   with OpenSSL's WANT_READ/WANT_WRITE mapped onto `WouldBlock`.

use std::ffi::{c_int, c_void};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Mutex;

use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
    SslRef, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509VerifyResult;

use crate::ffi::types::pj_status_t;
use crate::status::*;

/// pjlib's `pj_ssl_sock_proto` bits.
pub const PROTO_TLS1_2: u32 = 16;
pub const PROTO_TLS1_3: u32 = 32;

/// Everything that decides how a TLS context is built. Two connections
/// with equal configurations share one `SslContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Verify the peer's certificate chain and name.
    pub verify: bool,
    /// pjlib `proto` mask (0 = default: TLS 1.2 and 1.3).
    pub proto: u32,
    /// IANA cipher-suite ids (empty = OpenSSL's defaults).
    pub ciphers: Vec<u16>,
    pub ca_file: Option<String>,
    pub ca_dir: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub key_password: Option<String>,
}

/// Per-connection settings that do not shape the context.
#[derive(Clone, Debug, Default)]
pub struct TlsSession {
    /// Name for SNI and for the certificate check (the URL's host unless
    /// `server_name` overrides it).
    pub name: String,
    /// SHA-256 hashes of acceptable peer public keys (SPKI); empty = any.
    pub pins: Vec<[u8; 32]>,
}

fn proto_bounds(mask: u32) -> Result<(SslVersion, SslVersion), pj_status_t> {
    let mask = if mask == 0 {
        PROTO_TLS1_2 | PROTO_TLS1_3
    } else {
        mask
    };
    match (mask & PROTO_TLS1_2 != 0, mask & PROTO_TLS1_3 != 0) {
        (true, true) => Ok((SslVersion::TLS1_2, SslVersion::TLS1_3)),
        (true, false) => Ok((SslVersion::TLS1_2, SslVersion::TLS1_2)),
        (false, true) => Ok((SslVersion::TLS1_3, SslVersion::TLS1_3)),
        // Only SSL 3 / TLS 1.0 / TLS 1.1 asked for: refused, not downgraded.
        (false, false) => Err(PJ_WEBSOCK_ETLS_PROTO),
    }
}

/// Checks a configuration without building it (for synchronous errors).
pub fn validate(cfg: &TlsConfig) -> Result<(), pj_status_t> {
    proto_bounds(cfg.proto).map(|_| ())
}

/// Splits IANA cipher ids into OpenSSL's TLS 1.2 cipher list and TLS 1.3
/// ciphersuites strings, using OpenSSL's own table.
fn cipher_strings(ids: &[u16]) -> Result<(String, String), ErrorStack> {
    let ctx = SslContext::builder(SslMethod::tls_client())?.build();
    let ssl = Ssl::new(&ctx)?;
    let wire: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    let lists = ssl.bytes_to_cipher_list(&wire, false)?;
    let (mut v12, mut v13) = (Vec::new(), Vec::new());
    for c in lists.suites.iter() {
        if c.protocol_id()[0] == 0x13 {
            v13.push(c.name().to_string());
        } else {
            v12.push(c.name().to_string());
        }
    }
    Ok((v12.join(":"), v13.join(":")))
}

/// The AEAD suites we reorder, by IANA id: AES-128-GCM, AES-256-GCM and
/// ChaCha20-Poly1305, for TLS 1.3 and for TLS 1.2 with ECDHE (ECDSA and
/// RSA certificates).
const AES128_GCM: [u16; 3] = [0x1301, 0xC02B, 0xC02F];
const AES256_GCM: [u16; 3] = [0x1302, 0xC02C, 0xC030];
const CHACHA20: [u16; 3] = [0x1303, 0xCCA9, 0xCCA8];

/// Whether the CPU encrypts AES-GCM in hardware (AES and carry-less
/// multiply instructions).
fn aes_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[allow(unreachable_code)]
    false
}

/// Where a suite goes in the order we offer: with AES in hardware,
/// AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305 (browsers' and
/// Go's order: 128-bit AES runs 10 rounds to 256-bit's 14, about 10 %
/// less CPU per 16 KiB record with OpenSSL 3.0 here, and is what TLS 1.3
/// requires every peer to support); without it,
/// ChaCha20-Poly1305 first. Other suites keep their place after these.
fn suite_rank(id: u16, aes_hw: bool) -> u8 {
    let (aes128, aes256, chacha) = if aes_hw { (0, 1, 2) } else { (1, 2, 0) };
    if AES128_GCM.contains(&id) {
        aes128
    } else if AES256_GCM.contains(&id) {
        aes256
    } else if CHACHA20.contains(&id) {
        chacha
    } else {
        3
    }
}

extern "C" {
    fn SSL_CTX_get_ciphers(ctx: *const c_void) -> *const c_void;
    fn OPENSSL_sk_num(st: *const c_void) -> c_int;
    fn OPENSSL_sk_value(st: *const c_void, i: c_int) -> *const c_void;
    fn SSL_CIPHER_get_protocol_id(c: *const c_void) -> u16;
}

/// The IANA ids of the suites a context offers, in its order (TLS 1.3
/// ones first, as OpenSSL keeps them).
fn offered_suites(b: &SslContextBuilder) -> Vec<u16> {
    // SAFETY: `b` is a live SSL_CTX; the stack it returns stays owned by
    // the context and is read before anything changes it.
    unsafe {
        let sk = SSL_CTX_get_ciphers(b.as_ptr() as *const c_void);
        if sk.is_null() {
            return Vec::new();
        }
        (0..OPENSSL_sk_num(sk))
            .map(|i| SSL_CIPHER_get_protocol_id(OPENSSL_sk_value(sk, i)))
            .collect()
    }
}

/// Reorders the suites the context already offers (OpenSSL's defaults,
/// or what the system's OpenSSL configuration allows) by `suite_rank`.
/// Never adds or removes one, so a system policy still holds.
fn prefer_cheap_aead(b: &mut SslContextBuilder, aes_hw: bool) -> Result<(), ErrorStack> {
    let now = offered_suites(b);
    let mut order = now.clone();
    order.sort_by_key(|&id| suite_rank(id, aes_hw));
    if order == now {
        return Ok(());
    }
    let (v12, v13) = cipher_strings(&order)?;
    if !v13.is_empty() {
        b.set_ciphersuites(&v13)?;
    }
    if !v12.is_empty() {
        b.set_cipher_list(&v12)?;
    }
    Ok(())
}

fn build(cfg: &TlsConfig) -> Result<SslContext, pj_status_t> {
    let cfg_err = |_| PJ_WEBSOCK_ETLS_CONFIG;
    let (min, max) = proto_bounds(cfg.proto)?;
    let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(cfg_err)?;
    b.set_min_proto_version(Some(min)).map_err(cfg_err)?;
    b.set_max_proto_version(Some(max)).map_err(cfg_err)?;
    // No session tickets: nothing here resumes sessions, and a TLS 1.3
    // server's tickets would otherwise stay in memory per connection.
    b.set_options(
        SslOptions::NO_COMPRESSION | SslOptions::NO_RENEGOTIATION | SslOptions::NO_TICKET,
    );
    // Idle connections give their record buffers back; large writes may
    // complete in pieces from a moving buffer (our send queue).
    b.set_mode(
        SslMode::RELEASE_BUFFERS
            | SslMode::ENABLE_PARTIAL_WRITE
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER,
    );
    if cfg.ciphers.is_empty() {
        prefer_cheap_aead(&mut b, aes_in_hardware()).map_err(cfg_err)?;
    } else {
        let (v12, v13) = cipher_strings(&cfg.ciphers).map_err(cfg_err)?;
        if v12.is_empty() && v13.is_empty() {
            return Err(PJ_WEBSOCK_ETLS_CONFIG);
        }
        // An empty string for one version disables that version's suites.
        b.set_cipher_list(&v12)
            .or_else(|e| if v12.is_empty() { Ok(()) } else { Err(e) })
            .map_err(cfg_err)?;
        b.set_ciphersuites(&v13).map_err(cfg_err)?;
    }
    if cfg.verify {
        if cfg.ca_file.is_none() && cfg.ca_dir.is_none() {
            b.set_default_verify_paths().map_err(cfg_err)?;
        }
        if let Some(f) = &cfg.ca_file {
            b.set_ca_file(f).map_err(cfg_err)?;
        }
        if let Some(d) = &cfg.ca_dir {
            b.load_verify_locations(None, Some(std::path::Path::new(d)))
                .map_err(cfg_err)?;
        }
        b.set_verify(SslVerifyMode::PEER);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some(cert) = &cfg.cert_file {
        b.set_certificate_chain_file(cert).map_err(cfg_err)?;
        let key = cfg.key_file.as_deref().unwrap_or(cert);
        match &cfg.key_password {
            Some(pw) => {
                let pem = std::fs::read(key).map_err(|_| PJ_WEBSOCK_ETLS_CONFIG)?;
                let pkey =
                    openssl::pkey::PKey::private_key_from_pem_passphrase(&pem, pw.as_bytes())
                        .map_err(cfg_err)?;
                b.set_private_key(&pkey).map_err(cfg_err)?;
            }
            None => b
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(cfg_err)?,
        }
        b.check_private_key().map_err(cfg_err)?;
    }
    b.set_alpn_protos(b"\x08http/1.1").map_err(cfg_err)?;
    Ok(b.build())
}

/// The context for `cfg`, built once and shared. Slow (reads CA files):
/// call it on a worker thread.
pub fn context(cfg: &TlsConfig) -> Result<SslContext, pj_status_t> {
    static CACHE: Mutex<Vec<(TlsConfig, SslContext)>> = Mutex::new(Vec::new());
    if let Some((_, c)) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| k == cfg)
    {
        return Ok(c.clone());
    }
    let ctx = build(cfg)?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    // Files may change: keep few contexts; newest wins on a race.
    if cache.len() >= 16 {
        cache.remove(0);
    }
    cache.retain(|(k, _)| k != cfg);
    cache.push((cfg.clone(), ctx.clone()));
    Ok(ctx)
}

/// The transport as OpenSSL's BIO sees it (non-owning): the socket of the
/// own event loop, or a socket registered with a pjlib ioqueue.
pub enum SockIo {
    Fd(RawFd),
    Pj(crate::net::pjdrv::PjIo),
}

impl Read for SockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SockIo::Fd(fd) => crate::net::sock::recv(*fd, buf),
            SockIo::Pj(p) => p.read(buf),
        }
    }
}

impl Write for SockIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SockIo::Fd(fd) => crate::net::sock::send(*fd, buf),
            SockIo::Pj(p) => p.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Plaintext writes larger than this are corked: their records gather in
/// `Bio::out` and go to the socket in one send (own loop only).
const RECORD_MAX: usize = 16 * 1024;
/// A corked write stops taking plaintext once this much ciphertext waits.
const CORK_BYTES: usize = 64 * 1024;
/// The BIO's read-ahead buffer: one recv fetches several records.
const READ_BUFFER: usize = 64 * 1024;

/// What OpenSSL reads from and writes to: the transport, or while corked,
/// `out`, whose records then go to the transport in one send. Records in
/// `out` always go first: their order is the stream's.
///
/// Over a socket of the own loop the BIO reads ahead itself: one recv of
/// up to `READ_BUFFER` into `inbuf`, from which OpenSSL's header and body
/// reads are served. (OpenSSL's own read-ahead moves all the bytes it
/// holds to the front of its buffer before each record of application
/// data, to align the payload: with many records per read that copied
/// the buffer over and over.)
pub struct Bio {
    io: SockIo,
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    off: usize,
    cork: bool,
    /// Received, `inbuf[in_off..]` not yet passed to OpenSSL. Given back
    /// once the socket reads dry (it is empty then).
    inbuf: Vec<u8>,
    in_off: usize,
}

impl Bio {
    /// Sends the corked records; Ok once none are left.
    fn send_out(&mut self) -> io::Result<()> {
        while self.off < self.out.len() {
            match self.io.write(&self.out[self.off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.off = 0;
        Ok(())
    }

    /// Reads ahead (into `inbuf`) only over a socket of the own loop.
    fn new(io: SockIo) -> Bio {
        Bio {
            io,
            out: Vec::new(),
            off: 0,
            cork: false,
            inbuf: Vec::new(),
            in_off: 0,
        }
    }

    /// Bytes read ahead and not yet passed to OpenSSL.
    fn read_ahead_len(&self) -> usize {
        self.inbuf.len() - self.in_off
    }

    /// Refills `inbuf` (empty) from the socket; Ok(0) at end of stream.
    fn fill(&mut self, fd: RawFd) -> io::Result<usize> {
        self.inbuf.clear();
        self.in_off = 0;
        self.inbuf.reserve_exact(READ_BUFFER);
        match crate::net::sock::recv_uninit(fd, self.inbuf.spare_capacity_mut()) {
            Ok(n) => {
                // SAFETY: recv initialised these n bytes of spare capacity.
                unsafe { self.inbuf.set_len(n) };
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Dry until epoll says otherwise: give the buffer back.
                    self.inbuf = Vec::new();
                }
                Err(e)
            }
        }
    }
}

impl Read for Bio {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = match self.io {
            SockIo::Fd(fd) => fd,
            _ => return self.io.read(buf),
        };
        if self.read_ahead_len() == 0 && self.fill(fd)? == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.read_ahead_len());
        buf[..n].copy_from_slice(&self.inbuf[self.in_off..self.in_off + n]);
        self.in_off += n;
        Ok(n)
    }
}

impl Write for Bio {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cork {
            self.out.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.send_out()?;
        self.io.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Outcome of a TLS handshake step.
pub enum HandshakeStep {
    Done,
    /// Waiting for the socket: true when it must become writable.
    Pending {
        want_write: bool,
    },
    Failed(pj_status_t),
}

// OpenSSL ≥ 1.1.0 functions the openssl crate does not wrap.
extern "C" {
    fn SSL_has_pending(ssl: *const c_void) -> c_int;
    fn SSL_free_buffers(ssl: *mut c_void) -> c_int;
}

/// SSL_free_buffers is safe with a partial record buffered only from
/// OpenSSL 3.0.14, 3.1.6, 3.2.2 and 3.3.1 on (CVE-2024-4741); older
/// versions keep their buffers (a patched distribution build that reports
/// an older number only loses the memory saving).
fn free_buffers_is_safe() -> bool {
    static SAFE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAFE.get_or_init(|| free_buffers_fixed_in(openssl::version::number() as u64))
}

/// Whether OPENSSL_VERSION_NUMBER `v` (0xMNN00PP0L) has the
/// SSL_free_buffers fix.
fn free_buffers_fixed_in(v: u64) -> bool {
    let (major, minor, patch) = ((v >> 28) & 0xF, (v >> 20) & 0xFF, (v >> 4) & 0xFF);
    match (major, minor) {
        (3, 0) => patch >= 14,
        (3, 1) => patch >= 6,
        (3, 2) => patch >= 2,
        (3, 3) => patch >= 1,
        (3, _) => true,
        (m, _) => m > 3,
    }
}

/// The `SSL *` behind an `SslRef` (a reference to an OpenSSL object is
/// its pointer: the openssl crate's types are opaque wrappers).
fn ssl_ptr(ssl: &SslRef) -> *mut c_void {
    ssl as *const SslRef as *mut c_void
}

/// One TLS connection.
pub struct TlsStream {
    stream: SslStream<Bio>,
    /// Large writes are corked (a socket of the own loop; pjlib's driver
    /// gathers writes in its own outbox).
    cork_ok: bool,
    pins: Vec<[u8; 32]>,
    /// OpenSSL asked to write before it can go on reading (or vice versa).
    pub want_write: bool,
    verify_result: i32,
}

impl TlsStream {
    pub fn new(
        ctx: &SslContext,
        io: SockIo,
        sess: TlsSession,
        verify: bool,
    ) -> Result<TlsStream, pj_status_t> {
        let err = |_| PJ_WEBSOCK_ETLS;
        let mut ssl = Ssl::new(ctx).map_err(err)?;
        let ip = sess.name.parse::<IpAddr>().ok();
        if ip.is_none() && !sess.name.is_empty() {
            // SNI only for names: RFC 6066 forbids IP literals there.
            ssl.set_hostname(&sess.name).map_err(err)?;
        }
        if verify {
            let p = ssl.param_mut();
            match ip {
                Some(ip) => p.set_ip(ip).map_err(err)?,
                None => p.set_host(&sess.name).map_err(err)?,
            }
        }
        // Over a socket the BIO reads ahead: one recv fetches several
        // records instead of two recvs (header, body) per record. The
        // pjlib driver's reads come from its inbox in memory: no need there.
        let own_socket = matches!(io, SockIo::Fd(_));
        let bio = Bio::new(io);
        let stream = SslStream::new(ssl, bio).map_err(err)?;
        Ok(TlsStream {
            stream,
            cork_ok: own_socket,
            pins: sess.pins,
            want_write: false,
            verify_result: 0,
        })
    }

    /// Advances the handshake; on completion checks the public-key pins.
    pub fn handshake(&mut self) -> HandshakeStep {
        match self.stream.connect() {
            Ok(()) => {
                if !self.pins.is_empty() && !self.pin_matches() {
                    return HandshakeStep::Failed(PJ_WEBSOCK_ETLS_PIN);
                }
                HandshakeStep::Done
            }
            Err(e) => match e.code() {
                ErrorCode::WANT_READ => HandshakeStep::Pending { want_write: false },
                ErrorCode::WANT_WRITE => HandshakeStep::Pending { want_write: true },
                _ => HandshakeStep::Failed(self.failure_status(&e)),
            },
        }
    }

    fn pin_matches(&self) -> bool {
        let Some(cert) = self.stream.ssl().peer_certificate() else {
            return false;
        };
        let Ok(spki) = cert.public_key().and_then(|k| k.public_key_to_der()) else {
            return false;
        };
        let hash = openssl::sha::sha256(&spki);
        self.pins.contains(&hash)
    }

    fn failure_status(&mut self, e: &openssl::ssl::Error) -> pj_status_t {
        let vr = self.stream.ssl().verify_result();
        self.verify_result = vr.as_raw();
        if vr != X509VerifyResult::OK {
            return match vr.as_raw() {
                // X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH
                62..=64 => PJ_WEBSOCK_ETLS_NAME,
                _ => PJ_WEBSOCK_ETLS_VERIFY,
            };
        }
        if let Some(ioe) = e.io_error() {
            if let Some(code) = ioe.raw_os_error() {
                return from_os(code);
            }
        }
        PJ_WEBSOCK_ETLS
    }

    /// The OpenSSL X509 verification result of the handshake (0 = OK).
    pub fn verify_result(&self) -> i32 {
        self.verify_result
    }

    /// Bytes already taken from the socket that a `read` can return
    /// without new ones arriving (read-ahead): epoll will not report them.
    pub fn has_pending(&self) -> bool {
        // SAFETY: a live SSL; SSL_has_pending only reads it.
        self.stream.get_ref().read_ahead_len() > 0
            || unsafe { SSL_has_pending(ssl_ptr(self.stream.ssl())) != 0 }
    }

    /// Reads decrypted bytes. Ok(0) is the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsIoError> {
        let r = self.stream.ssl_read(buf);
        self.read_result(r)
    }

    /// `read` into memory that need not be initialised (at most one
    /// record's bytes per call).
    pub fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsIoError> {
        let r = self.stream.ssl_read_uninit(buf);
        self.read_result(r)
    }

    fn read_result(&mut self, r: Result<usize, openssl::ssl::Error>) -> Result<usize, TlsIoError> {
        match r {
            Ok(n) => Ok(n),
            Err(e) => {
                if e.code() == ErrorCode::WANT_READ && free_buffers_is_safe() {
                    // Read dry: give the record buffers back. With
                    // RELEASE_BUFFERS OpenSSL does so after application data,
                    // but not after post-handshake messages (TLS 1.3
                    // session tickets), which left ~17 KiB per idle TLS 1.3
                    // connection. A buffer holding part of a record is kept
                    // (SSL_free_buffers returns 0 then).
                    // SAFETY: a live SSL, not in use elsewhere (&mut self).
                    unsafe { SSL_free_buffers(ssl_ptr(self.stream.ssl())) };
                }
                Err(self.io_error(e))
            }
        }
    }

    /// Writes plaintext; may accept only part of it. A large write is
    /// corked: up to `CORK_BYTES` of its records go out in one send, and
    /// what the socket does not take waits in the BIO (`out_pending`).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, TlsIoError> {
        self.send_pending()?;
        if !self.cork_ok || buf.len() <= RECORD_MAX {
            return self.stream.ssl_write(buf).map_err(|e| self.io_error(e));
        }
        self.stream.get_mut().cork = true;
        let mut done = 0;
        let mut failed = None;
        while done < buf.len() && self.stream.get_ref().out.len() < CORK_BYTES {
            // One record per call (SSL_MODE_ENABLE_PARTIAL_WRITE).
            match self.stream.ssl_write(&buf[done..]) {
                Ok(n) => done += n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.stream.get_mut().cork = false;
        match failed {
            Some(e) if done == 0 => return Err(self.io_error(e)),
            _ => {}
        }
        match self.send_pending() {
            Ok(()) | Err(TlsIoError::WouldBlock) => Ok(done),
            Err(e) => Err(e),
        }
    }

    /// Sends records a corked write left behind; WouldBlock (and
    /// `want_write`) while some remain.
    pub fn send_pending(&mut self) -> Result<(), TlsIoError> {
        match self.stream.get_mut().send_out() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.want_write = true;
                Err(TlsIoError::WouldBlock)
            }
            Err(e) => Err(match e.raw_os_error() {
                Some(c) => TlsIoError::Failed(from_os(c)),
                None => TlsIoError::Eof,
            }),
        }
    }

    /// Bytes of records waiting in the BIO for the socket.
    pub fn out_pending(&self) -> usize {
        let b = self.stream.get_ref();
        b.out.len() - b.off
    }

    /// A quiet connection gives the cork buffer back.
    pub fn trim(&mut self) {
        let b = self.stream.get_mut();
        if b.off == b.out.len() {
            b.out = Vec::new();
            b.off = 0;
        }
    }

    fn io_error(&mut self, e: openssl::ssl::Error) -> TlsIoError {
        match e.code() {
            ErrorCode::WANT_READ => TlsIoError::WouldBlock,
            ErrorCode::WANT_WRITE => {
                self.want_write = true;
                TlsIoError::WouldBlock
            }
            ErrorCode::ZERO_RETURN => TlsIoError::Eof,
            ErrorCode::SYSCALL if e.io_error().is_none() => TlsIoError::Eof,
            _ => match e.io_error().and_then(|i| i.raw_os_error()) {
                Some(c) if c == libc::EAGAIN => TlsIoError::WouldBlock,
                Some(c) => TlsIoError::Failed(from_os(c)),
                None => TlsIoError::Failed(PJ_WEBSOCK_ETLS),
            },
        }
    }

    /// After a failed write: the alert the peer sent before it reset the
    /// connection, if one is still queued on the socket (e.g. a TLS 1.3
    /// server's certificate_required, which arrives after our handshake
    /// completed): PJ_WEBSOCK_ETLS then, rather than the write's error.
    pub fn pending_alert(&mut self) -> Option<pj_status_t> {
        let mut buf = [0u8; 256];
        // OpenSSL files a received alert under reason 1000 + its code
        // (SSL_AD_REASON_OFFSET); an unexpected EOF is not one.
        let alert = |e: &openssl::ssl::Error| {
            e.ssl_error()
                .is_some_and(|st| st.errors().iter().any(|x| x.reason_code() >= 1000))
        };
        match self.stream.ssl_read(&mut buf) {
            Err(e) if e.code() == ErrorCode::SSL && alert(&e) => Some(PJ_WEBSOCK_ETLS),
            _ => None,
        }
    }

    /// Sends close_notify (best effort; the socket closes right after).
    pub fn shutdown(&mut self) {
        // Records still corked go first (the BIO's write sends them).
        let _ = self.stream.shutdown();
    }
}

/// A TLS read or write that did not transfer data.
pub enum TlsIoError {
    WouldBlock,
    Eof,
    Failed(pj_status_t),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ids: &[u16]) -> Vec<String> {
        let (v12, v13) = cipher_strings(ids).unwrap();
        v13.split(':')
            .chain(v12.split(':'))
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn reordered(v13: Option<&str>, v12: Option<&str>, aes_hw: bool) -> Vec<String> {
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        if let Some(v) = v13 {
            b.set_ciphersuites(v).unwrap();
        }
        if let Some(v) = v12 {
            b.set_cipher_list(v).unwrap();
        }
        let before = offered_suites(&b);
        prefer_cheap_aead(&mut b, aes_hw).unwrap();
        let after = offered_suites(&b);
        let (mut x, mut y) = (before.clone(), after.clone());
        x.sort_unstable();
        y.sort_unstable();
        assert_eq!(x, y, "the set of suites changed");
        names(&after)
    }

    #[test]
    fn default_suites_put_aes128_gcm_first_with_aes_hardware() {
        let got = reordered(None, None, true);
        assert_eq!(
            got[..3],
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"
            ]
        );
        let pos = |n: &str| got.iter().position(|s| s == n).unwrap();
        assert!(pos("ECDHE-ECDSA-AES128-GCM-SHA256") < pos("ECDHE-ECDSA-AES256-GCM-SHA384"));
        assert!(pos("ECDHE-RSA-AES128-GCM-SHA256") < pos("ECDHE-RSA-AES256-GCM-SHA384"));
        assert!(pos("ECDHE-RSA-AES256-GCM-SHA384") < pos("ECDHE-RSA-CHACHA20-POLY1305"));
    }

    #[test]
    fn default_suites_put_chacha20_first_without_aes_hardware() {
        let got = reordered(None, None, false);
        assert_eq!(
            got[..3],
            [
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384"
            ]
        );
        let pos = |n: &str| got.iter().position(|s| s == n).unwrap();
        assert!(pos("ECDHE-ECDSA-CHACHA20-POLY1305") < pos("ECDHE-ECDSA-AES128-GCM-SHA256"));
    }

    #[test]
    fn reordering_never_adds_a_suite_a_policy_left_out() {
        // A policy allowing only AES-256-GCM and ChaCha20 (TLS 1.3) and one
        // CBC suite (TLS 1.2): nothing is added, others keep their order.
        let got = reordered(
            Some("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"),
            Some("ECDHE-RSA-AES128-SHA"),
            true,
        );
        assert_eq!(
            got,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-RSA-AES128-SHA"
            ]
        );
    }

    #[test]
    fn free_buffers_fix_by_version() {
        // 1.1.1w, 3.0.13, 3.0.14, 3.0.19, 3.1.5, 3.1.6, 3.2.2, 3.3.0, 3.3.1, 3.4.0, 4.0.0
        let cases = [
            (0x1010117f, false),
            (0x300000d0, false),
            (0x300000e0, true),
            (0x30000130, true),
            (0x30100050, false),
            (0x30100060, true),
            (0x30200020, true),
            (0x30300000, false),
            (0x30300010, true),
            (0x30400000, true),
            (0x40000000, true),
        ];
        for (v, want) in cases {
            assert_eq!(free_buffers_fixed_in(v), want, "{v:#x}");
        }
    }
}
