//! `ws://` / `wss://` URL parsing (RFC 6455 §3).

use std::net::Ipv6Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub secure: bool,
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    pub is_ipv6_literal: bool,
    pub port: u16,
    /// Path + "?query" exactly as given; "/" when absent.
    pub resource: String,
}

/// RFC 3986 reg-name characters: unreserved, sub-delims and '%' (for
/// pct-encoding). Anything else cannot be a host.
fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

/// Port digits only (`u16::from_str` would also take a '+'), non-zero.
fn parse_port(s: &[u8]) -> Result<u16, ()> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let port: u16 = std::str::from_utf8(s)
        .map_err(|_| ())?
        .parse()
        .map_err(|_| ())?;
    if port == 0 {
        return Err(());
    }
    Ok(port)
}

impl WsUrl {
    /// Parses `ws://` and `wss://` URLs (scheme case-insensitive), with
    /// default ports 80/443, bracketed IPv6 literals and path + query kept
    /// verbatim.
    ///
    /// Rejected: other schemes, missing host, userinfo, fragments, a bad,
    /// zero or overflowing port, spaces / control / non-ASCII bytes anywhere,
    /// empty or unbalanced brackets, and invalid IPv6 literals.
    #[allow(clippy::result_unit_err)] // the contract with the FFI layer: any failure is "invalid URL"
    pub fn parse(s: &[u8]) -> Result<WsUrl, ()> {
        // Visible ASCII only; '#' would start a fragment, which RFC 6455
        // forbids in WebSocket URIs.
        if !s.iter().all(|&b| b.is_ascii_graphic()) || s.contains(&b'#') {
            return Err(());
        }
        let sep = s.windows(3).position(|w| w == b"://").ok_or(())?;
        let (scheme, rest) = (s.get(..sep).ok_or(())?, s.get(sep + 3..).ok_or(())?);
        let secure = if scheme.eq_ignore_ascii_case(b"ws") {
            false
        } else if scheme.eq_ignore_ascii_case(b"wss") {
            true
        } else {
            return Err(());
        };

        let auth_end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        if authority.contains(&b'@') {
            return Err(());
        }

        let (host, is_ipv6_literal, port) = if let Some(inner) = authority.strip_prefix(b"[") {
            let close = inner.iter().position(|&b| b == b']').ok_or(())?;
            let (addr, after) = (
                inner.get(..close).ok_or(())?,
                inner.get(close + 1..).ok_or(())?,
            );
            let addr = std::str::from_utf8(addr).map_err(|_| ())?;
            addr.parse::<Ipv6Addr>().map_err(|_| ())?;
            let port = match after {
                [] => None,
                [b':', port @ ..] => Some(parse_port(port)?),
                _ => return Err(()),
            };
            (addr, true, port)
        } else {
            // Unbracketed: the first ':' starts the port, so a bare IPv6
            // address fails the digits-only port check.
            let (host, port) = match authority.iter().position(|&b| b == b':') {
                Some(i) => (
                    authority.get(..i).ok_or(())?,
                    Some(parse_port(authority.get(i + 1..).ok_or(())?)?),
                ),
                None => (authority, None),
            };
            if host.is_empty() || !host.iter().all(|&b| is_reg_name_char(b)) {
                return Err(());
            }
            (std::str::from_utf8(host).map_err(|_| ())?, false, port)
        };

        let tail = std::str::from_utf8(tail).map_err(|_| ())?;
        let resource = match tail.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'?') => format!("/{tail}"),
            Some(_) => tail.to_owned(),
        };
        Ok(WsUrl {
            secure,
            host: host.to_owned(),
            is_ipv6_literal,
            port: port.unwrap_or(if secure { 443 } else { 80 }),
            resource,
        })
    }

    /// Host header value: host (bracketed if IPv6), plus ":port" only when
    /// the port is not the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.secure { 443 } else { 80 };
        let mut h = if self.is_ipv6_literal {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port != default {
            h.push(':');
            h.push_str(&self.port.to_string());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};

    fn url(s: &str) -> WsUrl {
        WsUrl::parse(s.as_bytes()).unwrap_or_else(|()| panic!("{s}"))
    }

    fn ws(secure: bool, host: &str, v6: bool, port: u16, resource: &str) -> WsUrl {
        WsUrl {
            secure,
            host: host.into(),
            is_ipv6_literal: v6,
            port,
            resource: resource.into(),
        }
    }

    #[test]
    fn valid_urls() {
        assert_eq!(url("ws://host"), ws(false, "host", false, 80, "/"));
        assert_eq!(url("ws://host/"), ws(false, "host", false, 80, "/"));
        assert_eq!(
            url("WSS://Host:443/p?q=1"),
            ws(true, "Host", false, 443, "/p?q=1")
        );
        assert_eq!(url("wss://host"), ws(true, "host", false, 443, "/"));
        assert_eq!(url("wS://[::1]:9000/x"), ws(false, "::1", true, 9000, "/x"));
        assert_eq!(
            url("ws://[2001:db8::1]"),
            ws(false, "2001:db8::1", true, 80, "/")
        );
        assert_eq!(
            url("ws://127.0.0.1"),
            ws(false, "127.0.0.1", false, 80, "/")
        );
        assert_eq!(url("ws://h?x=1"), ws(false, "h", false, 80, "/?x=1"));
        assert_eq!(
            url("ws://h:8080?x=1&y=%20"),
            ws(false, "h", false, 8080, "/?x=1&y=%20")
        );
        assert_eq!(
            url("ws://h/a/b/../c?x=/y?z"),
            ws(false, "h", false, 80, "/a/b/../c?x=/y?z")
        );
        assert_eq!(url("ws://h:65535"), ws(false, "h", false, 65535, "/"));
        assert_eq!(url("ws://h:00080/"), ws(false, "h", false, 80, "/"));
        assert_eq!(
            url("ws://my-host.example.com."),
            ws(false, "my-host.example.com.", false, 80, "/")
        );
    }

    #[test]
    fn host_header_variants() {
        assert_eq!(url("ws://host").host_header(), "host");
        assert_eq!(url("ws://host:80").host_header(), "host");
        assert_eq!(url("ws://host:443").host_header(), "host:443");
        assert_eq!(url("wss://host:443").host_header(), "host");
        assert_eq!(url("wss://host:80").host_header(), "host:80");
        assert_eq!(url("ws://[::1]:9000/x").host_header(), "[::1]:9000");
        assert_eq!(url("wss://[::1]").host_header(), "[::1]");
        assert_eq!(url("ws://127.0.0.1:8080").host_header(), "127.0.0.1:8080");
    }

    #[test]
    fn invalid_urls() {
        let bad: &[&[u8]] = &[
            b"",
            b"ws",
            b"ws:",
            b"ws:/host",
            b"http://host",
            b"https://host",
            b"wss2://host",
            b"://host",
            b"ws://",
            b"ws:///path",
            b"ws://?q",
            b"ws://:80",
            b"ws://user@host",
            b"ws://user:pw@host/",
            b"ws://host/#frag",
            b"ws://host#",
            b"ws://host/p?q#f",
            b"ws://host:",
            b"ws://host:0",
            b"ws://host:65536",
            b"ws://host:99999999999999999999",
            b"ws://host:+80",
            b"ws://host:-1",
            b"ws://host:8a",
            b"ws://host:80:80",
            b"ws://ho st",
            b"ws://host/a b",
            b" ws://host",
            b"ws://host/\t",
            b"ws://host/\x7F",
            b"ws://host/\0",
            b"ws://host/\r\n",
            b"ws://h\xC3\xA9st",
            b"ws://host/\xC3\xA9",
            b"ws://[]",
            b"ws://[]:80",
            b"ws://[::1",
            b"ws://::1]",
            b"ws://host]",
            b"ws://ho[st",
            b"ws://[::1]]",
            b"ws://[[::1]]",
            b"ws://[::1]x",
            b"ws://[::1]:",
            b"ws://[::1]:0",
            b"ws://[:::1]",
            b"ws://[127.0.0.1]",
            b"ws://[fe80::1%25eth0]",
            b"ws://[zz::1]",
            b"ws://::1",
            b"ws://ho<st",
            b"ws://ho\\st/",
        ];
        for s in bad {
            assert_eq!(WsUrl::parse(s), Err(()), "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = SmallRng::seed_from_u64(41);
        let alphabet = b"ws:/[]@#?%.:0123456789abcdefWS \x00\xFF";
        let mut buf = [0u8; 40];
        for i in 0..100_000 {
            let len = rng.random_range(0..=buf.len());
            if i % 2 == 0 {
                rng.fill_bytes(&mut buf[..len]);
            } else {
                for b in &mut buf[..len] {
                    *b = alphabet[rng.random_range(0..alphabet.len())];
                }
                if len >= 5 {
                    buf[..5].copy_from_slice(b"ws://");
                }
            }
            if let Ok(u) = WsUrl::parse(&buf[..len]) {
                assert!(!u.host.is_empty() && u.port != 0 && u.resource.starts_with('/'));
                // A parsed URL round-trips through its own pieces.
                let again = format!(
                    "{}://{}{}",
                    if u.secure { "wss" } else { "ws" },
                    u.host_header(),
                    u.resource
                );
                assert_eq!(WsUrl::parse(again.as_bytes()), Ok(u));
            }
        }
    }
}
