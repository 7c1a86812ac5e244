#!/usr/bin/env bash
# Installs what the tests need when it is missing: Debian packages for the
# build (librdkafka is compiled from source) and Prometheus/promtool, and the
# Tansu Kafka-protocol broker (cargo install; 10 to 25 minutes on 2 cores).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev prometheus python3-yaml; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v tansu >/dev/null 2>&1 && [ -z "${TANSU_BIN:-}" ]; then
  echo "installing tansu (Kafka-compatible broker for the end-to-end tests)"
  cargo install tansu --locked --features dynostore
fi
