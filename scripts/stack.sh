#!/usr/bin/env bash
# The real test stack: etcd + source Milvus 2.3.5 (natsmq, Kafka on a tansu
# broker, or Pulsar on a pulsar-lite broker behind scripts/pulsar_shim.py) +
# target Milvus 2.3.5.
#
#   scripts/stack.sh start    start what is not running, wait until all is healthy
#   scripts/stack.sh stop     stop everything this stack started (TERM, then KILL)
#   scripts/stack.sh status   print each part and its address; exit 0 iff all healthy
#   scripts/stack.sh env      print the addresses as shell assignments
#   scripts/stack.sh reset    stop, then delete the run folder (all data and logs)
#   scripts/stack.sh ports    print every port this configuration binds (PORT LABEL)
#
# Everything (pids, logs, data, configs, the unpacked Milvus binary) lives in
# one run folder. Needs scripts/setup.sh first.
#
# Environment (defaults in brackets):
#   CDC_RUN_DIR          run folder                              [<repo>/.run/stack]
#   CDC_VENV             venv made by setup.sh                   [<repo>/.venv]
#   CDC_ETCD_PORT        etcd client port                        [2379]
#   CDC_ETCD_PEER_PORT   etcd peer port                          [CDC_ETCD_PORT+1]
#   CDC_SOURCE_PORT      source proxy port; the source also uses the next 9 ports
#                        (proxy internal, coords, nodes; +9 = /healthz)   [19530]
#   CDC_NATS_PORT        source natsmq (NATS JetStream) port      [4222]
#   CDC_SOURCE_MQ        the source's queue: natsmq, kafka or pulsar  [natsmq]
#   CDC_KAFKA_PORT       with kafka: the broker's port (tansu, a Kafka-compatible
#                        broker from PyPI, in memory)             [CDC_NATS_PORT]
#   CDC_PULSAR_PORT      with pulsar: the port Milvus and the agents use, served
#                        by scripts/pulsar_shim.py (a protocol shim that makes
#                        the test broker act like Apache Pulsar)  [CDC_NATS_PORT]
#   CDC_PULSAR_BROKER_PORT  with pulsar: pulsar-lite's own port (a Pulsar-
#                        compatible broker from PyPI, data in the run folder,
#                        emptied whenever it starts)              [CDC_NATS_PORT+1]
#   CDC_PULSAR_WEB_PORT  with pulsar: pulsar-lite's HTTP (metrics) port, Milvus's
#                        pulsar.webport                           [CDC_NATS_PORT+2]
#   CDC_PULSAR_TENANT / CDC_PULSAR_NAMESPACE  with pulsar: Milvus's pulsar.tenant
#                        and pulsar.namespace                     [public / default]
#   CDC_TARGET_PORT      target proxy port, plus the next 9       [19540]
#   CDC_SOURCE_ROOT_PATH / CDC_TARGET_ROOT_PATH  etcd.rootPath    [source / target]
#   CDC_SOURCE_AUTH / CDC_TARGET_AUTH  1 = common.security.authorizationEnabled
#                        (user root, password Milvus)             [0 / 0]
#   CDC_SOURCE_EXTRA / CDC_TARGET_EXTRA  extra Milvus config, whitespace-separated
#                        KEY=VALUE, e.g. "common.ttMsgEnabled=false"  []
#   CDC_START_TIMEOUT    seconds to wait for each part to be healthy   [90]
#   CDC_STOP_GRACE       seconds between SIGTERM and SIGKILL          [15]
#   CDC_MILVUS_STOP_SIGNAL  signal that stops Milvus: TERM (fast; the natsmq
#                        source exits at once) or QUIT (full Milvus graceful
#                        stop, often slower than CDC_STOP_GRACE)  [TERM]
#
# `start` is idempotent: a part that runs with the same command line is kept; a
# part whose command line changed (ports, auth, extra config) is restarted.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${CDC_RUN_DIR:-$REPO/.run/stack}
VENV=${CDC_VENV:-$REPO/.venv}
PY=$VENV/bin/python
ETCD_BIN=${CDC_ETCD_BIN:-etcd}

