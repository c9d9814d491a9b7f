//! The opening handshake (RFC 6455 §4.1, §4.2.2): building the HTTP/1.1
//! upgrade request and validating the server's response head.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest response head we buffer before giving up.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Header slots tried first (on the stack), then on `TooManyHeaders`.
const HEADERS_FAST: usize = 32;
const HEADERS_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Building the request: CR/LF/NUL in a name or value, an empty/invalid
    /// token name, or a forbidden extra header (Host, Upgrade, Connection,
    /// Sec-WebSocket-*).
    BadHeader,
    /// Response is not parseable HTTP/1.1.
    Malformed,
    /// Response head exceeds `MAX_RESPONSE_HEAD` (or has more than 128 headers).
    TooLarge,
    /// Status other than 101.
    BadStatus(u16),
    BadUpgrade,
    BadConnection,
    BadAccept,
    /// Server chose a protocol that was not offered, or chose one when none was.
    BadSubprotocol,
    /// Any Sec-WebSocket-Extensions in the response (we offer none).
    BadExtension,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadHeader => f.write_str("invalid request header"),
            HandshakeError::Malformed => f.write_str("malformed HTTP response"),
            HandshakeError::TooLarge => f.write_str("HTTP response head too large"),
            HandshakeError::BadStatus(s) => write!(f, "unexpected HTTP status {s}"),
            HandshakeError::BadUpgrade => f.write_str("missing or invalid Upgrade header"),
            HandshakeError::BadConnection => f.write_str("missing or invalid Connection header"),
            HandshakeError::BadAccept => f.write_str("missing or invalid Sec-WebSocket-Accept"),
            HandshakeError::BadSubprotocol => {
                f.write_str("server selected an unoffered subprotocol")
            }
            HandshakeError::BadExtension => f.write_str("server selected an unoffered extension"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A validated 101 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Raw status line + headers including the final empty line.
    pub head: Vec<u8>,
    pub subprotocol: Option<String>,
}

#[derive(Debug, Clone)]
enum State {
    Reading,
    Done(Response),
    Failed(HandshakeError),
}

/// Client side of the opening handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Expected Sec-WebSocket-Accept value.
    accept: String,
    /// Offered subprotocols, in order.
    protocols: Vec<String>,
    /// Response head received so far (never more than `MAX_RESPONSE_HEAD`).
    head: Vec<u8>,
    /// End-of-head scanner: 0 = mid-line, 1 = after "\n", 2 = after "\n\r".
    /// Kept across feeds so each byte is scanned exactly once.
    eol: u8,
    state: State,
}

