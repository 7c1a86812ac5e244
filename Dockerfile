# syntax=docker/dockerfile:1
#
# Image of the gmv job (also used for `gmv topics` and `gmv generate`).
#   docker build -t gmv .
#   docker run --rm -p 9100:9100 -e GMV_KAFKA__BROKERS=kafka:9092 gmv run

# ---------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# librdkafka is built from source by the rdkafka-sys crate with its own
# configure script (no cmake): it needs a C toolchain, perl and python3, and
# links OpenSSL, zlib and Cyrus SASL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config python3 perl \
      libssl-dev zlib1g-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, against stub sources, so that editing the job's code
# does not rebuild librdkafka and the other crates. Best effort: if the stub
# build fails (e.g. the manifest gained a target the stubs do not cover), the
# full build below still does everything.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(sed -n '/^\[\[bench\]\]/,/^name/ s/^name *= *"\(.*\)".*/\1/p' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && (cargo build --release --locked \
     || echo "dependency pre-build failed; the full build follows") \
 && rm -rf src benches

# The job itself. Touch the crate roots so cargo does not mistake the copied
# sources (older mtimes) for the stubs it already built.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/gmv --help > /dev/null

# ---------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates libsasl2-2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gmv \
 && useradd --system --uid 10001 --gid gmv --home-dir /var/lib/gmv --create-home \
      --shell /usr/sbin/nologin gmv

COPY --from=builder /app/target/release/gmv /usr/local/bin/gmv

USER gmv:gmv
WORKDIR /var/lib/gmv

# Prometheus metrics and /healthz (docs/metrics.md).
EXPOSE 9100

ENTRYPOINT ["gmv"]
CMD ["run"]
