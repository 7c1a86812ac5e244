#!/usr/bin/env bash
# Fuzzes the decoder and the engine with libFuzzer (`cargo fuzz`, targets in
# tests/fuzz) for SECONDS each (default 10), seeded from the scenario
# fixtures. The test command runs it short; a long run (docs/testing.md):
#   scripts/fuzz.sh 0 -runs=10000000
# Extra arguments go to libFuzzer. A crash stops it, non-zero, and leaves the
# input under tests/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:-10}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
# Seeds: every fixture record as a decoder input, and every scenario as an
# engine input (one line per record, as fuzz_targets/engine.rs reads them).
python3 - <<'PY'
import base64, json, os, pathlib
root = pathlib.Path("tests/fuzz/corpus")
for t in ("decode", "engine"):
    (root / t).mkdir(parents=True, exist_ok=True)
for case in sorted(pathlib.Path("tests/scenarios").iterdir()):
    lines = []
    for i, line in enumerate((case / "input.jsonl").read_text().splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        if "raw" in r:
            value = r["raw"].encode()
        elif "raw_base64" in r:
            value = base64.b64decode(r["raw_base64"])
        else:
            value = json.dumps(r["value"], separators=(",", ":")).encode()
        (root / "decode" / f"{case.name}-{i}").write_bytes(value)
        lines.append(r["topic"][0].encode() + value.replace(b"\n", b" "))
        lines.append(b"t")
    (root / "engine" / case.name).write_bytes(b"\n".join(lines + [b"c"]))
PY
for target in decode engine; do
    echo "fuzzing $target for ${secs}s"
    cargo fuzz run --fuzz-dir tests/fuzz -O -s none "$target" "tests/fuzz/corpus/$target" -- \
        -max_total_time="$secs" -max_len=70000 -rss_limit_mb=4096 -print_final_stats=1 "$@"
done
