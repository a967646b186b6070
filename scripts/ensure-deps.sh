#!/usr/bin/env bash
# Installs what building and testing Sluice need, when it is missing (Debian/Ubuntu):
#   protoc  (protobuf-compiler)  needed to build: etcd-client and sluice-proto compile .proto files
#   etcd    (etcd-server)        needed by the tests and by `sluice cluster up`
#   kcat    (kcat)               needed by the tests: a real Kafka client against the Kafka listener
#   .tools/venv (python3-venv + PyPI helm-python-sdk, kubernetes-validate, PyYAML, grpcio,
#                grpcio-tools, grpcio-reflection, confluent-kafka, kafka-python, pyarrow)
#                                needed by the tests: the Helm chart is rendered, linted and
#                                validated against the Kubernetes schemas offline, and the
#                                Python client (clients/python) is generated from proto/ and
#                                run against a real cluster; confluent-kafka (librdkafka)
#                                and kafka-python are Kafka clients against the Kafka listener;
#                                pyarrow reads the Parquet sink's files back
#   java, mvn   (default-jdk-headless, maven)
#                                needed by the tests: clients/java, Kafka's Java client against
#                                the Kafka listener, built here (kafka-clients from Maven
#                                Central into clients/java/target); tests/opensearch, a real
#                                OpenSearch 2.19 node (Maven Central) for the opensearch-sink test;
#                                tests/s3proxy, S3Proxy 2.6 (Maven Central), a real S3-compatible
#                                store for the parquet-sink test
#   postgresql  (postgresql)     needed by the tests: the PostgreSQL connectors' tests start a
#                                server of their own (initdb, postgres; as the postgres user
#                                when run as root) and read it back with psql
# Usage: scripts/ensure-deps.sh [build|test]   (default: test = both)
set -euo pipefail
cd "$(dirname "$0")/.."

want="${1:-test}"
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
tools=.tools/venv
need_tools=no
if [ "$want" = test ]; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server etcd-client)
  command -v kcat >/dev/null 2>&1 || missing+=(kcat)
  command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  # The PostgreSQL connector's tests start a server of their own (initdb, postgres, psql).
  { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null 2>&1; } || missing+=(postgresql)
  if ! "$tools/bin/python" -c 'import helm_python, kubernetes_validate, yaml, grpc, grpc_tools, grpc_reflection, confluent_kafka, kafka, pyarrow' >/dev/null 2>&1; then
    need_tools=yes
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2; exit 1; }

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${missing[*]} ..." >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

if [ "$need_tools" = yes ]; then
  echo "installing the chart test tools into $tools ..." >&2
  rm -rf "$tools"
  python3 -m venv "$tools" >&2
  "$tools/bin/pip" install -q --disable-pip-version-check \
    helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.4 \
    grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-reflection==1.85.1 confluent-kafka==2.16.1 \
    kafka-python==3.0.12 pyarrow==26.0.1 >&2
fi

# Java programs the tests run: Kafka's Java client (clients/java), a real OpenSearch node
# (tests/opensearch) and S3Proxy (tests/s3proxy), each built with its dependencies from Maven Central when missing or stale.
for java_check in clients/java tests/opensearch tests/s3proxy; do
  if [ "$want" = test ] && { [ ! -d "$java_check/target/lib" ] || [ "$java_check/pom.xml" -nt "$java_check/target/lib" ] \
      || [ -n "$(find "$java_check/src" -newer "$java_check/target/lib" -name '*.java' 2>/dev/null)" ]; }; then
    echo "building $java_check (from Maven Central) ..." >&2
    rm -rf "$java_check/target"
    mvn -q -B -f "$java_check/pom.xml" compile dependency:copy-dependencies \
      -DoutputDirectory=target/lib -DincludeScope=runtime >&2
  fi
done