ETCD_PORT=${CDC_ETCD_PORT:-2379}
ETCD_PEER_PORT=${CDC_ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
SOURCE_PORT=${CDC_SOURCE_PORT:-19530}
TARGET_PORT=${CDC_TARGET_PORT:-19540}
NATS_PORT=${CDC_NATS_PORT:-4222}
SOURCE_MQ=${CDC_SOURCE_MQ:-natsmq}
# The broker takes the natsmq port by default, so a stack's port plan is the
# same whichever queue its source uses.
KAFKA_PORT=${CDC_KAFKA_PORT:-$NATS_PORT}
KAFKA_TOOLS=${CDC_KAFKA_TOOLS:-$VENV/kafka}
# Pulsar: the shim takes the natsmq port (Milvus and the agents connect to it);
# pulsar-lite and its HTTP port take the two ports after it.
PULSAR_PORT=${CDC_PULSAR_PORT:-$NATS_PORT}
PULSAR_BROKER_PORT=${CDC_PULSAR_BROKER_PORT:-$((NATS_PORT + 1))}
PULSAR_WEB_PORT=${CDC_PULSAR_WEB_PORT:-$((NATS_PORT + 2))}
PULSAR_TENANT=${CDC_PULSAR_TENANT:-public}
PULSAR_NAMESPACE=${CDC_PULSAR_NAMESPACE:-default}
PULSAR_TOOLS=${CDC_PULSAR_TOOLS:-$VENV/pulsar}
SOURCE_ROOT_PATH=${CDC_SOURCE_ROOT_PATH:-source}
TARGET_ROOT_PATH=${CDC_TARGET_ROOT_PATH:-target}
SOURCE_AUTH=${CDC_SOURCE_AUTH:-0}
TARGET_AUTH=${CDC_TARGET_AUTH:-0}
SOURCE_EXTRA=${CDC_SOURCE_EXTRA:-}
TARGET_EXTRA=${CDC_TARGET_EXTRA:-}
START_TIMEOUT=${CDC_START_TIMEOUT:-90}
MILVUS_STOP_SIGNAL=${CDC_MILVUS_STOP_SIGNAL:-TERM}
STOP_GRACE=${CDC_STOP_GRACE:-15}

# Milvus listens on proxy port + 0..9 (see PORT_OFFSETS in milvus_server.py);
# +9 is the webservice port (/healthz, /metrics).
MILVUS_PORT_SPAN=10
# Lowest port of Linux's default ephemeral range (net.ipv4.ip_local_port_range).
EPHEMERAL_LOW=32768
SOURCE_WEB_PORT=$((SOURCE_PORT + 9))
TARGET_WEB_PORT=$((TARGET_PORT + 9))

case $SOURCE_MQ in
  natsmq) PARTS=(etcd source target) ;;
  kafka) PARTS=(etcd broker source target) ;;
  pulsar) PARTS=(etcd broker shim source target) ;;
  *) printf '[stack] error: CDC_SOURCE_MQ must be natsmq, kafka or pulsar, got %s\n' "$SOURCE_MQ" >&2; exit 1 ;;
esac

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

# ---------------------------------------------------------------- processes

