#!/usr/bin/env bash
# Sums the test counts of every stage of `make test` (cargo's
# "test result:" lines and the runners' "N passed, N failed" lines) into
# one closing line.
log=build/test-logs/stages.log
awk '
  /^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } next }
  /^(summary: )?[0-9]+ passed, [0-9]+ failed/ { p += $1; f += $3; if ($5 != "") s += $5 }
  END { printf "make test: %d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }
' "$log"
