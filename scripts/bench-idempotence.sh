#!/usr/bin/env bash
# What idempotence costs (issue 11): builds release, starts a fresh single-node `sluice dev`,
# and alternates acks=all produce runs without and with `--idempotent` (1 KiB records, 8
# partitions, a fresh topic per run), printing one JSON object per run, plain first.
# Usage: scripts/bench-idempotence.sh [PAIRS] [RECORDS]   (default 3 pairs of 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-3}"
records="${2:-500000}"
source scripts/bench-dev.sh
for i in $(seq "$pairs"); do
  for mode in plain idempotent; do
    flag=$([ "$mode" = idempotent ] && echo --idempotent || true)
    printf '{"run":%d,"producer":"%s","result":' "$i" "$mode"
    $S bench produce --topic "bench-$mode-$i" --partitions 8 --record-size 1024 --records "$records" --acks all $flag --json 2>/dev/null | tr -d '\n'
    echo '}'
  done
done
