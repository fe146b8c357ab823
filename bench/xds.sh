#!/usr/bin/env bash
# Control-plane scale bench: a mesh of 100,000 workloads + 10,000 services served by
# nodetunnel-control to one tunnel over delta xDS. Prints time to the first full sync, tunnel
# memory, and single-workload update latency (file write → tunnel, and the tunnel's own apply
# time), against the same mesh loaded from a file by the same tunnel in the same run.
#
#   bench/xds.sh [--workloads N] [--services N] [--updates N]   (root; needs ip)
#
# Builds the release binaries, then runs `nodetunnel-bench xds`, which creates and removes its
# own network namespaces (named ntt<pid>-...); nothing touches the host netns.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench/xds.sh: needs root (network namespaces)" >&2
    exit 1
fi

cargo build --release --quiet -p nodetunnel -p nodetunnel-testbed \
    --bin nodetunnel --bin nodetunnel-control --bin nodetunnel-bench
exec ./target/release/nodetunnel-bench xds "$@"
