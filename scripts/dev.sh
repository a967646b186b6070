#!/usr/bin/env bash
# The run command: builds Sluice (release) and starts a single-node cluster with embedded
# metadata (no etcd needed). Extra arguments go to `sluice dev` (--listen, --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh build
cargo build --release -p sluice-cli --bin sluice
exec target/release/sluice dev "$@"
