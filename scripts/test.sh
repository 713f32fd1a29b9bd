#!/usr/bin/env bash
# npm test's runner, after setup and the type check: the unit and property
# files two at a time (CPU only, nothing shared between them: ~85 s instead of
# ~120 s on 2 cores on the Intel machine; a fresh clone's whole `bash .ci/run`
# suite 486 s instead of 555 s), then the end-to-end files in two lanes side by
# side: the files that time, stream or load (benchmarks' smokes, offloads,
# priorities, restarts with a stream) one at a time in the main lane, and
# beside it, one at a time, the files that check behaviour through namespaces
# without timing anything (SIDE below). Every file's namespaces carry its
# PID, its state and pinned tables a directory of its own: nothing is shared
# between the lanes but the CPUs. A new end-to-end file goes to the main lane
# unless it is listed in SIDE. Extra arguments go to every run.
# Ends with one summary line for all, in tap's own form, which .ci/run reads:
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
# the side lane: behaviour through namespaces, no stream or timing asserted
SIDE=(api-restart api-tcp conntrack-pinned dataplane dualstack dualstack-restart ip6tables-kernel iptables-kernel
  kube-lab kube-nodesetup lab lab-config nftables-kernel node-local offload-tun tun)
side=()
main=()
for f in test/e2e/*.test.ts; do
  n=$(basename "$f" .test.ts)
  if [[ " ${SIDE[*]} " == *" $n "* ]]; then side+=("$f"); else main+=("$f"); fi
done
sideOut=$(mktemp)
trap 'rm -f "$out" "$sideOut"' EXIT
./node_modules/.bin/tap "$@" "${side[@]}" > "$sideOut" 2>&1 &
sidePid=$!
./node_modules/.bin/tap "$@" "${main[@]}" | tee -a "$out"
rc2=${PIPESTATUS[0]}
wait "$sidePid"
rc3=$?
echo "# ---- the side lane (${#side[@]} end-to-end files, run beside the ones above) ----"
tee -a "$out" < "$sideOut"
# tap's closing summaries, one per run: "# { total: T, pass: P, fail: F, skip: S, ... }"
grep -E '^# \{ total: [0-9]+' "$out" | awk '
  { for (i = 1; i <= NF; i++) { k = $i; sub(/:$/, "", k); v = $(i + 1); sub(/[,}]$/, "", v); if (k == "total" || k == "pass" || k == "fail" || k == "skip") s[k] += v } }
  END { line = "# { total: " s["total"] + 0 ", pass: " s["pass"] + 0; if (s["fail"] > 0) line = line ", fail: " s["fail"]; if (s["skip"] > 0) line = line ", skip: " s["skip"]; print line " }" }'
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$rc3" -eq 0 ]
