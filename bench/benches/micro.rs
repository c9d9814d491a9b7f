//! Micro-benchmarks of libpjwebsock's protocol code (criterion).
//!
//!   cargo bench --manifest-path bench/Cargo.toml --bench micro
//!
//! Groups (throughput in bytes per second unless noted):
//! - `mask/1MiB`, `mask/640B`: `apply_mask` in place (offset 0 and 3),
//!   `encode_frame` (header + masked copy), against a plain `memcpy` of
//!   the same buffer (`copy_from_slice`), the floor for any masking code.
//! - `utf8/1MiB`: `Utf8Validator::feed` on the whole buffer and in 4 KiB
//!   pieces (streaming, as frames arrive), for ASCII, mostly-ASCII and
//!   multi-byte text, against `std::str::from_utf8`.
//! - `header`: `encode_header` / `decode_header` for the three length
//!   encodings (throughput in headers per second).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pjwebsock::proto::frame::{
    apply_mask, decode_header, encode_frame, encode_header, OpCode, MAX_HEADER_LEN,
};
use pjwebsock::proto::utf8::Utf8Validator;
use pjwebsock_bench::{pattern, utf8_text};

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn masking(c: &mut Criterion) {
    for (name, len) in [("mask/1MiB", 1usize << 20), ("mask/640B", 640)] {
        let src = pattern(len, 1);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = src.clone();
        g.bench_function("apply_mask", |b| {
            b.iter(|| apply_mask(black_box(&mut buf), MASK, 0))
        });
        g.bench_function("apply_mask_offset3", |b| {
            b.iter(|| apply_mask(black_box(&mut buf), MASK, 3))
        });
        let mut out = Vec::with_capacity(len + MAX_HEADER_LEN);
        g.bench_function("encode_frame", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, true, OpCode::Bin, black_box(&src), MASK);
                black_box(&out);
            })
        });
        let mut dst = vec![0u8; len];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        g.finish();
    }
}

fn utf8(c: &mut Criterion) {
    const LEN: usize = 1 << 20;
    let mut g = c.benchmark_group("utf8/1MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    for (kind, pct) in [("ascii", 100u32), ("mostly_ascii", 90), ("multibyte", 0)] {
        let text = utf8_text(LEN, pct);
        assert!(std::str::from_utf8(&text).is_ok());
        g.bench_function(format!("feed_whole/{kind}"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                let r = v.feed(black_box(&text));
                black_box((r, v.is_complete()))
            })
        });
        // 4 KiB pieces split anywhere, also inside characters.
        g.bench_function(format!("feed_4KiB_pieces/{kind}"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in black_box(&text).chunks(4096) {
                    if v.feed(piece).is_err() {
                        panic!("valid text rejected");
                    }
                }
                black_box(v.is_complete())
            })
        });
        g.bench_function(format!("std_from_utf8/{kind}"), |b| {
            b.iter(|| black_box(std::str::from_utf8(black_box(&text)).is_ok()))
        });
    }
    g.finish();
}

fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    for (name, len) in [("7bit", 64u64), ("16bit", 640), ("64bit", 1 << 20)] {
        let mut h = [0u8; MAX_HEADER_LEN];
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                black_box(encode_header(
                    true,
                    OpCode::Bin,
                    Some(MASK),
                    black_box(len),
                    &mut h,
                ))
            })
        });
        let n = encode_header(true, OpCode::Bin, Some(MASK), len, &mut h);
        let mut wire = h[..n].to_vec();
        wire.extend_from_slice(&[0u8; 16]);
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let r = decode_header(black_box(&wire));
                black_box(matches!(r, Ok(Some(_))))
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = masking, utf8, header
}
criterion_main!(benches);
