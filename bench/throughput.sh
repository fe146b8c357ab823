#!/usr/bin/env bash
# Single-stream TCP throughput, client pod → server pod on the two-node namespace topology:
# directly (no capture, no tunnels) and through two nodetunnels (HBONE), with the ratio.
#
#   bench/throughput.sh [--seconds N]      (root; needs ip, iptables, ss, iperf3)
#
# Builds the release binaries, then runs `nodetunnel-bench throughput`, which creates and
# removes its own network namespaces (named ntt<pid>-...); nothing touches the host netns.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench/throughput.sh: needs root (network namespaces, iptables)" >&2
    exit 1
fi
command -v iperf3 >/dev/null || { echo "bench/throughput.sh: iperf3 is not installed" >&2; exit 1; }

cargo build --release --quiet -p nodetunnel -p nodetunnel-testbed --bin nodetunnel --bin nodetunnel-bench
exec ./target/release/nodetunnel-bench throughput "$@"
