#!/usr/bin/env bash
# DNS proxy bench: queries per second from a pod through its DNS capture rules, answered by
# the tunnel from the mesh state, forwarded to a resolver stand-in, and the stand-in asked
# directly, in one run (`nodetunnel-bench dns`, two-node shared-mode topology).
#
#   bench/dns.sh [--seconds N] [--window N]   (root; needs ip, iptables)
#
# Builds the release binaries first; creates and removes its own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench/dns.sh: needs root (network namespaces, iptables)" >&2
    exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p nodetunnel -p nodetunnel-testbed --bin nodetunnel --bin nodetunnel-bench --bin nodetunnel-zds-agent
exec "$target/release/nodetunnel-bench" dns "$@"
