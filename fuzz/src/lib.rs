//! Fuzz targets for libpjwebsock's protocol core.
//!
//! Every target is a plain function taking arbitrary bytes, so the same code
//! runs under libFuzzer (`fuzz_targets/*.rs`, feature `libfuzzer`) and in the
//! corpus replay test (`tests/replay.rs`, stable Rust, no libFuzzer). A
//! target panics when the library breaks one of the properties it checks.
//!
//! * [`frame_decode`]: `decode_header` (prefix monotonicity, header length,
//!   encode/decode round trip), piecewise masking, and a `Conn` fed the
//!   bytes in one piece.
//! * [`handshake_response`]: `Handshake::feed` with the response split
//!   arbitrarily must give exactly the one-shot result.
//! * [`conn_state`]: `Conn::feed` with the stream split arbitrarily (and an
//!   optional local close at a split point), compared event by event with an
//!   independent one-shot reference model of RFC 6455 §5/§7 for the client,
//!   including *where* each failure is reported (fail-fast: in the read that
//!   holds the first byte proving the violation).
//! * [`url_parse`]: `WsUrl::parse` never panics; accepted URLs are
//!   well-formed and survive a print/parse round trip.
//! * [`utf8_stream`]: the streaming validator with arbitrary splits agrees
//!   with `std::str::from_utf8` and reports the exact first invalid byte.

use pjwebsock::net::url::WsUrl;
use pjwebsock::proto::close;
use pjwebsock::proto::conn::{Conn, Event};
use pjwebsock::proto::frame::{
    apply_mask, decode_header, encode_header, FrameError, OpCode, MAX_HEADER_LEN,
};
use pjwebsock::proto::handshake::{Handshake, HandshakeError, MAX_RESPONSE_HEAD};
use pjwebsock::proto::utf8::Utf8Validator;

/// Names of all targets (directories under `fuzz/corpus/`).
pub const TARGETS: [&str; 5] = [
    "frame_decode",
    "handshake_response",
    "conn_state",
    "url_parse",
    "utf8_stream",
];

/// Runs target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "frame_decode" => frame_decode(data),
        "handshake_response" => handshake_response(data),
        "conn_state" => conn_state(data),
        "url_parse" => url_parse(data),
        "utf8_stream" => utf8_stream(data),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------
// Helpers

/// Deterministic split sizes derived from a seed (xorshift).
pub struct Splitter(u64);

