# syntax=docker/dockerfile:1.7
# The CA server (Istio CA gRPC API on 15012). Build from the workspace root:
#   docker build -f deploy/images/ca.Dockerfile -t pillion/pillion-ca:0.1.0 .
# It builds the `pillion-ca` binary, which wraps mesh::ca::server with the Kubernetes
# authorizer (TokenReview, node check) — see docs/kubernetes.md for its status.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pillion-ca \
 && install -D target/release/pillion-ca /out/pillion-ca

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pillion-ca /usr/local/bin/pillion-ca
# Matches runAsUser in the CA Deployment.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pillion-ca"]
