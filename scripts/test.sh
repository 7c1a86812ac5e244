#!/usr/bin/env bash
# The project's one test command (README, .ci/run): every Rust test (unit,
# scenario, end-to-end against Tansu, dashboards against Prometheus), then the
# static checks of the Prometheus, Grafana and compose files.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --release
bash scripts/check-ops.sh
