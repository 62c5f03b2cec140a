#!/usr/bin/env python3
"""Replication throughput and lag, on the real stack (not a test).

    CDC_RUN_DIR=.run/test-stack .venv/bin/python benches/replication_bench.py [--rows 200000]

Same data, same machine, one run:
1. ceiling: pymilvus inserts straight into the target (rows/s);
2. replication: the same inserts into the source while an agent replicates;
   rows/s from the first source insert until the target holds every row;
3. lag at half the ceiling rate: the agent's milvus_cdc_replication_lag_seconds
   sampled at 5 Hz during a steady load (p50/p99);
4. the agent's CPU time and peak RSS.
Prints a table; with --write-docs also writes docs/benchmarks.md.
"""

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from conftest import BIN, STACK, TARGET_TOKEN, Agent, create_body, http  # noqa: E402
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema  # noqa: E402
from workload import connect  # noqa: E402

DIM = 32
WINDOW_DELAY = "milvus_cdc_window_delay_seconds"
WRITE_LATENCY = "milvus_cdc_apply_latency_seconds"


def schema():
    return CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                             FieldSchema("tag", DataType.VARCHAR, max_length=32),
                             FieldSchema("v", DataType.FLOAT_VECTOR, dim=DIM)])


def batches(rows, batch, seed=1):
    rng = random.Random(seed)
    for start in range(0, rows, batch):
        ids = list(range(start, min(start + batch, rows)))
        yield [ids, [f"t{i % 100}" for i in ids], [[rng.random() for _ in range(DIM)] for _ in ids]]


def metric(agent, name, match=""):
    _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and match in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) // 1024
    return cpu, rss


def ceiling(rows, batch, tag):
    alias = connect(f"bench-tgt-{tag}", STACK["CDC_TARGET_URI"], TARGET_TOKEN)
    c = Collection(f"bench_direct_{tag}", schema(), using=alias, shards_num=2)
    data = list(batches(rows, batch))
    t0 = time.time()
    for b in data:
        c.insert(b)
    dt = time.time() - t0
    c.drop()
    return rows / dt


def replication(agent, rows, batch, tag):
    alias = connect(f"bench-src-{tag}", STACK["CDC_SOURCE_URI"])
    name = f"bench_repl_{tag}"
    c = Collection(name, schema(), using=alias, shards_num=2)
    time.sleep(2)  # let the agent create the target collection first
    base = metric(agent, "milvus_cdc_applied_rows_total", 'kind="insert"')
    data = list(batches(rows, batch))
    t0 = time.time()
    for b in data:
        c.insert(b)
    t_src = time.time() - t0
    deadline = time.time() + 600
    while metric(agent, "milvus_cdc_applied_rows_total", 'kind="insert"') - base < rows:
        if time.time() > deadline:
            raise RuntimeError("replication did not finish within 600 s")
        time.sleep(0.1)
    dt = time.time() - t0
    return rows / dt, rows / t_src


def backlog(agent, task_id, rows, batch, tag):
    """The agent's own apply rate: the source is written while the task is
    paused, then the task is resumed; rows/s from the resume until the target
    has every row (what a catch-up after an outage or a failover runs at)."""
    alias = connect(f"bench-bl-{tag}", STACK["CDC_SOURCE_URI"])
    c = Collection(f"bench_backlog_{tag}", schema(), using=alias, shards_num=2)
    time.sleep(2)  # let the agent create the target collection first
    status, body = agent.cdc({"request_type": "pause", "request_data": {"task_id": task_id}})
    assert status == 200, body
    base = metric(agent, "milvus_cdc_applied_rows_total", 'kind="insert"')
    for b in batches(rows, batch, seed=2):
        c.insert(b)
    t0 = time.time()
    status, body = agent.cdc({"request_type": "resume", "request_data": {"task_id": task_id}})
    assert status == 200, body
    deadline = time.time() + 600
    while metric(agent, "milvus_cdc_applied_rows_total", 'kind="insert"') - base < rows:
        if time.time() > deadline:
            raise RuntimeError("the backlog was not applied within 600 s")
        time.sleep(0.05)
    return rows / (time.time() - t0)


