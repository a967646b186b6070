#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary (the end-to-end tests
# start real etcd and Sluice processes, and run the client examples), then runs every test of the workspace and prints
# one closing line with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo build --workspace --bins --examples
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { printf "%d passed, %d failed", p, f }' "$log")
echo
echo "tests: $totals"
exit "$status"
