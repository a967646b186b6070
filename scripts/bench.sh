#!/usr/bin/env bash
# The benchmark suite of docs/BENCHMARKS.md: builds release, starts a fresh single-node
# `sluice dev` in a temporary directory, runs produce (acks=1 and acks=all), catch-up consume
# and end-to-end latency with 1 KiB records on 8 partitions, prints one JSON object per run,
# then stops the server. Usage: scripts/bench.sh [RECORDS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
source scripts/bench-dev.sh
$S bench produce --topic bench-acks1 --partitions 8 --record-size 1024 --records "$records" --acks 1 --json 2>/dev/null
$S bench produce --topic bench-acksall --partitions 8 --record-size 1024 --records "$records" --acks all --json 2>/dev/null
$S bench consume --topic bench-acks1 --records "$records" --json 2>/dev/null
$S bench e2e --topic bench-e2e --partitions 8 --record-size 1024 --rate 20000 --duration 20 --json 2>/dev/null
