#!/usr/bin/env bash
# Sluice side by side with Apache Kafka and NATS JetStream, in one sitting on this machine
# (issue 16). The same workload for every system: RECORDS records of SIZE bytes into a topic
# of 8 partitions by one producer as fast as it goes, then read back from the start by one
# consumer (a catch-up read: the page cache is dropped first when this user may, i.e. root),
# in two modes:
#   acks=1   acknowledged once the server has the records (written, not yet synced);
#   durable  acknowledged only once they are synced to disk (details at each system below).
# The systems, each a fresh server per mode with its data in a temporary directory, on free
# loopback ports:
#   sluice-grpc    `sluice dev` (release), driven by `sluice bench` over gRPC;
#   sluice-kafka   `sluice dev` with its Kafka listener, driven by Kafka's own
#                  ProducerPerformance and ConsumerPerformance (as scripts/bench-kafka.sh);
#   apache-kafka   Apache Kafka (kafka_2.13 from Maven Central, bench/kafka/pom.xml), one KRaft
#                  node, driven by the same Kafka tools with the same settings;
#   nats           nats-server with JetStream (R1 file storage), driven by `nats bench`
#                  (nats-server and the nats CLI are built once with `go install` into
#                  bench/nats/bin).
# Around every run it reads the server's CPU time (/proc/PID/stat, the process and its live
# children) and its peak RSS (VmHWM). Prints one JSON object per (system, mode, phase), then
# one table: MB/s (10^6 bytes of record values per second), latency p50/p99/p99.9/max where
# the tool reports it, server CPU-seconds per GB moved, server peak RSS, and Sluice over
# gRPC's MB/s divided by the row's (same mode and phase).
# Usage: scripts/bench-compare.sh [RECORDS] [SIZE]   (defaults 1000000 and 1024)
#        SYSTEMS="sluice-grpc nats" scripts/bench-compare.sh ...   (a subset; default all four)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
size="${2:-1024}"
systems="${SYSTEMS:-sluice-grpc sluice-kafka apache-kafka nats}"
has() { [[ " $systems " == *" $1 "* ]]; }
for system in $systems; do
  case $system in
    sluice-grpc | sluice-kafka | apache-kafka | nats) ;;
    *) echo "error: unknown system '$system' (sluice-grpc, sluice-kafka, apache-kafka, nats)" >&2; exit 1 ;;
  esac
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The tools, each fetched or built once.
if has sluice-grpc || has sluice-kafka; then
  # As scripts/bench-dev.sh, without its server: this script starts a fresh one per run.
  scripts/ensure-deps.sh build
  cargo build --release -p sluice-cli --bin sluice >&2
  S=target/release/sluice
fi
if has sluice-kafka || has apache-kafka; then
  command -v mvn >/dev/null && command -v java >/dev/null || {
    echo "error: java and mvn are needed (scripts/ensure-deps.sh installs them)" >&2
    exit 1
  }
  lib=bench/kafka/target/lib
  if [ ! -d "$lib" ] || [ bench/kafka/pom.xml -nt "$lib" ]; then
    echo "fetching Kafka's tools and broker from Maven Central ..." >&2
    mvn -q -B -f bench/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=target/lib -DincludeScope=runtime >&2
  fi
  source scripts/kafka-broker.sh
  # An array, not a function as in bench-kafka.sh: `jvm ... &` then gives the JVM's own pid.
  jvm=(java -Xms512m -Xmx1g -cp "$lib/*")
  topics() { "${jvm[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" "${@:2}"; }
fi
if has nats; then
  # Debian's nats-server (2.9) has no jetstream.sync_interval, hence these builds.
  nats_server_version=v2.15.3
  natscli_version=v0.5.0
  nats_bin="$PWD/bench/nats/bin"
  if [ "$(cat "$nats_bin/.versions" 2>/dev/null)" != "$nats_server_version $natscli_version" ]; then
    command -v go >/dev/null || { echo "error: go is needed to build nats-server and the nats CLI" >&2; exit 1; }
    echo "building nats-server $nats_server_version and the nats CLI $natscli_version into bench/nats/bin ..." >&2
    mkdir -p "$nats_bin"
    GOBIN="$nats_bin" go install "github.com/nats-io/nats-server/v2@$nats_server_version" >&2
    GOBIN="$nats_bin" go install "github.com/nats-io/natscli/nats@$natscli_version" >&2
    echo "$nats_server_version $natscli_version" >"$nats_bin/.versions"
  fi
