#!/usr/bin/env bash
# Policy bench, both halves:
# 1. the cost of one authorization decision with 0, 1, 100 and 1,000 policies applying to the
#    workload, plaintext and mTLS client (`cargo bench --bench policy_decision`, in-process);
# 2. inbound HBONE connections per second (a new connection per request, 1 and 8 clients) to a
#    workload with 100 policies against none, alternating in one run, with the direct rate
#    (`nodetunnel-bench policy`, two-node dedicated-mode topology).
#
#   bench/policy.sh [--seconds N] [--rounds N]   (root; needs ip, iptables, ss)
#
# --seconds: length of each timed run (default 5); --rounds: how often each configuration is
# measured (default 3). Takes about 4 x rounds x seconds plus setup.
# Builds the release binaries first; the connection bench creates and removes its own network
# namespaces (named ntt<pid>-...); nothing touches the host netns.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench/policy.sh: needs root (network namespaces, iptables)" >&2
    exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
cargo bench --quiet --bench policy_decision
cargo build --release --quiet -p nodetunnel -p nodetunnel-testbed --bin nodetunnel --bin nodetunnel-bench
exec "$target/release/nodetunnel-bench" policy "$@"