def delay_buckets(agent, name="milvus_cdc_source_delay_seconds"):
    """Cumulative counts of a histogram (summed over tasks) by upper bound."""
    _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0) + float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before, after, q):
    """Upper bound of the bucket holding quantile q of what was observed
    between two scrapes of the histogram."""
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0) for b in bounds]
    if not delta or delta[-1] <= 0:
        return float("nan")
    for b, c in zip(bounds, delta):
        if c >= q * delta[-1]:
            return b
    return bounds[-1]


def lag_at_rate(agent, rate, seconds, tag, writers=1):
    """Lag while `writers` clients (each its own connection) insert at
    `rate` rows/s in total into one collection."""
    alias = connect(f"bench-lag-{tag}", STACK["CDC_SOURCE_URI"])
    name = f"bench_lag_{tag}"
    Collection(name, schema(), using=alias, shards_num=2)
    time.sleep(2)
    batch = max(1, int(rate / 10 / writers))  # ten batches a second per writer
    samples, stop = [], threading.Event()
    insert_latency = []  # (seconds, when): the source's own delays, seen by its clients

    def sample():
        while not stop.is_set():
            _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
            lags = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                    if l.startswith("milvus_cdc_replication_lag_seconds{") and "rootcoord" in l]
            if lags:
                samples.append(max(lags))
            time.sleep(0.2)

    def write(w, t_end):
        c = Collection(name, using=connect(f"bench-lag-{tag}-{w}", STACK["CDC_SOURCE_URI"]))
        rng = random.Random(3 + w)
        # Vectors drawn once: on two cores, drawing a million random floats
        # a second in Python would take CPU from the servers being measured.
        pool = [[rng.random() for _ in range(DIM)] for _ in range(1024)]
        next_id = 10_000_000 + w * 100_000_000
        while time.time() < t_end:
            t0 = time.time()
            ids = list(range(next_id, next_id + batch))
            next_id += batch
            c.insert([ids, ["x"] * batch, [pool[i % len(pool)] for i in ids]])
            insert_latency.append((time.time() - t0, t0))
            time.sleep(max(0.0, 0.1 - (time.time() - t0)))

    th = threading.Thread(target=sample, daemon=True)
    delays_before = delay_buckets(agent)
    windows_before = delay_buckets(agent, WINDOW_DELAY)
    writes_before = delay_buckets(agent, WRITE_LATENCY)
    t_end = time.time() + seconds
    th.start()
    clients = [threading.Thread(target=write, args=(w, t_end)) for w in range(writers)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    time.sleep(2)
    stop.set()
    th.join()
    delays_after = delay_buckets(agent)
    windows_after = delay_buckets(agent, WINDOW_DELAY)
    writes_after = delay_buckets(agent, WRITE_LATENCY)
    print(f"[{tag}] target write latency p50 ≤ {bucket_quantile(writes_before, writes_after, 0.5):g} s, "
          f"p99 ≤ {bucket_quantile(writes_before, writes_after, 0.99):g} s; "
          f"lag samples (highest): {sorted(samples)[-5:]}", flush=True)
    slow = sorted(insert_latency)[-3:]
    print(f"[{tag}] source insert latency (client side) p99 "
          f"{sorted(insert_latency)[int(0.99 * len(insert_latency))][0]:.2f} s, slowest "
          f"{[(round(x, 2), round(t - t_end + seconds, 1)) for x, t in slow]} (s, at s into the phase)",
          flush=True)
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    src = (bucket_quantile(delays_before, delays_after, 0.5),
           bucket_quantile(delays_before, delays_after, 0.99),
           bucket_quantile(windows_before, windows_after, 0.5),
           bucket_quantile(windows_before, windows_after, 0.99))
    return p(0.5), p(0.99), len(samples), src


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--lag-seconds", type=int, default=30)
    ap.add_argument("--dim", type=int, default=128, help="vector dimension")
    ap.add_argument("--writers", type=int, default=4,
                    help="concurrent clients in the lag phase (besides one client)")
    ap.add_argument("--rate", type=float, default=0,
                    help="only the lag phases, at this many rows/s (no ceiling, no backlog)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if args.rate and args.write_docs:
        ap.error("--write-docs needs the whole bench (no --rate)")
    global DIM
    DIM = args.dim
    tag = uuid.uuid4().hex[:8]
    agent = Agent(root=f"bench/{tag}").start()
    try:
        status, body = agent.cdc(create_body())
        assert status == 200, body
        time.sleep(3)  # initial replay of the stream's history
        cpu0, _ = proc_stats(agent.proc.pid)
        if args.rate:
            direct = 2 * args.rate
            repl = src_rate = drain = float("nan")
        else:
            direct = ceiling(args.rows, args.batch, tag)
            repl, src_rate = replication(agent, args.rows, args.batch, tag)
            drain = backlog(agent, body["data"]["task_id"], args.rows, args.batch, tag)
        p50, p99, n, src1 = lag_at_rate(agent, direct / 2, args.lag_seconds, tag)
        q50, q99, m, srcw = lag_at_rate(agent, direct / 2, args.lag_seconds, tag + "w",
                                        writers=args.writers)
        cpu1, rss = proc_stats(agent.proc.pid)
    finally:
        agent.stop()
    rows = [
        ("direct pymilvus insert into the target (ceiling)", f"{direct:,.0f} rows/s"),
        ("pymilvus insert into the source", f"{src_rate:,.0f} rows/s"),
        ("replication source → target, end to end", f"{repl:,.0f} rows/s"),
        ("ratio replication / ceiling (goal ≥ 0.9)", f"{repl / direct:.2f}"),
        ("backlog applied after a resume (agent's apply rate)", f"{drain:,.0f} rows/s"),
        ("ratio backlog / ceiling", f"{drain / direct:.2f}"),
        (f"lag p50 at {direct / 2:,.0f} rows/s ({n} samples)", f"{p50:.2f} s"),
        ("lag p99 (goal < 1 s)", f"{p99:.2f} s"),
        (f"lag p50, {args.writers} concurrent writers, same rate ({m} samples)", f"{q50:.2f} s"),
        (f"lag p99, {args.writers} concurrent writers (goal < 1 s)", f"{q99:.2f} s"),
        ("source's delay (timestamp → read by the agent), one client, p50 / p99",
         f"≤ {src1[0]:g} s / ≤ {src1[1]:g} s"),
        (f"source's delay, {args.writers} concurrent writers, p50 / p99",
         f"≤ {srcw[0]:g} s / ≤ {srcw[1]:g} s"),
        ("agent's delay (window's tick read → applied), one client, p50 / p99",
         f"≤ {src1[2]:g} s / ≤ {src1[3]:g} s"),
        (f"agent's delay, {args.writers} concurrent writers, p50 / p99",
         f"≤ {srcw[2]:g} s / ≤ {srcw[3]:g} s"),
        ("agent CPU time during the bench", f"{cpu1 - cpu0:.1f} s"),
        ("agent peak RSS", f"{rss} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"| {a:<{width}} | {b} |" for a, b in rows)
    header = f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|"
    out = f"{header}\n{table}"
    print(out)
    if args.write_docs:
        release = "release" in str(BIN)
        build = "release build: `cargo build --release`" if release else "debug build: `cargo build`"
        cmd = (("cargo build --release && CDC_BIN=target/release/milvus-cdc " if release else "")
               + f"CDC_RUN_DIR=.run/test-stack .venv/bin/python benches/replication_bench.py "
               f"--rows {args.rows} --batch {args.batch} --lag-seconds {args.lag_seconds}")
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n"
        marker = "## Replication throughput and lag"
        section = (f"{marker}\n\n{args.rows:,} rows (int64 key, VarChar, float vector dim {DIM}), "
                   f"inserted in batches of {args.batch:,} into 2-shard collections; one agent "
                   f"({build}), source and target Milvus 2.3.5 on the same "
                   f"2-core machine, {time.strftime('%Y-%m-%d', time.gmtime())}."
                   f"\n\n```\n{cmd}\n```\n\n{out}\n")
        if marker in text:
            before = text.split(marker)[0]
            after = text.split(marker)[1]
            rest = after[after.find("\n## "):] if "\n## " in after else ""
            text = before + section + rest
        else:
            text = text.rstrip() + "\n\n" + section
        doc.write_text(text)


if __name__ == "__main__":
    main()
