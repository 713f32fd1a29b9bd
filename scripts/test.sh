#!/usr/bin/env bash
# npm test's runner, after setup and the type check: the unit and property
# files two at a time (CPU only, nothing shared between them: ~85 s instead of
# ~120 s on 2 cores on the Intel machine; a fresh clone's whole `bash .ci/run`
# suite 486 s instead of 555 s), then the end-to-end files one at a time (namespaces, real
# traffic and timing: side by side on 2 cores they would compete). tap's
# default is one file at a time below 5 CPUs. Extra arguments go to both runs.
# Ends with one summary line for both, in tap's own form, which .ci/run reads:
#   # { total: T, pass: P, fail: F[, skip: S] }
set -u
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# tap's Test class built for package.json's plugins before the first run (a
# fresh `npm ci` has the default one: that run's files would also load
# through ts-node's loader, ~2 minutes more on a fresh clone; scripts/tap-build.mjs)
node scripts/tap-build.mjs
./node_modules/.bin/tap -j2 "$@" 'test/unit/**/*.test.ts' 'test/property/**/*.test.ts' | tee "$out"
rc1=${PIPESTATUS[0]}
./node_modules/.bin/tap "$@" 'test/e2e/**/*.test.ts' | tee -a "$out"
rc2=${PIPESTATUS[0]}
# tap's closing summaries, one per run: "# { total: T, pass: P, fail: F, skip: S, ... }"
grep -E '^# \{ total: [0-9]+' "$out" | awk '
  { for (i = 1; i <= NF; i++) { k = $i; sub(/:$/, "", k); v = $(i + 1); sub(/[,}]$/, "", v); if (k == "total" || k == "pass" || k == "fail" || k == "skip") s[k] += v } }
  END { line = "# { total: " s["total"] + 0 ", pass: " s["pass"] + 0; if (s["fail"] > 0) line = line ", fail: " s["fail"]; if (s["skip"] > 0) line = line ", skip: " s["skip"]; print line " }" }'
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
