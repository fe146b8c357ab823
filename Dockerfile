# The one image the manifests run (manifests/): nodetunnel, nodetunnel-cni-agent,
# nodetunnel-cni and nodetunnel-control, each started by its name.
#
#   docker build -t nodetunnel:0.1.0 .
#
# Not built in CI. The toolchain is the one the workspace is tested with.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The CNI plugin is copied onto the node and run by the node's container runtime, with the
# host's C library, which may be older than this image's: it is linked statically (musl).
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(uname -m)-unknown-linux-musl"
COPY . .
RUN cargo build --release --locked \
        --bin nodetunnel --bin nodetunnel-cni-agent --bin nodetunnel-control \
    && cargo build --release --locked --target "$(uname -m)-unknown-linux-musl" \
        --bin nodetunnel-cni \
    && mkdir -p /out \
    && cp target/release/nodetunnel target/release/nodetunnel-cni-agent \
        target/release/nodetunnel-control "target/$(uname -m)-unknown-linux-musl/release/nodetunnel-cni" \
        /out/

FROM debian:bookworm-slim
# iptables-save/-restore and ipset: the agent writes the in-pod and host rules with them.
# Debian's iptables is the nft variant; on a node whose kube-proxy uses legacy iptables, point
# the alternatives at iptables-legacy in a derived image (the agent does not detect it).
# ca-certificates: XDS_ROOT_CA=SYSTEM / CA_ROOT_CA=SYSTEM.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ipset ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The agent installs the plugin from beside its own binary (CNI_PLUGIN_BINARY's default).
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT []
CMD ["nodetunnel"]