# Start time (clock ticks since boot) of a live, non-zombie process; fails otherwise.
proc_starttime() {
  local stat rest
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${stat##*) }            # fields after "pid (comm) "
  # shellcheck disable=SC2086
  set -- $rest                 # $1 = state (field 3), $20 = starttime (field 22)
  [ "$1" != Z ] && [ "$1" != X ] || return 1
  echo "${20}"
}

# Live (non-zombie) pids whose process group is $1 (a zombie cannot be
# signalled away, and nothing may reap it in a container, so it counts as gone).
group_members() {
  local pgid=$1 f stat rest
  for f in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null <"$f" || continue   # builtin: no fork per process
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest               # $1 state, $2 ppid, $3 pgrp
    if [ "${3:-}" = "$pgid" ] && [ "$1" != Z ] && [ "$1" != X ]; then
      f=${f#/proc/}
      echo "${f%/stat}"
    fi
  done
}
group_alive() { [ -n "$(group_members "$1")" ]; }

pidfile() { echo "$RUN_DIR/$1.pid"; }
logfile() { echo "$RUN_DIR/$1.log"; }
cmdfile() { echo "$RUN_DIR/$1.cmd"; }

# Pid of a running part (leader alive with the recorded start time); fails otherwise.
part_pid() {
  local f pid start now
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  read -r pid start <"$f" || return 1
  now=$(proc_starttime "$pid") || return 1
  [ "$now" = "$start" ] || return 1
  echo "$pid"
}

# The process group recorded for a part, if any member of it is still alive and
# the group's id was not taken over by an unrelated process.
part_group() {
  local f pid start now
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  read -r pid start <"$f" || return 1
  if now=$(proc_starttime "$pid") && [ "$now" != "$start" ]; then
    return 1                   # pid reused by something else
  fi
  group_alive "$pid" || return 1
  echo "$pid"
}

# Forget a stopped part: its pid file and the file Milvus 2.3.5 always writes
# to /tmp/milvus/server_id_<pid> (not configurable).
forget_part() {
  local pid _
  if [ -f "$(pidfile "$1")" ] && read -r pid _ <"$(pidfile "$1")"; then
    case $1 in source | target) rm -f "/tmp/milvus/server_id_$pid" ;; esac
  fi
  rm -f "$(pidfile "$1")"
}

stop_part() {
  local part=$1 pgid deadline
  if ! pgid=$(part_group "$part"); then
    forget_part "$part"
    return 0
  fi
  # Milvus: SIGTERM by default. With natsmq (the source) the embedded NATS
  # server catches SIGTERM too, shuts NATS down and exits the process at once
  # (status 1) before Milvus' own graceful stop runs. SIGQUIT starts only
  # Milvus' graceful stop, which on 2.3.5 took 3-26 s in our runs.
  local sig=TERM
  case $part in source | target) sig=$MILVUS_STOP_SIGNAL ;; esac
  log "stopping $part (process group $pgid, SIG$sig)"
  kill "-$sig" -- "-$pgid" 2>/dev/null || true
  deadline=$(($(now_ms) + STOP_GRACE * 1000))
  while group_alive "$pgid" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.1; done
  if group_alive "$pgid"; then
    log "$part did not exit within ${STOP_GRACE}s after SIG$sig: SIGKILL"
    kill -KILL -- "-$pgid" 2>/dev/null || true
    deadline=$(($(now_ms) + 10000))
    while group_alive "$pgid" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.1; done
    if group_alive "$pgid"; then
      log "error: $part (group $pgid) still alive after SIGKILL"
      return 1
    fi
  fi
  forget_part "$part"
  log "$part stopped"
}

# ------------------------------------------------------------------- health

# 0 if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Body of an HTTP/1.0 GET on 127.0.0.1 (no curl needed).
http_get() {
  local port=$1 path=$2
  # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    sed "1,/^\r\{0,1\}$/d" <&3
  ' _ "$port" "$path" 2>/dev/null
}

healthy_etcd() {
  part_pid etcd >/dev/null && http_get "$ETCD_PORT" /health | grep -q '"health":"true"'
}

healthy_milvus() {  # part web_port proxy_port
  part_pid "$1" >/dev/null && [ "$(http_get "$2" /healthz)" = OK ] && port_in_use "$3"
}

healthy_nats() {
  local info
  # shellcheck disable=SC2016
  info=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$NATS_PORT" 2>/dev/null) || return 1
  case $info in INFO*'"jetstream":true'*) return 0 ;; *) return 1 ;; esac
}

healthy() {
  case $1 in
    etcd) healthy_etcd ;;
    broker)
      if [ "$SOURCE_MQ" = pulsar ]; then
        part_pid broker >/dev/null && port_in_use "$PULSAR_BROKER_PORT"
      else
        part_pid broker >/dev/null && port_in_use "$KAFKA_PORT"
      fi ;;
    shim) part_pid shim >/dev/null && port_in_use "$PULSAR_PORT" ;;
    source)
      healthy_milvus source "$SOURCE_WEB_PORT" "$SOURCE_PORT" || return 1
      [ "$SOURCE_MQ" != natsmq ] || healthy_nats ;;
    target) healthy_milvus target "$TARGET_WEB_PORT" "$TARGET_PORT" ;;
  esac
}

