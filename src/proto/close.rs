//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

/// Normal closure; the code we echo for an empty-bodied peer close is "no code".
pub const NORMAL: u16 = 1000;
/// Protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// No status code was present (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// Invalid payload data (e.g. non-UTF-8 text).
pub const INVALID_DATA: u16 = 1007;
/// Message too big.
pub const TOO_BIG: u16 = 1009;

/// Codes a peer may send: 1000-1003, 1007-1014 (IANA-registered), 3000-4999
/// (libraries/applications). 1004-1006 and 1015 are reserved for local use.
pub fn is_valid_received_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Codes `pj_websock_close` accepts: the same set as above (code 0 is handled
/// by the caller as "empty body").
pub fn is_valid_send_code(code: u16) -> bool {
    is_valid_received_code(code)
}

/// Control payloads are ≤ 125 bytes, 2 of which hold the code.
pub const MAX_REASON_LEN: usize = 123;

/// Parses a received close payload into (code, reason).
///
/// Empty → `Ok((1005, ""))`. One byte or an invalid code → `Err(1002)`.
/// A reason that is not UTF-8 → `Err(1007)`.
pub fn parse_close_payload(p: &[u8]) -> Result<(u16, &str), u16> {
    match p {
        [] => Ok((NO_STATUS, "")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_received_code(code) {
                return Err(PROTOCOL_ERROR);
            }
            std::str::from_utf8(reason)
                .map(|r| (code, r))
                .map_err(|_| INVALID_DATA)
        }
        [_] => Err(PROTOCOL_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_range_boundaries() {
        let cases = [
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (1100, false),
            (2000, false),
            (2999, false),
            (3000, true),
            (3999, true),
            (4000, true),
            (4999, true),
            (5000, false),
            (65535, false),
        ];
        for (code, ok) in cases {
            assert_eq!(is_valid_received_code(code), ok, "{code}");
            assert_eq!(is_valid_send_code(code), ok, "{code}");
            let body = code.to_be_bytes();
            let expect = if ok {
                Ok((code, ""))
            } else {
                Err(PROTOCOL_ERROR)
            };
            assert_eq!(parse_close_payload(&body), expect, "{code}");
        }
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(parse_close_payload(b""), Ok((1005, "")));
        assert_eq!(parse_close_payload(b"\x03"), Err(1002));
        assert_eq!(parse_close_payload(b"\x03\xE8bye"), Ok((1000, "bye")));
        let mut p = 3000u16.to_be_bytes().to_vec();
        p.extend_from_slice("κόσμε".as_bytes());
        assert_eq!(parse_close_payload(&p), Ok((3000, "κόσμε")));
        assert_eq!(
            parse_close_payload(
                b"\x03\xE8\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80"
            ),
            Err(1007)
        );
        assert_eq!(parse_close_payload(b"\x03\xE8\xE2\x82"), Err(1007)); // truncated
                                                                         // An invalid code wins over an invalid reason.
        assert_eq!(parse_close_payload(b"\x03\xED\xFF"), Err(1002));
        let long = [b'a'; MAX_REASON_LEN];
        let mut p = vec![0x03, 0xE8];
        p.extend_from_slice(&long);
        assert_eq!(
            parse_close_payload(&p).map(|(c, r)| (c, r.len())),
            Ok((1000, MAX_REASON_LEN))
        );
    }

    #[test]
    fn exhaustive_codes_never_panic() {
        for code in 0..=u16::MAX {
            let b = code.to_be_bytes();
            let r = parse_close_payload(&b);
            assert_eq!(r.is_ok(), is_valid_received_code(code));
        }
    }
}
