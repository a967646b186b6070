#!/usr/bin/env bash
# Flame graphs of the produce and consume paths (docs/flamegraphs/, referenced from
# docs/BENCHMARKS.md): builds release, starts a fresh single-node `sluice dev`, and samples
# the server with `perf record --call-graph dwarf` for SECS seconds in the middle of an
# acks=all produce run and of a catch-up consume of what it wrote; folds the samples with
# inferno (installed once into .tools/inferno with `cargo install`). Needs perf and the
# right to profile (root, or kernel.perf_event_paranoid <= 1).
# Usage: scripts/bench-flame.sh [SECS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
command -v perf >/dev/null || { echo "error: perf is needed (Debian: linux-perf)" >&2; exit 1; }
inferno=.tools/inferno/bin
if [ ! -x "$inferno/inferno-flamegraph" ]; then
  echo "installing inferno into .tools/inferno ..." >&2
  cargo install --quiet --locked --root .tools/inferno inferno >&2
fi
source scripts/bench-dev.sh
pid=$bench_dev
out=docs/flamegraphs
mkdir -p "$out"
flame() { # NAME: sample the server for $secs seconds, then fold and draw
  perf record -q -F 299 --call-graph dwarf,16384 -p "$pid" -o "$bench_dir/$1.data" -- sleep "$secs" >/dev/null 2>&1
  perf script -i "$bench_dir/$1.data" 2>/dev/null | "$inferno/inferno-collapse-perf" >"$bench_dir/$1.folded"
  "$inferno/inferno-flamegraph" --title "sluice dev: $1" --width 1600 <"$bench_dir/$1.folded" >"$out/$1.svg"
  echo "$out/$1.svg" >&2
}
# Enough for the consume (about 1 GB/s) to outlast the sampling.
records=$((secs * 1500000))
$S bench produce --topic flame --partitions 8 --record-size 1024 --records "$records" --acks all --json 2>/dev/null &
load=$!
sleep 1
flame produce-acks-all
wait $load
sync
[ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches
$S bench consume --topic flame --records "$records" --json 2>/dev/null &
load=$!
sleep 0.5
flame consume-catch-up
wait $load
