//! Inputs for the micro-benchmarks in `benches/micro.rs`.

/// Deterministic pseudo-random bytes (xorshift64), the same generator the
/// benchmark clients use for their payloads.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// `len` bytes of valid UTF-8 text: `ascii_pct` percent ASCII letters,
/// the rest 2-, 3- and 4-byte characters, in a deterministic mix.
pub fn utf8_text(len: usize, ascii_pct: u32) -> Vec<u8> {
    const MULTI: [&str; 3] = ["é", "€", "𝄞"];
    let r = pattern(len, 0x5EED);
    let mut out = Vec::with_capacity(len + 4);
    let mut i = 0;
    while out.len() < len {
        let x = r[i % r.len()];
        i += 1;
        if u32::from(x) * 100 / 256 < ascii_pct {
            out.push(b'a' + x % 26);
        } else {
            out.extend_from_slice(MULTI[usize::from(x) % 3].as_bytes());
        }
    }
    // Trim to a character boundary at or below `len`.
    while out.len() > len || std::str::from_utf8(&out).is_err() {
        out.pop();
    }
    out
}
