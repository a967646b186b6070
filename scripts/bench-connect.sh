#!/usr/bin/env bash
# Connect throughput (issue 13), on this machine: file-source -> topic -> postgres-sink and
# -> parquet-sink, all in one fresh single-node `sluice dev` (its in-process connect runner;
# scripts/bench-dev.sh) with a PostgreSQL of its own (initdb into the temporary directory, on
# a free port). RECORDS JSON lines are written to a file first; the three connectors are then
# created at once, and the script times how long until the topic holds them all (the source,
# exactly once: records and positions in transactions), until the table holds them all (the
# PostgreSQL sink, exactly once: rows and offsets in PostgreSQL transactions) and until the
# Parquet files hold them all (the Parquet sink, flush.size 10000). Prints one JSON object.
# Usage: scripts/bench-connect.sh [RECORDS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
source scripts/bench-dev.sh

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pg_bin/initdb" ] || { echo "error: PostgreSQL is needed (scripts/ensure-deps.sh installs it)" >&2; exit 1; }
pg_dir="$bench_dir/pg"
mkdir -p "$pg_dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$pg_dir" "$bench_dir"
  as_pg=(setpriv "--reuid=$(id -u postgres)" "--regid=$(id -g postgres)" --clear-groups --)
fi
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U sluice --auth=trust -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$pg_dir" >"$pg_dir/log" 2>&1 &
pg_pid=$!
trap 'kill $pg_pid 2>/dev/null; wait $pg_pid 2>/dev/null; kill $bench_dev 2>/dev/null; wait $bench_dev 2>/dev/null; rm -rf "$bench_dir"' EXIT
psql_() { psql -h 127.0.0.1 -p "$pg_port" -U sluice -d postgres -Atq -c "$1" 2>/dev/null; }
for _ in $(seq 100); do psql_ 'SELECT 1' >/dev/null && break; sleep 0.2; done
psql_ 'CREATE TABLE bench (id bigint, name text, score double precision, ok boolean)'

input="$bench_dir/in.jsonl"
python3 - "$input" "$records" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write('{"id": %d, "name": "record-%d", "score": %d.5, "ok": %s}\n' % (i, i, i, "true" if i % 2 else "false"))
EOF
$S topic create bench --partitions 4 >/dev/null
conf() { echo "$1" >"$bench_dir/$2.json"; $S connect create --config "$bench_dir/$2.json" >/dev/null; }
lines='"key.converter": "string", "value.converter": "string"'
rows='"key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "false"'
start=$(date +%s.%N)
conf "{\"name\": \"in\", \"connector.class\": \"file-source\", \"file\": \"$input\", \"topic\": \"bench\", \"batch.size\": \"5000\", $lines}" in
conf "{\"name\": \"pg\", \"connector.class\": \"postgres-sink\", \"topics\": \"bench\", \"tasks.max\": \"4\",
       \"connection.url\": \"postgresql://sluice@127.0.0.1:$pg_port/postgres\", \"table.name.format\": \"bench\", $rows}" pg
conf "{\"name\": \"lake\", \"connector.class\": \"parquet-sink\", \"topics\": \"bench\", \"tasks.max\": \"4\",
       \"store.url\": \"$bench_dir/lake\", \"flush.size\": \"10000\", \"rotate.interval.ms\": \"2000\", $rows}" lake

since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$start" "$(date +%s.%N)"; }
topic_records() {
  $S topic describe bench 2>/dev/null | awk -F'LastStable: ' 'NF > 1 { split($2, a, /[ \t]/); n += a[1] } END { print n + 0 }'
}
# Parquet rows from the file names: <topic>+<partition>+<first>+<last>.parquet.
lake_records() {
  find "$bench_dir/lake" -name '*.parquet' -not -path '*/_tmp/*' 2>/dev/null \
    | awk -F'+' '{ sub(/\.parquet$/, "", $4); n += $4 - $3 + 1 } END { print n + 0 }'
}
src_s="" pg_s="" lake_s=""
deadline=$(( $(date +%s) + 1800 ))
while [ -z "$src_s" ] || [ -z "$pg_s" ] || [ -z "$lake_s" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "error: not done within 30 minutes" >&2; exit 1; }
  # Transaction markers count in the log end: the source wrote everything once its records
  # and markers are there, which the sinks confirm below.
  [ -z "$src_s" ] && [ "$(topic_records)" -ge "$records" ] && src_s=$(since)
  [ -z "$pg_s" ] && [ "$(psql_ 'SELECT count(*) FROM bench')" -ge "$records" ] && pg_s=$(since)
  [ -z "$lake_s" ] && [ "$(lake_records)" -ge "$records" ] && lake_s=$(since)
  sleep 0.5
done
distinct=$(psql_ 'SELECT count(DISTINCT id) FROM bench')
rate() { python3 -c "import sys; print(int(int(sys.argv[1]) / float(sys.argv[2])))" "$records" "$1"; }
echo "{\"records\": $records, \"source_s\": $src_s, \"source_records_per_s\": $(rate "$src_s"), \
\"postgres_s\": $pg_s, \"postgres_records_per_s\": $(rate "$pg_s"), \"postgres_distinct_ids\": $distinct, \
\"parquet_s\": $lake_s, \"parquet_records_per_s\": $(rate "$lake_s")}"
