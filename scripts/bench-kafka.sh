#!/usr/bin/env bash
# The Kafka path against the gRPC path and against Apache Kafka (issue 12), on this machine,
# in one run. Builds release and starts a fresh single-node `sluice dev` (scripts/bench-dev.sh)
# with its Kafka listener; fetches Kafka's own load tools and an Apache Kafka broker from Maven
# Central (bench/kafka/pom.xml, once) and starts the broker alone (KRaft, one node, its data
# in a temporary directory). Then, for each of Sluice over gRPC (`sluice bench`), Sluice over
# Kafka with the same generator (`sluice bench --kafka`: the two paths compared), Sluice over
# Kafka and Apache Kafka with Kafka's tools (ProducerPerformance and ConsumerPerformance): a topic of 8
# partitions, RECORDS records of SIZE bytes produced with acks=all by an idempotent producer
# (the Java client's default) as fast as possible, then read back from the start. Prints one
# JSON object per run, then a table.
# Usage: scripts/bench-kafka.sh [RECORDS] [SIZE]   (defaults 1000000 and 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
size="${2:-1024}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kafka_port=$(free_port)
bench_dev_args=(--kafka-listen "127.0.0.1:$kafka_port")
source scripts/bench-dev.sh
source scripts/kafka-broker.sh

command -v mvn >/dev/null && command -v java >/dev/null || {
  echo "error: java and mvn are needed (scripts/ensure-deps.sh installs them)" >&2
  exit 1
}
lib=bench/kafka/target/lib
if [ ! -d "$lib" ] || [ bench/kafka/pom.xml -nt "$lib" ]; then
  echo "fetching Kafka's tools and broker from Maven Central ..." >&2
  mvn -q -B -f bench/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=target/lib -DincludeScope=runtime >&2
fi
java_run() { java -Xms512m -Xmx1g -cp "$lib/*" "$@"; }

# Apache Kafka: one KRaft node, broker and controller, on free loopback ports.
broker_port=$(free_port)
controller_port=$(free_port)
kdir="$bench_dir/kafka"
mkdir -p "$kdir"
kafka_properties "$kdir" "$broker_port" "$controller_port" "$kdir/logs"
kafka_format "$kdir" java_run >"$kdir/format.log" 2>&1
java_run kafka.Kafka "$kdir/server.properties" >"$kdir/broker.log" 2>&1 &
kafka_pid=$!
trap 'rc=$?; kill $kafka_pid $bench_dev 2>/dev/null; wait $kafka_pid $bench_dev 2>/dev/null; rm -rf "$bench_dir"; exit $rc' EXIT
topics() { java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" "${@:2}"; }
for _ in $(seq 120); do topics "127.0.0.1:$broker_port" --list >/dev/null 2>&1 && break; sleep 0.5; done

out="$bench_dir/results.jsonl"
: >"$out"
# Kafka's tools against `target` (a Kafka listener): produce, then consume from the start.
kafka_run() {
  local name=$1 target=$2 topic="bench-$1"
  topics "$target" --create --topic "$topic" --partitions 8 --replication-factor 1 >/dev/null
  java_run org.apache.kafka.tools.ProducerPerformance --topic "$topic" --num-records "$records" \
    --record-size "$size" --throughput -1 \
    --producer-props bootstrap.servers="$target" acks=all linger.ms=5 batch.size=262144 \
    buffer.memory=134217728 >"$bench_dir/$name-produce.log" 2>&1
  java_run org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$target" --topic "$topic" \
    --messages "$records" --timeout 60000 --group "bench-$name" \
    --consumer.config <(echo fetch.max.bytes=52428800) >"$bench_dir/$name-consume.log" 2>&1
  python3 - "$name" "$bench_dir/$name-produce.log" "$bench_dir/$name-consume.log" "$records" "$size" >>"$out" <<'PY'
import json, re, sys
name, plog, clog, records, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
last = [l for l in open(plog) if "records sent" in l][-1]
p = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th", last)
rows = [l.strip() for l in open(clog) if re.match(r"^\d{4}-", l.strip())]
c = [x.strip() for x in rows[-1].split(",")]
print(json.dumps({"path": name, "records": records, "record_size": size,
                  "produce_mb_per_sec": float(p.group(2)), "produce_records_per_sec": float(p.group(1)),
                  "produce_p50_ms": int(p.group(5)), "produce_p99_ms": int(p.group(7)),
                  "consume_mb_per_sec": float(c[8]), "consume_records_per_sec": float(c[9])}))
PY
  tail -1 "$out"
}

# Sluice's own benchmark, same shape, over gRPC and then over the Kafka listener (the same
# batches encoded as Kafka Produce and Fetch requests): the two paths, one load generator.
sluice_run() {
  local name=$1 topic="bench-$1"
  shift
  $S bench produce --topic "$topic" --partitions 8 --record-size "$size" --records "$records" --acks all \
    --idempotent --json "$@" 2>/dev/null >"$bench_dir/$name-produce.json"
  $S bench consume --topic "$topic" --records "$records" --json "$@" 2>/dev/null >"$bench_dir/$name-consume.json"
  python3 - "$name" "$bench_dir/$name-produce.json" "$bench_dir/$name-consume.json" >>"$out" <<'PY'
import json, sys
p, c = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(json.dumps({"path": sys.argv[1], "records": p["records"], "record_size": p["record_size"],
                  "produce_mb_per_sec": round(p["mb_per_sec"], 1), "produce_records_per_sec": round(p["records_per_sec"]),
                  "produce_p50_ms": p["p50_ms"], "produce_p99_ms": p["p99_ms"],
                  "consume_mb_per_sec": round(c["mb_per_sec"], 1), "consume_records_per_sec": round(c["records_per_sec"])}))
PY
  tail -1 "$out"
}
sluice_run sluice-grpc
sluice_run sluice-bench-kafka --kafka "127.0.0.1:$kafka_port"
kafka_run sluice-kafka "127.0.0.1:$kafka_port"
kafka_run apache-kafka "127.0.0.1:$broker_port"

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print(f"{'path':<14} {'produce MB/s':>13} {'records/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'consume MB/s':>13} {'records/s':>11}")
for r in rows:
    print(f"{r['path']:<14} {r['produce_mb_per_sec']:>13.1f} {r['produce_records_per_sec']:>11.0f} {r['produce_p50_ms']:>7} "
          f"{r['produce_p99_ms']:>7} {r['consume_mb_per_sec']:>13.1f} {r['consume_records_per_sec']:>11.0f}")
row = {r["path"]: r for r in rows}
for what in ("produce", "consume"):
    ratio = row["sluice-bench-kafka"][f"{what}_mb_per_sec"] / max(row["sluice-grpc"][f"{what}_mb_per_sec"], 1e-9)
    print(f"Sluice {what}, same load generator: the Kafka path at {ratio:.0%} of the gRPC path")
    ratio = row["sluice-kafka"][f"{what}_mb_per_sec"] / max(row["apache-kafka"][f"{what}_mb_per_sec"], 1e-9)
    print(f"{what} with Kafka's Java tools: Sluice at {ratio:.0%} of Apache Kafka")
PY
