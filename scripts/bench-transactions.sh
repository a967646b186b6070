#!/usr/bin/env bash
# What transactions cost, and how fast `sluice copy` goes (issue 11). Builds release, starts a
# fresh single-node `sluice dev`, then: acks=all produce runs of 1 KiB records to 8 partitions
# as a plain, an idempotent and a transactional producer (1,000-record transactions), one
# JSON object each; then `sluice copy` of the plain run's topic into a new one, timed from
# start to its last transaction (process start and group join included; the idle wait that
# ends it excluded).
# Usage: scripts/bench-transactions.sh [RECORDS]   (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
source scripts/bench-dev.sh
for mode in plain idempotent transactional; do
  case $mode in
    plain) flags=() ;;
    idempotent) flags=(--idempotent) ;;
    transactional) flags=(--transaction-records 1000) ;;
  esac
  printf '{"producer":"%s","result":' "$mode"
  $S bench produce --topic "bench-$mode" --partitions 8 --record-size 1024 --records "$records" --acks all \
    "${flags[@]}" --json 2>/dev/null | tr -d '\n'
  echo '}'
done
$S topic create bench-copy --partitions 8 >/dev/null
idle_ms=1000
start=$(date +%s.%N)
$S copy bench-plain bench-copy --group bench-copier --transactional-id bench-copier --idle-timeout-ms "$idle_ms" \
  2>"$bench_dir/copy.log"
end=$(date +%s.%N)
python3 - "$start" "$end" "$idle_ms" "$records" <<'PY'
import json, sys
start, end, idle, records = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) / 1000, int(sys.argv[4])
secs = end - start - idle
print(json.dumps({"copy": {"records": records, "record_size": 1024, "seconds": round(secs, 2),
                           "records_per_sec": round(records / secs), "mb_per_sec": round(records * 1024 / 1048576 / secs, 1)}}))
PY
tail -1 "$bench_dir/copy.log" >&2
