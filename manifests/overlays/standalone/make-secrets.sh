#!/usr/bin/env bash
# Writes the secrets the standalone overlay's kustomization reads, for this cluster's nodes:
#   secrets/ca/{ca-cert,ca-key,root-cert,cert-chain}.pem  the mesh root CA (nodetunnel generate-ca)
#   secrets/control-tokens.txt                             `<token> node=<node> tunnel on <node>`
#   secrets/node-tokens.env                                `<node>=<token>`, the same tokens
#
# usage: make-secrets.sh [--out DIR] NODE...
#   e.g. make-secrets.sh $(kubectl get nodes -o name | sed 's|node/||')
#
# Run it again after adding nodes: the CA and the tokens of nodes already listed are kept (a new
# root would cut every tunnel off until all restart), new nodes get new tokens, and nodes not
# named any more lose theirs. The CA is made by `nodetunnel generate-ca`: $NODETUNNEL, else
# `nodetunnel` on PATH, else the repository's target/release or target/debug build.
# TRUST_DOMAIN (default cluster.local) must match the settings ConfigMap's trust-domain.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/secrets"
if [ "${1-}" = "--out" ]; then
  out="$2"
  shift 2
fi
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [--out DIR] NODE..." >&2
  exit 2
fi
for node in "$@"; do
  # A node name becomes a Secret key (and a file name in the tunnel's token mount).
  if ! [[ "$node" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]]; then
    echo "$0: $node: not a Kubernetes node name (lower-case letters, digits, '-' and '.')" >&2
    exit 2
  fi
done

find_nodetunnel() {
  if [ -n "${NODETUNNEL-}" ]; then echo "$NODETUNNEL"; return; fi
  if command -v nodetunnel >/dev/null 2>&1; then command -v nodetunnel; return; fi
  local repo="$here/../../.."
  for build in release debug; do
    if [ -x "$repo/target/$build/nodetunnel" ]; then echo "$repo/target/$build/nodetunnel"; return; fi
  done
  echo "$0: no nodetunnel binary to generate the CA with: set NODETUNNEL=<path>, or run" >&2
  echo "  cargo build --release --bin nodetunnel" >&2
  exit 1
}

mkdir -p "$out"
chmod 700 "$out"
if [ -s "$out/ca/root-cert.pem" ]; then
  echo "keeping the CA in $out/ca" >&2
else
  mkdir -p "$out/ca"
  "$(find_nodetunnel)" generate-ca "$out/ca" --trust-domain "${TRUST_DOMAIN:-cluster.local}"
fi

# Tokens already issued, by node.
declare -A tokens=()
if [ -f "$out/node-tokens.env" ]; then
  while IFS='=' read -r node token; do
    [ -n "$node" ] && tokens[$node]=$token
  done < "$out/node-tokens.env"
fi
umask 077
: > "$out/node-tokens.env.new"
{
  echo "# <token> node=<node-name> [label]; written by make-secrets.sh"
} > "$out/control-tokens.txt.new"
for node in "$@"; do
  token=${tokens[$node]-}
  if [ -z "$token" ]; then
    token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  fi
  echo "$node=$token" >> "$out/node-tokens.env.new"
  echo "$token node=$node tunnel on $node" >> "$out/control-tokens.txt.new"
done
mv "$out/node-tokens.env.new" "$out/node-tokens.env"
mv "$out/control-tokens.txt.new" "$out/control-tokens.txt"
echo "wrote the secrets for $# node(s) to $out" >&2