fi

work=$(mktemp -d)
results="$work/results.jsonl"
: >"$results"
server_pid=
server_log=
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
trap 'rc=$?; stop_server; rm -rf "$work"; exit $rc' EXIT

# Runs "$@" every 0.25 s, for up to 60 s, until it succeeds while the server is alive.
wait_up() {
  for _ in $(seq 240); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.25
  done
  echo "error: the server did not come up; the end of its log:" >&2
  tail -20 "$server_log" >&2
  return 1
}

# Server cost, the same for every system. CPU: utime + stime (fields 14 and 15 of
# /proc/PID/stat, clock ticks) of the server and its live descendants; the caller takes the
# difference around a run. Memory: VmHWM, the peak RSS of the server process since it started.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() {
  # Builtins only, no subshell while walking: a subshell would be a child of this shell and
  # would join the walk if the process measured were an ancestor of it.
  local total=0 pid stat kids_file
  local -a todo=("$1") f kids
  while [ ${#todo[@]} -gt 0 ]; do
    pid=${todo[0]}
    todo=("${todo[@]:1}")
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || continue
    read -r -a f <<<"${stat##*) }"   # after the command name, which may hold spaces; f[0] is field 3
    total=$(( total + f[11] + f[12] ))
    for kids_file in /proc/"$pid"/task/*/children; do
      kids=()
      { read -r -a kids <"$kids_file"; } 2>/dev/null || true
      todo+=("${kids[@]}")
    done
  done
  echo "$total"
}
peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

drop_page_cache() {
  sync
  if ! (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null && [ -z "${cache_note:-}" ]; then
    echo "(page cache not dropped: not root; consume may be served from memory)" >&2
    cache_note=1
  fi
}

# One JSON object for a run: the tool's figures (from its output, by KIND) and the server's
# cost. MB/s is recomputed everywhere as record-value bytes / 10^6 per second: `sluice bench`
# prints MiB/s, and when consuming counts batch bytes (headers included); Kafka's tools
# print MiB/s.
parse() {
  python3 - "$@" <<'PY'
import csv, json, re, sys
kind, log, system, mode, phase, rc, ticks, clk, rss_kib, records, size = sys.argv[1:]
records, size = int(records), int(size)
row = {"system": system, "mode": mode, "phase": phase, "records": records, "record_size": size}
fig = {}
try:
    text = open(log, errors="replace").read()
    if kind == "sluice":
        j = json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
        fig = {"records": j["records"], "seconds": j["seconds"],
               "mb_per_sec": j["records"] * size / j["seconds"] / 1e6}
        if phase == "produce":  # per request (a 256 KiB batch), counted for each of its records
            fig.update(p50_ms=j["p50_ms"], p99_ms=j["p99_ms"], p999_ms=j["p999_ms"], max_ms=j["max_ms"])
        if j.get("failed"):
            fig["error"] = f"{j['failed']} records failed"
    elif kind == "kafka-produce":
        # ProducerPerformance's total line: "N records sent, R records/sec (M MB/sec), A ms avg
        # latency, X ms max latency, a ms 50th, b ms 95th, c ms 99th, d ms 99.9th." (per record,
        # from send() to its callback: includes the time queued in the producer's buffer)
        line = [l for l in text.splitlines() if "records sent" in l and "99.9th" in l][-1]
        m = re.search(r"(\d+) records sent, ([\d.]+) records/sec \([\d.]+ MB/sec\), [\d.]+ ms avg latency, "
                      r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th", line)
        n, rate = int(m[1]), float(m[2])
        fig = {"records": n, "seconds": n / rate, "mb_per_sec": rate * size / 1e6,
               "p50_ms": int(m[4]), "p99_ms": int(m[6]), "p999_ms": int(m[7]), "max_ms": float(m[3])}
    elif kind == "kafka-consume":
        # ConsumerPerformance: "start.time, end.time, data.consumed.in.MB, MB.sec,
        # data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec,
        # fetch.nMsg.sec"; the fetch time leaves out joining the group.
        c = [x.strip() for x in [l for l in text.splitlines() if re.match(r"\d{4}-", l.strip())][-1].split(",")]
        mib, n, fetch_s = float(c[2]), int(c[4]), int(c[7]) / 1000
        fig = {"records": n, "seconds": fetch_s, "mb_per_sec": mib * 1048576 / 1e6 / fetch_s}
        if "Exiting before consuming the expected number" in text:
            fig["error"] = "timed out before reading every record"
    elif kind == "nats":
        # `nats bench --csv`: one row per client. Columns as read in natscli's
        # internal/bench/stats.go (July 2026): #RunID, ClientID, MsgCount, MsgBytes, MsgsPerSec,
        # BytesPerSec, DurationSecs, then, when the run has latencies (publishers), Min/Avg/Max,
        # P50/P90/P99/P99.9 and StdDev LatencyMicroSecs. MsgCount counts the connection's
        # messages (acks included), so records come from MsgBytes. Matched loosely in case the
        # release differs.
        rows = [r for r in csv.reader(open(log[:-len(".log")] + ".csv")) if r]
        head = [h.strip().lstrip("#").lower() for h in rows[0]]
        data = rows[1:]
        def col(*keys, skip=()):
            return next((i for i, h in enumerate(head) if any(k in h for k in keys) and not any(s in h for s in skip)), None)
        def values(i):
            return [float(r[i]) for r in data if i < len(r) and r[i].strip()]
        i_bytes, i_bps = col("msgbytes", "bytes"), col("bytespersec", "bytes/sec", "throughput")
        i_secs = col("duration", "elapsed")
        moved = sum(values(i_bytes)) if i_bytes is not None and i_bytes != i_bps else records * size
        if i_secs is not None:
            secs = max(values(i_secs))
            if "ms" in head[i_secs] and "sec" not in head[i_secs]:
                secs /= 1000
            fig = {"seconds": secs, "mb_per_sec": moved / secs / 1e6}
        elif i_bps is not None:
            fig = {"mb_per_sec": sum(values(i_bps)) / 1e6}
        else:
            # The report on stdout: "... stats: 123,456 msgs/sec ~ 120 MiB/sec ...".
            m = re.search(r"([\d,]+) msgs/sec ~", text)
            if not m:
                print(f"nats CSV header not understood: {rows[0]}", file=sys.stderr)
                raise ValueError(f"no throughput in the CSV (header {rows[0]}) or the report")
            fig = {"mb_per_sec": int(m[1].replace(",", "")) * size / 1e6}
        fig["records"] = int(moved // size)
        def lat(i):
            if i is None:
                return None
            v = max(values(i)) if values(i) else None   # one client: its own figure
            if v is None:
                return None
            h = head[i]
            return v / 1000 if "micro" in h or h.endswith("us") else v / 1e6 if "nano" in h or h.endswith("ns") else v
        fig.update(p50_ms=lat(col("p50")), p99_ms=lat(col("p99", skip=("p99.9", "p999"))),
                   p999_ms=lat(col("p99.9", "p999")), max_ms=lat(col("maxlatency", "max_latency", "max lat")))
        # Publishers: per batch of --batch async publishes, from the first send to the last ack.
    else:
        raise ValueError(f"unknown kind {kind}")
except Exception as e:
    fig = {"error": f"could not read the results in {log}: {e!r}"}
if int(rc) != 0:
    fig["error"] = (fig.get("error", "") + f" (exit status {rc})").strip()
row.update(fig)
cpu_s = int(ticks) / int(clk)
gb = row.get("records", records) * size / 1e9
row["server_cpu_s"] = round(cpu_s, 2)
row["server_cpu_s_per_gb"] = round(cpu_s / gb, 2) if gb > 0 else None
row["server_peak_rss_mb"] = round(int(rss_kib) * 1024 / 1e6, 1) if rss_kib.strip() else None
for k in ("mb_per_sec", "seconds"):
    if isinstance(row.get(k), float):
        row[k] = round(row[k], 3)
print(json.dumps(row))
PY
}

# run_phase SYSTEM MODE PHASE KIND CMD...: runs the load generator CMD against the running
# server (stdout to $work/SYSTEM-MODE-PHASE.log, which KIND's parser reads), measuring the
# server around it; appends the run's JSON object to the results and prints it. A failed run
# gives a row with an "error" and the script carries on.
run_phase() {
  local system=$1 mode=$2 phase=$3 kind=$4 rc=0 t0 t1
  shift 4
  local log="$work/$system-$mode-$phase.log"
  if [ "$phase" = consume ]; then drop_page_cache; fi
  echo "$system, $mode: $phase ..." >&2
  t0=$(cpu_ticks "$server_pid")
  "$@" >"$log" 2>"$log.err" || rc=$?
  t1=$(cpu_ticks "$server_pid")
  parse "$kind" "$log" "$system" "$mode" "$phase" "$rc" "$(( t1 - t0 ))" "$clk_tck" "$(peak_rss_kib "$server_pid")" \
    "$records" "$size" >>"$results"
  tail -1 "$results"
  if [ "$rc" != 0 ]; then
    echo "($system $mode $phase exited with status $rc; the end of its output:)" >&2
    tail -5 "$log" "$log.err" >&2
  fi
}

# An error row for both phases of a (system, mode) that could not run.
fail() {
  local phase
  for phase in produce consume; do
    python3 -c 'import json, sys; print(json.dumps(dict(zip(("system", "mode", "phase", "error"), sys.argv[1:]))))' \
      "$1" "$2" "$phase" "$3" >>"$results"
  done
  echo "error: $1, $2: $3" >&2
}

# Servers: each sets server_pid and server_log, returns non-zero when it did not come up.
# Their data lives in DIR/data, removed after the (system, mode).

# Sluice: single-node `sluice dev` as scripts/bench-dev.sh starts it; Kafka listener at
# KAFKA_LISTEN, or none when empty. acks=1 appends are synced every storage.flush_interval_ms
# (500 ms by default); acks=all answers after a group commit (fdatasync of the segment files
# written since the last one, then sled's flush of the index).
start_sluice() {
  local dir=$1 kafka_listen=$2
  export SLUICE_GATEWAY="127.0.0.1:$(free_port)"
  server_log="$dir/server.log"
  $S dev --data-dir "$dir/data" --listen "$SLUICE_GATEWAY" --kafka-listen="$kafka_listen" >"$server_log" 2>&1 &
  server_pid=$!
  wait_up "$S" topic list || return 1
  if [ -n "$kafka_listen" ]; then wait_up port_open "${kafka_listen##*:}"; fi
}

# Apache Kafka: one KRaft node, broker and controller (scripts/kafka-broker.sh).
# Its log is flushed by the OS unless a topic says otherwise (flush.messages, flush.ms are off
# by default): Kafka counts on replication, not fsync, for durability.
start_kafka() {
  local dir=$1 controller_port
  broker_port=$(free_port)
  controller_port=$(free_port)
  server_log="$dir/server.log"
  kafka_properties "$dir" "$broker_port" "$controller_port" "$dir/data"
  kafka_format "$dir" "${jvm[@]}" >"$dir/format.log" 2>&1 || { server_log="$dir/format.log"; tail -20 "$server_log" >&2; return 1; }
  "${jvm[@]}" kafka.Kafka "$dir/server.properties" >"$server_log" 2>&1 &
  server_pid=$!
  wait_up topics "127.0.0.1:$broker_port" --list
}

# NATS: nats-server with JetStream from a generated config. JetStream syncs its files every
# sync_interval (2 minutes by default); `sync_interval: always` syncs every write before the
# publish is acknowledged (in R1 that is each message: filestore.go flushes in place and
# fsyncs after each flush), so the durable NATS produce may take long on a slow disk: at 2 ms
# an fsync, 1,000,000 records take over half an hour. The setting is server-wide, hence a
# server per mode. Key names as
# parsed by parseJetStream in nats-server's server/opts.go (read at 2.15.0-dev, not at the
# v2.15.3 tag).
start_nats() {
  local dir=$1 mode=$2 sync="# sync_interval: the default, 2 minutes"
  [ "$mode" = durable ] && sync="sync_interval: always"
  nats_url="nats://127.0.0.1:$(free_port)"
  server_log="$dir/server.log"
  cat >"$dir/nats.conf" <<EOF
listen: "${nats_url#nats://}"
jetstream {
  store_dir: "$dir/data"
  $sync
}
EOF
  "$nats_bin/nats-server" -c "$dir/nats.conf" >"$server_log" 2>&1 &
  server_pid=$!
  # Up when the JetStream API answers, not just the port.
  wait_up "$nats_bin/nats" --no-context -s "$nats_url" account info
}

# Kafka's tools against the Kafka listener at TARGET, with the settings of
# scripts/bench-kafka.sh; idempotence on for durable (the Java client's default with
# acks=all), off for acks=1 (it requires acks=all). Extra arguments go to TopicCommand.
consumer_props="$work/consumer.properties"
echo fetch.max.bytes=52428800 >"$consumer_props"
kafka_load() {
  local system=$1 mode=$2 target=$3 topic=$4 acks=1 idempotence=false
  shift 4
  if [ "$mode" = durable ]; then acks=all; idempotence=true; fi
  topics "$target" --create --topic "$topic" --partitions 8 --replication-factor 1 "$@" >"$work/$system-$mode-topic.log" 2>&1 ||
    { fail "$system" "$mode" "creating the topic failed: $(tail -3 "$work/$system-$mode-topic.log")"; return 0; }
  run_phase "$system" "$mode" produce kafka-produce "${jvm[@]}" org.apache.kafka.tools.ProducerPerformance \
    --topic "$topic" --num-records "$records" --record-size "$size" --throughput -1 \
    --producer-props bootstrap.servers="$target" acks="$acks" enable.idempotence="$idempotence" linger.ms=5 \
    batch.size=262144 buffer.memory=134217728
  run_phase "$system" "$mode" consume kafka-consume "${jvm[@]}" org.apache.kafka.tools.ConsumerPerformance \
    --bootstrap-server "$target" --topic "$topic" --messages "$records" --timeout 60000 --group "bench-$system-$mode" \
    --consumer.config "$consumer_props"
}

# One system in one mode (acks1 or durable) on a fresh server: produce, then consume from
# the start.
run_system() {
  local system=$1 mode=$2 dir="$work/$system-$mode" topic="bench-$mode" acks=1
  [ "$mode" = durable ] && acks=all
  mkdir -p "$dir"
  case $system in
    sluice-grpc)
      start_sluice "$dir" "" || { fail "$system" "$mode" "sluice dev did not start"; stop_server; return 0; }
      # Durable: an idempotent producer, as the Java client is with acks=all.
      local idempotent=()
      [ "$mode" = durable ] && idempotent=(--idempotent)
      run_phase "$system" "$mode" produce sluice $S bench produce --topic "$topic" --partitions 8 \
        --record-size "$size" --records "$records" --acks "$acks" "${idempotent[@]}" --json
      # A raw fetch of every partition (one gRPC stream), not a group member.
      run_phase "$system" "$mode" consume sluice $S bench consume --topic "$topic" --records "$records" --json
      ;;
    sluice-kafka)
      local kafka_listen
      kafka_listen="127.0.0.1:$(free_port)"
      start_sluice "$dir" "$kafka_listen" || { fail "$system" "$mode" "sluice dev did not start"; stop_server; return 0; }
      kafka_load "$system" "$mode" "$kafka_listen" "$topic"
      ;;
    apache-kafka)
      start_kafka "$dir" || { fail "$system" "$mode" "the Kafka broker did not start"; stop_server; return 0; }
      # Durable: acks=all alone does not fsync in Kafka. flush.messages=1 (a topic config) has
      # every append to the log flushed (FileChannel.force) before the produce is answered.
      local flush=()
      [ "$mode" = durable ] && flush=(--config flush.messages=1)
      kafka_load "$system" "$mode" "127.0.0.1:$broker_port" "$topic" "${flush[@]}"
      ;;
    nats)
      start_nats "$dir" "$mode" || { fail "$system" "$mode" "nats-server did not start"; stop_server; return 0; }
      # JetStream has no partitions: a stream is one ordered log (one subject here). That is
      # the honest comparison; spreading over 8 streams or subjects would be another design.
      # Publish: async, --batch publishes in flight, then wait for all their acks. Consume: an
      # ephemeral ordered consumer from the first message. --timeout (global) bounds each ack
      # wait: with sync_interval always a batch of 500 waits for 500 fsyncs.
      # The stream's byte limit (default 1GB, discard new) is set well above what is sent.
      local nats=("$nats_bin/nats" --no-context -s "$nats_url" --timeout 60s)
      local max_gb=$(( records * size * 3 / 1000000000 + 1 ))
      run_phase "$system" "$mode" produce nats "${nats[@]}" bench js pub async sluice.bench --stream sluicebench \
        --create --storage file --replicas 1 --maxbytes "${max_gb}GB" --batch 500 --msgs "$records" \
        --size "$size" --no-progress --csv "$work/$system-$mode-produce.csv"
      run_phase "$system" "$mode" consume nats "${nats[@]}" bench js ordered --stream sluicebench \
        --msgs "$records" --size "$size" --no-progress --csv "$work/$system-$mode-consume.csv"
      ;;
  esac
  stop_server
  rm -rf "$dir/data"
}

for system in $systems; do
  for mode in acks1 durable; do
    run_system "$system" "$mode"
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mode_name = {"acks1": "acks=1", "durable": "durable"}
base = {(r["mode"], r["phase"]): r.get("mb_per_sec") for r in rows if r["system"] == "sluice-grpc" and "error" not in r}
def n(v, fmt):
    return "-" if v is None else format(v, fmt)
print()
print(f"{'system':<13} {'mode':<8} {'phase':<8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
      f"{'max ms':>8} {'CPU-s/GB':>9} {'peak RSS MB':>12} {'Sluice/x':>9}")
errors = []
for r in rows:
    if "error" in r:   # no figures for a failed run
        r = {k: r[k] for k in ("system", "mode", "phase", "error")}
    mb = r.get("mb_per_sec")
    b = base.get((r["mode"], r["phase"]))
    ratio = f"{b / mb:.2f}x" if b and mb else "-"
    print(f"{r['system']:<13} {mode_name.get(r['mode'], r['mode']):<8} {r['phase']:<8} "
          f"{('failed' if 'error' in r else n(mb, '.1f')):>8} {n(r.get('p50_ms'), '.1f'):>8} "
          f"{n(r.get('p99_ms'), '.1f'):>8} {n(r.get('p999_ms'), '.1f'):>9} {n(r.get('max_ms'), '.1f'):>8} "
          f"{n(r.get('server_cpu_s_per_gb'), '.1f'):>9} {n(r.get('server_peak_rss_mb'), '.0f'):>12} {ratio:>9}")
    if "error" in r:
        errors.append(f"{r['system']} {mode_name.get(r['mode'], r['mode'])} {r['phase']}: {r['error']}")
print("""
MB = 10^6 bytes of record values. Sluice/x: Sluice over gRPC's MB/s divided by the row's, same
mode and phase (above 1: Sluice faster). CPU-s/GB and peak RSS are the server's alone (peak
RSS: VmHWM at the end of the phase, so a consume row shows the whole run's peak).
Latencies are each tool's own and not alike: sluice bench, per 256 KiB request (16 in
flight), counted for each record in it; ProducerPerformance, per record from send() to its
callback (time queued in its 128 MiB buffer included); nats bench, per batch of 500 async
publishes. Consumers report none ("-").""")
for e in errors:
    print("error:", e)
PY
