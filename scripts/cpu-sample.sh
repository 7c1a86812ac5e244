#!/bin/bash
# Prints once a second the CPU the broker's JVM, the gmv job and the end_to_end
# bench took (100 = one core) and how busy the machine was (200 = both cores
# of a 2-core machine), from /proc: what docs/performance.md quotes beside its
# latency runs. Run it beside a bench; stop it with Ctrl-C.
set -u
hz=$(getconf CLK_TCK)
ticks() { # summed user+system ticks of the processes matching $1
  local t=0 p s
  for p in $(pgrep -f "$1"); do
    s=($(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null)) || continue
    t=$((t + ${s[0]:-0} + ${s[1]:-0}))
  done
  echo "$t"
}
machine() { local _ a b c d e f g h; read -r _ a b c d e f g h _ < /proc/stat; echo "$((a+b+c+d+e+f+g+h)) $((d+e))"; }
cores=$(nproc)
pj=$(ticks kafka.Kafka); pg=$(ticks "gmv run"); pb=$(ticks deps/end_to_end); read -r pt pi < <(machine)
while sleep 1; do
  j=$(ticks kafka.Kafka); g=$(ticks "gmv run"); b=$(ticks deps/end_to_end); read -r t i < <(machine)
  dt=$((t - pt)); busy=$(( dt > 0 ? (dt - (i - pi)) * 100 * cores / dt : 0 ))
  echo "$(date +%T) broker=$(( (j - pj) * 100 / hz )) gmv=$(( (g - pg) * 100 / hz )) bench=$(( (b - pb) * 100 / hz )) busy=$busy"
  pj=$j; pg=$g; pb=$b; pt=$t; pi=$i
done
