//! Post-handshake receive/close state machine (RFC 6455 §5, §7), client side.
//!
//! Strict and fail-fast: every violation is detected at the earliest byte
//! that proves it, the connection is failed with the matching close code, and
//! nothing after that is delivered.

use std::mem::{self, MaybeUninit};

use super::close;
use super::frame::{self, FrameHeader, OpCode, MAX_HEADER_LEN};
use super::utf8::Utf8Validator;

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Recycled buffers above this capacity are dropped rather than cached
/// (a large cached one is given back by `shed` about a second
/// after its last use, any by `shrink` when the connection is quiet).
/// Reusing the buffer of the last large message spares the next one the
/// page faults of fresh memory.
const RECYCLE_MAX: usize = 4 * 1024 * 1024;
/// Upper bound on what a frame header alone makes us pre-allocate: larger
/// payloads grow the buffer as their bytes actually arrive.
const RESERVE_MAX: u64 = 1024 * 1024;

/// A message body: a slice of the caller's input when the whole message was
/// in one `feed` call, otherwise the reassembled buffer.
#[derive(Debug, Clone)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Payload<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(s) => s,
            Payload::Owned(v) => v,
        }
    }

    /// Converts to an owned buffer (copies only when borrowed).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Borrowed(s) => s.to_vec(),
            Payload::Owned(v) => v,
        }
    }
}

/// Payloads compare by content, whether borrowed or owned.
impl PartialEq for Payload<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload<'_> {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message; `opcode` is `Text` (validated UTF-8) or `Bin`.
    Message { opcode: OpCode, data: Payload<'a> },
    /// A pong with the same payload has been appended to `out`, unless our
    /// close was already sent.
    Ping,
    /// Payload bytes and length; bytes past the length are zero.
    Pong { payload: ([u8; MAX_CONTROL], u8) },
    /// The peer's close (1005 when its body was empty). If we had not sent a
    /// close, the echo (same code, empty reason; empty body for an empty
    /// body) has been appended to `out`.
    Close { code: u16, reason: String },
    /// We failed the connection (1002, 1007 or 1009); a close frame with this
    /// code and reason has been appended to `out` unless close was already sent.
    ProtocolError { code: u16, reason: &'static str },
}

impl Event<'_> {
    /// Detaches the event from the input buffer (copies a borrowed payload).
    pub fn into_owned(self) -> Event<'static> {
        match self {
            Event::Message { opcode, data } => Event::Message {
                opcode,
                data: Payload::Owned(data.into_vec()),
            },
            Event::Ping => Event::Ping,
            Event::Pong { payload } => Event::Pong { payload },
            Event::Close { code, reason } => Event::Close { code, reason },
            Event::ProtocolError { code, reason } => Event::ProtocolError { code, reason },
        }
    }
}

/// A protocol violation: close code and reason.
type Violation = (u16, &'static str);

/// The fields a header prefix already determines, for early rejection.
/// Unknown parts are neutral: no mask, length 0 (an extended length is not
/// known yet; the full header is checked again once complete).
fn provisional_header(prefix: &[u8]) -> Option<FrameHeader> {
    let (&b0, rest) = prefix.split_first()?;
    let b1 = rest.first().copied().unwrap_or(0);
    let len7 = b1 & 0x7F;
    Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0xF,
        mask: (b1 & 0x80 != 0).then_some([0; 4]),
        payload_len: if len7 < 126 { u64::from(len7) } else { 0 },
    })
}

/// The payload of an unfragmented text or binary frame whose header ends
/// at `pos`, if all of it is in `input`: Ok when valid, Err(()) for text
/// that is not UTF-8.
fn whole_payload<'a>(
    hdr: &FrameHeader,
    op: OpCode,
    input: &'a [u8],
    pos: usize,
) -> Option<Result<&'a [u8], Violation>> {
    if !hdr.fin || !matches!(op, OpCode::Text | OpCode::Bin) {
        return None;
    }
    let len = usize::try_from(hdr.payload_len).ok()?;
    let data = input.get(pos..pos.checked_add(len)?)?;
    if op == OpCode::Text {
        // The same reasons as when the message is reassembled piecewise
        // (feed's slow path, take_message), however the bytes were split.
        let mut v = Utf8Validator::new();
        if v.feed(data).is_err() {
            return Some(Err((close::INVALID_DATA, "invalid UTF-8")));
        }
        if !v.is_complete() {
            return Some(Err((close::INVALID_DATA, "truncated UTF-8")));
        }
    }
    Some(Ok(data))
}

/// Receive/close state of one connection. Holds no heap memory until a
/// message has to be reassembled.
#[derive(Debug)]
pub struct Conn {
    /// Reassembly buffer for fragmented or split messages.
    msg: Vec<u8>,
    max_message: usize,
    /// Payload bytes still to come for the frame being read.
    remaining: u64,
    /// UTF-8 state of the text message being reassembled.
    utf8: Utf8Validator,
    /// A header split across `feed` calls.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// Control frame payload gathered so far (may straddle `feed` calls).
    ctrl: [u8; MAX_CONTROL],
    ctrl_len: u8,
    /// Reading a payload (true) or a header (false).
    in_payload: bool,
    frame_op: OpCode,
    frame_fin: bool,
    /// Opcode of the data message in progress (`Text`/`Bin`).
    msg_op: Option<OpCode>,
    close_sent: bool,
    close_received: bool,
    failed: bool,
}

impl Conn {
    /// `max_message`: maximum reassembled message size in bytes; a frame
    /// header that would exceed it fails the connection with 1009.
    pub fn new(max_message: usize) -> Conn {
        Conn {
            msg: Vec::new(),
            max_message,
            remaining: 0,
            utf8: Utf8Validator::new(),
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            ctrl: [0; MAX_CONTROL],
            ctrl_len: 0,
            in_payload: false,
            frame_op: OpCode::Cont,
            frame_fin: false,
            msg_op: None,
            close_sent: false,
            close_received: false,
            failed: false,
        }
    }

