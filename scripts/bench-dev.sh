# Sourced by the single-node benchmark scripts: builds release, starts a fresh `sluice dev`
# in a temporary directory on a free port, exports SLUICE_GATEWAY and S (the release binary),
# and stops the server and removes its data when the script exits.
scripts/ensure-deps.sh build
cargo build --release -p sluice-cli --bin sluice >&2
bench_dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17099)
export SLUICE_GATEWAY="127.0.0.1:$port"
S=target/release/sluice
# A script may set bench_dev_args (extra `sluice dev` flags) before sourcing this; without
# them the Kafka listener stays off, so that no fixed port is needed.
$S dev --data-dir "$bench_dir/data" --listen "$SLUICE_GATEWAY" "${bench_dev_args[@]:---kafka-listen=}" \
  >"$bench_dir/dev.log" 2>&1 &
bench_dev=$!
trap 'kill $bench_dev 2>/dev/null; wait $bench_dev 2>/dev/null; rm -rf "$bench_dir"' EXIT
for _ in $(seq 50); do $S topic list >/dev/null 2>&1 && break; sleep 0.2; done
