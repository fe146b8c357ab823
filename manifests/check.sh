#!/usr/bin/env bash
# Renders every overlay with `kubectl kustomize` and validates every object against the
# Kubernetes OpenAPI schemas (kubernetes-validate --strict: unknown fields are errors too).
# What a schema cannot see (env variables the binaries read, probe ports, RBAC against the
# agent's real API calls) is checked by `cargo test -p nodetunnel --test manifests` and
# `cargo test -p nodetunnel-cni --test agent`.
#
# usage: manifests/check.sh            (needs kubectl and `pip install kubernetes-validate==1.37.0`)
# KUBERNETES_VERSION (default 1.33.0) is the API version validated against: the k8s-openapi
# version the agent is built with (cni-plugin/Cargo.toml, feature v1_33).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${KUBERNETES_VERSION:-1.33.0}"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "manifests/check.sh: kubectl not found" >&2
  exit 1
fi
# Run as a module: a console script pip just installed may not be on PATH yet (pyenv shims
# appear only after a rehash, ~/.local/bin may be missing from PATH).
validate=(python3 -m kubernetes_validate)
if ! "${validate[@]}" --version >/dev/null 2>&1; then
  echo "manifests/check.sh: kubernetes-validate not found (pip install kubernetes-validate==1.37.0)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here" "$work/manifests"
# The standalone overlay reads per-cluster secrets (make-secrets.sh); placeholders are enough
# for the schemas, which see only that a Secret has string data.
secrets="$work/manifests/overlays/standalone/secrets"
rm -rf "$secrets"
mkdir -p "$secrets/ca"
for file in ca-cert ca-key root-cert cert-chain; do
  echo "placeholder" > "$secrets/ca/$file.pem"
done
echo "# placeholder" > "$secrets/control-tokens.txt"
echo "node-a=placeholder" > "$secrets/node-tokens.env"

status=0
for overlay in "$work"/manifests/overlays/*/; do
  name=$(basename "$overlay")
  rendered="$work/$name.yaml"
  if ! kubectl kustomize "$overlay" > "$rendered"; then
    echo "manifests/check.sh: overlays/$name does not render" >&2
    status=1
    continue
  fi
  objects=$(grep -c '^kind:' "$rendered" || true)
  if "${validate[@]}" --strict --quiet --kubernetes-version "$version" "$rendered"; then
    echo "overlays/$name: $objects objects valid against Kubernetes $version"
  else
    echo "manifests/check.sh: overlays/$name: objects do not validate (above)" >&2
    status=1
  fi
done
exit "$status"
