# syntax=docker/dockerfile:1.7
# The chained CNI plugin and its installer (the DaemonSet's install-cni container).
# Build from the workspace root:
#   docker build -f deploy/images/cni.Dockerfile -t pillion/pillion-cni:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pillion-k8s --bin pillion-cni --bin pillion-cni-install \
 && install -D target/release/pillion-cni /out/pillion-cni \
 && install -D target/release/pillion-cni-install /out/pillion-cni-install

# The installer copies /opt/pillion/pillion-cni onto the node; it needs no shell.
FROM debian:bookworm-slim
COPY --from=build /out/pillion-cni /opt/pillion/pillion-cni
COPY --from=build /out/pillion-cni-install /usr/local/bin/pillion-cni-install
ENTRYPOINT ["/usr/local/bin/pillion-cni-install"]
