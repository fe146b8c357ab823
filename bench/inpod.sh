#!/usr/bin/env bash
# In-pod (shared mode) bench: client pod on n1 → server pod on n2 through two in-pod tunnels,
# against the direct path of the same pods in the same run, printed as one table with the
# targets (medians over --runs): iperf3 1 and 8 streams, CPU-s per GB of each tunnel and both,
# keep-alive and connection-per-request latency p50/p99, RSS growth per idle connection held
# through both tunnels, tunnel RSS idle and peak.
#
#   bench/inpod.sh [--seconds N] [--requests N] [--runs N] [--idle N] [--profile DIR]
#                  [--tunnel-env KEY=VALUE]...
#                  (root; needs ip, iptables, ss, iperf3, wrk; perf for --profile)
#
# --seconds: length of each iperf3 and wrk run (default 10); --requests: timed requests of the
# connection-per-request test (default 2000); --runs: runs of each path (default 3);
# --idle: idle connections held for the memory figure (default 10000); --profile DIR: one more
# 1-stream run with `perf record` on each tunnel, flat profiles printed and saved in DIR;
# --tunnel-env KEY=VALUE (repeatable): extra environment of both tunnels, to measure a runtime
# setting without a rebuild (e.g. --tunnel-env ZTUNNEL_WORKER_THREADS=1).
# Takes about 6 x --seconds x 2 x --runs plus setup.
# Builds the release binaries, then runs `nodetunnel-bench inpod`, which creates and removes its
# own network namespaces (named ntt<pid>-...); nothing touches the host netns.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench/inpod.sh: needs root (network namespaces, iptables)" >&2
    exit 1
fi
for tool in iperf3 wrk; do
    command -v "$tool" >/dev/null || { echo "bench/inpod.sh: $tool is not installed" >&2; exit 1; }
done

cargo build --release --quiet -p nodetunnel -p nodetunnel-testbed --bin nodetunnel --bin nodetunnel-bench \
    --bin nodetunnel-zds-agent
exec ./target/release/nodetunnel-bench inpod "$@"
