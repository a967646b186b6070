#!/usr/bin/env bash
# Streaming SQL throughput (issue 15), on this machine: a fresh single-node `sluice dev`
# (scripts/bench-dev.sh; its stream processor runs queries exactly-once) and
# `sluice bench sql` for a filter/projection query and a tumbling-window count and sum per
# key. Each run writes RECORDS JSON records to a new 4-partition stream, then times the
# query from its first commit until its committed offsets cover them all. One JSON line per run.
# Usage: scripts/bench-sql.sh [RECORDS]   (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
source scripts/bench-dev.sh
for query in filter window; do
  $S bench sql --query "$query" --records "$records"
done
