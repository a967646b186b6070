#!/usr/bin/env bash
# The benchmark suite of docs/BENCHMARKS.md: builds release, starts a fresh single-node
# `sluice dev` in a temporary directory, runs produce (acks=1 and acks=all), catch-up consume
# and end-to-end latency with 1 KiB records on 8 partitions, prints one JSON object per run,
# then stops the server. Usage: scripts/bench.sh [RECORDS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
scripts/ensure-deps.sh build
cargo build --release -p sluice-cli --bin sluice >&2
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17099)
export SLUICE_GATEWAY="127.0.0.1:$port"
target/release/sluice dev --data-dir "$dir/data" --listen "$SLUICE_GATEWAY" >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do target/release/sluice topic list >/dev/null 2>&1 && break; sleep 0.2; done
S=target/release/sluice
$S bench produce --topic bench-acks1 --partitions 8 --record-size 1024 --records "$records" --acks 1 --json 2>/dev/null
$S bench produce --topic bench-acksall --partitions 8 --record-size 1024 --records "$records" --acks all --json 2>/dev/null
$S bench consume --topic bench-acks1 --records "$records" --json 2>/dev/null
$S bench e2e --topic bench-e2e --partitions 8 --record-size 1024 --rate 20000 --duration 20 --json 2>/dev/null
