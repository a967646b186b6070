#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary (the end-to-end tests
# start real etcd and Sluice processes), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo build --workspace --bins
cargo test --workspace "$@"
