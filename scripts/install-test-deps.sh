#!/usr/bin/env bash
# Installs what the tests need when it is missing: Debian packages for the
# build (librdkafka is compiled from source), Prometheus/promtool, Chromium,
# Firefox ESR and Node.js for the browser tests, a JDK 17 and Maven for Apache
# Kafka, whose jars Maven then resolves from Maven Central (tests/kafka/pom.xml;
# kept in ~/.m2 after the first time), and puppeteer-core from the npm registry
# (tests/browser/package-lock.json). gdb: a failed end-to-end test prints the
# stacks of the job's threads with it.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev prometheus python3-yaml maven chromium firefox-esr gdb; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Node.js and npm, for the browser test: any already on PATH will do.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# Apache Kafka 4 needs Java 17 or later; any JDK already on PATH will do.
if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
  missing+=(openjdk-17-jdk-headless)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "resolving Apache Kafka with Maven (tests/kafka/pom.xml)"
mkdir -p target
mvn -q -B -f tests/kafka/pom.xml dependency:build-classpath \
  -Dmdep.outputFile="$PWD/target/kafka-classpath.txt"

echo "installing puppeteer-core (tests/browser)"
npm ci --prefix tests/browser --no-audit --no-fund --silent
