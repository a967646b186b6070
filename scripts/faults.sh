#!/usr/bin/env bash
# The fault runs of docs/FAULTS.md at full length: leaders killed with -9 under acks=all, a
# leader paused past its lease, too few in-sync replicas, etcd restarted under load, consumer
# group members killed with -9 again and again under load, leaders killed under an idempotent
# producer (every record once, in order), each against a real etcd and real
# processes. CI runs the same tests for 12 s each (scripts/test.sh).
# Usage: scripts/faults.sh [SECONDS]   (default 120 per fault loop; SLUICE_TEST_SEED replays)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo build --workspace --bins >&2
SLUICE_FAULT_SECS="${1:-120}" cargo test -p sluice-tests --test replication -- --test-threads 1 --nocapture
SLUICE_FAULT_SECS="${1:-120}" cargo test -p sluice-tests --test groups -- --nocapture members_killed_again_and_again
SLUICE_FAULT_SECS="${1:-120}" cargo test -p sluice-tests --test exactly_once -- --nocapture
