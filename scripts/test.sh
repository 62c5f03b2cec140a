#!/usr/bin/env bash
# Runs every test of milvus-cdc: formatting and lint, unit tests, then the
# end-to-end suite on a real stack (etcd + source and target Milvus 2.3.5) that
# this script installs, starts on its own ports, and stops again.
#
#   scripts/test.sh          everything (what CI runs): unit, e2e, chaos
#   scripts/test.sh unit     scripts checks, cargo fmt/clippy/test (no servers)
#   scripts/test.sh e2e      the end-to-end suite only (extra args go to pytest)
#   scripts/test.sh chaos    the fault-injection suite, short profile: every
#                            scenario once on its own stack and three replicas
#                            (chaos-tests/run.sh long runs each 10 times)
#
# The test stack uses other ports than the demo (etcd 12379, source 29530,
# natsmq 14222, target 29540, run folder .run/test-stack), so both can run at
# once. Override with the CDC_* variables of scripts/stack.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MODE=${1:-all}
[ $# -gt 0 ] && shift

log() { printf '[test] %s\n' "$*" >&2; }

export CDC_RUN_DIR=${CDC_TEST_RUN_DIR:-$REPO/.run/test-stack}
export CDC_ETCD_PORT=${CDC_TEST_ETCD_PORT:-12379}
export CDC_SOURCE_PORT=${CDC_TEST_SOURCE_PORT:-29530}
export CDC_NATS_PORT=${CDC_TEST_NATS_PORT:-14222}
export CDC_TARGET_PORT=${CDC_TEST_TARGET_PORT:-29540}
# The target requires credentials, so the suite covers token handling.
export CDC_TARGET_AUTH=${CDC_TEST_TARGET_AUTH:-1}

unit() {
  scripts/setup.sh
  log "pytest tests/scripts (the port plan and the set-up of the README's two commands)"
  "$REPO/.venv/bin/python" -m pytest tests/scripts -q -p no:cacheprovider
  log "cargo fmt --check"
  cargo fmt --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets --quiet -- -D warnings
  log "cargo test"
  cargo test --quiet
}

e2e() {
  scripts/setup.sh
  log "cargo build (agent binary for the e2e suite)"
  cargo build --quiet
  trap 'log "stopping the test stack"; scripts/stack.sh stop || true' EXIT
  # Always from empty servers: every new task replays the source's whole
  # stream, so history left by earlier runs would only slow the suite down.
  scripts/stack.sh reset
  scripts/stack.sh start
  log "pytest tests/e2e"
  # Tests marked quarantine fail for a known, documented reason (an open
  # issue); run them with: scripts/test.sh e2e -m quarantine
  local select=(-m "not quarantine")
  for a in "$@"; do [ "$a" = -m ] && select=(); done
  CDC_BIN="$REPO/target/debug/milvus-cdc" "$REPO/.venv/bin/python" -m pytest tests/e2e -q -p no:cacheprovider -rfE "${select[@]}" "$@"
  log "stopping the test stack"
  scripts/stack.sh stop
  trap - EXIT
}

chaos() {
  scripts/setup.sh
  log "chaos-tests/run.sh short"
  cargo build --quiet
  CHAOS_SKIP_BUILD=1 chaos-tests/run.sh short --no-doc
}

case "$MODE" in
  all) unit; e2e "$@"; chaos ;;
  unit) unit ;;
  e2e) e2e "$@" ;;
  chaos) chaos ;;
  *) echo "usage: scripts/test.sh [all|unit|e2e [pytest args]|chaos]" >&2; exit 2 ;;
esac
log "all tests passed"