    /// Consumes bytes from `input` until exactly one event is produced or the
    /// input is exhausted; returns (consumed, event). Frames it generates
    /// (pong, close echo, error close) are appended to `out`, masked with keys
    /// from `mask`. After `Close` or `ProtocolError` everything is consumed
    /// and ignored.
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
        mask: &mut dyn FnMut() -> [u8; 4],
    ) -> (usize, Option<Event<'a>>) {
        if self.failed || self.close_received {
            return (input.len(), None);
        }
        let mut pos = 0;
        loop {
            if !self.in_payload {
                let hdr = match self.read_header(input.get(pos..).unwrap_or_default()) {
                    Ok(Some((hdr, used))) => {
                        pos += used;
                        hdr
                    }
                    Ok(None) => {
                        // Reject what the partial header already shows.
                        let partial = provisional_header(
                            self.hdr
                                .get(..usize::from(self.hdr_len))
                                .unwrap_or_default(),
                        );
                        if let Some(Err(v)) = partial.map(|h| self.check_header(&h)) {
                            return self.fail(v, input, out, mask);
                        }
                        return (input.len(), None);
                    }
                    Err(v) => return self.fail(v, input, out, mask),
                };
                let op = match self.check_header(&hdr) {
                    Ok(op) => op,
                    Err(v) => return self.fail(v, input, out, mask),
                };
                // Fast path: an unfragmented message wholly inside `input` is
                // returned as a slice of it, without copying.
                match whole_payload(&hdr, op, input, pos) {
                    Some(Ok(data)) => {
                        let event = Event::Message {
                            opcode: op,
                            data: Payload::Borrowed(data),
                        };
                        return (pos + data.len(), Some(event));
                    }
                    Some(Err(v)) => return self.fail(v, input, out, mask),
                    None => {}
                }
                self.start_frame(op, &hdr);
            }

            // Take whatever part of the payload is available now.
            let avail = input.get(pos..).unwrap_or_default();
            let take = usize::try_from(self.remaining).map_or(avail.len(), |r| r.min(avail.len()));
            let piece = avail.get(..take).unwrap_or_default();
            pos += take;
            self.remaining -= take as u64;
            if self.frame_op.is_control() {
                let at = usize::from(self.ctrl_len);
                if let Some(dst) = self.ctrl.get_mut(at..at + take) {
                    dst.copy_from_slice(piece);
                    self.ctrl_len += take as u8;
                }
            } else {
                // Validate before storing so invalid text fails at the first
                // bad byte, not when the frame or message completes.
                if self.msg_op == Some(OpCode::Text) && self.utf8.feed(piece).is_err() {
                    return self.fail((close::INVALID_DATA, "invalid UTF-8"), input, out, mask);
                }
                self.msg.extend_from_slice(piece);
            }
            if self.remaining > 0 {
                return (pos, None);
            }

            // Frame complete.
            self.in_payload = false;
            if self.frame_op.is_control() {
                return self.on_control(pos, input, out, mask);
            }
            if self.frame_fin {
                return match self.take_message() {
                    Ok(event) => (pos, Some(event)),
                    Err(v) => self.fail(v, input, out, mask),
                };
            }
        }
    }

    /// A whole, valid, unfragmented text or binary message at the start of
    /// `input`, when the connection is between frames with no message in
    /// progress: (opcode, payload, bytes it spans). Changes nothing: `None`
    /// for anything else (a control frame, a fragment, an incomplete or
    /// invalid frame), which `feed` then handles. Lets the transport take
    /// several messages of one read before delivering them.
    pub fn whole_message<'a>(&self, input: &'a [u8]) -> Option<(OpCode, &'a [u8], usize)> {
        if self.failed || self.close_received || self.in_payload || self.hdr_len != 0 {
            return None;
        }
        let (hdr, n) = frame::decode_header(input).ok()??;
        let op = self.check_header(&hdr).ok()?;
        let data = whole_payload(&hdr, op, input, n)?.ok()?;
        Some((op, data, n + data.len()))
    }

    /// While the payload of a text or binary frame is being read and at
    /// least `min` more bytes of it are due: free space at the end of the
    /// message buffer (at most the rest of the frame) for the transport to
    /// read into directly, skipping the copy `feed` would make. Report what
    /// was read with [`Conn::payload_filled`].
    pub fn payload_room(&mut self, min: usize) -> Option<&mut [MaybeUninit<u8>]> {
        if self.failed || self.close_received || !self.in_payload || self.frame_op.is_control() {
            return None;
        }
        let rest = usize::try_from(self.remaining).ok()?;
        if rest < min.max(1) {
            return None;
        }
        // The header check bounded the frame by max_message; still grow
        // only as bytes arrive (RESERVE_MAX at a time).
        self.msg.reserve(rest.min(RESERVE_MAX as usize));
        let spare = self.msg.spare_capacity_mut();
        let n = spare.len().min(rest);
        spare.get_mut(..n)
    }

    /// Takes `n` bytes read into the slice from the last
    /// [`Conn::payload_room`]: validates them (UTF-8) and completes the
    /// frame and message as `feed` would. Frames it generates (an error
    /// close) are appended to `out`.
    ///
    /// # Safety
    /// The first `n` bytes of that slice must have been initialised, and
    /// nothing else may have touched the connection since the call.
    pub unsafe fn payload_filled(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        mask: &mut dyn FnMut() -> [u8; 4],
    ) -> Option<Event<'static>> {
        let start = self.msg.len();
        let n = n
            .min(self.msg.capacity() - start)
            .min(self.remaining as usize);
        // SAFETY: the caller initialised these n bytes of spare capacity.
        unsafe { self.msg.set_len(start + n) };
        self.remaining -= n as u64;
        if self.msg_op == Some(OpCode::Text)
            && self
                .utf8
                .feed(self.msg.get(start..).unwrap_or_default())
                .is_err()
        {
            return self
                .fail((close::INVALID_DATA, "invalid UTF-8"), &[], out, mask)
                .1;
        }
        if self.remaining > 0 {
            return None;
        }
        self.in_payload = false;
        if !self.frame_fin {
            return None;
        }
        match self.take_message() {
            Ok(event) => Some(event),
            Err(v) => self.fail(v, &[], out, mask).1,
        }
    }

    /// The reassembled message, once its last frame is complete; text
    /// must not end inside a character.
    fn take_message(&mut self) -> Result<Event<'static>, Violation> {
        let opcode = self.msg_op.take().unwrap_or(OpCode::Bin);
        if opcode == OpCode::Text && !self.utf8.is_complete() {
            return Err((close::INVALID_DATA, "truncated UTF-8"));
        }
        let data = Payload::Owned(mem::take(&mut self.msg));
        Ok(Event::Message { opcode, data })
    }

    /// Decodes the next header, completing a previously split one. On
    /// `Ok(Some((hdr, n)))`, `n` bytes of `input` were used; on `Ok(None)`
    /// all of `input` was buffered.
    fn read_header(&mut self, input: &[u8]) -> Result<Option<(FrameHeader, usize)>, Violation> {
        const TOP_BIT: Violation = (close::PROTOCOL_ERROR, "invalid frame length");
        let have = usize::from(self.hdr_len);
        if have == 0 {
            if let Some(found) = frame::decode_header(input).map_err(|_| TOP_BIT)? {
                return Ok(Some(found));
            }
            // Fewer bytes than a header needs, so they fit.
            let n = input.len().min(MAX_HEADER_LEN);
            if let (Some(dst), Some(src)) = (self.hdr.get_mut(..n), input.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.hdr_len = n as u8;
            return Ok(None);
        }
        let take = input.len().min(MAX_HEADER_LEN - have);
        if let (Some(dst), Some(src)) = (self.hdr.get_mut(have..have + take), input.get(..take)) {
            dst.copy_from_slice(src);
        }
        let buffered = self.hdr.get(..have + take).unwrap_or_default();
        match frame::decode_header(buffered).map_err(|_| TOP_BIT)? {
            Some((hdr, n)) => {
                self.hdr_len = 0;
                // The buffered part alone was too short, so n > have.
                Ok(Some((hdr, n.saturating_sub(have))))
            }
            None => {
                self.hdr_len = (have + take) as u8;
                Ok(None)
            }
        }
    }

    /// Applies the per-header rules; returns the frame's opcode.
    fn check_header(&self, hdr: &FrameHeader) -> Result<OpCode, Violation> {
        const PE: u16 = close::PROTOCOL_ERROR;
        if hdr.rsv != 0 {
            return Err((PE, "reserved bits set"));
        }
        if hdr.mask.is_some() {
            return Err((PE, "masked frame from server"));
        }
        let op = OpCode::from_u8(hdr.opcode).ok_or((PE, "reserved opcode"))?;
        if op.is_control() {
            if !hdr.fin {
                return Err((PE, "fragmented control frame"));
            }
            if hdr.payload_len > MAX_CONTROL as u64 {
                return Err((PE, "control frame too long"));
            }
            return Ok(op);
        }
        match (op, self.msg_op) {
            (OpCode::Cont, None) => return Err((PE, "unexpected continuation frame")),
            (OpCode::Text | OpCode::Bin, Some(_)) => {
                return Err((PE, "expected continuation frame"))
            }
            _ => {}
        }
        if (self.msg.len() as u64).saturating_add(hdr.payload_len) > self.max_message as u64 {
            return Err((close::TOO_BIG, "message too big"));
        }
        Ok(op)
    }

    /// Enters the payload state of a validated frame.
    fn start_frame(&mut self, op: OpCode, hdr: &FrameHeader) {
        self.in_payload = true;
        self.frame_op = op;
        self.frame_fin = hdr.fin;
        self.remaining = hdr.payload_len;
        if op.is_control() {
            self.ctrl_len = 0;
            return;
        }
        if op != OpCode::Cont {
            self.msg_op = Some(op);
            self.utf8.reset();
        }
        // The size check bounded this by max_message; cap it further so a
        // header alone cannot make us allocate a huge buffer.
        self.msg.reserve(hdr.payload_len.min(RESERVE_MAX) as usize);
    }

    /// Handles a complete control frame ending at `pos`.
    fn on_control<'a>(
        &mut self,
        pos: usize,
        input: &[u8],
        out: &mut Vec<u8>,
        mask: &mut dyn FnMut() -> [u8; 4],
    ) -> (usize, Option<Event<'a>>) {
        let len = usize::from(self.ctrl_len);
        let body = self.ctrl.get(..len).unwrap_or_default();
        let event = match self.frame_op {
            OpCode::Ping => {
                // Once our close is out, no more frames may follow it.
                if !self.close_sent {
                    frame::encode_frame(out, true, OpCode::Pong, body, mask());
                }
                Event::Ping
            }
            OpCode::Pong => {
                let mut payload = [0; MAX_CONTROL];
                if let Some(dst) = payload.get_mut(..len) {
                    dst.copy_from_slice(body);
                }
                Event::Pong {
                    payload: (payload, self.ctrl_len),
                }
            }
            _ => match close::parse_close_payload(body) {
                Ok((code, reason)) => {
                    let reason = reason.to_owned();
                    self.close_received = true;
                    if !self.close_sent {
                        let echo = (code != close::NO_STATUS).then_some(code);
                        self.send_close(echo, b"", mask(), out);
                    }
                    Event::Close { code, reason }
                }
                Err(code) => {
                    let reason = if code == close::INVALID_DATA {
                        "invalid UTF-8 in close reason"
                    } else {
                        "invalid close frame"
                    };
                    return self.fail((code, reason), input, out, mask);
                }
            },
        };
        (pos, Some(event))
    }

    /// Fails the connection: sends our close (if not already sent), drops
    /// state and swallows the rest of the input.
    fn fail<'a>(
        &mut self,
        (code, reason): Violation,
        input: &[u8],
        out: &mut Vec<u8>,
        mask: &mut dyn FnMut() -> [u8; 4],
    ) -> (usize, Option<Event<'a>>) {
        self.failed = true;
        self.msg = Vec::new();
        self.msg_op = None;
        if !self.close_sent {
            self.send_close(Some(code), reason.as_bytes(), mask(), out);
        }
        (input.len(), Some(Event::ProtocolError { code, reason }))
    }

    /// Encodes a data or control frame (fin set) for sending; the caller has
    /// validated opcode, length and UTF-8.
    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
        frame::encode_frame(out, true, opcode, payload, mask);
        if opcode == OpCode::Close {
            self.close_sent = true;
        }
    }

    /// Appends our close frame (`None` = empty body; the reason is cut to
    /// `MAX_REASON_LEN` bytes) and records that close was sent.
    pub fn send_close(
        &mut self,
        code: Option<u16>,
        reason: &[u8],
        mask: [u8; 4],
        out: &mut Vec<u8>,
    ) {
        let mut body = [0u8; MAX_CONTROL];
        let mut len = 0;
        if let Some(code) = code {
            let reason = reason.get(..close::MAX_REASON_LEN).unwrap_or(reason);
            body[..2].copy_from_slice(&code.to_be_bytes());
            if let Some(dst) = body.get_mut(2..2 + reason.len()) {
                dst.copy_from_slice(reason);
            }
            len = 2 + reason.len();
        }
        frame::encode_frame(
            out,
            true,
            OpCode::Close,
            body.get(..len).unwrap_or_default(),
            mask,
        );
        self.close_sent = true;
    }

    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    pub fn close_received(&self) -> bool {
        self.close_received
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Gives back an `Owned` payload's buffer so the next reassembled message
    /// reuses it; kept only if its capacity is ≤ 64 KiB and larger than what
    /// we hold, and no message data is buffered.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= RECYCLE_MAX
            && buf.capacity() > self.msg.capacity()
            && self.msg.is_empty()
        {
            buf.clear();
            self.msg = buf;
        }
    }

    /// Drops the message buffer if it is empty and larger than `min`;
    /// false while it holds part of a message larger than `min`.
    pub fn shed(&mut self, min: usize) -> bool {
        if self.msg.capacity() <= min {
            return true;
        }
        if self.msg.is_empty() {
            self.msg = Vec::new();
            return true;
        }
        false
    }

    /// Drops cached buffers (idle memory trimming); a partially received
    /// message is kept, trimmed to its size.
    pub fn shrink(&mut self) {
        if self.msg.is_empty() {
            self.msg = Vec::new();
        } else {
            self.msg.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{apply_mask, decode_header};
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};

    const MAX: usize = 1 << 20;

    /// Test-only server-side encoder: unmasked frame with raw first byte.
    fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        let len = payload.len();
        if len < 126 {
            v.push(len as u8);
        } else if len <= 0xFFFF {
            v.push(126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn sframe(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        raw((u8::from(fin) << 7) | op as u8, payload)
    }

    fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason);
        v
    }

    /// Decodes the client frames we emitted: (fin, opcode, unmasked payload).
    fn client_frames(mut out: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut frames = vec![];
        while !out.is_empty() {
            let (h, n) = decode_header(out).unwrap().unwrap();
            let mask = h.mask.expect("client frames are masked");
            let len = h.payload_len as usize;
            let mut p = out[n..n + len].to_vec();
            apply_mask(&mut p, mask, 0);
            frames.push((h.fin, h.opcode, p));
            out = &out[n + len..];
        }
        frames
    }

    fn masker() -> impl FnMut() -> [u8; 4] {
        let mut n = 0u32;
        move || {
            n = n.wrapping_add(0x0101_0101);
            n.to_be_bytes()
        }
    }

    /// Feeds `chunks` one after another, collecting owned events and output.
    fn drive<'c>(
        conn: &mut Conn,
        chunks: impl IntoIterator<Item = &'c [u8]>,
    ) -> (Vec<Event<'static>>, Vec<u8>) {
        drive_modes(conn, chunks, None, false)
    }

    /// As `drive`; with `direct` = Some(min), payload bytes go through
    /// `payload_room`/`payload_filled` whenever they offer room (as a
    /// transport reading straight into the message buffer would); with
    /// `batched`, whole messages are taken with `whole_message` before
    /// `feed` (as the transport's batched delivery does).
    fn drive_modes<'c>(
        conn: &mut Conn,
        chunks: impl IntoIterator<Item = &'c [u8]>,
        direct: Option<usize>,
        batched: bool,
    ) -> (Vec<Event<'static>>, Vec<u8>) {
        let mut events = vec![];
        let mut out = vec![];
        let mut mask = masker();
        for chunk in chunks {
            let mut pos = 0;
            loop {
                if pos == chunk.len() {
                    break;
                }
                let whole = if batched {
                    conn.whole_message(&chunk[pos..])
                } else {
                    None
                };
                if let Some((op, data, used)) = whole {
                    assert!(used > 0);
                    events.push(msg(op, data));
                    pos += used;
                    continue;
                }
                if let Some(room) = direct.and_then(|min| conn.payload_room(min)) {
                    let n = room.len().min(chunk.len() - pos);
                    for (d, s) in room.iter_mut().zip(&chunk[pos..pos + n]) {
                        d.write(*s);
                    }
                    pos += n;
                    // SAFETY: n bytes of the room were written just above.
                    if let Some(e) = unsafe { conn.payload_filled(n, &mut out, &mut mask) } {
                        let end = matches!(e, Event::ProtocolError { .. });
                        events.push(e);
                        if end {
                            // feed swallows the rest after a failure
                            pos = chunk.len();
                        }
                    }
                    continue;
                }
                let (n, ev) = conn.feed(&chunk[pos..], &mut out, &mut mask);
                assert!(n <= chunk.len() - pos);
                pos += n;
                match ev {
                    Some(e) => {
                        assert!(n > 0, "event without progress");
                        events.push(e.into_owned());
                    }
                    None => assert_eq!(pos, chunk.len(), "no event but input left"),
                }
                if pos == chunk.len() {
                    break;
                }
            }
        }
        (events, out)
    }

    fn run(bytes: &[u8]) -> (Vec<Event<'static>>, Vec<u8>) {
        drive(&mut Conn::new(MAX), [bytes])
    }

    fn msg(op: OpCode, data: &[u8]) -> Event<'static> {
        Event::Message {
            opcode: op,
            data: Payload::Owned(data.to_vec()),
        }
    }

    fn perr(code: u16) -> impl Fn(&Event) -> bool {
        move |e| matches!(e, Event::ProtocolError { code: c, .. } if *c == code)
    }

    /// Asserts the stream fails with `code` and that our close carries it.
    fn assert_fails(bytes: &[u8], code: u16) {
        let (events, out) = run(bytes);
        assert!(events.last().is_some_and(perr(code)), "{events:?}");
        let frames = client_frames(&out);
        let (fin, op, body) = frames.last().unwrap();
        assert!(*fin && *op == 8);
        assert_eq!(u16::from_be_bytes([body[0], body[1]]), code);
    }

    #[test]
    fn conn_is_small() {
        let size = mem::size_of::<Conn>();
        println!("size_of::<Conn>() = {size}");
        assert!(size <= 300, "{size}");
    }

    #[test]
    fn whole_frame_is_borrowed_split_frame_is_owned() {
        let f = sframe(true, OpCode::Bin, &[7; 640]);
        let mut c = Conn::new(MAX);
        let mut out = vec![];
        let (n, ev) = c.feed(&f, &mut out, &mut masker());
        assert_eq!(n, f.len());
        assert!(
            matches!(ev, Some(Event::Message { opcode: OpCode::Bin, data: Payload::Borrowed(d) }) if d == [7; 640])
        );
        // Header split from payload: payload still wholly in the second input.
        let (_, ev) = c.feed(&f[..3], &mut out, &mut masker());
        assert!(ev.is_none());
        let (n, ev) = c.feed(&f[3..], &mut out, &mut masker());
        assert_eq!(n, f.len() - 3);
        assert!(matches!(
            ev,
            Some(Event::Message {
                data: Payload::Borrowed(_),
                ..
            })
        ));
        // Payload split: owned.
        let (_, ev) = c.feed(&f[..100], &mut out, &mut masker());
        assert!(ev.is_none());
        let (_, ev) = c.feed(&f[100..], &mut out, &mut masker());
        assert!(
            matches!(ev, Some(Event::Message { data: Payload::Owned(ref d), .. }) if d == &[7; 640])
        );
        assert!(out.is_empty());
        // Two messages in one input: one event per call.
        let mut two = sframe(true, OpCode::Text, b"a");
        two.extend(sframe(true, OpCode::Text, b"b"));
        let (n, ev) = c.feed(&two, &mut out, &mut masker());
        assert_eq!(
            (n, ev),
            (
                3,
                Some(Event::Message {
                    opcode: OpCode::Text,
                    data: Payload::Borrowed(b"a")
                })
            )
        );
    }

    #[test]
    fn reserved_bits_opcodes_and_mask() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            assert_fails(&raw(0x81 | rsv, b"x"), 1002);
            assert_fails(&raw(0x89 | rsv, b""), 1002);
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_fails(&raw(0x80 | op, b""), 1002);
        }
        assert_fails(&[0x82, 0x81, 1, 2, 3, 4, 5], 1002);
        assert_fails(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002);
        // Detected from a partial header, as soon as the offending byte arrives.
        let early = |bytes: &[u8], reason: &'static str| {
            let (events, out) = run(bytes);
            assert!(
                events == [Event::ProtocolError { code: 1002, reason }],
                "{bytes:x?}: {events:?}"
            );
            assert_eq!(
                client_frames(&out),
                [(true, 8, close_body(1002, reason.as_bytes()))]
            );
        };
        early(&[0xC1], "reserved bits set");
        early(&[0x83], "reserved opcode");
        early(&[0x09], "fragmented control frame");
        early(&[0x80], "unexpected continuation frame");
        early(&[0x82, 0xFE], "masked frame from server");
        // A 16-bit control length is judged on its value, not its encoding.
        assert!(run(&[0x89, 0x7E, 0x00]).0.is_empty());
        early(&[0x89, 0x7E, 0x00, 0x7E], "control frame too long");
        assert_eq!(run(&[0x89, 0x7E, 0x00, 0x02, b'h', b'i']).0, [Event::Ping]);
    }

    #[test]
    fn control_frame_rules() {
        assert_fails(&sframe(true, OpCode::Ping, &[0; 126]), 1002);
        assert_fails(&sframe(false, OpCode::Ping, b""), 1002);
        assert_fails(&sframe(false, OpCode::Pong, b""), 1002);
        assert_fails(&sframe(false, OpCode::Close, b""), 1002);
        assert_fails(
            &sframe(true, OpCode::Close, &close_body(1000, &[b'a'; 124])),
            1002,
        );
        // 125-byte ping: answered with an identical pong.
        let p: Vec<u8> = (0..125).collect();
        let (events, out) = run(&sframe(true, OpCode::Ping, &p));
        assert_eq!(events, [Event::Ping]);
        assert_eq!(client_frames(&out), [(true, 10, p.clone())]);
        // Pong reported with its payload.
        let (events, out) = run(&sframe(true, OpCode::Pong, b"abc"));
        let mut pp = [0; 125];
        pp[..3].copy_from_slice(b"abc");
        assert_eq!(events, [Event::Pong { payload: (pp, 3) }]);
        assert!(out.is_empty());
    }

    #[test]
    fn fragmentation_rules() {
        assert_fails(&sframe(true, OpCode::Cont, b"x"), 1002);
        assert_fails(&sframe(false, OpCode::Cont, b"x"), 1002);
        let mut s = sframe(false, OpCode::Text, b"a");
        s.extend(sframe(true, OpCode::Text, b"b"));
        assert_fails(&s, 1002);
        let mut s = sframe(false, OpCode::Bin, b"a");
        s.extend(sframe(true, OpCode::Bin, b"b"));
        assert_fails(&s, 1002);
        // Zero-length fragments, including the first and last, are fine.
        let mut s = sframe(false, OpCode::Text, b"");
        s.extend(sframe(false, OpCode::Cont, b"ab"));
        s.extend(sframe(false, OpCode::Cont, b""));
        s.extend(sframe(true, OpCode::Cont, b""));
        s.extend(sframe(true, OpCode::Bin, b""));
        let (events, _) = run(&s);
        assert_eq!(events, [msg(OpCode::Text, b"ab"), msg(OpCode::Bin, b"")]);
        // Control frames interleaved between fragments.
        let mut s = sframe(false, OpCode::Bin, b"a");
        s.extend(sframe(true, OpCode::Ping, b"p"));
        s.extend(sframe(true, OpCode::Pong, b""));
        s.extend(sframe(true, OpCode::Cont, b"b"));
        let (events, out) = run(&s);
        assert_eq!(events[0], Event::Ping);
        assert!(matches!(events[1], Event::Pong { payload: (_, 0) }));
        assert_eq!(events[2], msg(OpCode::Bin, b"ab"));
        assert_eq!(client_frames(&out), [(true, 10, b"p".to_vec())]);
    }

    #[test]
    fn utf8_fails_fast() {
        // Invalid byte in a frame whose rest has not arrived yet.
        let mut f = sframe(true, OpCode::Text, b"ab\xF4\x90\x80\x80cdef");
        f.truncate(2 + 4);
        let (events, _) = run(&f);
        assert!(
            events[0]
                == Event::ProtocolError {
                    code: 1007,
                    reason: "invalid UTF-8"
                }
        );
        let (events, _) = run(&f[..5]);
        assert!(events.is_empty());
        // In a later fragment.
        let mut s = sframe(false, OpCode::Text, "κό".as_bytes());
        s.extend(sframe(true, OpCode::Cont, b"\xED\xA0\x80"));
        assert_fails(&s, 1007);
        // Sequence split across fragments but truncated at FIN.
        let mut s = sframe(false, OpCode::Text, b"a\xE2");
        s.extend(sframe(true, OpCode::Cont, b"\x82"));
        assert_fails(&s, 1007);
        assert_fails(&sframe(true, OpCode::Text, b"a\xE2\x82"), 1007);
        // Binary messages are not validated.
        let (events, _) = run(&sframe(true, OpCode::Bin, b"\xFF"));
        assert_eq!(events, [msg(OpCode::Bin, b"\xFF")]);
        for bad in [
            &b"\xC0\x80"[..],
            b"\xE0\x80\x80",
            b"\xF0\x80\x80\x80",
            b"\xED\xBF\xBF",
            b"\xF4\x90\x80\x80",
            b"\x80",
            b"\xFE",
            b"\xFF",
        ] {
            assert_fails(&sframe(true, OpCode::Text, bad), 1007);
        }
    }

    #[test]
    fn valid_utf8_split_across_fragments_at_every_boundary() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 😀\u{10FFFF}";
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            for cut2 in cut..=b.len() {
                let mut s = sframe(false, OpCode::Text, &b[..cut]);
                s.extend(sframe(false, OpCode::Cont, &b[cut..cut2]));
                s.extend(sframe(true, OpCode::Cont, &b[cut2..]));
                assert_eq!(run(&s).0, [msg(OpCode::Text, b)], "{cut} {cut2}");
            }
        }
    }

    #[test]
    fn message_size_limit() {
        let mut c = Conn::new(100);
        let (events, out) = drive(&mut c, [&sframe(true, OpCode::Bin, &[0; 100])[..]]);
        assert_eq!(events.len(), 1);
        assert!(out.is_empty());
        // Rejected at the header, before the payload arrives.
        let f = sframe(true, OpCode::Bin, &[0; 101]);
        let (events, out) = drive(&mut Conn::new(100), [&f[..2]]);
        assert!(
            events[0]
                == Event::ProtocolError {
                    code: 1009,
                    reason: "message too big"
                }
        );
        assert_eq!(client_frames(&out)[0].2[..2], 1009u16.to_be_bytes());
        // Fragments add up.
        let mut s = sframe(false, OpCode::Text, &[b'a'; 60]);
        s.extend(sframe(true, OpCode::Cont, &[b'a'; 40]));
        assert_eq!(drive(&mut Conn::new(100), [&s[..]]).0.len(), 1);
        let mut s = sframe(false, OpCode::Text, &[b'a'; 60]);
        s.extend(sframe(true, OpCode::Cont, &[b'a'; 41]));
        assert!(
            drive(&mut Conn::new(100), [&s[..]]).0[0]
                == Event::ProtocolError {
                    code: 1009,
                    reason: "message too big"
                }
        );
        // Huge declared length never allocates it.
        let (events, _) = drive(
            &mut Conn::new(usize::MAX),
            [&[
                0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2,
            ][..]],
        );
        assert!(events.is_empty());
    }

    #[test]
    fn peer_close_handling() {
        let (events, out) = run(&sframe(true, OpCode::Close, &close_body(1000, b"bye")));
        assert_eq!(
            events,
            [Event::Close {
                code: 1000,
                reason: "bye".into()
            }]
        );
        assert_eq!(
            client_frames(&out),
            [(true, 8, 1000u16.to_be_bytes().to_vec())]
        );
        let (events, out) = run(&sframe(true, OpCode::Close, b""));
        assert_eq!(
            events,
            [Event::Close {
                code: 1005,
                reason: String::new()
            }]
        );
        assert_eq!(client_frames(&out), [(true, 8, vec![])]);
        assert_fails(&sframe(true, OpCode::Close, b"\x03"), 1002);
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_fails(&sframe(true, OpCode::Close, &close_body(code, b"")), 1002);
        }
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            let (events, _) = run(&sframe(true, OpCode::Close, &close_body(code, b"")));
            assert_eq!(
                events,
                [Event::Close {
                    code,
                    reason: String::new()
                }]
            );
        }
        assert_fails(
            &sframe(true, OpCode::Close, &close_body(1000, b"\xED\xA0\x80")),
            1007,
        );
        // Nothing after the close is delivered; close may arrive mid-message.
        let mut s = sframe(false, OpCode::Text, b"part");
        s.extend(sframe(true, OpCode::Close, &close_body(1001, b"")));
        s.extend(sframe(true, OpCode::Cont, b"x"));
        s.extend(sframe(true, OpCode::Ping, b""));
        s.extend(b"\xFF\xFF garbage");
        let mut c = Conn::new(MAX);
        let (events, out) = drive(&mut c, [&s[..]]);
        assert_eq!(
            events,
            [Event::Close {
                code: 1001,
                reason: String::new()
            }]
        );
        assert_eq!(client_frames(&out).len(), 1);
        assert!(c.close_received() && c.close_sent() && !c.failed());
        let mut out = vec![];
        assert_eq!(c.feed(b"\x81\x01a", &mut out, &mut masker()), (3, None));
        assert!(out.is_empty());
    }

    #[test]
    fn after_our_close() {
        let mut c = Conn::new(MAX);
        let mut out = vec![];
        c.send_close(Some(1000), b"done", [1, 2, 3, 4], &mut out);
        assert!(c.close_sent() && !c.close_received());
        assert_eq!(client_frames(&out), [(true, 8, close_body(1000, b"done"))]);
        let mut s = sframe(true, OpCode::Ping, b"p");
        s.extend(sframe(true, OpCode::Text, b"late"));
        s.extend(sframe(true, OpCode::Close, &close_body(1000, b"")));
        let (events, out) = drive(&mut c, [&s[..]]);
        assert_eq!(
            events,
            [
                Event::Ping,
                msg(OpCode::Text, b"late"),
                Event::Close {
                    code: 1000,
                    reason: String::new()
                }
            ]
        );
        assert!(out.is_empty(), "no pong or echo after our close");
        // A violation after our close sends nothing more.
        let mut c = Conn::new(MAX);
        c.send_close(None, b"ignored", [0; 4], &mut vec![]);
        let (events, out) = drive(&mut c, [&raw(0xC1, b"")[..]]);
        assert!(
            events[0]
                == Event::ProtocolError {
                    code: 1002,
                    reason: "reserved bits set"
                }
        );
        assert!(out.is_empty() && c.failed());
        // Empty-body close and reason cut to 123 bytes.
        let mut out = vec![];
        Conn::new(MAX).send_close(None, b"x", [9; 4], &mut out);
        assert_eq!(client_frames(&out), [(true, 8, vec![])]);
        let mut out = vec![];
        Conn::new(MAX).send_close(Some(4000), &[b'r'; 200], [9; 4], &mut out);
        assert_eq!(client_frames(&out)[0].2.len(), 125);
    }

    #[test]
    fn send_frame_encodes() {
        let mut c = Conn::new(MAX);
        let mut out = vec![];
        c.send_frame(OpCode::Text, b"hello", [1, 2, 3, 4], &mut out);
        c.send_frame(OpCode::Ping, b"", [5, 6, 7, 8], &mut out);
        assert_eq!(
            client_frames(&out),
            [(true, 1, b"hello".to_vec()), (true, 9, vec![])]
        );
        assert!(!c.close_sent());
    }

    #[test]
    fn ping_straddling_feeds() {
        let f = sframe(true, OpCode::Ping, b"straddle");
        for cut in 0..f.len() {
            let (events, out) = drive(&mut Conn::new(MAX), [&f[..cut], &f[cut..]]);
            assert_eq!(events, [Event::Ping]);
            assert_eq!(client_frames(&out), [(true, 10, b"straddle".to_vec())]);
        }
    }

    #[test]
    fn recycle_and_shrink() {
        let mut c = Conn::new(MAX);
        let f = sframe(true, OpCode::Bin, &[1; 1000]);
        let (events, _) = drive(&mut c, [&f[..10], &f[10..]]);
        let Event::Message {
            data: Payload::Owned(buf),
            ..
        } = events.into_iter().next().unwrap()
        else {
            panic!()
        };
        let ptr = buf.as_ptr();
        c.recycle(buf);
        let mut out = vec![];
        let mut mask = masker();
        c.feed(&f[..10], &mut out, &mut mask);
        let (_, ev) = c.feed(&f[10..], &mut out, &mut mask);
        let Some(Event::Message {
            data: Payload::Owned(buf),
            ..
        }) = ev
        else {
            panic!()
        };
        assert_eq!(buf.as_ptr(), ptr, "buffer reused");
        c.recycle(Vec::with_capacity(RECYCLE_MAX + 1));
        assert_eq!(c.msg.capacity(), 0);
        c.recycle(buf);
        assert!(c.msg.capacity() >= 1000);
        c.shrink();
        assert_eq!(c.msg.capacity(), 0);
        // shed: small buffers stay, an empty large one goes, a large one
        // holding part of a message stays
        c.recycle(Vec::with_capacity(1000));
        assert!(c.shed(4096) && c.msg.capacity() >= 1000);
        c.recycle(Vec::with_capacity(8192));
        assert!(c.shed(4096) && c.msg.capacity() == 0);
        c.msg = Vec::with_capacity(8192);
        c.msg.push(1);
        assert!(!c.shed(4096) && c.msg.capacity() >= 8192);
    }

    /// Representative sequences fed split at every boundary and byte by byte.
    #[test]
    fn exhaustive_splits() {
        let mut fragmented = sframe(false, OpCode::Text, "héllo ".as_bytes());
        fragmented.extend(sframe(true, OpCode::Ping, b"ping!"));
        fragmented.extend(sframe(false, OpCode::Cont, "wörld 😀".as_bytes()));
        fragmented.extend(sframe(true, OpCode::Pong, b""));
        fragmented.extend(sframe(true, OpCode::Cont, b"!"));
        fragmented.extend(sframe(true, OpCode::Bin, b"tiny"));
        fragmented.extend(sframe(true, OpCode::Close, &close_body(1000, b"bye")));
        fragmented.extend(sframe(true, OpCode::Text, b"ignored"));
        let mut seqs = vec![fragmented];
        for len in [0usize, 10, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut s = sframe(true, OpCode::Bin, &payload);
            s.extend(sframe(true, OpCode::Text, &vec![b'x'; len]));
            s.extend(sframe(true, OpCode::Close, b""));
            seqs.push(s);
        }
        for s in &seqs {
            let whole = run(s);
            assert!(matches!(whole.0.last(), Some(Event::Close { .. })));
            let bytewise = drive(&mut Conn::new(MAX), s.chunks(1));
            assert!(bytewise == whole);
            for cut in 0..=s.len() {
                let split = drive(&mut Conn::new(MAX), [&s[..cut], &s[cut..]]);
                assert!(split == whole, "cut {cut} of {}", s.len());
            }
        }
    }

    /// Every failing input of the rules above, as (what, bytes, max_message,
    /// close code we must send).
    fn failing_cases() -> Vec<(String, Vec<u8>, usize, u16)> {
        let mut cases = vec![];
        let mut add = |what: &str, bytes: Vec<u8>, max: usize, code: u16| {
            cases.push((what.to_string(), bytes, max, code));
        };
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            add("rsv text", raw(0x81 | rsv, b"x"), MAX, 1002);
            add("rsv ping", raw(0x89 | rsv, b""), MAX, 1002);
            add("rsv cont", raw(0x80 | rsv, b"x"), MAX, 1002);
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            add("reserved opcode", raw(0x80 | op, b""), MAX, 1002);
            add("reserved opcode, no fin", raw(op, b"ab"), MAX, 1002);
        }
        add("masked", vec![0x82, 0x81, 1, 2, 3, 4, 5], MAX, 1002);
        add(
            "masked 16-bit",
            vec![0x81, 0xFE, 0, 126, 1, 2, 3, 4],
            MAX,
            1002,
        );
        add(
            "64-bit length, top bit",
            vec![0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0],
            MAX,
            1002,
        );
        add(
            "64-bit length, top bit, small max",
            vec![0x82, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            100,
            1002,
        );
        add("ping 126", sframe(true, OpCode::Ping, &[0; 126]), MAX, 1002);
        add(
            "pong 64-bit 126",
            vec![0x8A, 0x7F, 0, 0, 0, 0, 0, 0, 0, 126],
            MAX,
            1002,
        );
        add(
            "close 126",
            sframe(true, OpCode::Close, &close_body(1000, &[b'a'; 124])),
            MAX,
            1002,
        );
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            add("fragmented control", sframe(false, op, b""), MAX, 1002);
            add("fragmented control", sframe(false, op, b"xy"), MAX, 1002);
        }
        add("cont first", sframe(true, OpCode::Cont, b"x"), MAX, 1002);
        add(
            "cont first, no fin",
            sframe(false, OpCode::Cont, b"x"),
            MAX,
            1002,
        );
        let mut s = sframe(true, OpCode::Text, b"done");
        s.extend(sframe(true, OpCode::Cont, b"x"));
        add("cont after a whole message", s, MAX, 1002);
        for (a, b) in [
            (OpCode::Text, OpCode::Text),
            (OpCode::Bin, OpCode::Bin),
            (OpCode::Text, OpCode::Bin),
            (OpCode::Bin, OpCode::Text),
        ] {
            let mut s = sframe(false, a, b"a");
            s.extend(sframe(true, b, b"b"));
            add("new data frame mid-message", s, MAX, 1002);
            let mut s = sframe(false, a, b"a");
            s.extend(sframe(false, OpCode::Cont, b"b"));
            s.extend(sframe(true, OpCode::Ping, b"mid"));
            s.extend(sframe(false, b, b"c"));
            add("new data frame after cont and ping", s, MAX, 1002);
        }
        for bad in [
            &b"\xC0\x80"[..],
            b"\xE0\x80\x80",
            b"\xF0\x80\x80\x80",
            b"\xED\xA0\x80",
            b"\xED\xBF\xBF",
            b"\xF4\x90\x80\x80",
            b"\x80",
            b"\xFE",
            b"\xFF",
            b"a\xE2\x82",
            b"ok \xE2\x28\xA1",
            b"\xF0\x9F\x98",
        ] {
            add("invalid text", sframe(true, OpCode::Text, bad), MAX, 1007);
            let mut long = vec![b'a'; 150];
            long.extend_from_slice(bad);
            long.extend_from_slice(&[b'z'; 20]);
            add(
                "invalid text, 16-bit length",
                sframe(true, OpCode::Text, &long),
                MAX,
                1007,
            );
        }
        // Code points split across fragments that turn out invalid.
        for (first, second) in [
            (&b"a\xE2"[..], &b"\x28"[..]),
            (b"\xF0\x9F", b"\x98\x41"),
            (b"\xED", b"\xA0\x80"),
            (b"\xC3", b""),
        ] {
            let mut s = sframe(false, OpCode::Text, first);
            s.extend(sframe(true, OpCode::Cont, second));
            add("split code point", s, MAX, 1007);
            let mut s = sframe(false, OpCode::Text, first);
            s.extend(sframe(true, OpCode::Ping, b"between"));
            s.extend(sframe(false, OpCode::Cont, second));
            s.extend(sframe(true, OpCode::Cont, b"tail"));
            add("split code point around a ping", s, MAX, 1007);
        }
        let mut s = sframe(false, OpCode::Text, "κό".as_bytes());
        s.extend(sframe(false, OpCode::Cont, &[b'q'; 130]));
        s.extend(sframe(true, OpCode::Cont, b"\xED\xA0\x80"));
        add("invalid in a later fragment", s, MAX, 1007);
        let mut s = sframe(false, OpCode::Text, b"a\xE2");
        s.extend(sframe(true, OpCode::Cont, b"\x82"));
        add("truncated at fin across fragments", s, MAX, 1007);
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            add(
                "bad close code",
                sframe(true, OpCode::Close, &close_body(code, b"why")),
                MAX,
                1002,
            );
        }
        add(
            "1-byte close",
            sframe(true, OpCode::Close, b"\x03"),
            MAX,
            1002,
        );
        for reason in [&b"\xED\xA0\x80"[..], b"ok\xFF", b"cut \xE2\x82"] {
            add(
                "invalid close reason",
                sframe(true, OpCode::Close, &close_body(1000, reason)),
                MAX,
                1007,
            );
        }
        add("too big", sframe(true, OpCode::Bin, &[0; 101]), 100, 1009);
        add(
            "too big, 16-bit length",
            sframe(true, OpCode::Text, &[b'a'; 300]),
            100,
            1009,
        );
        add(
            "too big, 64-bit length",
            vec![0x82, 0x7F, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3],
            MAX,
            1009,
        );
        let mut s = sframe(false, OpCode::Text, &[b'a'; 60]);
        s.extend(sframe(true, OpCode::Pong, b"p"));
        s.extend(sframe(true, OpCode::Cont, &[b'a'; 41]));
        add("too big across fragments", s, 100, 1009);
        cases
    }

    /// Decoded client frames: (fin, opcode, unmasked payload).
    type ClientFrames = Vec<(bool, u8, Vec<u8>)>;

    /// Events and decoded client frames. The 1007 reason for text ending
    /// inside a character ("truncated UTF-8") is the same whether the
    /// message arrived in one input or was reassembled across inputs.
    fn events_and_frames(
        (events, out): (Vec<Event<'static>>, Vec<u8>),
    ) -> (Vec<Event<'static>>, ClientFrames) {
        (events, client_frames(&out))
    }

    /// Every failing input, whole, split in two at every boundary and fed
    /// byte by byte, by `feed`, through direct payload reads and with
    /// whole-message batching: the same events (those before the failure,
    /// then the error, nothing after) and the same frames sent (pongs, then
    /// exactly one close with the error's code).
    #[test]
    fn failing_streams_split_at_every_boundary() {
        // Delivered before the failure.
        let mut prefix = sframe(true, OpCode::Text, "héllo".as_bytes());
        prefix.extend(sframe(true, OpCode::Ping, b"pp"));
        prefix.extend(sframe(true, OpCode::Bin, &[5; 90]));
        let mut before = run(&prefix).0;
        assert_eq!(before.len(), 3);
        // Must never be delivered or answered.
        let mut suffix = sframe(true, OpCode::Text, b"after");
        suffix.extend(sframe(true, OpCode::Ping, b"late"));
        suffix.extend(sframe(true, OpCode::Close, &close_body(1000, b"")));
        let mut checked = 0;
        for (what, case, max, code) in failing_cases() {
            for with_prefix in [false, true] {
                let mut s = if with_prefix { prefix.clone() } else { vec![] };
                s.extend_from_slice(&case);
                s.extend_from_slice(&suffix);
                let whole = drive(&mut Conn::new(max), [&s[..]]);
                let (events, out) = &whole;
                // The outcome itself: the error last, our close carrying its
                // code and reason as the last (and only) close frame.
                let Some(Event::ProtocolError { code: c, reason }) = events.last() else {
                    panic!("{what}: {events:?}");
                };
                assert_eq!(*c, code, "{what}");
                if with_prefix {
                    before.truncate(3);
                    assert!(events[..3] == before[..], "{what}: {events:?}");
                }
                let frames = client_frames(out);
                let closes: Vec<_> = frames.iter().filter(|f| f.1 == 8).collect();
                assert_eq!(closes.len(), 1, "{what}");
                assert_eq!(
                    frames.last(),
                    Some(&(true, 8, close_body(code, reason.as_bytes()))),
                    "{what}"
                );
                assert!(
                    frames.iter().all(|f| f.2 != b"late"),
                    "{what}: answered a ping after the failure"
                );
                let (want_events, want_frames) = events_and_frames(whole.clone());
                let same = |got: (Vec<Event<'static>>, Vec<u8>), how: &str| {
                    let (events, frames) = events_and_frames(got);
                    assert!(
                        events == want_events,
                        "{what} {how} ({} bytes): {events:?} vs {want_events:?}",
                        s.len(),
                    );
                    assert_eq!(frames, want_frames, "{what} {how}");
                };
                let modes = [
                    (None, false),
                    (Some(1), false),
                    (Some(100), false),
                    (None, true),
                ];
                for (direct, batched) in modes {
                    let how = format!("direct {direct:?} batched {batched}");
                    let conn = || Conn::new(max);
                    same(
                        drive_modes(&mut conn(), [&s[..]], direct, batched),
                        &format!("whole, {how}"),
                    );
                    same(
                        drive_modes(&mut conn(), s.chunks(1), direct, batched),
                        &format!("bytewise, {how}"),
                    );
                    for cut in 0..=s.len() {
                        same(
                            drive_modes(&mut conn(), [&s[..cut], &s[cut..]], direct, batched),
                            &format!("cut {cut}, {how}"),
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
    }

    /// Random valid message streams, random splits: events equal the model.
    #[test]
    fn random_streams_roundtrip() {
        let mut rng = SmallRng::seed_from_u64(31);
        for _ in 0..2000 {
            let mut stream = vec![];
            let mut expect = vec![];
            let mut expect_out = vec![];
            for _ in 0..rng.random_range(1..6) {
                let op = if rng.random() {
                    OpCode::Text
                } else {
                    OpCode::Bin
                };
                let nfrag = rng.random_range(1..4);
                let mut whole = vec![];
                for i in 0..nfrag {
                    let len = match rng.random_range(0..12) {
                        0 => 0,
                        1 => 125,
                        2 => 126,
                        3 => 65535,
                        4 => 65536,
                        _ => rng.random_range(0..300),
                    };
                    let data: Vec<u8> = if op == OpCode::Text {
                        (0..len).map(|_| rng.random_range(b' '..=b'~')).collect()
                    } else {
                        let mut d = vec![0; len];
                        rng.fill_bytes(&mut d);
                        d
                    };
                    let fop = if i == 0 { op } else { OpCode::Cont };
                    stream.extend(sframe(i + 1 == nfrag, fop, &data));
                    whole.extend_from_slice(&data);
                    let last = i + 1 == nfrag;
                    if last {
                        expect.push(msg(op, &whole));
                    }
                    // Pings between fragments and between messages.
                    if rng.random_range(0..4) == 0 {
                        let mut p = vec![0; rng.random_range(0..=125)];
                        rng.fill_bytes(&mut p);
                        stream.extend(sframe(true, OpCode::Ping, &p));
                        expect.push(Event::Ping);
                        expect_out.push((true, 10, p));
                    }
                }
            }
            let mut cuts: Vec<usize> = (0..rng.random_range(0..5))
                .map(|_| rng.random_range(0..=stream.len()))
                .collect();
            cuts.sort_unstable();
            let mut chunks = vec![];
            let mut prev = 0;
            for c in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[prev..c]);
                prev = c;
            }
            let (events, out) = drive(&mut Conn::new(MAX), chunks.iter().copied());
            assert!(events == expect);
            assert_eq!(client_frames(&out), expect_out);
            // Reading payloads straight into the message buffer gives the
            // same events and replies.
            for min in [1, 100] {
                let (events, out) = drive_modes(
                    &mut Conn::new(MAX),
                    chunks.iter().copied(),
                    Some(min),
                    false,
                );
                assert!(events == expect);
                assert_eq!(client_frames(&out), expect_out);
            }
            // So does taking whole messages ahead of feed.
            let (events, out) =
                drive_modes(&mut Conn::new(MAX), chunks.iter().copied(), None, true);
            assert!(events == expect);
            assert_eq!(client_frames(&out), expect_out);
        }
    }

    #[test]
    fn direct_payload_reads_validate_utf8() {
        // "é" (C3 A9) split between a direct read and the next frame.
        let mut s = sframe(false, OpCode::Text, b"ab\xC3");
        s.extend(sframe(true, OpCode::Cont, b"\xA9cd"));
        for cut in 0..=s.len() {
            let (events, _) =
                drive_modes(&mut Conn::new(MAX), [&s[..cut], &s[cut..]], Some(1), false);
            assert_eq!(
                events,
                vec![msg(OpCode::Text, "abécd".as_bytes())],
                "cut {cut}"
            );
        }
        // Invalid bytes fail at once with 1007, before the frame ends.
        let mut s = sframe(true, OpCode::Text, &[b'a'; 200]);
        s[4 + 50] = 0xFF; // after the 4-byte header
        let (events, out) = drive_modes(&mut Conn::new(MAX), [&s[..4], &s[4..60]], Some(1), false);
        assert!(events.last().is_some_and(perr(1007)), "{events:?}");
        let frames = client_frames(&out);
        assert_eq!(
            frames.last().map(|f| u16::from_be_bytes([f.2[0], f.2[1]])),
            Some(1007)
        );
        // A text message whose last frame ends inside a code point.
        let s = sframe(true, OpCode::Text, b"ab\xC3");
        let (events, _) = drive_modes(&mut Conn::new(MAX), [&s[..2], &s[2..]], Some(1), false);
        assert!(events.last().is_some_and(perr(1007)), "{events:?}");
        // Control frames and small payloads never offer room.
        let mut c = Conn::new(MAX);
        let p = sframe(true, OpCode::Ping, &[1; 100]);
        let (_, _) = drive(&mut c, [&p[..2]]);
        assert!(c.payload_room(1).is_none());
        let mut c = Conn::new(MAX);
        let b = sframe(true, OpCode::Bin, &[1; 1000]);
        let (_, _) = drive(&mut c, [&b[..4]]);
        assert!(c.payload_room(1001).is_none());
        assert_eq!(c.payload_room(1000).map(|r| r.len()), Some(1000));
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = SmallRng::seed_from_u64(32);
        let mut buf = vec![0u8; 300];
        let seeds = [
            sframe(false, OpCode::Text, b"abc"),
            sframe(true, OpCode::Close, &close_body(1000, b"x")),
            sframe(true, OpCode::Ping, b"pp"),
        ];
        for i in 0..100_000 {
            let len = rng.random_range(0..buf.len());
            rng.fill_bytes(&mut buf[..len]);
            if i % 2 == 0 {
                // Start from a plausible frame so deeper states are reached.
                let s = &seeds[rng.random_range(0..seeds.len())];
                let n = s.len().min(len);
                buf[..n].copy_from_slice(&s[..n]);
                // Clear RSV/mask bits now and then to get past the first checks.
                buf[0] &= 0x8F;
                if len > 1 {
                    buf[1] &= 0x7F;
                }
            }
            let mut c = Conn::new(rng.random_range(0..400));
            let data = &buf[..len];
            let cut = rng.random_range(0..=len);
            let mut out = vec![];
            let mut mask = masker();
            for chunk in [&data[..cut], &data[cut..]] {
                let mut pos = 0;
                while pos < chunk.len() {
                    let (n, ev) = c.feed(&chunk[pos..], &mut out, &mut mask);
                    assert!(n <= chunk.len() - pos && (n > 0 || ev.is_none()));
                    pos += n;
                    if ev.is_none() {
                        break;
                    }
                }
            }
            let _ = client_frames(&out);
        }
    }

    /// `cargo test --release -- --ignored --nocapture feed_throughput`
    #[test]
    #[ignore = "timing only; run with --ignored --nocapture"]
    fn feed_throughput() {
        let one = sframe(true, OpCode::Bin, &[0x42; 640]);
        let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let mut c = Conn::new(MAX);
        let mut out = vec![];
        let mut mask = || [0; 4];
        let rounds = 20_000;
        let t = std::time::Instant::now();
        let mut count = 0usize;
        for _ in 0..rounds {
            let mut pos = 0;
            while pos < many.len() {
                let (n, ev) = c.feed(std::hint::black_box(&many[pos..]), &mut out, &mut mask);
                pos += n;
                if let Some(Event::Message { data, .. }) = ev {
                    count += data.as_slice().len();
                }
            }
        }
        let el = t.elapsed();
        assert_eq!(count, rounds * 1000 * 640);
        println!(
            "feed: {:.1} ns per 640-byte frame",
            el.as_nanos() as f64 / (rounds * 1000) as f64
        );
    }
}