address() {
  local src_auth="" tgt_auth=""
  [ "$SOURCE_AUTH" = 1 ] && src_auth=", auth root:Milvus"
  [ "$TARGET_AUTH" = 1 ] && tgt_auth=", auth root:Milvus"
  case $1 in
    etcd) echo "http://127.0.0.1:$ETCD_PORT" ;;
    broker)
      if [ "$SOURCE_MQ" = pulsar ]; then
        echo "pulsar-lite pulsar://127.0.0.1:$PULSAR_BROKER_PORT (http 127.0.0.1:$PULSAR_WEB_PORT, data in $RUN_DIR/broker/data)"
      else
        echo "kafka 127.0.0.1:$KAFKA_PORT (tansu, in memory)"
      fi ;;
    shim) echo "pulsar://127.0.0.1:$PULSAR_PORT (pulsar_shim.py in front of 127.0.0.1:$PULSAR_BROKER_PORT)" ;;
    source)
      local mq="natsmq nats://127.0.0.1:$NATS_PORT"
      case $SOURCE_MQ in
        kafka) mq="kafka 127.0.0.1:$KAFKA_PORT" ;;
        pulsar) mq="pulsar pulsar://127.0.0.1:$PULSAR_PORT, $PULSAR_TENANT/$PULSAR_NAMESPACE" ;;
      esac
      echo "127.0.0.1:$SOURCE_PORT (healthz http://127.0.0.1:$SOURCE_WEB_PORT/healthz, $mq, etcd rootPath $SOURCE_ROOT_PATH$src_auth)" ;;
    target) echo "127.0.0.1:$TARGET_PORT (healthz http://127.0.0.1:$TARGET_WEB_PORT/healthz, etcd rootPath $TARGET_ROOT_PATH$tgt_auth)" ;;
  esac
}

# -------------------------------------------------------------- definitions

# Ports a part listens on, with a label each.
part_ports() {
  local i
  case $1 in
    etcd) echo "$ETCD_PORT:etcd-client $ETCD_PEER_PORT:etcd-peer" ;;
    broker)
      if [ "$SOURCE_MQ" = pulsar ]; then
        echo "$PULSAR_BROKER_PORT:pulsar-lite $PULSAR_WEB_PORT:pulsar-lite-http"
      else
        echo "$KAFKA_PORT:kafka"
      fi ;;
    shim) echo "$PULSAR_PORT:pulsar-shim" ;;
    source)
      for ((i = 0; i < MILVUS_PORT_SPAN; i++)); do printf '%s:source+%s ' $((SOURCE_PORT + i)) "$i"; done
      if [ "$SOURCE_MQ" = natsmq ]; then echo "$NATS_PORT:source-natsmq"; else echo; fi ;;
    target)
      for ((i = 0; i < MILVUS_PORT_SPAN; i++)); do printf '%s:target+%s ' $((TARGET_PORT + i)) "$i"; done
      echo ;;
  esac
}

