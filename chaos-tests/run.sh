#!/usr/bin/env bash
# The fault-injection suite of milvus-cdc (see chaos-tests/README.md).
#
#   chaos-tests/run.sh [short|long] [scenario ...] [--seed N] [--reps N] [--max-minutes M]
#                      [--reuse-stack] [--keep-stack] [--no-doc]
#
# short: every scenario once, under 10 minutes (scripts/test.sh runs it).
# long:  every scenario 10 times with different seeds (by hand; bounded).
# Builds the agent (cargo build) unless CHAOS_SKIP_BUILD=1, then runs
# chaos-tests/run.py with the virtualenv of scripts/setup.sh. Exit code 0 iff
# every scenario passed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${CDC_VENV:-$REPO/.venv}/bin/python
[ -x "$PY" ] || { echo "chaos: no virtualenv at $PY; run scripts/setup.sh" >&2; exit 2; }
if [ "${CHAOS_SKIP_BUILD:-0}" != 1 ]; then
  echo "[chaos] cargo build" >&2
  cargo build --quiet
fi
exec "$PY" -u "$REPO/chaos-tests/run.py" "$@"
