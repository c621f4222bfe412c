# syntax=docker/dockerfile:1.7
# The waypoint (per-namespace L7 proxy). Build from the workspace root:
#   docker build -f deploy/images/waypoint.Dockerfile -t pillion/pillion-waypoint:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pillion-waypoint --bin pillion-waypoint \
 && install -D target/release/pillion-waypoint /out/pillion-waypoint

# No root, no shell needed: it only listens and dials.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pillion-waypoint /usr/local/bin/pillion-waypoint
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pillion-waypoint"]
