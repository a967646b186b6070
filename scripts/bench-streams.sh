#!/usr/bin/env bash
# Streams throughput (issue 14), on this machine: a fresh single-node `sluice dev`
# (scripts/bench-dev.sh) and the `throughput` example (release), for a stateless map and a
# count per key (10,000 keys), at-least-once and exactly-once. Each run writes RECORDS
# records (100-byte values) to a new 4-partition topic, then times the application from its
# first task assignment until its committed offsets cover them all. Prints one JSON line per run.
# Usage: scripts/bench-streams.sh [RECORDS]   (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
source scripts/bench-dev.sh
cargo build --release -p sluice-streams --example throughput >&2
for mode in map count; do
  for guarantee in at_least_once exactly_once; do
    target/release/examples/throughput --mode "$mode" --processing-guarantee "$guarantee" --records "$records"
  done
done