check_config() {
  local v p port label
  local -A seen=()
  for v in ETCD_PORT ETCD_PEER_PORT SOURCE_PORT TARGET_PORT NATS_PORT KAFKA_PORT PULSAR_PORT \
    PULSAR_BROKER_PORT PULSAR_WEB_PORT START_TIMEOUT STOP_GRACE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "CDC_$v must be a number, got '${!v}'"
  done
  for v in PULSAR_TENANT PULSAR_NAMESPACE; do
    [[ ${!v} =~ ^[A-Za-z0-9_.-]+$ ]] || die "CDC_$v must be a plain name, got '${!v}'"
  done
  for v in SOURCE_AUTH TARGET_AUTH; do
    [[ ${!v} =~ ^[01]$ ]] || die "CDC_$v must be 0 or 1, got '${!v}'"
  done
  [ "$SOURCE_ROOT_PATH" != "$TARGET_ROOT_PATH" ] || die "source and target need different etcd root paths"
  for p in "${PARTS[@]}"; do
    for port in $(part_ports "$p"); do
      label=${port#*:}
      port=${port%%:*}
      if [ "$port" -le 0 ] || [ "$port" -ge 65536 ]; then die "$label port $port out of range"; fi
      # Linux hands out 32768-60999 to outgoing connections: a server port
      # there may be taken by any client socket (or its TIME-WAIT) at random.
      if [ "$port" -ge "$EPHEMERAL_LOW" ] && [ "${CDC_ALLOW_EPHEMERAL_PORTS:-0}" != 1 ]; then
        die "$label port $port lies in the ephemeral port range (>= $EPHEMERAL_LOW), where outgoing connections collide with it; choose ports below $EPHEMERAL_LOW (or set CDC_ALLOW_EPHEMERAL_PORTS=1)"
      fi
      if [ -n "${seen[$port]:-}" ]; then
        die "port $port is used twice (${seen[$port]} and $label); the Milvus proxy ports must be >= $MILVUS_PORT_SPAN apart and not overlap the etcd/NATS/broker ports"
      fi
      seen[$port]=$label
    done
  done
}

# Prints the command line of a part, one argument per line.
part_cmd() {
  local kv
  case $1 in
    etcd)
      printf '%s\n' "$ETCD_BIN" --name cdc-test --data-dir "$RUN_DIR/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "cdc-test=http://127.0.0.1:$ETCD_PEER_PORT" \
        --logger zap --log-outputs stderr
      ;;
    broker)
      if [ "$SOURCE_MQ" = pulsar ]; then
        # log level warn: info logs every dispatch and ack (megabytes a minute)
        printf '%s\n' "$PULSAR_TOOLS/pulsar-lite" --config "$RUN_DIR/broker/pulsar-lite.toml" \
          --addr "127.0.0.1:$PULSAR_BROKER_PORT" --db-path "$RUN_DIR/broker/data/db" --log-level warn
      else
        printf '%s\n' "$KAFKA_TOOLS/tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
          --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/
      fi
      ;;
    shim)
      printf '%s\n' "$PULSAR_TOOLS/venv/bin/python" "$REPO/scripts/pulsar_shim.py" \
        --listen "127.0.0.1:$PULSAR_PORT" --broker "127.0.0.1:$PULSAR_BROKER_PORT"
      ;;
    source)
      printf '%s\n' "$PY" "$REPO/scripts/milvus_server.py" --name source \
        --base-dir "$RUN_DIR/source" --bin-root "$RUN_DIR" --proxy-port "$SOURCE_PORT" \
        --etcd-endpoints "127.0.0.1:$ETCD_PORT" --etcd-root-path "$SOURCE_ROOT_PATH"
      case $SOURCE_MQ in
        kafka) printf '%s\n' --mq kafka --kafka-brokers "127.0.0.1:$KAFKA_PORT" --rdkafka-dir "$KAFKA_TOOLS/rdkafka" ;;
        pulsar)
          printf '%s\n' --mq pulsar --pulsar-address 127.0.0.1 --pulsar-port "$PULSAR_PORT" \
            --pulsar-webport "$PULSAR_WEB_PORT" --pulsar-tenant "$PULSAR_TENANT" \
            --pulsar-namespace "$PULSAR_NAMESPACE" ;;
        *) printf '%s\n' --mq natsmq --nats-port "$NATS_PORT" ;;
      esac
      [ "$SOURCE_AUTH" = 1 ] && echo --auth
      for kv in $SOURCE_EXTRA; do printf '%s\n' --set "$kv"; done
      ;;
    target)
      printf '%s\n' "$PY" "$REPO/scripts/milvus_server.py" --name target \
        --base-dir "$RUN_DIR/target" --bin-root "$RUN_DIR" --proxy-port "$TARGET_PORT" \
        --etcd-endpoints "127.0.0.1:$ETCD_PORT" --etcd-root-path "$TARGET_ROOT_PATH" \
        --mq rocksmq
      [ "$TARGET_AUTH" = 1 ] && echo --auth
      for kv in $TARGET_EXTRA; do printf '%s\n' --set "$kv"; done
      ;;
  esac
  return 0
}

# ------------------------------------------------------------------ start

