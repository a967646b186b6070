#!/usr/bin/env bash
# Two builds of `sluice` side by side in one sitting (issue 16's rule: compare in one run).
# For each round and each binary: a fresh single-node `sluice dev` in a temporary directory,
# then produce acks=1 and acks=all (1 KiB records, 8 partitions, 256 KiB batches, 16 requests
# in flight), a catch-up consume of the acks=1 topic after dropping the page cache (when this
# user may: root), and end to end at 50,000 records/s for 15 s; then the data directory's size
# and the server's peak RSS. The bench client is always the second binary, so that only the
# server differs. Prints one labelled JSON object per measurement.
# Usage: scripts/bench-ab.sh OLD_BINARY NEW_BINARY [RECORDS] [ROUNDS]   (1000000, 2)
# To build the old binary: git worktree add /tmp/old <rev> && (cd /tmp/old &&
#   CARGO_TARGET_DIR=$PWD/target cargo build --release -p sluice-cli --bin sluice)
set -euo pipefail
old="$1"; new="$2"; records="${3:-1000000}"; rounds="${4:-2}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() {
  local server="$1" label="$2" dir pid
  dir=$(mktemp -d)
  export SLUICE_GATEWAY="127.0.0.1:$(free_port)"
  "$server" dev --data-dir "$dir/data" --listen "$SLUICE_GATEWAY" --kafka-listen= >"$dir/dev.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do "$new" topic list >/dev/null 2>&1 && break; sleep 0.2; done
  local b=("$new" bench)
  tag() { sed "s/^{/{\"server\":\"$label\",/"; }
  "${b[@]}" produce --topic a1 --partitions 8 --record-size 1024 --records "$records" --acks 1 --json 2>/dev/null | tag
  "${b[@]}" produce --topic aall --partitions 8 --record-size 1024 --records "$records" --acks all --json 2>/dev/null | tag
  sync; (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null || echo "(page cache not dropped: not root)" >&2
  "${b[@]}" consume --topic a1 --records "$records" --json 2>/dev/null | tag
  "${b[@]}" e2e --topic e2e --partitions 8 --record-size 1024 --rate 50000 --duration 15 --json 2>/dev/null | tag
  echo "{\"server\":\"$label\",\"mode\":\"footprint\",\"data_bytes\":$(du -s --block-size=1 "$dir/data" | cut -f1),\"peak_rss_kib\":$(awk '/VmHWM/ {print $2}' /proc/$pid/status)}"
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"
}
for i in $(seq "$rounds"); do
  run "$old" "old-$i"
  run "$new" "new-$i"
done