/// `base64(sha1(key + GUID))`.
pub fn accept_key(key_b64: &str) -> String {
    let mut h = Sha1::new();
    h.update(key_b64.as_bytes());
    h.update(GUID);
    BASE64.encode(h.finalize())
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Header values must not be able to end the line or the C string early.
fn is_safe_value(s: &[u8]) -> bool {
    !s.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

/// Headers the handshake itself owns; letting the user set them would
/// produce duplicates or break the upgrade.
fn is_forbidden_extra(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"sec-websocket-";
    ["host", "upgrade", "connection"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        || name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

impl Handshake {
    /// Builds the upgrade request.
    ///
    /// `host` is the Host header value exactly as sent, `resource` the path +
    /// query, `subprotocols` the user's comma-separated list (None/empty =
    /// none offered; elements are trimmed and must be tokens), `extra`
    /// additional headers. `key` is 16 random bytes.
    pub fn new(
        host: &str,
        resource: &str,
        subprotocols: Option<&[u8]>,
        extra: &[(&[u8], &[u8])],
        key: [u8; 16],
    ) -> Result<(Handshake, Vec<u8>), HandshakeError> {
        if host.is_empty() || !is_safe_value(host.as_bytes()) {
            return Err(HandshakeError::BadHeader);
        }
        // The request target must not be able to split the request line.
        if resource.is_empty() || resource.bytes().any(|b| b <= b' ' || b == 0x7F) {
            return Err(HandshakeError::BadHeader);
        }
        let offered = subprotocols.unwrap_or_default();
        if !is_safe_value(offered) {
            return Err(HandshakeError::BadHeader);
        }
        let mut protocols = Vec::new();
        for p in offered.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if p.is_empty() {
                continue;
            }
            // Tokens are ASCII, so the conversion cannot fail.
            match std::str::from_utf8(p) {
                Ok(s) if is_token(p) => protocols.push(s.to_owned()),
                _ => return Err(HandshakeError::BadHeader),
            }
        }
        for (name, value) in extra {
            if !is_token(name) || is_forbidden_extra(name) || !is_safe_value(value) {
                return Err(HandshakeError::BadHeader);
            }
        }

        let key_b64 = BASE64.encode(key);
        let mut req = Vec::with_capacity(160 + host.len() + resource.len());
        for part in [
            "GET ",
            resource,
            " HTTP/1.1\r\nHost: ",
            host,
            "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
            &key_b64,
            "\r\nSec-WebSocket-Version: 13\r\n",
        ] {
            req.extend_from_slice(part.as_bytes());
        }
        if !protocols.is_empty() {
            req.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            req.extend_from_slice(protocols.join(", ").as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        for (name, value) in extra {
            req.extend_from_slice(name);
            req.extend_from_slice(b": ");
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");

        let hs = Handshake {
            accept: accept_key(&key_b64),
            protocols,
            head: Vec::new(),
            eol: 0,
            state: State::Reading,
        };
        Ok((hs, req))
    }

    /// Feeds response bytes as they arrive (any split).
    ///
    /// `Ok(None)`: need more. `Ok(Some((consumed, resp)))`: the head is
    /// complete and valid; `consumed` bytes of *this* slice belong to it and
    /// the rest is WebSocket frame data. `Err`: rejected; the raw head stays
    /// available through [`response_head`](Self::response_head). Once
    /// finished, further calls repeat the outcome without consuming anything.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(usize, Response)>, HandshakeError> {
        match &self.state {
            State::Reading => {}
            State::Done(r) => return Ok(Some((0, r.clone()))),
            State::Failed(e) => return Err(e.clone()),
        }
        let room = MAX_RESPONSE_HEAD.saturating_sub(self.head.len());
        let chunk = input.get(..room).unwrap_or(input);
        // The head ends at an empty line; accept bare LF line ends like
        // httparse does ("\n\n" or "\n\r\n").
        let mut end = None;
        for (i, &b) in chunk.iter().enumerate() {
            match b {
                b'\n' if self.eol != 0 => {
                    end = Some(i + 1);
                    break;
                }
                b'\n' => self.eol = 1,
                b'\r' if self.eol == 1 => self.eol = 2,
                _ => self.eol = 0,
            }
        }
        let Some(end) = end else {
            self.head.extend_from_slice(chunk);
            if self.head.len() >= MAX_RESPONSE_HEAD {
                self.state = State::Failed(HandshakeError::TooLarge);
                return Err(HandshakeError::TooLarge);
            }
            return Ok(None);
        };
        self.head
            .extend_from_slice(chunk.get(..end).unwrap_or(chunk));
        let result = self.validate();
        self.state = match &result {
            Ok(r) => State::Done(r.clone()),
            Err(e) => State::Failed(e.clone()),
        };
        result.map(|r| Some((end, r)))
    }

    /// The raw response head received so far (complete once `feed` finished).
    pub fn response_head(&self) -> &[u8] {
        &self.head
    }

    /// Parses and checks the complete head.
    fn validate(&self) -> Result<Response, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_FAST];
        let subprotocol = match self.check(&mut headers) {
            Err(HandshakeError::TooLarge) => {
                let mut headers = vec![httparse::EMPTY_HEADER; HEADERS_MAX];
                self.check(&mut headers)?
            }
            r => r?,
        };
        Ok(Response {
            status: 101,
            head: self.head.clone(),
            subprotocol,
        })
    }

    /// Parses the head into `headers` and validates it; `TooLarge` means the
    /// header array was too small.
    fn check<'b>(
        &'b self,
        headers: &mut [httparse::Header<'b>],
    ) -> Result<Option<String>, HandshakeError> {
        let mut resp = httparse::Response::new(headers);
        match resp.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) if n == self.head.len() => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
            _ => return Err(HandshakeError::Malformed),
        }
        // Report a non-101 status even from an HTTP/1.0 server (e.g. a
        // proxy's 403) so the application sees the real reason.
        let status = resp.code.ok_or(HandshakeError::Malformed)?;
        if status != 101 {
            return Err(HandshakeError::BadStatus(status));
        }
        if resp.version != Some(1) {
            return Err(HandshakeError::Malformed);
        }

        // Repeated Upgrade/Accept/Protocol headers are treated strictly:
        // every Upgrade must say websocket, Accept and Protocol appear once.
        let mut upgrade: Option<bool> = None;
        let mut connection = false;
        let (mut accepts, mut accept_ok) = (0, false);
        let mut extension = false;
        let (mut protocols, mut protocol): (usize, &[u8]) = (0, b"");
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value.trim_ascii();
            if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = Some(upgrade.unwrap_or(true) && value.eq_ignore_ascii_case(b"websocket"));
            } else if name.eq_ignore_ascii_case(b"connection") {
                connection |= value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
            } else if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
                accepts += 1;
                accept_ok = value == self.accept.as_bytes();
            } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
                extension = true;
            } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
                protocols += 1;
                protocol = value;
            }
        }
        if upgrade != Some(true) {
            return Err(HandshakeError::BadUpgrade);
        }
        if !connection {
            return Err(HandshakeError::BadConnection);
        }
        if accepts != 1 || !accept_ok {
            return Err(HandshakeError::BadAccept);
        }
        if extension {
            return Err(HandshakeError::BadExtension);
        }
        match protocols {
            0 => Ok(None),
            1 => self
                .protocols
                .iter()
                .find(|o| o.as_bytes() == protocol)
                .map(|o| Some(o.clone()))
                .ok_or(HandshakeError::BadSubprotocol),
            _ => Err(HandshakeError::BadSubprotocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};

    /// RFC 6455 §1.3 sample nonce.
    const KEY: [u8; 16] = *b"the sample nonce";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn hs(protos: Option<&[u8]>) -> Handshake {
        Handshake::new("example.com", "/chat", protos, &[], KEY)
            .unwrap()
            .0
    }

    fn response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(BASE64.encode(KEY), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), ACCEPT);
    }

    #[test]
    fn request_bytes() {
        let extra: &[(&[u8], &[u8])] = &[(b"Origin", b"http://example.com"), (b"X-Empty", b"")];
        let (_, req) = Handshake::new(
            "example.com:8080",
            "/chat?x=1",
            Some(b" chat ,, superchat "),
            extra,
            KEY,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\nOrigin: http://example.com\r\nX-Empty: \r\n\r\n"
        );
        for protos in [None, Some(&b""[..]), Some(b" , ")] {
            let (_, req) = Handshake::new("h", "/", protos, &[], KEY).unwrap();
            assert!(!String::from_utf8(req).unwrap().contains("Protocol"));
        }
    }

    #[test]
    fn request_validation() {
        let bad_extra: &[(&[u8], &[u8])] = &[
            (b"", b"v"),
            (b"Bad Name", b"v"),
            (b"Bad:Name", b"v"),
            (b"X\r\nY", b"v"),
            (b"X", b"a\r\nb: c"),
            (b"X", b"a\nb"),
            (b"X", b"a\0"),
            (b"host", b"evil"),
            (b"UPGRADE", b"x"),
            (b"Connection", b"x"),
            (b"Sec-WebSocket-Key", b"x"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
            (b"SEC-WEBSOCKET-PROTOCOL", b"x"),
        ];
        for &(n, v) in bad_extra {
            assert_eq!(
                Handshake::new("h", "/", None, &[(n, v)], KEY).err(),
                Some(HandshakeError::BadHeader),
                "{n:?}"
            );
        }
        assert!(Handshake::new("h", "/", None, &[(b"Sec-WebSocke", b"x")], KEY).is_ok());
        for host in ["", "h\r\nX: y", "h\n", "h\0"] {
            assert_eq!(
                Handshake::new(host, "/", None, &[], KEY).err(),
                Some(HandshakeError::BadHeader)
            );
        }
        for res in ["", "/a b", "/a\r\n", "/\0", "/\x7F"] {
            assert_eq!(
                Handshake::new("h", res, None, &[], KEY).err(),
                Some(HandshakeError::BadHeader)
            );
        }
        for protos in [&b"a b"[..], b"chat\r\n", b"x,y/z", b"\xFF"] {
            assert_eq!(
                Handshake::new("h", "/", Some(protos), &[], KEY).err(),
                Some(HandshakeError::BadHeader)
            );
        }
    }

    #[test]
    fn valid_response_with_trailing_frames_any_split() {
        let mut bytes = response("Sec-WebSocket-Protocol: superchat\r\nServer: x\r\n").into_bytes();
        let head_len = bytes.len();
        bytes.extend_from_slice(b"\x81\x02hi\x89\x00");
        let expect = Response {
            status: 101,
            head: bytes[..head_len].to_vec(),
            subprotocol: Some("superchat".into()),
        };
        let run = |cuts: &[usize]| {
            let mut h = hs(Some(b"chat, superchat"));
            let mut prev = 0;
            for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
                if let Some((n, r)) = h.feed(&bytes[prev..c]).unwrap() {
                    assert_eq!(r, expect);
                    assert_eq!(h.response_head(), &bytes[..head_len]);
                    return prev + n;
                }
                prev = c;
            }
            panic!("incomplete");
        };
        for cut in 0..=bytes.len() {
            assert_eq!(run(&[cut]), head_len, "cut {cut}");
        }
        let all: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(run(&all), head_len);
    }

    #[test]
    fn accepted_variants() {
        let ok = |resp: &str, protos: Option<&[u8]>| {
            let mut h = hs(protos);
            h.feed(resp.as_bytes())
                .map(|r| r.map(|(n, r)| (n, r.subprotocol)))
        };
        let r = response("");
        assert_eq!(ok(&r, None), Ok(Some((r.len(), None))));
        // Case-insensitive names and values, Connection as a list, bare LF.
        let r = format!(
            "HTTP/1.1 101 OK\nupgrade:   WebSocket \nCONNECTION: keep-alive, UPGRADE\nsec-websocket-accept: {ACCEPT}\n\n"
        );
        assert_eq!(ok(&r, None), Ok(Some((r.len(), None))));
        // Missing reason phrase.
        let r = response("").replace("101 Switching Protocols", "101");
        assert_eq!(ok(&r, None), Ok(Some((r.len(), None))));
        // Server picking none of the offered protocols is allowed.
        let r = response("");
        assert_eq!(ok(&r, Some(b"chat")), Ok(Some((r.len(), None))));
        // Done state repeats the result without consuming.
        let mut h = hs(None);
        assert!(h.feed(r.as_bytes()).unwrap().is_some());
        assert_eq!(h.feed(b"more").unwrap().map(|x| x.0), Some(0));
    }

    /// Responses that must be rejected: (response, offered protocols, error).
    fn rejected_cases() -> Vec<(String, Option<&'static [u8]>, HandshakeError)> {
        vec![
            (
                "HTTP/1.1 200 OK\r\n\r\n".into(),
                None,
                HandshakeError::BadStatus(200),
            ),
            (
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\n\r\n".into(),
                None,
                HandshakeError::BadStatus(401),
            ),
            (
                "HTTP/1.0 403 Forbidden\r\n\r\n".into(),
                None,
                HandshakeError::BadStatus(403),
            ),
            (
                response("").replace("HTTP/1.1", "HTTP/1.0"),
                None,
                HandshakeError::Malformed,
            ),
            (
                "HTTP/1.1 101\r\nUpgrade websocket\r\n\r\n".into(),
                None,
                HandshakeError::Malformed,
            ),
            (
                "SSH-2.0-OpenSSH\r\n\r\n".into(),
                None,
                HandshakeError::Malformed,
            ),
            ("\r\n\r\n".into(), None, HandshakeError::Malformed),
            (
                response("").replace("Upgrade: websocket\r\n", ""),
                None,
                HandshakeError::BadUpgrade,
            ),
            (
                response("").replace("Upgrade: websocket", "Upgrade: h2c"),
                None,
                HandshakeError::BadUpgrade,
            ),
            (
                response("Upgrade: h2c\r\n"),
                None,
                HandshakeError::BadUpgrade,
            ),
            (
                response("").replace("Connection: Upgrade", "Connection: close"),
                None,
                HandshakeError::BadConnection,
            ),
            (
                response("").replace("Connection: Upgrade\r\n", ""),
                None,
                HandshakeError::BadConnection,
            ),
            (
                response("").replace("Connection: Upgrade", "Connection: upgrades"),
                None,
                HandshakeError::BadConnection,
            ),
            (
                response("").replace(ACCEPT, "s3pPLMBiTxaQ9kYGzzhZRbK+xOO="),
                None,
                HandshakeError::BadAccept,
            ),
            (
                response("").replace(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n"), ""),
                None,
                HandshakeError::BadAccept,
            ),
            (
                response(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
                None,
                HandshakeError::BadAccept,
            ),
            (
                response("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                None,
                HandshakeError::BadExtension,
            ),
            (
                response("Sec-WebSocket-Protocol: chat\r\n"),
                None,
                HandshakeError::BadSubprotocol,
            ),
            (
                response("Sec-WebSocket-Protocol: CHAT\r\n"),
                Some(b"chat"),
                HandshakeError::BadSubprotocol,
            ),
            (
                response("Sec-WebSocket-Protocol: chat, superchat\r\n"),
                Some(b"chat,superchat"),
                HandshakeError::BadSubprotocol,
            ),
            (
                response("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n"),
                Some(b"chat"),
                HandshakeError::BadSubprotocol,
            ),
            (
                response("Sec-WebSocket-Protocol: \r\n"),
                Some(b"chat"),
                HandshakeError::BadSubprotocol,
            ),
        ]
    }

    #[test]
    fn rejected_responses() {
        for (resp, protos, err) in rejected_cases() {
            let mut h = hs(protos);
            assert_eq!(h.feed(resp.as_bytes()), Err(err.clone()), "{resp:?}");
            assert_eq!(h.response_head(), resp.as_bytes());
            // The failure is sticky.
            assert_eq!(h.feed(b"x"), Err(err));
        }
    }

    /// `bytes` cut at the ascending offsets `cuts` (the last piece runs to
    /// the end).
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut out = vec![];
        let mut prev = 0;
        for &c in cuts.iter().chain([&bytes.len()]) {
            out.push(&bytes[prev..c]);
            prev = c;
        }
        out
    }

    /// Feeds `chunks` in order until the handshake finishes; every earlier
    /// call must ask for more. Returns the outcome and the index of the
    /// chunk that finished it (`usize::MAX` if none did).
    fn feed_until_done<'c>(
        h: &mut Handshake,
        chunks: impl IntoIterator<Item = &'c [u8]>,
    ) -> (Result<Option<(usize, Response)>, HandshakeError>, usize) {
        for (i, chunk) in chunks.into_iter().enumerate() {
            match h.feed(chunk) {
                Ok(None) => {}
                done => return (done, i),
            }
        }
        (Ok(None), usize::MAX)
    }

    /// Every rejected response, followed by frame-like bytes, split in two
    /// at every boundary and fed byte by byte: the same error from the
    /// call that completes the head (never earlier), the same captured head
    /// (status line and headers, nothing past it), and the failure sticks.
    #[test]
    fn rejected_responses_any_split() {
        let mut cases = rejected_cases();
        let many = (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>();
        cases.push((response(&many), None, HandshakeError::TooLarge));
        cases.push((
            "HTTP/1.1 503 Busy\nRetry-After: 1\n\n".into(),
            None,
            HandshakeError::BadStatus(503),
        ));
        for (resp, protos, err) in cases {
            let head = resp.as_bytes();
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(b"\x81\x02hi\r\n\r\n");
            let check = |cuts: &[usize], how: &str| {
                let mut h = hs(protos);
                let chunks = pieces(&bytes, cuts);
                let (res, at) = feed_until_done(&mut h, chunks.iter().copied());
                assert_eq!(res, Err(err.clone()), "{resp:?} {how}");
                // Finished by the chunk holding the head's last byte.
                let ends: usize = chunks[..=at].iter().map(|c| c.len()).sum();
                assert!(
                    ends >= head.len() && ends - chunks[at].len() < head.len(),
                    "{resp:?} {how}: finished at chunk {at}"
                );
                assert_eq!(h.response_head(), head, "{how}");
                assert_eq!(h.feed(b"HTTP/1.1 101\r\n\r\n"), Err(err.clone()), "{how}");
                assert_eq!(h.response_head(), head, "{how}");
            };
            for cut in 0..=bytes.len() {
                check(&[cut], &format!("cut {cut}"));
            }
            let all: Vec<usize> = (1..bytes.len()).collect();
            check(&all, "bytewise");
            // Empty chunks in between change nothing.
            let mut stutter: Vec<usize> = (0..bytes.len()).flat_map(|i| [i, i]).collect();
            stutter.remove(0);
            check(&stutter, "with empty chunks");
        }
    }

    /// A head that never ends is cut off at `MAX_RESPONSE_HEAD` bytes however
    /// it arrives: the call that reaches the bound fails with `TooLarge`,
    /// exactly the first `MAX_RESPONSE_HEAD` bytes are kept, every earlier
    /// call asks for more. One byte less than the bound (with its end) is
    /// accepted at every split; one more is rejected.
    #[test]
    fn endless_head_cut_off_at_bound_any_split() {
        let mut endless = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        let mut i = 0;
        while endless.len() < MAX_RESPONSE_HEAD + 3000 {
            endless
                .extend_from_slice(format!("X-Endless-{i}: {}\r\n", "v".repeat(i % 97)).as_bytes());
            i += 1;
        }
        let check = |bytes: &[u8], cuts: &[usize], how: &str| {
            let mut h = hs(None);
            let chunks = pieces(bytes, cuts);
            let (res, at) = feed_until_done(&mut h, chunks.iter().copied());
            assert_eq!(res, Err(HandshakeError::TooLarge), "{how}");
            let ends: usize = chunks[..=at].iter().map(|c| c.len()).sum();
            assert!(
                ends >= MAX_RESPONSE_HEAD && ends - chunks[at].len() < MAX_RESPONSE_HEAD,
                "{how}: failed at chunk {at} ending at {ends}"
            );
            assert!(h.response_head() == &bytes[..MAX_RESPONSE_HEAD], "{how}");
            assert_eq!(h.feed(b"\r\n\r\n"), Err(HandshakeError::TooLarge));
            assert_eq!(h.response_head().len(), MAX_RESPONSE_HEAD);
        };
        for cut in 0..=endless.len() {
            check(&endless, &[cut], &format!("cut {cut}"));
        }
        let all: Vec<usize> = (1..endless.len()).collect();
        check(&endless, &all, "bytewise");
        let mut rng = SmallRng::seed_from_u64(22);
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.random_range(1..40))
                .map(|_| rng.random_range(0..=endless.len()))
                .collect();
            cuts.sort_unstable();
            check(&endless, &cuts, &format!("cuts {cuts:?}"));
        }
        // The same head with its end placed exactly at the bound is
        // accepted, one byte later it is not.
        let base = response("X-Pad: \r\n").len();
        let at_bound = response(&format!(
            "X-Pad: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD - base)
        ));
        let over = response(&format!(
            "X-Pad: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD - base + 1)
        ));
        assert_eq!(
            (at_bound.len(), over.len()),
            (MAX_RESPONSE_HEAD, MAX_RESPONSE_HEAD + 1)
        );
        let mut with_frame = at_bound.clone().into_bytes();
        with_frame.extend_from_slice(b"\x81\x00");
        for cut in (0..=with_frame.len())
            .step_by(7)
            .chain(MAX_RESPONSE_HEAD - 8..=with_frame.len())
        {
            let mut h = hs(None);
            let (res, at) = feed_until_done(&mut h, [&with_frame[..cut], &with_frame[cut..]]);
            let used = res.unwrap().unwrap().0;
            let before = if at == 0 { 0 } else { cut };
            assert_eq!(before + used, MAX_RESPONSE_HEAD, "cut {cut}");
            assert!(h.response_head() == at_bound.as_bytes());
        }
        for cut in (0..=over.len())
            .step_by(7)
            .chain(MAX_RESPONSE_HEAD - 8..=over.len())
        {
            check(over.as_bytes(), &[cut], &format!("over, cut {cut}"));
        }
        let all: Vec<usize> = (1..over.len()).collect();
        check(over.as_bytes(), &all, "over, bytewise");
    }

    #[test]
    fn header_count_limits() {
        let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
        let r = response(&many(100));
        assert!(hs(None).feed(r.as_bytes()).unwrap().is_some());
        let r = response(&many(200));
        assert!(r.len() < MAX_RESPONSE_HEAD);
        assert_eq!(hs(None).feed(r.as_bytes()), Err(HandshakeError::TooLarge));
    }

    #[test]
    fn too_large_head() {
        let filler = format!("X-Pad: {}\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        let r = response(&filler);
        let mut h = hs(None);
        assert_eq!(h.feed(r.as_bytes()), Err(HandshakeError::TooLarge));
        assert_eq!(h.response_head().len(), MAX_RESPONSE_HEAD);
        // Same when dribbled in one byte at a time (linear: each byte scanned once).
        let mut h = hs(None);
        let mut res = Ok(None);
        for b in r.as_bytes().chunks(1) {
            res = h.feed(b);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(HandshakeError::TooLarge));
        // A head of exactly the maximum size is still accepted.
        let base = response("X-Pad: \r\n").len();
        let r = response(&format!(
            "X-Pad: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD - base)
        ));
        assert_eq!(r.len(), MAX_RESPONSE_HEAD);
        let mut h = hs(None);
        assert_eq!(
            h.feed(format!("{r}trailing").as_bytes())
                .unwrap()
                .map(|x| x.0),
            Some(MAX_RESPONSE_HEAD)
        );
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = SmallRng::seed_from_u64(21);
        let valid = response("Sec-WebSocket-Protocol: chat\r\n").into_bytes();
        let mut buf = vec![0u8; 256];
        for i in 0..100_000 {
            let mut h = hs(Some(b"chat"));
            let input: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..=buf.len());
                rng.fill_bytes(&mut buf[..len]);
                buf[..len].to_vec()
            } else {
                // Mutate a valid response: flip a few bytes, maybe truncate.
                let mut v = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..v.len());
                    v[at] = rng.random();
                }
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            let cut = rng.random_range(0..=input.len());
            if let Ok(None) = h.feed(&input[..cut]) {
                if let Ok(Some((n, _))) = h.feed(&input[cut..]) {
                    assert!(n <= input.len() - cut);
                }
            }
        }
    }
}