launch() {
  local part=$1 log pid start port label busy=() cmd=() env_unset=() v
  forget_part "$part"          # a previous run of it that died on its own
  mapfile -t cmd < <(part_cmd "$part")
  for port in $(part_ports "$part"); do
    label=${port#*:}
    port=${port%%:*}
    if port_in_use "$port"; then busy+=("$port ($label)"); fi
  done
  if [ "${#busy[@]}" -gt 0 ]; then
    log "error: cannot start $part: port(s) already in use by another process: ${busy[*]}"
    if command -v ss >/dev/null 2>&1; then
      for port in "${busy[@]}"; do ss -Hltnp "sport = :${port%% *}" 2>/dev/null | sed 's/^/[stack]   /' >&2 || true; done
    fi
    log "       stop that process or choose other ports (CDC_ETCD_PORT, CDC_SOURCE_PORT, CDC_TARGET_PORT, CDC_NATS_PORT, CDC_PULSAR_BROKER_PORT, CDC_PULSAR_WEB_PORT)"
    return 1
  fi
  # etcd refuses flags that an ETCD_* environment variable also sets
  for v in $(compgen -e); do
    case $v in ETCD_* | ETCDCTL_*) env_unset+=(-u "$v") ;; esac
  done
  log=$(logfile "$part")
  mkdir -p "$RUN_DIR/$part"
  if [ "$part" = broker ] && [ "$SOURCE_MQ" = pulsar ]; then
    pulsar_lite_config >"$RUN_DIR/broker/pulsar-lite.toml"
  fi
  printf '\n===== %s start %s =====\n%s\n' "$part" "$(date -u +%FT%TZ)" "${cmd[*]}" >>"$log"
  # setsid: own session and process group (pgid = pid), so stop can signal the
  # whole group; 9>&- keeps the stack lock out of the child.
  setsid env "${env_unset[@]}" "${cmd[@]}" >>"$log" 2>&1 </dev/null 9>&- &
  pid=$!
  start=$(proc_starttime "$pid") || start=unknown
  echo "$pid $start" >"$(pidfile "$part")"
  part_fingerprint "$part" >"$(cmdfile "$part")"
  log "started $part (pid $pid), log $log"
}

# The last lines this part logged since its latest start, each cut to 300 chars.
log_tail() {
  local f
  f=$(logfile "$1")
  log "last lines of $f:"
  awk -v marker="===== $1 start" 'index($0, marker) == 1 { n = NR } { line[NR] = $0 }
    END { s = (NR - 25 > n ? NR - 25 : n); for (i = s; i <= NR; i++) print substr(line[i], 1, 300) }' "$f" |
    sed 's/^/    /' >&2
}

wait_healthy() {
  local part=$1 deadline=$2
  while :; do
    if healthy "$part"; then return 0; fi
    if ! part_pid "$part" >/dev/null; then
      log "error: $part exited during startup"
      log_tail "$part"
      return 1
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      log "error: $part not healthy after ${START_TIMEOUT}s"
      log_tail "$part"
      return 1
    fi
    sleep 0.2
  done
}

# pulsar-lite's config file: only its HTTP (metrics) address.
pulsar_lite_config() {
  printf '[metrics]\naddr = "127.0.0.1:%s"\n' "$PULSAR_WEB_PORT"
}

# What identifies a part's configuration: its command line, and for Milvus the
# launcher that renders the config (for the shim its code, for pulsar-lite its
# config file).
part_fingerprint() {
  part_cmd "$1"
  case $1 in
    source | target) sha256sum "$REPO/scripts/milvus_server.py" | cut -d' ' -f1 ;;
    shim) sha256sum "$REPO/scripts/pulsar_shim.py" | cut -d' ' -f1 ;;
    broker) if [ "$SOURCE_MQ" = pulsar ]; then pulsar_lite_config; fi ;;
  esac
}

# Is the part running with exactly the configuration we want now?
same_cmd() {
  [ -f "$(cmdfile "$1")" ] && [ "$(cat "$(cmdfile "$1")")" = "$(part_fingerprint "$1")" ]
}

