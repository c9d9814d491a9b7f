//! Replays the committed corpus (fuzz/corpus/<target>/*) and any crash
//! reproducers (fuzz/regressions/<target>/*) through the fuzz target
//! functions, without libFuzzer: `cargo test --release --manifest-path
//! fuzz/Cargo.toml`. A quick pseudo-random smoke run per target follows.

use std::path::Path;

use pjwebsock_fuzz::{run, TARGETS};

fn replay_dir(dir: &Path, target: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| run(target, &data));
        assert!(r.is_ok(), "{target}: {} fails", f.display());
    }
    files.len()
}

#[test]
fn replay_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for t in TARGETS {
        let n = replay_dir(&root.join("corpus").join(t), t);
        assert!(n >= 10, "{t}: only {n} corpus files");
        let r = replay_dir(&root.join("regressions").join(t), t);
        println!("{t}: {n} corpus files, {r} regression files replayed");
    }
}

/// A few thousand random and mutated inputs per target (deterministic).
#[test]
fn smoke_random() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for t in TARGETS {
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join("corpus").join(t))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        for i in 0..3000 {
            let mut data = if !seeds.is_empty() && i % 3 != 0 {
                seeds[rnd() as usize % seeds.len()].clone()
            } else {
                (0..rnd() % 64).map(|_| rnd() as u8).collect()
            };
            for _ in 0..(rnd() % 4) {
                if data.is_empty() {
                    break;
                }
                let at = rnd() as usize % data.len();
                match rnd() % 3 {
                    0 => data[at] = rnd() as u8,
                    1 => data.truncate(at),
                    _ => data.insert(at, rnd() as u8),
                }
            }
            let r = std::panic::catch_unwind(|| run(t, &data));
            assert!(r.is_ok(), "{t}: input {data:02x?} fails");
        }
    }
}
