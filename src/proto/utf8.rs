//! Streaming, fail-fast UTF-8 validation.
//!
//! RFC 6455 §8.1 requires failing the connection on invalid UTF-8 in text
//! messages, and the Autobahn testsuite checks that this happens at the first
//! byte that makes the stream invalid, even if the message or frame has not
//! been fully received. The validator therefore tracks the exact range the
//! next continuation byte must fall in (Unicode Table 3-7), which rejects
//! overlongs, surrogates and code points above U+10FFFF as early as possible.

/// Incremental UTF-8 validator; three bytes of state.
#[derive(Default, Clone, Copy, Debug)]
pub struct Utf8Validator {
    /// Continuation bytes still expected for the current sequence.
    need: u8,
    /// Inclusive range allowed for the next continuation byte.
    lo: u8,
    hi: u8,
}

/// Mask of the high bit of every byte in a word.
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Length of the leading all-ASCII part of `bytes`, in whole 32-byte blocks
/// (the remainder is left to `str::from_utf8`, which is fast on it anyway).
#[inline]
fn ascii_prefix_len(bytes: &[u8]) -> usize {
    let (blocks, _) = bytes.as_chunks::<32>();
    let mut n = 0;
    for b in blocks {
        let w = |i: usize| {
            u64::from_ne_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        if (w(0) | w(8) | w(16) | w(24)) & HIGH_BITS != 0 {
            break;
        }
        n += 32;
    }
    n
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances the state machine by one byte; false if `b` is invalid here.
    #[inline]
    fn step(&mut self, b: u8) -> bool {
        if self.need == 0 {
            let (need, lo, hi) = match b {
                0x00..=0x7F => return true,
                0xC2..=0xDF => (1, 0x80, 0xBF),
                0xE0 => (2, 0xA0, 0xBF), // no overlongs
                0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
                0xED => (2, 0x80, 0x9F), // no surrogates
                0xF0 => (3, 0x90, 0xBF), // no overlongs
                0xF1..=0xF3 => (3, 0x80, 0xBF),
                0xF4 => (3, 0x80, 0x8F), // ≤ U+10FFFF
                _ => return false,       // 0x80..=0xC1, 0xF5..=0xFF
            };
            *self = Utf8Validator { need, lo, hi };
            true
        } else if (self.lo..=self.hi).contains(&b) {
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            true
        } else {
            false
        }
    }

    /// Validates the next piece of the stream.
    ///
    /// `Ok(())` if all bytes so far can begin valid UTF-8; `Err(i)` gives the
    /// index in `bytes` of the first byte proven invalid. After an error the
    /// state is meaningless until [`reset`](Self::reset).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), usize> {
        // Finish a sequence left open by the previous piece.
        let mut i = 0;
        while self.need != 0 {
            let Some(&b) = bytes.get(i) else {
                return Ok(());
            };
            if !self.step(b) {
                return Err(i);
            }
            i += 1;
        }
        // At a character boundary: skip ASCII a block at a time, then let a
        // SIMD validator handle the rest in one go.
        let rest = bytes.get(i..).unwrap_or_default();
        let i = i + ascii_prefix_len(rest);
        let rest = bytes.get(i..).unwrap_or_default();
        let Err(e) = simdutf8::compat::from_utf8(rest) else {
            return Ok(());
        };
        // Either an invalid sequence (error_len() is Some) or an incomplete
        // tail (None). In both cases the byte-wise machine, restarted at the
        // last boundary, locates the exact failing byte or records the
        // partial sequence, within at most 4 bytes of the error position.
        let start = i + e.valid_up_to();
        for (k, &b) in bytes.get(start..).unwrap_or_default().iter().enumerate() {
            if !self.step(b) {
                return Err(start + k);
            }
        }
        Ok(())
    }

    /// True when not in the middle of a multi-byte sequence.
    pub fn is_complete(&self) -> bool {
        self.need == 0
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};

    /// Reference: index of the first byte after which no valid completion
    /// exists, computed from `str::from_utf8` on every prefix.
    fn reference(bytes: &[u8]) -> Result<bool, usize> {
        for k in 1..=bytes.len() {
            if let Err(e) = std::str::from_utf8(&bytes[..k]) {
                if e.error_len().is_some() {
                    return Err(k - 1);
                }
            }
        }
        Ok(std::str::from_utf8(bytes).is_ok())
    }

    fn validate(bytes: &[u8]) -> Result<bool, usize> {
        let mut v = Utf8Validator::new();
        v.feed(bytes).map(|()| v.is_complete())
    }

    /// Feeds `bytes` in the given pieces and returns the absolute error index.
    fn validate_pieces(pieces: &[&[u8]]) -> Result<bool, usize> {
        let mut v = Utf8Validator::new();
        let mut base = 0;
        for p in pieces {
            v.feed(p).map_err(|i| base + i)?;
            base += p.len();
        }
        Ok(v.is_complete())
    }

    #[test]
    fn invalid_classes_fail_at_first_bad_byte() {
        let cases: &[(&[u8], usize)] = &[
            (b"\xC0\x80", 0),         // overlong 2-byte (C0)
            (b"\xC1\xBF", 0),         // overlong 2-byte (C1)
            (b"ab\xE0\x80\x80", 3),   // overlong 3-byte
            (b"\xE0\x9F\xBF", 1),     // overlong 3-byte, top of range
            (b"\xF0\x80\x80\x80", 1), // overlong 4-byte
            (b"\xF0\x8F\xBF\xBF", 1), // overlong 4-byte, top of range
            (b"\xED\xA0\x80", 1),     // U+D800
            (b"\xED\xBF\xBF", 1),     // U+DFFF
            (b"\xF4\x90\x80\x80", 1), // U+110000
            (b"\xF5\x80\x80\x80", 0), // lead > F4
            (b"\xF7\xBF\xBF\xBF", 0),
            (b"\x80", 0), // lone continuation
            (b"a\xBF", 1),
            (b"\xFE", 0),
            (b"\xFF", 0),
            (b"\xC3\x28", 1), // bad continuation
            (b"\xE2\x28\xA1", 1),
            (b"\xE2\x82\x28", 2),
            (b"\xF0\x90\x28\xBC", 2),
            (b"\xF0\x90\x8C\x28", 3),
            (
                b"\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80edited",
                12,
            ),
        ];
        for &(bytes, at) in cases {
            assert_eq!(validate(bytes), Err(at), "{bytes:x?}");
            assert_eq!(reference(bytes), Err(at), "{bytes:x?}");
        }
    }

    #[test]
    fn truncated_sequences_are_incomplete_not_errors() {
        for bytes in [
            &b"\xC3"[..],
            b"\xE2\x82",
            b"\xF0\x9F\x98",
            b"\xF4\x8F",
            b"ok\xE0",
        ] {
            assert_eq!(validate(bytes), Ok(false), "{bytes:x?}");
        }
    }

    #[test]
    fn boundary_code_points_are_valid() {
        for c in [
            '\0',
            '\x7F',
            '\u{80}',
            '\u{7FF}',
            '\u{800}',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{FFFF}',
            '\u{10000}',
            '\u{10FFFF}',
        ] {
            let s = format!("x{c}y{c}");
            assert_eq!(validate(s.as_bytes()), Ok(true), "{c:?}");
        }
    }

    #[test]
    fn valid_text_split_at_every_boundary() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε \u{10FFFF}\u{1F600} end ".repeat(3);
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            assert_eq!(
                validate_pieces(&[&b[..cut], &b[cut..]]),
                Ok(true),
                "cut {cut}"
            );
            for cut2 in cut..=b.len() {
                assert_eq!(
                    validate_pieces(&[&b[..cut], &b[cut..cut2], &b[cut2..]]),
                    Ok(true)
                );
            }
        }
        let bytewise: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(validate_pieces(&bytewise), Ok(true));
    }

    #[test]
    fn all_byte_pairs_match_reference() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [a, b];
                assert_eq!(validate(&s), reference(&s), "{s:x?}");
                assert_eq!(validate_pieces(&[&s[..1], &s[1..]]), reference(&s));
            }
        }
    }

    #[test]
    fn random_strings_match_reference_with_random_splits() {
        let mut rng = SmallRng::seed_from_u64(11);
        let alphabet: &[u8] = &[
            b'a', b'Z', 0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
            0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFE, 0xFF,
        ];
        for iter in 0..20_000 {
            let len = rng.random_range(0..80);
            let mut s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            if iter % 2 == 0 {
                // Mostly-valid strings with ASCII runs long enough for the fast path.
                let mut valid: Vec<u8> = "ab".repeat(rng.random_range(0..40)).into_bytes();
                valid.extend_from_slice("λ€😀".as_bytes());
                let at = rng.random_range(0..=valid.len());
                valid.splice(at..at, s.iter().take(rng.random_range(0..3)).copied());
                s = valid;
            }
            let expect = reference(&s);
            assert_eq!(validate(&s), expect, "{s:x?}");
            let c1 = rng.random_range(0..=s.len());
            let c2 = rng.random_range(c1..=s.len());
            assert_eq!(
                validate_pieces(&[&s[..c1], &s[c1..c2], &s[c2..]]),
                expect,
                "{s:x?} {c1} {c2}"
            );
        }
    }

    #[test]
    fn fuzz_random_bytes() {
        let mut rng = SmallRng::seed_from_u64(12);
        let mut buf = [0u8; 64];
        for _ in 0..100_000 {
            let len = rng.random_range(0..=64);
            rng.fill_bytes(&mut buf[..len]);
            let s = &buf[..len];
            let r = validate(s);
            assert_eq!(r.is_ok_and(|c| c), std::str::from_utf8(s).is_ok());
            if let Err(i) = r {
                assert!(i < len);
            }
        }
    }

    #[test]
    fn reset_clears_partial_state() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xE2\x82"), Ok(()));
        assert!(!v.is_complete());
        v.reset();
        assert!(v.is_complete());
        assert_eq!(v.feed(b"a"), Ok(()));
    }

    /// `cargo test --release -- --ignored --nocapture utf8_throughput`
    #[test]
    #[ignore = "timing only; run with --ignored --nocapture"]
    fn utf8_throughput() {
        let ascii = "The quick brown fox jumps over the lazy dog. 0123456789\n".repeat(20_000);
        let mixed = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. Grüße, €5 — naïve café ".repeat(10_000);
        let greek = "κόσμε καλημέρα ".repeat(40_000);
        for (name, text) in [
            ("ascii", &ascii),
            ("ascii-heavy", &mixed),
            ("greek", &greek),
        ] {
            let b = text.as_bytes();
            let iters = (1usize << 31) / b.len();
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let mut v = Utf8Validator::new();
                // Feed in 64 KiB pieces like a socket would.
                for c in std::hint::black_box(b).chunks(65536) {
                    assert!(v.feed(c).is_ok());
                }
                assert!(v.is_complete());
            }
            let gbs = (iters * b.len()) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("utf8 {name}: {gbs:.2} GB/s");
        }
    }
}
