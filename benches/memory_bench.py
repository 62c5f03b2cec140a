#!/usr/bin/env python3
"""Peak memory of one agent replicating large inserts (not a test).

    CDC_RUN_DIR=.run/test-stack .venv/bin/python benches/memory_bench.py [--inserts 24]

Inserts of ~16 MB each (1,000 rows of float vectors of dim 4096) go into a
2-shard collection on the source while one agent replicates them; prints the
agent's peak RSS (VmHWM) against replicate.max_buffer_bytes, and checks that
the target got every row.
"""

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from conftest import STACK, TARGET_TOKEN, Agent, create_body, http  # noqa: E402
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema  # noqa: E402
from workload import connect  # noqa: E402

DIM = 4096


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def applied_rows(agent):
    _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("milvus_cdc_applied_rows_total") and 'kind="insert"' in l)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inserts", type=int, default=24)
    ap.add_argument("--rows", type=int, default=1000, help="rows per insert")
    ap.add_argument("--budget-mib", type=int, default=None,
                    help="replicate.max_buffer_bytes in MiB (default: the agent's default)")
    ap.add_argument("--backlog", action="store_true",
                    help="write everything first, then create the task (a replay: the worst case)")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    extra = {}
    if args.budget_mib is not None:
        extra["MILVUS_CDC_REPLICATE__MAX_BUFFER_BYTES"] = str(args.budget_mib * 1024 * 1024)
    agent = Agent(root=f"bench/{tag}", extra_env=extra).start()
    try:
        base = 0.0
        if not args.backlog:
            status, body = agent.cdc(create_body())
            assert status == 200, body
            time.sleep(3)
            base = applied_rows(agent)
        src = connect(f"mem-src-{tag}", STACK["CDC_SOURCE_URI"])
        c = Collection(f"bench_mem_{tag}", CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=DIM)]), shards_num=2, using=src)
        rng = random.Random(1)
        vec = [[rng.random() for _ in range(DIM)] for _ in range(args.rows)]
        t0 = time.time()
        for i in range(args.inserts):
            ids = list(range(i * args.rows, (i + 1) * args.rows))
            c.insert([ids, vec])
        total = args.inserts * args.rows
        if args.backlog:
            status, body = agent.cdc(create_body())
            assert status == 200, body
        deadline = time.time() + 900
        while applied_rows(agent) - base < total:
            if time.time() > deadline:
                raise SystemExit("not replicated within 900 s")
            time.sleep(0.5)
        took = time.time() - t0
        rss = peak_rss_mib(agent.proc.pid)
    finally:
        agent.stop()
    mb = total * DIM * 4 / 1e6
    print(f"| inserts of {args.rows} rows x dim {DIM} (~{args.rows * DIM * 4 / 1e6:.0f} MB each) "
          f"| {args.inserts} |")
    print(f"| data replicated | {mb:,.0f} MB in {took:.1f} s |")
    budget = "default" if args.budget_mib is None else f"{args.budget_mib} MiB"
    print(f"| replicate.max_buffer_bytes | {budget} |")
    print(f"| mode | {'backlog (written before the task)' if args.backlog else 'live'} |")
    print(f"| agent peak RSS | {rss} MiB |")


if __name__ == "__main__":
    main()
