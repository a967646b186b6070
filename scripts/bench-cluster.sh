#!/usr/bin/env bash
# Replicated benchmark of docs/BENCHMARKS.md: builds release, starts a 3-node local cluster
# (etcd + 3 partition nodes + gateway, all on this machine), then produces 1 KiB records with
# acks=all to a topic with replication factor 3 and measures end-to-end latency on it; one JSON
# line per run. Usage: scripts/bench-cluster.sh [RECORDS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
scripts/ensure-deps.sh test
cargo build --release --workspace --bins >&2
dir=$(mktemp -d)
export SLUICE_BIN_DIR="$PWD/target/release"
S=target/release/sluice
trap '$S cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
export SLUICE_GATEWAY=$($S cluster up --nodes 3 --dir "$dir")
$S bench produce --topic bench-rf3 --partitions 8 --replication-factor 3 --record-size 1024 --records "$records" --acks all --json 2>/dev/null
$S bench e2e --topic bench-rf3-e2e --partitions 8 --replication-factor 3 --record-size 1024 --rate 20000 --duration 20 --acks all --json 2>/dev/null
