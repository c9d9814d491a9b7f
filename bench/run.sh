#!/usr/bin/env bash
# `make bench`: builds everything and runs the full suite (5 interleaved
# repetitions), writing bench/results/<stamp>.jsonl and bench/RESULTS.md.
# Extra arguments go to bench/run.py (e.g. --reps 3, --workloads stream,
# --cc cubic); `make bench BENCH_ARGS='...'` passes them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/deps.sh" bench
make -C "$here" all
export PJWS_BENCH_VIA_MAKE=1
exec python3 "$here/run.py" "$@"
