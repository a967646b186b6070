#!/usr/bin/env bash
# Installs what building and testing Sluice need, when it is missing (Debian/Ubuntu):
#   protoc  (protobuf-compiler)  needed to build: etcd-client and sluice-proto compile .proto files
#   etcd    (etcd-server)        needed by the tests and by `sluice cluster up`
# Usage: scripts/ensure-deps.sh [build|test]   (default: test = both)
set -euo pipefail

want="${1:-test}"
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "$want" = test ]; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server etcd-client)
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
