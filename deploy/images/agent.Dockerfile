# syntax=docker/dockerfile:1.7
# The node agent. Build from the workspace root:
#   docker build -f deploy/images/agent.Dockerfile -t pillion/pillion-agent:0.1.0 .
# The build stage needs the eBPF toolchain (nightly rust-src, bpf-linker on LLVM 22);
# `cargo xtask setup` installs exactly what the project's CI uses, so the image and CI
# cannot drift apart.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo xtask setup \
 && cargo build --release --locked -p pillion-agent \
 && install -D target/release/pillion-agent /out/pillion-agent

# Runtime: the agent plus `mount`/`mountpoint` (util-linux, in the base) for the
# DaemonSet's bpffs init container. No shell tools beyond the base image.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pillion-agent /usr/local/bin/pillion-agent
ENTRYPOINT ["/usr/local/bin/pillion-agent"]
