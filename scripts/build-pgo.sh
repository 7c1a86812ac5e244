#!/usr/bin/env bash
# Builds `gmv` with profile-guided optimization, for production:
# target/pgo/gmv. Measured against the plain `cargo build --release` on the
# same machine, alternated in the same runs (docs/performance.md, section
# 000000000000000000000000): the job's loop spent 15 – 46% less CPU per
# event end to end, and the job read 12 – 88% more records a second.
#
# Three steps, about twice a release build's time:
#   1. the job and the core bench built with instrumentation;
#   2. both run on work like the job's: the core bench's engine with its
#      changelog (decoding, state, join, sums, commits), then `gmv demo` for
#      30 s (the loop, librdkafka's glue, the producer, the screen, metrics);
#   3. their profiles merged, and the job built again using them.
# The profile is made from this checkout's code each time, never kept: a
# profile of older code would silently stop applying where the code changed.
#
# Needs llvm-profdata of the same LLVM major version as rustc's
# (`rustc -vV`): Debian's `llvm-<major>` package or rustup's `llvm-tools`.
set -euo pipefail
cd "$(dirname "$0")/.."

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=""
for candidate in \
  "llvm-profdata-$major" \
  "/usr/lib/llvm-$major/bin/llvm-profdata" \
  "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"; do
  if command -v "$candidate" >/dev/null 2>&1; then
    profdata=$candidate
    break
  fi
done
if [ -z "$profdata" ]; then
  echo "build-pgo: needs llvm-profdata of LLVM $major (rustc's): install Debian's llvm-$major package or run \`rustup component add llvm-tools\`" >&2
  exit 1
fi

work=$PWD/target/pgo
rm -rf "$work/profiles"
mkdir -p "$work/profiles"

echo "build-pgo: 1/3 instrumented build"
export RUSTFLAGS="-Cprofile-generate=$work/profiles"
export CARGO_TARGET_DIR=$work/instrumented
cargo build --release --locked --bin gmv
# In the release profile, not the bench one, so the dependencies just built serve.
bench=$(cargo build --release --locked --bench core --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
if [ -z "$bench" ] || [ ! -x "$bench" ]; then
  echo "build-pgo: the core bench's executable was not found" >&2
  exit 1
fi

echo "build-pgo: 2/3 training runs"
# Each process writes its own profile (%p: its pid) into the folder.
export LLVM_PROFILE_FILE=$work/profiles/%p.profraw
ENGINE_ONLY=1 CHANGELOG=1 "$bench" --bench
"$work/instrumented/release/gmv" demo --seconds 30 >/dev/null
unset LLVM_PROFILE_FILE
"$profdata" merge -o "$work/gmv.profdata" "$work/profiles"

echo "build-pgo: 3/3 optimized build"
export RUSTFLAGS="-Cprofile-use=$work/gmv.profdata"
export CARGO_TARGET_DIR=$work/optimized
cargo build --release --locked --bin gmv
cp "$work/optimized/release/gmv" "$work/gmv"
echo "build-pgo: done: $work/gmv"
