#!/usr/bin/env bash
# Installs what is missing and starts the whole demo in the background:
# etcd, a source Milvus 2.3.5 (natsmq; Kafka or Pulsar with CDC_SOURCE_MQ), a
# target Milvus 2.3.5 and the milvus-cdc agent replica(s). Returns once
# everything is healthy and prints what to curl.
#
#   scripts/demo.sh          install + start (idempotent)
#   scripts/demo.sh stop     stop the agents and the stack
#   scripts/demo.sh status   show what runs
#
# Addresses (environment overrides in brackets):
#   etcd            127.0.0.1:2379    [CDC_ETCD_PORT]
#   source Milvus   127.0.0.1:19530   [CDC_SOURCE_PORT]   natsmq 127.0.0.1:4222 [CDC_NATS_PORT]
#                   (CDC_SOURCE_MQ=kafka: on a Kafka broker at 127.0.0.1:4222 instead;
#                    CDC_SOURCE_MQ=pulsar: on Pulsar at pulsar://127.0.0.1:4222, a
#                    protocol shim in front of pulsar-lite on 4223, HTTP 4224)
#   target Milvus   127.0.0.1:19540   [CDC_TARGET_PORT]
#   agents          http://127.0.0.1:8444 (then :8445, :8446) [CDC_AGENT_PORT = first port]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export CDC_RUN_DIR=${CDC_RUN_DIR:-$REPO/.run/stack}
AGENT_DIR=$REPO/.run/demo
AGENT_PORT=${CDC_AGENT_PORT:-8444}
# Three replicas: one leads (elected through etcd), the others forward /cdc to it.
REPLICAS=${CDC_AGENT_REPLICAS:-3}
BIN=$REPO/target/release/milvus-cdc

log() { printf '[demo] %s\n' "$*" >&2; }

agent_ports() { local i; for ((i = 0; i < REPLICAS; i++)); do echo $((AGENT_PORT + i)); done; }

stop_agents() {
  local pidfile pid
  for pidfile in "$AGENT_DIR"/agent-*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

start_agents() {
  mkdir -p "$AGENT_DIR"
  # shellcheck disable=SC1091
  . "$CDC_RUN_DIR/stack.env"
  local port pidfile queue_env=()
  case ${CDC_SOURCE_MQ:-natsmq} in
    kafka) queue_env=(MILVUS_CDC_SOURCE__MQ_TYPE=kafka "MILVUS_CDC_SOURCE__KAFKA__BROKERS=[\"$CDC_KAFKA_BROKERS\"]") ;;
    pulsar)
      queue_env=(MILVUS_CDC_SOURCE__MQ_TYPE=pulsar "MILVUS_CDC_SOURCE__PULSAR__ADDRESS=$CDC_PULSAR_URL"
        "MILVUS_CDC_SOURCE__PULSAR__TENANT=$CDC_PULSAR_TENANT"
        "MILVUS_CDC_SOURCE__PULSAR__NAMESPACE=$CDC_PULSAR_NAMESPACE") ;;
    *) queue_env=("MILVUS_CDC_SOURCE__NATS_URL=$CDC_NATS_URL") ;;
  esac
  for port in $(agent_ports); do
    pidfile=$AGENT_DIR/agent-$port.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "agent on :$port already running"
      continue
    fi
    MILVUS_CDC_SERVER__LISTEN=0.0.0.0:$port \
    MILVUS_CDC_SERVER__ADVERTISE=http://127.0.0.1:$port \
    MILVUS_CDC_ETCD__ENDPOINTS="[\"$CDC_ETCD_ENDPOINT\"]" \
    MILVUS_CDC_SOURCE__MILVUS_URI=$CDC_SOURCE_URI \
      setsid env "${queue_env[@]}" "$BIN" serve >>"$AGENT_DIR/agent-$port.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  done
  for port in $(agent_ports); do
    for _ in $(seq 1 100); do
      curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 ||
      { log "agent on :$port is not ready; log:"; tail -n 20 "$AGENT_DIR/agent-$port.log" >&2; exit 1; }
  done
}

case "${1:-start}" in
  start)
    log "1/4 installing what is missing (scripts/setup.sh)"
    scripts/setup.sh
    log "2/4 building milvus-cdc (release; a few minutes the first time)"
    cargo build --release
    log "3/4 starting etcd, the source and the target Milvus (scripts/stack.sh start)"
    scripts/stack.sh start
    log "4/4 starting $REPLICAS agent replica(s) on :$AGENT_PORT and up"
    start_agents
    # shellcheck disable=SC1091
    . "$CDC_RUN_DIR/stack.env"
    cat <<MSG

milvus-cdc demo is running.
  etcd           $CDC_ETCD_ENDPOINT
  source Milvus  $CDC_SOURCE_URI   ($CDC_SOURCE_MQ $(case $CDC_SOURCE_MQ in kafka) echo "$CDC_KAFKA_BROKERS" ;; pulsar) echo "$CDC_PULSAR_URL" ;; *) echo "$CDC_NATS_URL" ;; esac))
  target Milvus  $CDC_TARGET_URI
  agents         $(for p in $(agent_ports); do printf 'http://127.0.0.1:%s ' "$p"; done)
  logs           $AGENT_DIR, $CDC_RUN_DIR

Try:
  curl -s -X POST http://127.0.0.1:$AGENT_PORT/cdc -H 'Content-Type: application/json' -d '{
    "request_type": "create",
    "request_data": {
      "milvus_connect_param": {"uri": "$CDC_TARGET_URI", "connect_timeout": 10},
      "collection_infos": [{"name": "*"}]}}'
  curl -s -X POST http://127.0.0.1:$AGENT_PORT/cdc -d '{"request_type": "list"}'
  curl -s http://127.0.0.1:$AGENT_PORT/metrics

Stop everything with: scripts/demo.sh stop
MSG
    ;;
  stop)
    stop_agents
    scripts/stack.sh stop
    ;;
  status)
    scripts/stack.sh status || true
    for port in $(agent_ports); do
      printf 'agent   :%s  %s\n' "$port" "$(curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null || echo down)"
    done
    ;;
  *) echo "usage: scripts/demo.sh [start|stop|status]" >&2; exit 2 ;;
esac
