#!/usr/bin/env bash
# What idempotence costs (issue 11): builds release, starts a fresh single-node `sluice dev`,
# and alternates acks=all produce runs without and with `--idempotent` (1 KiB records, 8
# partitions, a fresh topic per run), printing one JSON object per run, plain first.
# Usage: scripts/bench-idempotence.sh [PAIRS] [RECORDS]   (default 3 pairs of 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-3}"
records="${2:-500000}"
scripts/ensure-deps.sh build
cargo build --release -p sluice-cli --bin sluice >&2
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17098)
export SLUICE_GATEWAY="127.0.0.1:$port"
target/release/sluice dev --data-dir "$dir/data" --listen "$SLUICE_GATEWAY" >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do target/release/sluice topic list >/dev/null 2>&1 && break; sleep 0.2; done
S=target/release/sluice
for i in $(seq "$pairs"); do
  for mode in plain idempotent; do
    flag=$([ "$mode" = idempotent ] && echo --idempotent || true)
    printf '{"run":%d,"producer":"%s","result":' "$i" "$mode"
    $S bench produce --topic "bench-$mode-$i" --partitions 8 --record-size 1024 --records "$records" --acks all $flag --json 2>/dev/null | tr -d '\n'
    echo '}'
  done
done
