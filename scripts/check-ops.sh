#!/usr/bin/env bash
# Static checks of the observability and deployment assets:
#   grafana/prometheus/    promtool check config, check rules, test rules
#   grafana/dashboards/    dashboards parse, every panel queries datasource
#                          uid "prometheus" with non-empty targets, every expr
#                          is valid PromQL over the metrics of docs/metrics.md
#   grafana/provisioning/  datasource and dashboard provider
#   grafana/alertmanager/  config structure
#   docker-compose.yml     compose file parses, every mounted host path and
#                          every build context / Dockerfile (resolved relative
#                          to its context) it references exists
#   scripts/Dockerfile, scripts/Dockerfile.dockerignore
#                          multi-stage, non-root build; ignore file (BuildKit
#                          reads <Dockerfile>.dockerignore; context is the
#                          repo root) excludes target and .git
#
# Usage: scripts/check-ops.sh        (from anywhere; runs at the repo root)
# Needs: bash, python3, promtool (Prometheus 2.x). PyYAML is used when
# importable; without it a simpler fallback parser is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failures=$((failures + 1)); }
info() { printf 'INFO  %s\n' "$1"; }

# Run a command; print PASS/FAIL with its label and, on failure, its output.
check() {
  local label=$1; shift
  local out
  if out=$("$@" 2>&1); then
    pass "$label"
  else
    fail "$label"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------
promtool=$(command -v promtool || true)
[[ -z $promtool && -x /usr/bin/promtool ]] && promtool=/usr/bin/promtool
if [[ -z $promtool ]]; then
  fail "promtool not found: install Prometheus' promtool to check grafana/prometheus/"
else
  info "using $($promtool --version 2>&1 | head -n 1)"
  # rule_files are resolved relative to each file's directory, so these work
  # from the repo root as they do in the container (/etc/prometheus).
  check "promtool check config grafana/prometheus/prometheus.yml" \
    "$promtool" check config grafana/prometheus/prometheus.yml
  check "promtool check rules grafana/prometheus/alerts.yml" \
    "$promtool" check rules grafana/prometheus/alerts.yml
  check "promtool test rules grafana/prometheus/alerts.test.yml" \
    "$promtool" test rules grafana/prometheus/alerts.test.yml
fi

# ---------------------------------------------------------------------------
# Grafana dashboards: JSON syntax
# ---------------------------------------------------------------------------
shopt -s nullglob
dashboards=(grafana/dashboards/*.json)
shopt -u nullglob
if (( ${#dashboards[@]} == 0 )); then
  fail "no dashboards under grafana/dashboards"
fi
for f in "${dashboards[@]}"; do
  check "$f is valid JSON" python3 -m json.tool "$f"
done

# ---------------------------------------------------------------------------
# Everything else is checked by one Python program. It prints PASS/FAIL lines
# itself and writes the PromQL expressions of the dashboards to a rule file
# for promtool.
# ---------------------------------------------------------------------------
set +e
python3 - "$tmp" "${dashboards[@]}" <<'PY'
import json
import os
import re
import sys

tmp = sys.argv[1]
dashboards = sys.argv[2:]
failures = 0


def result(ok, label, detail=()):
    global failures
    print(("PASS  " if ok else "FAIL  ") + label)
    if not ok:
        failures += 1
        for d in detail:
            print("      " + d)


try:
    import yaml  # PyYAML

    def load_yaml(path):
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    have_yaml = True
except ImportError:
    have_yaml = False
    load_yaml = None
print("INFO  PyYAML " + ("available" if have_yaml else "not importable: fallback parsers"))

# --- metric names documented in docs/metrics.md ------------------------------
with open("docs/metrics.md", encoding="utf-8") as f:
    documented = set(re.findall(r"`(gmv_[a-z0-9_]+)`", f.read()))
result(bool(documented), f"docs/metrics.md documents {len(documented)} gmv_ metrics")

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and",
            "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr):
    """Metric names used by a PromQL expression (a small lexer, not a parser)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                     # matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                    # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
               " ", e)                                                   # label lists
    e = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)         # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("("):        # function call
            continue
        if m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def unknown_metrics(expr):
    bad = []
    for n in sorted(metric_names(expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n == "up" or n.startswith("process_") or n in documented or base in documented:
            continue
        bad.append(n)
    return bad


# --- dashboards: structure -----------------------------------------------------
exprs = {}  # expr -> first place it was seen


def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        for sub in p.get("panels", []) or []:  # collapsed rows
            yield sub


for path in dashboards:
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except Exception as e:  # reported by json.tool above too
        result(False, f"{path}: cannot load ({e})")
        continue
    problems = []
    if dash.get("schemaVersion") != 39:
        problems.append(f"schemaVersion is {dash.get('schemaVersion')!r}, want 39")
    if not dash.get("uid") or not dash.get("title"):
        problems.append("dashboard has no uid or title")
    ids = []
    n_panels = n_targets = 0
    for p in panels_of(dash):
        where = f"panel {p.get('id')!r} {p.get('title')!r}"
        if p.get("type") == "row":
            continue
        n_panels += 1
        ids.append(p.get("id"))
        if not isinstance(p.get("id"), int):
            problems.append(f"{where}: no integer id")
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: gridPos incomplete")
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") != "prometheus":
            problems.append(f"{where}: datasource is {ds!r}, want uid 'prometheus'")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        for t in targets:
            n_targets += 1
            tds = t.get("datasource")
            if tds is not None and (not isinstance(tds, dict) or tds.get("uid") != "prometheus"):
                problems.append(f"{where} target {t.get('refId')}: datasource {tds!r}")
            expr = (t.get("expr") or "").strip()
            if not expr:
                problems.append(f"{where} target {t.get('refId')}: empty expr")
                continue
            exprs.setdefault(expr, f"{path} {where}")
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            if (a.get("datasource") or {}).get("uid") != "prometheus":
                problems.append(f"annotation {a.get('name')!r}: datasource not 'prometheus'")
            exprs.setdefault(a["expr"].strip(), f"{path} annotation {a.get('name')!r}")
    dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dup:
        problems.append(f"duplicate panel ids {dup}")
    result(not problems,
           f"{path}: {n_panels} panels, {n_targets} targets, all on datasource uid prometheus",
           problems)

# --- dashboards: expressions ----------------------------------------------------
bad_vars, bad_names = [], []
for expr, where in exprs.items():
    for v in re.findall(r"\$\{?\w+\}?", expr):
        if v.strip("${}") != "__rate_interval":
            bad_vars.append(f"{where}: variable {v} in {expr!r}")
    for n in unknown_metrics(expr):
        bad_names.append(f"{where}: metric {n!r} is not in docs/metrics.md: {expr!r}")
result(not bad_vars, "dashboard exprs use no Grafana variable but $__rate_interval", bad_vars)
result(not bad_names, f"dashboard exprs ({len(exprs)}) only use metrics of docs/metrics.md, "
       "up and process_*", bad_names)

# Recording rules for promtool to parse ($__rate_interval as a fixed 1m).
with open(os.path.join(tmp, "dashboard-exprs.yml"), "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard-exprs\n    rules:\n")
    for i, expr in enumerate(exprs):
        e = expr.replace("$__rate_interval", "1m")
        f.write(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(e)}\n")

# --- alert rules: metric names ---------------------------------------------------
if have_yaml:
    rules = [r for g in load_yaml("grafana/prometheus/alerts.yml")["groups"] for r in g["rules"]]
    bad = []
    for r in rules:
        bad += [f"{r.get('alert')}: metric {n!r} not in docs/metrics.md"
                for n in unknown_metrics(r["expr"])]
        if not r.get("labels", {}).get("severity"):
            bad.append(f"{r.get('alert')}: no labels.severity")
        ann = r.get("annotations", {})
        if not ann.get("summary") or not ann.get("description"):
            bad.append(f"{r.get('alert')}: annotations summary/description missing")
    result(not bad, f"grafana/prometheus/alerts.yml: {len(rules)} rules use documented metrics, "
           "have severity, summary and description", bad)

    # Every rule has a firing and a quiet case in alerts.test.yml.
    tests = load_yaml("grafana/prometheus/alerts.test.yml")["tests"]
    fires, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    names = [r["alert"] for r in rules if "alert" in r]
    missing = [f"{n}: no firing case" for n in names if n not in fires]
    missing += [f"{n}: no quiet case" for n in names if n not in quiet]
    result(not missing, "grafana/prometheus/alerts.test.yml covers every alert (fires and quiet)",
           missing)
else:
    print("INFO  alert rule metric-name and test-coverage checks skipped (need PyYAML)")

# --- Grafana provisioning ------------------------------------------------------
ds_file = "grafana/provisioning/datasources/prometheus.yml"
db_file = "grafana/provisioning/dashboards/dashboards.yml"
if have_yaml:
    ds = load_yaml(ds_file) or {}
    ok = any(d.get("uid") == "prometheus" and d.get("type") == "prometheus"
             and d.get("url") == "http://prometheus:9090" for d in ds.get("datasources", []))
    result(ok, f"{ds_file}: datasource uid prometheus at http://prometheus:9090")
    db = load_yaml(db_file) or {}
    ok = any(p.get("type") == "file"
             and (p.get("options") or {}).get("path") == "/var/lib/grafana/dashboards"
             for p in db.get("providers", []))
    result(ok, f"{db_file}: file provider at /var/lib/grafana/dashboards")
else:
    for path, needle in ((ds_file, "uid: prometheus"),
                         (db_file, "path: /var/lib/grafana/dashboards")):
        with open(path, encoding="utf-8") as f:
            result(needle in f.read(), f"{path}: contains {needle!r}")

# --- Alertmanager ----------------------------------------------------------------
am_file = "grafana/alertmanager/alertmanager.yml"
if have_yaml:
    am = load_yaml(am_file) or {}
    receivers = {r.get("name") for r in am.get("receivers", [])}
    problems = []

    def walk(route, where):
        if route.get("receiver") and route["receiver"] not in receivers:
            problems.append(f"{where}: receiver {route['receiver']!r} is not defined")
        for i, sub in enumerate(route.get("routes", []) or []):
            walk(sub, f"{where}.routes[{i}]")

    route = am.get("route") or {}
    if not route.get("receiver"):
        problems.append("route has no default receiver")
    walk(route, "route")
    result(not problems, f"{am_file}: route and receivers are consistent", problems)
else:
    with open(am_file, encoding="utf-8") as f:
        text = f.read()
    result("route:" in text and "receivers:" in text, f"{am_file}: has route and receivers")

sys.exit(min(failures, 100))
PY
failures=$((failures + $?))
set -e

if [[ -n $promtool ]]; then
  check "dashboard exprs parse as PromQL (promtool check rules)" \
    "$promtool" check rules "$tmp/dashboard-exprs.yml"
fi

# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------
compose=docker-compose.yml
if [[ ! -f $compose ]]; then
  fail "$compose missing"
else
  # Parse it: PyYAML, else `docker compose config` (needs no engine), else a
  # line-based fallback that checks the structure. The same step extracts the
  # host paths and build contexts it references, one "kind<TAB>path" a line.
  refs=$tmp/compose-refs
  if python3 -c 'import yaml' 2>/dev/null; then
    parser="PyYAML"
    status=0
    python3 - "$compose" > "$refs" 2> "$tmp/compose-err" <<'PY' || status=$?
import os, sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    doc = yaml.safe_load(f)
services = doc.get("services") or {}
if not services:
    sys.exit("no services")
for name, svc in services.items():
    build = svc.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        # Compose resolves a relative dockerfile against the build context.
        print(f"context\t{name}\t{ctx}")
        print(f"dockerfile\t{name}\t{os.path.normpath(os.path.join(ctx, dockerfile))}")
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            src = v.get("source", "") if v.get("type") == "bind" else ""
        else:
            src = v.split(":")[0]
        if src.startswith((".", "/", "~")):
            print(f"mount\t{name}\t{src}")
    print(f"service\t{name}\t-")
PY
  elif docker compose version > /dev/null 2>&1 \
       && docker compose -f "$compose" config -q > "$tmp/compose-err" 2>&1; then
    parser="docker compose config"
    status=0
    docker compose -f "$compose" config --format json 2>/dev/null | python3 -c '
import json, os, sys
doc = json.load(sys.stdin)
for name, svc in doc.get("services", {}).items():
    b = svc.get("build")
    if b:
        ctx = b["context"]
        print("context", name, ctx, sep="\t")
        print("dockerfile", name, os.path.join(ctx, b.get("dockerfile", "Dockerfile")), sep="\t")
    for v in svc.get("volumes", []):
        if v.get("type") == "bind":
            print("mount", name, v["source"], sep="\t")
    print("service", name, "-", sep="\t")
' > "$refs" || status=$?
  else
    parser="fallback line parser"
    status=0
    python3 - "$compose" > "$refs" 2> "$tmp/compose-err" <<'PY' || status=$?
import os, re, sys
# Minimal structural reading of a block-style compose file: top-level keys,
# the services, their volumes and build entries.
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
top, service, section, services = None, None, None, []
for no, raw in enumerate(lines, 1):
    if not raw.strip() or raw.lstrip().startswith("#"):
        continue
    if "\t" in raw[: len(raw) - len(raw.lstrip())]:
        sys.exit(f"line {no}: tab in indentation")
    indent = len(raw) - len(raw.lstrip())
    text = raw.strip()
    if indent == 0:
        if not re.match(r"^[\w.-]+:", text):
            sys.exit(f"line {no}: expected a top-level key")
        top, service, section = text.split(":")[0], None, None
    elif top == "services" and indent == 2 and text.endswith(":"):
        service, section = text[:-1], None
        services.append(service)
        print(f"service\t{service}\t-")
    elif service and indent == 4:
        key = text.split(":")[0]
        section = key
        m = re.match(r"build:\s*(\S+)$", text)
        if m:
            print(f"context\t{service}\t{m.group(1)}")
            print(f"dockerfile\t{service}\t{os.path.normpath(os.path.join(m.group(1), 'Dockerfile'))}")
    elif service and section == "volumes" and text.startswith("- "):
        src = text[2:].strip().strip("\"'").split(":")[0]
        if src.startswith((".", "/", "~")):
            print(f"mount\t{service}\t{src}")
# build: blocks given as an anchor (x-...: &name) merged with <<: *name
# (dockerfile is relative to the context).
for m in re.finditer(r"context:\s*(\S+)(?:\s*\n\s*dockerfile:\s*(\S+))?", "\n".join(lines)):
    ctx = m.group(1).strip("\"'")
    dockerfile = (m.group(2) or "Dockerfile").strip("\"'")
    print(f"context\t(anchor)\t{ctx}")
    print(f"dockerfile\t(anchor)\t{os.path.normpath(os.path.join(ctx, dockerfile))}")
if not services:
    sys.exit("no services found")
PY
  fi
  if [[ $status -eq 0 ]]; then
    pass "$compose parses ($parser): services $(awk -F'\t' '$1=="service"{printf "%s ", $2}' "$refs")"
  else
    fail "$compose does not parse ($parser)"
    sed 's/^/      /' "$tmp/compose-err"
  fi

  absent=()
  for svc in kafka topics gmv generator prometheus alertmanager grafana; do
    if ! awk -F'\t' -v s="$svc" '$1=="service" && $2==s {found=1} END {exit !found}' "$refs"; then
      absent+=("$svc")
    fi
  done
  if (( ${#absent[@]} == 0 )); then
    pass "$compose: services kafka topics gmv generator prometheus alertmanager grafana present"
  else
    fail "$compose: services missing: ${absent[*]}"
  fi

  while IFS=$'\t' read -r kind svc path; do
    case $kind in
      mount)
        if [[ -e $path ]]; then pass "$compose: $svc mounts $path (exists)"
        else fail "$compose: $svc mounts $path, which does not exist"; fi ;;
      context)
        if [[ -d $path ]]; then pass "$compose: $svc builds from context $path (exists)"
        else fail "$compose: $svc build context $path does not exist"; fi ;;
      dockerfile)
        if [[ -f $path ]]; then pass "$compose: $svc Dockerfile $path (exists)"
        else fail "$compose: $svc Dockerfile $path does not exist"; fi ;;
    esac
  done < <(sort -u "$refs")
fi

# ---------------------------------------------------------------------------
# scripts/Dockerfile / scripts/Dockerfile.dockerignore
# ---------------------------------------------------------------------------
# The build context is the repo root; BuildKit reads the ignore file next to
# the Dockerfile (<Dockerfile>.dockerignore), not ./.dockerignore.
dockerfile=scripts/Dockerfile
dockerignore=scripts/Dockerfile.dockerignore
if [[ -f $dockerfile ]] \
   && grep -q '^FROM rust:1-bookworm AS builder' "$dockerfile" \
   && grep -q '^FROM debian:bookworm-slim' "$dockerfile" \
   && grep -q '^ENTRYPOINT \["gmv"\]' "$dockerfile" \
   && grep -q '^USER ' "$dockerfile"; then
  pass "$dockerfile: multi-stage, non-root, ENTRYPOINT gmv"
else
  fail "$dockerfile missing or not the expected multi-stage build"
fi
# Every COPY source of the build stage (not --from=) exists in the context.
missing_copy=()
while read -r src; do
  [[ $src == . || -e $src ]] || missing_copy+=("$src")
done < <(awk '/^COPY / && !/--from=/ { for (i = 2; i < NF; i++) print $i }' "$dockerfile" 2>/dev/null)
if (( ${#missing_copy[@]} == 0 )); then
  pass "$dockerfile: every COPY source exists relative to the repo-root context"
else
  fail "$dockerfile: COPY sources missing from the repo-root context: ${missing_copy[*]}"
fi
if [[ -f $dockerignore ]] && grep -qx 'target' "$dockerignore" && grep -qx '.git' "$dockerignore"; then
  pass "$dockerignore excludes target and .git"
else
  fail "$dockerignore missing or does not exclude target and .git"
fi
if [[ -e .dockerignore ]]; then
  fail ".dockerignore at the repo root: the ignore file is $dockerignore"
fi

echo
if (( failures > 0 )); then
  echo "check-ops: $failures check(s) FAILED"
  exit 1
fi
echo "check-ops: all checks passed"
