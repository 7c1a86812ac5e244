#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what is missing,
# then runs every Rust test (unit, scenarios, end to end against Apache Kafka,
# dashboards against Prometheus), the static checks of the Prometheus,
# Grafana and compose files, and a short fuzzing run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-test-deps.sh
cargo test --release
bash scripts/check-ops.sh
# A short fuzzing run of the decoder and the engine (the long one: docs/testing.md).
bash scripts/fuzz.sh 10
