#!/usr/bin/env bash
# Runs one stage of `make test` and prints how long it took.
name=$1; shift
start=$(date +%s%N)
echo "=== stage: $name"
"$@"; rc=$?
end=$(date +%s%N)
awk -v n="$name" -v r="$([ $rc = 0 ] && echo ok || echo FAILED)" -v s="$start" -v e="$end" \
    'BEGIN { printf "=== stage: %s: %s in %.1fs\n", n, r, (e - s) / 1e9 }'
exit $rc