write_env() {
  cat >"$RUN_DIR/stack.env" <<EOF
# written by scripts/stack.sh start; source it or read it
CDC_RUN_DIR=$RUN_DIR
CDC_ETCD_ENDPOINT=127.0.0.1:$ETCD_PORT
CDC_SOURCE_ADDR=127.0.0.1:$SOURCE_PORT
CDC_SOURCE_URI=http://127.0.0.1:$SOURCE_PORT
CDC_SOURCE_HEALTHZ=http://127.0.0.1:$SOURCE_WEB_PORT/healthz
CDC_SOURCE_ETCD_ROOT=$SOURCE_ROOT_PATH
CDC_SOURCE_AUTH=$SOURCE_AUTH
CDC_SOURCE_MQ=$SOURCE_MQ
CDC_NATS_URL=nats://127.0.0.1:$NATS_PORT
CDC_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
CDC_PULSAR_URL=pulsar://127.0.0.1:$PULSAR_PORT
CDC_PULSAR_BROKER_URL=pulsar://127.0.0.1:$PULSAR_BROKER_PORT
CDC_PULSAR_TENANT=$PULSAR_TENANT
CDC_PULSAR_NAMESPACE=$PULSAR_NAMESPACE
CDC_TARGET_ADDR=127.0.0.1:$TARGET_PORT
CDC_TARGET_URI=http://127.0.0.1:$TARGET_PORT
CDC_TARGET_HEALTHZ=http://127.0.0.1:$TARGET_WEB_PORT/healthz
CDC_TARGET_ETCD_ROOT=$TARGET_ROOT_PATH
CDC_TARGET_AUTH=$TARGET_AUTH
EOF
}

cmd_start() {
  local t0 part started=() restart=() deadline failed=0 pids=() i
  t0=$(now_ms)
  check_config
  [ -x "$PY" ] || die "no venv python at $PY; run scripts/setup.sh (or set CDC_VENV)"
  command -v "$ETCD_BIN" >/dev/null 2>&1 || die "etcd not found; run scripts/setup.sh"
  [ -f "$REPO/scripts/milvus_server.py" ] || die "missing $REPO/scripts/milvus_server.py"

  # parts running with another configuration are restarted (dependents first)
  for part in target source shim broker etcd; do
    if part_group "$part" >/dev/null && ! { part_pid "$part" >/dev/null && same_cmd "$part"; }; then
      log "$part runs with a different configuration (or its leader died): restarting it"
      # a new broker wipes the source anyway; stopped first, it stops quickly
      if [ "$part" = broker ]; then stop_part source; fi
      stop_part "$part"
      restart+=("$part")
    fi
  done

  if part_pid etcd >/dev/null; then
    log "etcd already running"
  else
    mkdir -p "$RUN_DIR/etcd"
    launch etcd || return 1
    started+=(etcd)
  fi
  wait_healthy etcd $(($(now_ms) + START_TIMEOUT * 1000)) || { cleanup_started "${started[@]}"; return 1; }
  if [ "$SOURCE_MQ" = kafka ]; then
    [ -x "$KAFKA_TOOLS/tansu" ] && [ -f "$KAFKA_TOOLS/rdkafka/librdkafka.so.1" ] ||
      die "no Kafka test broker in $KAFKA_TOOLS; run scripts/setup.sh"
  elif [ "$SOURCE_MQ" = pulsar ]; then
    [ -x "$PULSAR_TOOLS/pulsar-lite" ] && [ -x "$PULSAR_TOOLS/venv/bin/python" ] ||
      die "no Pulsar test broker in $PULSAR_TOOLS; run scripts/setup.sh"
  fi
  if [ "$SOURCE_MQ" != natsmq ]; then
    if part_pid broker >/dev/null; then
      log "broker already running"
    else
      # A new broker is empty (tansu keeps its topics in memory, pulsar-lite's
      # data is deleted here: it writes db.metadata.json and db.rocksdb/ in
      # broker/data), so the source's metadata (which names positions in
      # them) must start empty too.
      rm -rf "$RUN_DIR/broker/data"
      [ "$SOURCE_MQ" != pulsar ] || mkdir -p "$RUN_DIR/broker/data"
      if [ -d "$RUN_DIR/source" ]; then
        log "new (empty) broker: the source starts from empty data too"
        stop_part source
        rm -rf "$RUN_DIR/source"
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" del --prefix "$SOURCE_ROOT_PATH/" >/dev/null ||
          die "cannot clear the source's metadata in etcd"
      fi
      launch broker || { cleanup_started "${started[@]}"; return 1; }
      started+=(broker)
    fi
    wait_healthy broker $(($(now_ms) + START_TIMEOUT * 1000)) || { cleanup_started "${started[@]}"; return 1; }
  fi
  if [ "$SOURCE_MQ" = pulsar ]; then
    if part_pid shim >/dev/null; then
      log "shim already running"
    else
      launch shim || { cleanup_started "${started[@]}"; return 1; }
      started+=(shim)
    fi
    wait_healthy shim $(($(now_ms) + START_TIMEOUT * 1000)) || { cleanup_started "${started[@]}"; return 1; }
  fi

  for part in source target; do
    if part_pid "$part" >/dev/null; then
      log "$part already running"
    else
      launch "$part" || { cleanup_started "${started[@]}"; return 1; }
      started+=("$part")
    fi
  done
  deadline=$(($(now_ms) + START_TIMEOUT * 1000))
  # wait for both in parallel; each reports its own failure
  for part in source target; do
    wait_healthy "$part" "$deadline" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed=1
  done
  if [ "$failed" = 1 ]; then
    cleanup_started "${started[@]}"
    return 1
  fi
  write_env
  log "stack healthy in $(($(now_ms) - t0))ms (started: ${started[*]:-nothing})"
  cmd_status
}