impl Splitter {
    pub fn new(seed: u8) -> Splitter {
        Splitter(0x9E37_79B9_7F4A_7C15 ^ (u64::from(seed) * 0x1000_0000_01B3 + 1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Chunk boundaries for `len` bytes: 0 = b0 < b1 < ... < bn = len.
    /// Seed 0 gives one chunk; odd seeds favour 1-3 byte pieces.
    pub fn bounds(seed: u8, len: usize) -> Vec<usize> {
        let mut v = vec![0];
        if seed == 0 {
            if len > 0 {
                v.push(len);
            }
            return v;
        }
        let mut s = Splitter::new(seed);
        let small = seed & 1 == 1;
        let mut at = 0;
        while at < len {
            let r = s.next();
            let n = match (r % 4, small) {
                (0, _) | (1, true) | (2, true) => 1 + (r >> 8) as usize % 3,
                (1, false) => 1 + (r >> 8) as usize % 16,
                (2, false) => 1 + (r >> 8) as usize % 300,
                _ => len - at,
            };
            at = (at + n).min(len);
            v.push(at);
        }
        v
    }
}

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// A frame the client sent: (opcode, unmasked payload). Panics if it is not
/// a well-formed client control frame.
fn client_frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        let (h, n) = decode_header(out)
            .expect("client frame length")
            .expect("client frame complete");
        assert!(h.fin && h.rsv == 0, "client frame fin/rsv: {h:?}");
        let mask = h.mask.expect("client frames are masked");
        let len = h.payload_len as usize;
        assert!(len <= 125, "client control frame longer than 125: {len}");
        assert!(
            h.opcode == OpCode::Pong as u8 || h.opcode == OpCode::Close as u8,
            "client sent opcode {} on its own",
            h.opcode
        );
        let mut p = out[n..n + len].to_vec();
        apply_mask(&mut p, mask, 0);
        if h.opcode == OpCode::Close as u8 {
            check_client_close_body(&p);
        }
        frames.push((h.opcode, p));
        out = &out[n + len..];
    }
    frames
}

/// A close body we send: empty, or a sendable/failure code + UTF-8 reason.
fn check_client_close_body(p: &[u8]) {
    if p.is_empty() {
        return;
    }
    assert!(p.len() >= 2, "1-byte close body sent");
    let code = u16::from_be_bytes([p[0], p[1]]);
    assert!(
        close::is_valid_send_code(code),
        "client sent invalid close code {code}"
    );
    assert!(p.len() - 2 <= close::MAX_REASON_LEN);
    assert!(
        std::str::from_utf8(&p[2..]).is_ok(),
        "close reason not UTF-8"
    );
}

/// Index of the first byte of `b` that makes it definitely invalid UTF-8
/// (not merely incomplete), using only the standard library.
pub fn utf8_proof(b: &[u8]) -> Option<usize> {
    match std::str::from_utf8(b) {
        Ok(_) => None,
        Err(e) if e.error_len().is_none() => None,
        Err(e) => {
            let v = e.valid_up_to();
            (v + 1..=b.len().min(v + 4))
                .find(
                    |&k| matches!(std::str::from_utf8(&b[v..k]), Err(e) if e.error_len().is_some()),
                )
                .map(|k| k - 1)
                .or(Some(v))
        }
    }
}

// ---------------------------------------------------------------------------
// frame_decode

pub fn frame_decode(data: &[u8]) {
    match decode_header(data) {
        Ok(Some((h, n))) => {
            assert!(n <= data.len() && n <= MAX_HEADER_LEN);
            let base = match data[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(n, base + if h.mask.is_some() { 4 } else { 0 });
            assert!(h.payload_len >> 63 == 0);
            assert_eq!(h.fin, data[0] & 0x80 != 0);
            assert_eq!(h.rsv, (data[0] >> 4) & 7);
            assert_eq!(h.opcode, data[0] & 0xF);
            // Any shorter prefix is "need more".
            for k in 0..n {
                assert_eq!(decode_header(&data[..k]), Ok(None), "prefix {k} of {n}");
            }
            // Re-encoding (minimal form) decodes to the same header.
            if let Some(op) = OpCode::from_u8(h.opcode) {
                let mut buf = [0u8; MAX_HEADER_LEN];
                let m = encode_header(h.fin, op, h.mask, h.payload_len, &mut buf);
                let (h2, n2) = decode_header(&buf[..m]).unwrap().unwrap();
                assert_eq!(n2, m);
                assert_eq!(h2.payload_len, h.payload_len);
                assert_eq!(h2.mask, h.mask);
                assert_eq!((h2.fin, h2.opcode, h2.rsv), (h.fin, h.opcode, 0));
                // Minimal encoding is never longer than what was received.
                assert!(m <= n);
            }
        }
        Ok(None) => {
            let need = match data.get(1).map(|b| b & 0x7F) {
                None => 2,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            } + if data.get(1).is_some_and(|b| b & 0x80 != 0) {
                4
            } else {
                0
            };
            assert!(
                data.len() < need,
                "need more with {} of {need} bytes",
                data.len()
            );
        }
        Err(FrameError::LengthOverflow) => {
            assert!(data.len() >= 10 && data[1] & 0x7F == 127 && data[2] & 0x80 != 0);
        }
    }

    // Masking in pieces equals masking at once; masking twice is identity.
    if data.len() >= 5 {
        let key = [data[0], data[1], data[2], data[3]];
        let body = &data[4..];
        let mut whole = body.to_vec();
        apply_mask(&mut whole, key, 0);
        let cut = usize::from(data[4]) % (body.len() + 1);
        let mut parts = body.to_vec();
        let (a, b) = parts.split_at_mut(cut);
        apply_mask(a, key, 0);
        apply_mask(b, key, cut);
        assert_eq!(whole, parts);
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, body);
    }

    // The same bytes as a whole post-handshake stream, through feed and
    // with payloads read straight into the message buffer.
    check_conn(data, 1 << 16, &[0, data.len()], None, None, false);
    check_conn(data, 1 << 16, &[0, data.len()], None, Some(1), true);
}

// ---------------------------------------------------------------------------
// handshake_response

/// RFC 6455 §1.3 sample nonce and its accept value (seeds use it).
pub const HS_KEY: [u8; 16] = *b"the sample nonce";
pub const HS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const OFFERS: [Option<&[u8]>; 4] = [
    None,
    Some(b"chat"),
    Some(b"chat, superchat"),
    Some(b"a,b , c"),
];

/// Input: [offer selector, split seed, response bytes...].
pub fn handshake_response(data: &[u8]) {
    let (Some(&sel), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let input = &data[2..];
    let offer = OFFERS[usize::from(sel) % OFFERS.len()];
    let offered: Vec<String> = offer
        .map(|o| {
            std::str::from_utf8(o)
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let new = || {
        Handshake::new("example.com", "/chat", offer, &[], HS_KEY)
            .expect("request")
            .0
    };

    // One shot.
    let mut hs1 = new();
    let one = hs1.feed(input);
    let one = match one {
        Ok(Some((used, resp))) => {
            assert!(used <= input.len());
            assert_eq!(resp.head, &input[..used]);
            assert_eq!(resp.status, 101);
            if let Some(p) = &resp.subprotocol {
                assert!(offered.contains(p), "unoffered subprotocol {p:?} accepted");
            }
            // The head is an HTTP/1.1 101 with the right accept value.
            let head = String::from_utf8_lossy(&resp.head).to_ascii_lowercase();
            assert!(head.contains(&HS_ACCEPT.to_ascii_lowercase()));
            assert!(head.contains("websocket") && head.contains("upgrade"));
            assert!(used <= MAX_RESPONSE_HEAD);
            Ok(Some((used, resp.subprotocol)))
        }
        Ok(None) => {
            assert!(input.len() < MAX_RESPONSE_HEAD);
            Ok(None)
        }
        Err(e) => {
            assert!(e != HandshakeError::BadHeader);
            assert!(hs1.response_head().len() <= MAX_RESPONSE_HEAD);
            if let HandshakeError::BadStatus(s) = e {
                assert_ne!(s, 101);
            }
            Err(e)
        }
    };
    // Finished handshakes repeat their outcome without consuming.
    if !matches!(one, Ok(None)) {
        match hs1.feed(b"HTTP/1.1 101 x\r\n\r\n") {
            Ok(Some((0, r))) => {
                assert_eq!(Ok(Some(r.subprotocol)), one.clone().map(|o| o.map(|x| x.1)))
            }
            Err(e) => assert_eq!(Some(&e), one.as_ref().err()),
            other => panic!("finished handshake gave {other:?}"),
        }
    }

    // Split: identical outcome and the same total consumption.
    let mut hs2 = new();
    let bounds = Splitter::bounds(seed, input.len());
    let mut split = Ok(None);
    for w in bounds.windows(2) {
        match hs2.feed(&input[w[0]..w[1]]) {
            Ok(None) => {}
            Ok(Some((used, resp))) => {
                assert!(used <= w[1] - w[0]);
                split = Ok(Some((w[0] + used, resp.subprotocol)));
                break;
            }
            Err(e) => {
                split = Err(e);
                break;
            }
        }
    }
    assert_eq!(
        one, split,
        "one-shot and split handshakes differ ({:?})",
        bounds
    );
    if one.is_err() {
        assert_eq!(hs1.response_head(), hs2.response_head());
    }
}

// ---------------------------------------------------------------------------
// conn_state

const MAX_SIZES: [usize; 8] = [0, 1, 16, 125, 126, 1000, 65536, 1 << 20];

/// Input: [config, split seed, stream...]. config bits 0-2 pick the maximum
/// message size, bit 3 sends a local close before the first byte, bit 4 one
/// at the middle split point.
pub fn conn_state(data: &[u8]) {
    let (Some(&cfg), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let stream = &data[2..];
    let max = MAX_SIZES[usize::from(cfg & 7)];
    let bounds = Splitter::bounds(seed, stream.len());
    let local_close = if cfg & 0x08 != 0 {
        Some(0)
    } else if cfg & 0x10 != 0 {
        Some(bounds[bounds.len() / 2])
    } else {
        None
    };
    // Bits 5-6: payloads read straight into the message buffer whenever
    // at least 1, 64 or 4096 bytes of one are due (as the event loop does
    // over plain TCP), else everything through feed.
    let direct = match (cfg >> 5) & 3 {
        0 => None,
        1 => Some(1),
        2 => Some(64),
        _ => Some(4096),
    };
    // Bit 7: whole messages taken with `whole_message` before `feed` (as
    // the event loop's batched delivery does).
    check_conn(stream, max, &bounds, local_close, direct, cfg & 0x80 != 0);
}

/// What the library or the model reports; errors carry the offset of the
/// byte that proves the violation (+1) in `at`, the others their end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Msg(u8, Vec<u8>),
    Ping,
    Pong(Vec<u8>),
    Close(u16, String),
    Error(u16),
}

/// One-shot reference model of the client's receive rules. Returns the
/// events with their offsets and the frames the client must send: (opcode,
/// payload), with error closes as (8, code only).
fn model(
    s: &[u8],
    max: usize,
    local_close: Option<usize>,
) -> (Vec<(Ev, usize)>, Vec<(u8, Vec<u8>)>) {
    let mut evs: Vec<(Ev, usize)> = Vec::new();
    let mut i = 0;
    let mut msg_op: Option<u8> = None;
    let mut msg: Vec<u8> = Vec::new();
    let mut ping_payloads: Vec<Vec<u8>> = Vec::new();
    // Length of the prefix of msg known to be complete, valid UTF-8.
    let mut valid = 0;
    let reserved = |op: u8| matches!(op, 3..=7 | 11..=15);
    let control = |op: u8| op & 8 != 0;
    'frames: loop {
        let h = i;
        let Some(&b0) = s.get(h) else { break };
        let (fin, rsv, op) = (b0 & 0x80 != 0, (b0 >> 4) & 7, b0 & 0xF);
        if rsv != 0
            || reserved(op)
            || (control(op) && !fin)
            || (op == 0 && msg_op.is_none())
            || ((op == 1 || op == 2) && msg_op.is_some())
        {
            evs.push((Ev::Error(close::PROTOCOL_ERROR), h + 1));
            break;
        }
        let Some(&b1) = s.get(h + 1) else { break };
        if b1 & 0x80 != 0 {
            evs.push((Ev::Error(close::PROTOCOL_ERROR), h + 2));
            break;
        }
        let (plen, hl): (u64, usize) = match b1 & 0x7F {
            126 => match s.get(h + 2..h + 4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => break,
            },
            127 => match s.get(h + 2..h + 10) {
                Some(b) => {
                    let v = u64::from_be_bytes(b.try_into().unwrap());
                    if v >> 63 != 0 {
                        evs.push((Ev::Error(close::PROTOCOL_ERROR), h + 10));
                        break;
                    }
                    (v, 10)
                }
                None => break,
            },
            n => (u64::from(n), 2),
        };
        let ps = h + hl;
        if control(op) && plen > 125 {
            evs.push((Ev::Error(close::PROTOCOL_ERROR), ps));
            break;
        }
        if !control(op) && msg.len() as u64 + plen > max as u64 {
            evs.push((Ev::Error(close::TOO_BIG), ps));
            break;
        }
        let avail = (s.len() - ps) as u64;
        if control(op) {
            if avail < plen {
                break;
            }
            let end = ps + plen as usize;
            let p = s[ps..end].to_vec();
            match op {
                9 => {
                    evs.push((Ev::Ping, end));
                    ping_payloads.push(p);
                }
                10 => evs.push((Ev::Pong(p), end)),
                _ => {
                    match p.len() {
                        0 => evs.push((Ev::Close(close::NO_STATUS, String::new()), end)),
                        1 => evs.push((Ev::Error(close::PROTOCOL_ERROR), end)),
                        _ => {
                            let code = u16::from_be_bytes([p[0], p[1]]);
                            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                            match (valid, std::str::from_utf8(&p[2..])) {
                                (false, _) => evs.push((Ev::Error(close::PROTOCOL_ERROR), end)),
                                (true, Err(_)) => evs.push((Ev::Error(close::INVALID_DATA), end)),
                                (true, Ok(r)) => evs.push((Ev::Close(code, r.to_owned()), end)),
                            }
                        }
                    }
                    break 'frames;
                }
            }
            i = end;
            continue;
        }
        if op != 0 {
            msg_op = Some(op);
            msg.clear();
            valid = 0;
        }
        let take = avail.min(plen) as usize;
        let before = msg.len();
        msg.extend_from_slice(&s[ps..ps + take]);
        if msg_op == Some(1) {
            // msg[..valid] ends at a character boundary: check the rest.
            let tail = &msg[valid..];
            if let Some(k) = utf8_proof(tail) {
                evs.push((
                    Ev::Error(close::INVALID_DATA),
                    ps + (valid + k - before) + 1,
                ));
                break;
            }
            valid += match std::str::from_utf8(tail) {
                Ok(_) => tail.len(),
                Err(e) => e.valid_up_to(),
            };
        }
        if (take as u64) < plen {
            break;
        }
        let end = ps + take;
        if fin {
            let op = msg_op.take().unwrap();
            if op == 1 && std::str::from_utf8(&msg).is_err() {
                evs.push((Ev::Error(close::INVALID_DATA), end));
                break;
            }
            evs.push((Ev::Msg(op, std::mem::take(&mut msg)), end));
        }
        i = end;
    }

    // The frames the client sends, with the local close (1000 "bye") placed
    // where the harness issued it, if the connection was still going then.
    let mut out = Vec::new();
    let mut sent = false;
    let mut ping_payloads = ping_payloads;
    for (ev, at) in &evs {
        if let Some(k) = local_close {
            if !sent && k < *at {
                out.push((8, close_body(1000, b"bye")));
                sent = true;
            }
        }
        match ev {
            Ev::Ping => {
                let p = ping_payloads.remove(0);
                if !sent {
                    out.push((OpCode::Pong as u8, p));
                }
            }
            Ev::Close(code, _) if !sent => {
                let body = if *code == close::NO_STATUS {
                    vec![]
                } else {
                    code.to_be_bytes().to_vec()
                };
                out.push((8, body));
                sent = true;
            }
            Ev::Error(code) if !sent => {
                out.push((8, code.to_be_bytes().to_vec()));
                sent = true;
            }
            _ => {}
        }
    }
    let terminal = evs
        .iter()
        .any(|(e, _)| matches!(e, Ev::Close(..) | Ev::Error(_)));
    if let Some(k) = local_close {
        if !sent && !terminal && k <= s.len() {
            out.push((8, close_body(1000, b"bye")));
        }
    }
    (evs, out)
}

fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(reason);
    v
}

/// Feeds `stream` to a `Conn` in the pieces given by `bounds` and checks
/// every invariant and the agreement with [`model`].
fn check_conn(
    stream: &[u8],
    max: usize,
    bounds: &[usize],
    local_close: Option<usize>,
    direct: Option<usize>,
    batched: bool,
) {
    let mut conn = Conn::new(max);
    let mut out = Vec::new();
    let mut mask = || MASK;
    // (event, offset): end for events, (start of feed call, end of chunk)
    // for errors.
    let mut got: Vec<(Ev, usize, usize)> = Vec::new();
    let mut ended = false;
    let mut close_at_issued = false;
    let issue_close = |conn: &mut Conn, out: &mut Vec<u8>, ended: bool| {
        if !ended && !conn.close_sent() {
            conn.send_close(Some(1000), b"bye", MASK, out);
        }
    };
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        if local_close == Some(a) && !close_at_issued {
            issue_close(&mut conn, &mut out, ended);
            close_at_issued = true;
        }
        let mut pos = a;
        let mut calls = 0;
        while pos < b {
            calls += 1;
            assert!(calls <= b - a + 1, "feed makes no progress");
            if batched {
                if let Some((op, data, used)) = conn.whole_message(&stream[pos..b]) {
                    assert!(!ended, "whole message after Close/ProtocolError");
                    assert!(used > 0 && used <= b - pos);
                    if op == OpCode::Text {
                        assert!(std::str::from_utf8(data).is_ok(), "invalid UTF-8 taken");
                    }
                    got.push((Ev::Msg(op as u8, data.to_vec()), pos + used, pos + used));
                    pos += used;
                    continue;
                }
            }
            let room = direct.and_then(|min| conn.payload_room(min));
            let was_direct = room.is_some();
            let (used, ev) = if let Some(room) = room {
                assert!(!ended, "payload room after Close/ProtocolError");
                let n = room.len().min(b - pos);
                for (d, s) in room.iter_mut().zip(&stream[pos..pos + n]) {
                    d.write(*s);
                }
                // SAFETY: n bytes of the room were written just above.
                let ev = unsafe { conn.payload_filled(n, &mut out, &mut mask) };
                // After a failure the rest of the chunk is swallowed, as feed does.
                let failed = matches!(ev, Some(Event::ProtocolError { .. }));
                (if failed { b - pos } else { n }, ev)
            } else {
                conn.feed(&stream[pos..b], &mut out, &mut mask)
            };
            assert!(used <= b - pos, "consumed {used} of {}", b - pos);
            let Some(ev) = ev else {
                if was_direct {
                    // The room may end before the chunk (the frame ends).
                    assert!(used > 0, "direct read made no progress");
                    pos += used;
                    continue;
                }
                assert_eq!(used, b - pos, "no event, yet input left unconsumed");
                pos = b;
                continue;
            };
            assert!(!ended, "event after Close/ProtocolError: {ev:?}");
            let e = match ev {
                Event::Message { opcode, data } => {
                    let d = data.as_slice();
                    assert!(d.len() <= max, "message of {} > max {max}", d.len());
                    if opcode == OpCode::Text {
                        assert!(std::str::from_utf8(d).is_ok(), "invalid UTF-8 delivered");
                    }
                    assert!(matches!(opcode, OpCode::Text | OpCode::Bin));
                    Ev::Msg(opcode as u8, d.to_vec())
                }
                Event::Ping => Ev::Ping,
                Event::Pong { payload } => Ev::Pong(payload.0[..usize::from(payload.1)].to_vec()),
                Event::Close { code, reason } => {
                    ended = true;
                    assert!(conn.close_received());
                    Ev::Close(code, reason)
                }
                Event::ProtocolError { code, reason } => {
                    ended = true;
                    assert!(conn.failed());
                    assert!(matches!(code, 1002 | 1007 | 1009));
                    assert!(reason.len() <= close::MAX_REASON_LEN);
                    assert_eq!(used, b - pos, "rest of input not swallowed after failure");
                    got.push((Ev::Error(code), pos, b));
                    pos = b;
                    continue;
                }
            };
            got.push((e, pos + used, pos + used));
            pos += used;
        }
    }
    if local_close == Some(stream.len()) && !close_at_issued {
        issue_close(&mut conn, &mut out, ended);
    }
    // After the end everything is swallowed and nothing more comes out.
    if ended {
        let before = out.len();
        assert_eq!(
            conn.feed(b"\x89\x01a\x81\x01a", &mut out, &mut mask),
            (6, None)
        );
        assert_eq!(out.len(), before);
    }

    let (want, want_out) = model(stream, max, local_close);
    assert_eq!(got.len(), want.len(), "events: got {got:?}\nwant {want:?}");
    for ((g, lo, hi), (w, at)) in got.iter().zip(&want) {
        assert_eq!(g, w, "got {got:?}\nwant {want:?}");
        if let Ev::Error(_) = g {
            // Fail-fast: reported by the read holding the proving byte.
            assert!(
                *lo < *at && *at <= *hi,
                "error proven at {at} reported in read [{lo}, {hi})"
            );
        } else {
            assert_eq!(lo, at, "event {g:?} at {lo}, want {at}");
        }
    }
    let mut sent = client_frames(&out);
    // Error closes: compare the code only (the reason is informative).
    for (op, p) in sent.iter_mut() {
        if *op == 8 && p.len() > 2 {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if matches!(code, 1002 | 1007 | 1009) {
                p.truncate(2);
            }
        }
    }
    assert_eq!(sent, want_out, "client frames differ from the model");
}

// ---------------------------------------------------------------------------
// url_parse

pub fn url_parse(data: &[u8]) {
    let Ok(u) = WsUrl::parse(data) else { return };
    assert!(!u.host.is_empty());
    assert_ne!(u.port, 0);
    assert!(u.resource.starts_with('/'), "resource {:?}", u.resource);
    assert!(u.resource.bytes().all(|b| b.is_ascii_graphic()));
    if u.is_ipv6_literal {
        assert!(u.host.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        assert!(!u
            .host
            .contains(|c: char| c == ':' || c == '/' || c == '@' || c == '['));
    }
    let hh = u.host_header();
    assert!(hh.contains(&u.host));
    // Print and parse again: the same URL.
    let again = format!(
        "{}://{}{}",
        if u.secure { "wss" } else { "ws" },
        hh,
        u.resource
    );
    let v =
        WsUrl::parse(again.as_bytes()).unwrap_or_else(|()| panic!("reparse of {again:?} failed"));
    assert_eq!(u, v, "{again}");
    // The scheme decides the default port.
    let s = std::str::from_utf8(data).unwrap();
    let after = &s[s.find("://").unwrap() + 3..];
    let auth_end = after.find(['/', '?']).unwrap_or(after.len());
    let has_port = after[..auth_end]
        .rsplit_once(']')
        .map_or(after[..auth_end].contains(':'), |(_, p)| p.starts_with(':'));
    if !has_port {
        assert_eq!(u.port, if u.secure { 443 } else { 80 });
    }
}

// ---------------------------------------------------------------------------
// utf8_stream

/// Input: [split seed, bytes...].
pub fn utf8_stream(data: &[u8]) {
    let Some(&seed) = data.first() else { return };
    let bytes = &data[1..];
    let proof = utf8_proof(bytes);
    let mut v = Utf8Validator::new();
    let mut failed_at = None;
    for w in Splitter::bounds(seed, bytes.len()).windows(2) {
        if let Err(i) = v.feed(&bytes[w[0]..w[1]]) {
            assert!(i < w[1] - w[0]);
            failed_at = Some(w[0] + i);
            break;
        }
    }
    assert_eq!(failed_at, proof, "validator vs std on {bytes:02x?}");
    if proof.is_none() {
        assert_eq!(v.is_complete(), std::str::from_utf8(bytes).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &[u8], max: usize, local_close: Option<usize>) -> Vec<(Ev, usize)> {
        model(s, max, local_close).0
    }

    /// The reference model itself, on hand-checked inputs.
    #[test]
    fn model_basics() {
        assert_eq!(
            ev(b"\x81\x05Hello", 100, None),
            vec![(Ev::Msg(1, b"Hello".to_vec()), 7)]
        );
        // Reserved bit: proven by the first byte.
        assert_eq!(ev(b"\xc1", 100, None), vec![(Ev::Error(1002), 1)]);
        // Masked: proven by the second byte.
        assert_eq!(ev(b"\x81\x85", 100, None), vec![(Ev::Error(1002), 2)]);
        // Invalid UTF-8 in an incomplete frame: proven by the bad byte.
        let mut s = vec![0x81, 126, 0, 200];
        s.extend_from_slice(&[b'a'; 20]);
        s.push(0xFF);
        assert_eq!(ev(&s, 1000, None), vec![(Ev::Error(1007), 25)]);
        // Surrogate split across fragments: proven at its second byte.
        assert_eq!(
            ev(b"\x01\x01\xed\x00\x01\xa0", 100, None),
            vec![(Ev::Error(1007), 6)]
        );
        // Too big: proven by the length byte.
        assert_eq!(ev(b"\x82\x05", 4, None), vec![(Ev::Error(1009), 2)]);
        // Ping after a local close: no pong; close echo only when not sent.
        let (e, out) = model(b"\x89\x01a\x88\x02\x03\xe8", 100, Some(0));
        assert_eq!(e, vec![(Ev::Ping, 3), (Ev::Close(1000, String::new()), 7)]);
        assert_eq!(out, vec![(8, close_body(1000, b"bye"))]);
        let (_, out) = model(b"\x89\x01a\x88\x02\x03\xe8", 100, None);
        assert_eq!(out, vec![(10, b"a".to_vec()), (8, vec![3, 0xe8])]);
        // Nothing after the peer's close.
        assert_eq!(
            ev(b"\x88\x00\x81\x01a", 100, None),
            vec![(Ev::Close(1005, String::new()), 2)]
        );
    }

    #[test]
    fn utf8_proof_positions() {
        assert_eq!(utf8_proof(b"abc"), None);
        assert_eq!(utf8_proof(b"ab\xe2\x82"), None);
        assert_eq!(utf8_proof(b"\x80"), Some(0));
        assert_eq!(utf8_proof(b"a\xe0\x80"), Some(2));
        assert_eq!(utf8_proof(b"\xf4\x90"), Some(1));
        assert_eq!(utf8_proof(b"\xe2\x82A"), Some(2));
        assert_eq!(utf8_proof(b"\xc0"), Some(0));
    }
}
