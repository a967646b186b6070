# Sourced by scripts/bench-kafka.sh and scripts/bench-compare.sh: an Apache Kafka node in
# KRaft mode (broker and controller in one process) on loopback ports.

# kafka_properties DIR BROKER_PORT CONTROLLER_PORT LOG_DIRS: writes DIR/server.properties.
kafka_properties() {
  cat >"$1/server.properties" <<EOF2
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$3
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF2
}

# kafka_format DIR JAVA_COMMAND...: formats the node's storage under a new cluster id (the
# JVM command line runs kafka.tools.StorageTool).
kafka_format() {
  local dir=$1 cluster_id
  shift
  cluster_id=$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  "$@" kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$dir/server.properties"
}
