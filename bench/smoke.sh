#!/usr/bin/env bash
# Part of `make test`: builds the benchmark programs (criterion benches and
# peers included, "smoke" cargo profile) and runs every workload once, tiny,
# for every client. Exits non-zero if anything fails to build or any client
# fails verification. Timing is never checked.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
bash "$here/deps.sh" smoke
make -C "$here" -j2 smoke-build NO_BEAST=${NO_BEAST:-0}
python3 "$here/run.py" --smoke "$@"
echo "bench/smoke.sh: passed in $(( $(date +%s) - start )) s"