cleanup_started() {
  local part
  [ "$#" -gt 0 ] || return 0
  log "stopping what this start launched: $*"
  for part in "$@"; do stop_part "$part" || true; done
}

# ------------------------------------------------------------ stop/status

cmd_stop() {
  local rc=0 pid_s pid_t
  [ -d "$RUN_DIR" ] || { log "nothing to stop ($RUN_DIR does not exist)"; return 0; }
  # the two Milvus instances stop in parallel, etcd last
  stop_part target & pid_t=$!
  stop_part source & pid_s=$!
  wait "$pid_t" || rc=1
  wait "$pid_s" || rc=1
  if [ -f "$(pidfile shim)" ]; then stop_part shim || rc=1; fi
  if [ -f "$(pidfile broker)" ]; then stop_part broker || rc=1; fi
  stop_part etcd || rc=1
  rm -f "$RUN_DIR/stack.env"
  return "$rc"
}

cmd_status() {
  local part rc=0 state pid
  for part in "${PARTS[@]}"; do
    if pid=$(part_pid "$part"); then
      if healthy "$part"; then state=healthy; else state=unhealthy; rc=1; fi
      pid="pid $pid"
    else
      state=stopped
      pid="-"
      rc=1
    fi
    printf '%-7s %-9s %-10s %s\n' "$part" "$state" "$pid" "$(address "$part")"
  done
  return "$rc"
}

cmd_ports() {
  local p port
  check_config
  for p in "${PARTS[@]}"; do
    for port in $(part_ports "$p"); do printf '%s %s\n' "${port%%:*}" "${port#*:}"; done
  done
}

cmd_env() {
  [ -f "$RUN_DIR/stack.env" ] || die "stack not started ($RUN_DIR/stack.env missing)"
  grep -v '^#' "$RUN_DIR/stack.env"
}

cmd_reset() {
  cmd_stop
  if [ -d "$RUN_DIR" ]; then
    [ -f "$RUN_DIR/.cdc-stack" ] || die "$RUN_DIR has no .cdc-stack marker; not deleting it"
    rm -rf "$RUN_DIR"
    log "deleted $RUN_DIR"
  fi
}

main() {
  local action=${1:-}
  case $action in
    ports) cmd_ports; return ;;
    start | stop | status | env | reset) ;;
    *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  case $MILVUS_STOP_SIGNAL in
    TERM | QUIT | INT | KILL) ;;
    *) die "CDC_MILVUS_STOP_SIGNAL must be TERM, QUIT, INT or KILL" ;;
  esac
  mkdir -p "$RUN_DIR"
  touch "$RUN_DIR/.cdc-stack"
  # one stack.sh at a time per run folder (status does not need the lock)
  if [ "$action" != status ] && [ "$action" != env ]; then
    exec 9>"$RUN_DIR/.lock"
    flock -w 600 9 || die "another scripts/stack.sh holds $RUN_DIR/.lock"
  fi
  "cmd_$action"
}

main "$@"
