#!/usr/bin/env bash
# Runs libpjwebsock's fuzz targets under libFuzzer (cargo-fuzz), one after
# another, each for a bounded time, and prints the executions per target.
#
#   bash fuzz/run.sh [target ...]
#
# Environment:
#   FUZZ_TIME=120        seconds per target (libFuzzer -max_total_time)
#   FUZZ_RUNS=N          stop a target after N executions instead (-runs=N)
#   FUZZ_SANITIZER=address   or none (faster; cargo fuzz -s)
#   FUZZ_UPDATE_CORPUS=1 afterwards, minimise the working corpus and copy a
#                        sample (FUZZ_CORPUS_SAMPLE=30 files per target)
#                        into the committed fuzz/corpus/<target>/
#
# Needs cargo-fuzz (installed on first use into .tools/, git-ignored) and
# runs on the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes
# -Z flags to rustc). The working corpus (fuzz/work/corpus/<target>, seeded
# from the committed one) and crash artifacts (fuzz/artifacts/<target>) are
# git-ignored. A crash makes the script exit non-zero; turn the artifact
# into a regression test by copying it to fuzz/regressions/<target>/ (the
# replay test `cargo test --release --manifest-path fuzz/Cargo.toml` runs
# those too).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS="$ROOT/.tools"
export PATH="$PATH:$TOOLS/bin"
export RUSTC_BOOTSTRAP=1

ALL_TARGETS="frame_decode handshake_response conn_state url_parse utf8_stream"
TARGETS="${*:-$ALL_TARGETS}"
FUZZ_TIME="${FUZZ_TIME:-120}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
SAMPLE="${FUZZ_CORPUS_SAMPLE:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz into $TOOLS ..."
    cargo install cargo-fuzz --locked --root "$TOOLS" -q || { echo "cargo-fuzz install failed"; exit 2; }
fi

FLAGS=(--features libfuzzer -O -a -s "$FUZZ_SANITIZER")
echo "building fuzz targets (sanitizer: $FUZZ_SANITIZER) ..."
cargo fuzz build "${FLAGS[@]}" >/dev/null 2>fuzz/build.log || { tail -30 fuzz/build.log; exit 2; }
rm -f fuzz/build.log

LIMIT=(-max_total_time="$FUZZ_TIME")
[ -n "${FUZZ_RUNS:-}" ] && LIMIT=(-runs="$FUZZ_RUNS")

declare -A EXECS RATE STATUS
failed=0
mkdir -p fuzz/work/logs
for t in $TARGETS; do
    mkdir -p "fuzz/work/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/work/logs/$t.log"
    echo "== $t (${LIMIT[*]}) -> $log"
    before=$(ls "fuzz/artifacts/$t" | wc -l)
    # The handshake target needs room past the 16 KiB response-head limit.
    maxlen=8192
    [ "$t" = handshake_response ] && maxlen=20000
    cargo fuzz run "${FLAGS[@]}" "$t" "fuzz/work/corpus/$t" "fuzz/corpus/$t" -- \
        "${LIMIT[@]}" -print_final_stats=1 -max_len=$maxlen -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1
    rc=$?
    after=$(ls "fuzz/artifacts/$t" | wc -l)
    EXECS[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    RATE[$t]=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        STATUS[$t]="CRASH (rc=$rc, $((after - before)) new artifact(s) in fuzz/artifacts/$t)"
        grep -m5 -E "panicked|ERROR|SUMMARY" "$log" | sed 's/^/    /'
        failed=1
    else
        STATUS[$t]="ok, 0 crashes"
    fi
    echo "   ${EXECS[$t]:-?} executions, ${RATE[$t]:-?} exec/s: ${STATUS[$t]}"

    if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
        min="fuzz/work/min/$t"
        rm -rf "$min" && mkdir -p "$min"
        cargo fuzz run "${FLAGS[@]}" "$t" "$min" "fuzz/work/corpus/$t" -- -merge=1 -max_len=$maxlen \
            >"fuzz/work/logs/$t.merge.log" 2>&1
        n=0
        # Small inputs first (cheap to replay), one per distinct size.
        for f in $(ls -S -r "$min" | awk 'NR % 3 == 1'); do
            [ "$n" -ge "$SAMPLE" ] && break
            h=$(sha1sum "$min/$f" | cut -c1-16)
            [ -e "fuzz/corpus/$t/found-$h" ] || { cp "$min/$f" "fuzz/corpus/$t/found-$h"; n=$((n + 1)); }
        done
        echo "   corpus: added $n minimised inputs to fuzz/corpus/$t"
    fi
done

echo
echo "target               executions   exec/s  result"
for t in $TARGETS; do
    printf "%-20s %11s %8s  %s\n" "$t" "${EXECS[$t]:-?}" "${RATE[$t]:-?}" "${STATUS[$t]}"
done
exit $failed
