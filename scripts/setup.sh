#!/usr/bin/env bash
# Installs what tunproxy needs and is missing: Debian packages (iptables,
# nftables, iproute2, conntrack, gcc/make for the addon, iperf3 for bench:throughput, ethtool for the offload tests), node_modules via
# `npm ci` (which builds the TUN addon), and the reference C forwarder.
# Idempotent and quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || missing+=(iproute2)
have iptables-legacy-restore || missing+=(iptables)
have iptables-nft-restore || missing+=(iptables)
have nft || missing+=(nftables)
have conntrack || missing+=(conntrack)
have make || missing+=(make)
have gcc || missing+=(gcc)
have g++ || missing+=(g++)
have python3 || missing+=(python3)
have iperf3 || missing+=(iperf3)   # bench:throughput
have nstat || missing+=(iproute2)  # checksum error counters in the offload tests
have ethtool || missing+=(ethtool) # the offload tests turn the node's veth checksum offload off
have tcpdump || missing+=(tcpdump) # the outside checksum oracle of the rewrite tests, and the demo's REJECT capture
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]} (install them as root with apt-get); continuing without them" >&2
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
if [ -f binding.gyp ] && { [ ! -f build/Release/tun.node ] || [ dataplane/tun/tun.c -nt build/Release/tun.node ] ||
  [ ! -f build/Release/pin.node ] || [ dataplane/pin/pin.c -nt build/Release/pin.node ] || [ binding.gyp -nt build/Release/pin.node ]; }; then
  echo "setup: building the native addons (TUN, pinned memory)" >&2
  npx --no-install node-gyp rebuild >&2
fi
# the command line compiled to dist/ (bin/tunproxy.js runs the sources through tsx while it is stale)
node scripts/build-cli.mjs >&2 || echo "setup: could not build dist/ (the command line runs through tsx, slower to start)" >&2
if [ -d ../shared/tools/tun-echo ] && [ ! -x build/tun-echo/fwd ]; then
  make -s -C ../shared/tools/tun-echo OUT="$PWD/build/tun-echo" >&2 || echo "setup: could not build ../shared/tools/tun-echo (benchmarks will skip the C reference)" >&2
fi
