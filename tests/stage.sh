#!/usr/bin/env bash
# Runs one stage of `make test`, prints how long it took, and keeps its
# output in build/test-logs/stages.log for the final summary.
name=$1; shift
log=build/test-logs/stages.log
mkdir -p build/test-logs
start=$(date +%s%N)
echo "=== stage: $name" | tee -a "$log"
"$@" 2>&1 | tee -a "$log"; rc=${PIPESTATUS[0]}
end=$(date +%s%N)
awk -v n="$name" -v r="$([ $rc = 0 ] && echo ok || echo FAILED)" -v s="$start" -v e="$end" \
    'BEGIN { printf "=== stage: %s: %s in %.1fs\n", n, r, (e - s) / 1e9 }' | tee -a "$log"
exit $rc
