# The Grape image: `grape` (the node) and `grape-operator`, on Debian bookworm.
#
#   docker build -t grape-vector-db .                      # compiles in the official Rust image
#   docker build -t grape-vector-db --target prebuilt .    # takes dist/grape and
#                                                           # dist/grape-operator instead
#
# `--target prebuilt` stops before the Rust stage, so it works with the classic builder and
# without pulling the Rust image. RUNTIME_IMAGE lets a machine that cannot pull use a local
# bookworm base (tests/compose/run.sh does).
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librocksdb7.8 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 grape \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/grape-vector-db --no-create-home grape \
 && mkdir -p /var/lib/grape-vector-db /etc/grape-vector-db \
 && chown grape:grape /var/lib/grape-vector-db
USER 10001:10001
VOLUME /var/lib/grape-vector-db
EXPOSE 8080 9000 9091
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS http://localhost:8080/health || exit 1
ENTRYPOINT ["grape"]
CMD ["--config", "/etc/grape-vector-db/server.yaml"]

# Binaries built outside (cargo build --release --bin grape --bin grape-operator; cp to dist/).
FROM runtime-base AS prebuilt
COPY dist/grape dist/grape-operator /usr/local/bin/

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librocksdb-dev libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu
RUN cargo build --release --locked --bin grape --bin grape-operator \
 && mkdir -p /out && cp target/release/grape target/release/grape-operator /out/

FROM runtime-base AS runtime
COPY --from=builder /out/grape /out/grape-operator /usr/local/bin/
