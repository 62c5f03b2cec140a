#!/usr/bin/env python3
"""Does Milvus itself keep acknowledged writes across `kill -9`? No agent involved.

    .venv/bin/python chaos-tests/milvus_crash_probe.py [source|target] [--rounds N]

Against the chaos stack (.run/chaos-stack, or CHAOS_RUN_DIR and the CHAOS_*_PORT
variables of run.py; started if it is not running, left running): creates a collection (2 shards, loaded, like the chaos
workload's), inserts batches of known keys for a few seconds (every insert
acknowledged), kills the Milvus process group with SIGKILL, restarts it with
scripts/stack.sh start, and counts the distinct keys a Strong query returns
(waiting up to 120 s for them to come back; then once more after release +
load). Prints one line per round; exit code 1 if any acknowledged key is
missing. Used to tell a Milvus crash-recovery loss from a replication bug
(docs/reliability.md).
"""

import argparse
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility  # noqa: E402

from chaos_workload import connect  # noqa: E402
from cluster import Stack  # noqa: E402


def keys(c, upto):
    out = set()
    for lo in range(0, upto, 8000):
        out.update(r["id"] for r in c.query(f"id >= {lo} and id < {lo + 8000}", output_fields=["id"],
                                            limit=16384, consistency_level="Strong"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["source", "target"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    e = os.environ.get
    stack = Stack({"CDC_RUN_DIR": e("CHAOS_RUN_DIR", str(Path(__file__).resolve().parents[1]
                                                        / ".run/chaos-stack")),
                   "CDC_ETCD_PORT": e("CHAOS_ETCD_PORT", "22379"),
                   "CDC_SOURCE_PORT": e("CHAOS_SOURCE_PORT", "25530"),
                   "CDC_NATS_PORT": e("CHAOS_NATS_PORT", "24222"),
                   "CDC_TARGET_PORT": e("CHAOS_TARGET_PORT", "25540"), "CDC_TARGET_AUTH": "1",
                   "CDC_START_TIMEOUT": "240"})
    if not stack.status_ok():
        stack.start()
    env = stack.values()
    uri = env["CDC_SOURCE_URI"] if a.part == "source" else env["CDC_TARGET_URI"]
    token = None if a.part == "source" else "root:Milvus"
    rng = random.Random(7)
    lost_any = False
    for rnd in range(a.rounds):
        alias = connect(f"probe-{uuid.uuid4().hex[:6]}", uri, token)
        name = f"crash_probe_{uuid.uuid4().hex[:8]}"
        c = Collection(name, CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=8)]), using=alias, shards_num=2)
        c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        c.load()
        acked, nxt, t0 = set(), 0, time.time()
        while time.time() - t0 < a.seconds:
            ids = list(range(nxt, nxt + 200))
            c.insert([ids, [[rng.random() for _ in range(8)] for _ in ids]])
            acked.update(ids)
            nxt += 200
        os.killpg(stack.pgid(a.part), signal.SIGKILL)
        time.sleep(1)
        t = time.time()
        stack.start()
        restart = time.time() - t
        alias = connect(alias, uri, token)
        c = Collection(name, using=alias)
        deadline, got = time.time() + 120, set()
        while time.time() < deadline:
            try:
                got = keys(c, nxt)
                if got >= acked:
                    break
            except Exception:  # noqa: BLE001 - still recovering
                pass
            time.sleep(3)
        reloaded = None
        if not got >= acked:
            c.release()
            c.load()
            reloaded = len(keys(c, nxt) & acked)
        missing = acked - got
        lost_any |= bool(missing) and (reloaded is None or reloaded < len(acked))
        print(f"round {rnd + 1}: {a.part} restarted in {restart:.0f}s; acknowledged {len(acked)}, "
              f"served {len(got & acked)}, missing {len(missing)}"
              + (f" (e.g. {sorted(missing)[:5]})" if missing else "")
              + (f"; after release+load: {reloaded}" if reloaded is not None else ""), flush=True)
        utility.drop_collection(name, using=alias)
    sys.exit(1 if lost_any else 0)


if __name__ == "__main__":
    main()
