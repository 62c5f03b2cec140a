#!/usr/bin/env python3
"""Benchmark of the source reader (not a test): read+decode throughput and
peak memory of the Rust `ChannelReader` on a real Milvus 2.3.5 whose queue is
the stack's (natsmq, or Kafka / Pulsar with CDC_SOURCE_MQ=kafka|pulsar: the reader opens it
through the agent's own configuration and `open_queue`).

1. Pre-fills the source of a running stack (scripts/stack.sh) with
   `--collections` collections of `--rows` rows in total (int64 key, int64
   scalar, float vector of `--dim`), inserted in batches of `--batch` rows,
   one shard each, so each lands on its own DML channel; plus one collection
   written in many tiny inserts (`--small-rows` rows, `--small-batch` per
   insert) to measure per-message cost.
2. Builds `examples/reader_bench.rs` in release mode and runs it under
   `/usr/bin/time -v` on: one bulk channel, all bulk channels in parallel,
   the tiny-insert channel, and everything at once. Each run reads from the
   position before the pre-fill up to the last message each channel held at
   start (time ticks included, as a replication worker reads them).
   Also times `milvus-cdc source dump` (JSON rendering) on one bulk channel.
3. Prints a table (median of `--repeat` runs; peak RSS is the maximum).

Usage (a stack of its own, on its own ports):
    export CDC_RUN_DIR=$PWD/.run/bench-stack CDC_ETCD_PORT=27379 \
           CDC_SOURCE_PORT=27530 CDC_NATS_PORT=27222 CDC_TARGET_PORT=27540
    scripts/setup.sh && scripts/stack.sh start
    .venv/bin/python benches/reader_bench.py            # pre-fill + measure
    .venv/bin/python benches/reader_bench.py --reuse    # measure again only
    scripts/stack.sh stop

The same on a Kafka source: `export CDC_SOURCE_MQ=kafka` (and another
CDC_RUN_DIR) before `scripts/stack.sh start`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = Path(os.environ.get("CDC_RUN_DIR", REPO / ".run" / "stack"))
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def stack_env():
    env_file = RUN_DIR / "stack.env"
    if not env_file.exists():
        sys.exit(f"{env_file} not found: start a stack first (scripts/stack.sh start)")
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                if "=" in line and not line.startswith("#"))


STACK = stack_env()
MQ = STACK.get("CDC_SOURCE_MQ", "natsmq")
STATE = RUN_DIR / "reader-bench.json"


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cli_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    if MQ == "kafka":
        env["MILVUS_CDC_SOURCE__MQ_TYPE"] = "kafka"
        env["MILVUS_CDC_SOURCE__KAFKA__BROKERS"] = json.dumps([STACK["CDC_KAFKA_BROKERS"]])
    elif MQ == "pulsar":
        env["MILVUS_CDC_SOURCE__MQ_TYPE"] = "pulsar"
        env["MILVUS_CDC_SOURCE__PULSAR__ADDRESS"] = STACK["CDC_PULSAR_URL"]
        env["MILVUS_CDC_SOURCE__PULSAR__TENANT"] = STACK["CDC_PULSAR_TENANT"]
        env["MILVUS_CDC_SOURCE__PULSAR__NAMESPACE"] = STACK["CDC_PULSAR_NAMESPACE"]
    elif MQ == "natsmq":
        env["MILVUS_CDC_SOURCE__NATS_URL"] = STACK["CDC_NATS_URL"]
    else:
        sys.exit(f"reader_bench.py: no settings for a {MQ} source yet")
    env["MILVUS_CDC_LOG__LEVEL"] = "warn"
    return env


def cdc_bin():
    return TARGET_DIR / "release" / "milvus-cdc"


def channels():
    out = subprocess.run([str(cdc_bin()), "source", "channels"], env=cli_env(), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    res = {}
    for line in out.splitlines():
        name, *rest = line.split("\t")
        kv = dict(p.split("=", 1) for p in rest)
        res[name] = int(kv["last"])
    return res


def first_event(channel, after):
    out = subprocess.run([str(cdc_bin()), "source", "dump", "--channel", channel, "--after",
                          str(after), "--limit", "1", "--skip-time-ticks"], env=cli_env(),
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out) if out.strip() else None


# ----------------------------------------------------------------- pre-fill

def prefill(args):
    import numpy as np  # noqa: PLC0415 - venv only
    from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema,  # noqa: PLC0415
                          connections)

    tag = uuid.uuid4().hex[:6]
    connections.connect("bench", uri=STACK["CDC_SOURCE_URI"])
    base = channels()
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("n", DataType.INT64),
              FieldSchema("v", DataType.FLOAT_VECTOR, dim=args.dim)]
    rng = np.random.default_rng(7)
    names = {"bulk": [f"bench_{tag}_bulk{i}" for i in range(args.collections)],
             "small": [f"bench_{tag}_small"] if args.small_rows else []}
    colls = {n: Collection(n, CollectionSchema(fields), using="bench", shards_num=1)
             for group in names.values() for n in group}
    t0 = time.time()
    per = args.rows // args.collections
    for start in range(0, per, args.batch):
        for n in names["bulk"]:  # round robin: the channels grow together
            ids = np.arange(start, min(start + args.batch, per), dtype=np.int64)
            colls[n].insert([ids.tolist(), (ids * 3).tolist(),
                             rng.random((len(ids), args.dim), dtype=np.float32)])
    bulk_s = time.time() - t0
    log(f"bulk: {per * args.collections} rows in {bulk_s:.1f}s")
    t0 = time.time()
    for n in names["small"]:
        for start in range(0, args.small_rows, args.small_batch):
            ids = list(range(start, min(start + args.small_batch, args.small_rows)))
            colls[n].insert([ids, [i * 3 for i in ids],
                             rng.random((len(ids), args.dim), dtype=np.float32)])
    small_s = time.time() - t0
    log(f"small: {args.small_rows} rows in {small_s:.1f}s")

    # which channel holds which collection: its create message is the
    # first non-tick message after the pre-fill's starting point
    now, where = channels(), {}
    for ch, last in now.items():
        if last > base.get(ch, 0):
            ev = first_event(ch, base.get(ch, 0))
            if ev and ev.get("kind") == "create_collection" and ev["collection"] in colls:
                where[ev["collection"]] = ch
    missing = set(colls) - set(where)
    if missing:
        sys.exit(f"no channel found for {missing}")
    state = {
        "tag": tag, "dim": args.dim, "batch": args.batch, "small_batch": args.small_batch,
        "rows": per * args.collections, "small_rows": args.small_rows,
        "insert_seconds": {"bulk": bulk_s, "small": small_s},
        "after": {ch: base.get(ch, 0) for ch in where.values()},
        "bulk": [where[n] for n in names["bulk"]],
        "small": [where[n] for n in names["small"]],
    }
    STATE.write_text(json.dumps(state, indent=1))
    return state


# --------------------------------------------------------------- measuring

def build():
    log(f"cargo build --release --example reader_bench --bin milvus-cdc ({TARGET_DIR})")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "reader_bench",
                    "--bin", "milvus-cdc"], cwd=REPO, check=True)


def timed(cmd, stdout=subprocess.PIPE):
    """Runs cmd under /usr/bin/time -v: (stdout, wall s, max RSS KiB, cpu s)."""
    t0 = time.time()
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, env=cli_env(), stdout=stdout,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stderr[-3000:]}")
    info = {}
    for line in r.stderr.splitlines():
        if ":" in line:
            k, v = line.strip().rsplit(":", 1)
            info[k.strip()] = v.strip()
    cpu = float(info["User time (seconds)"]) + float(info["System time (seconds)"])
    return r.stdout, wall, int(info["Maximum resident set size (kbytes)"]), cpu


def run_reader(chans, after, repeat):
    exe = TARGET_DIR / "release" / "examples" / "reader_bench"
    results = []
    for _ in range(repeat):
        cmd = [str(exe)]  # the queue comes from cli_env()
        for c in chans:
            cmd += ["--channel", f"{c}@{after[c]}"]
        out, wall, rss, cpu = timed(cmd)
        res = json.loads(out)
        res.update(wall=wall, max_rss_kib=rss, cpu=cpu)
        results.append(res)
    return results


def run_dump(chan, after, repeat):
    results = []
    for _ in range(repeat):
        cmd = [str(cdc_bin()), "source", "dump", "--channel", chan, "--after", str(after[chan]),
               "--skip-time-ticks", "--idle-secs", "30"]
        with open(os.devnull, "w") as null:
            _, wall, rss, cpu = timed(cmd, stdout=null)
        results.append({"seconds": wall, "max_rss_kib": rss, "cpu": cpu})
    return results


def row(label, runs, ref=None):
    med = statistics.median
    if ref is None:
        secs = med(r["seconds"] for r in runs)
        msgs, rows, mb = runs[0]["messages"], runs[0]["rows"], runs[0]["bytes"] / 1e6
    else:  # the dump: same channel as ref, timed from outside
        secs = med(r["seconds"] for r in runs)
        msgs, rows, mb = ref["messages"], ref["rows"], ref["bytes"] / 1e6
    lo, hi = min(r["seconds"] for r in runs), max(r["seconds"] for r in runs)
    rss = max(r["max_rss_kib"] for r in runs) / 1024
    cpu = med(r["cpu"] for r in runs)  # whole process, start-up included
    wall = med(r.get("wall", r["seconds"]) for r in runs)
    return (label, msgs, rows, mb, secs, f"{lo:.2f}–{hi:.2f}", msgs / secs, rows / secs,
            mb / secs, rss, cpu / wall, mb / cpu)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=4_000_000,
                   help="bulk rows in total (4M: 56 MB per channel, more than natsmq's 64 MiB "
                        "per-client pending limit when the channels are read together)")
    p.add_argument("--collections", type=int, default=4, help="bulk collections (channels)")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=5000, help="rows per bulk insert")
    p.add_argument("--small-rows", type=int, default=20_000)
    p.add_argument("--small-batch", type=int, default=5, help="rows per tiny insert")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--reuse", action="store_true", help=f"measure the pre-fill in {STATE}")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()

    t_start = time.time()
    if not args.no_build:
        build()
    if args.reuse and STATE.exists():
        state = json.loads(STATE.read_text())
        log(f"reusing the pre-fill {state['tag']} ({STATE})")
    else:
        state = prefill(args)
    after = state["after"]  # channel -> sequence before the pre-fill
    bulk, small = state["bulk"], state["small"]

    table = []
    one = run_reader(bulk[:1], after, args.repeat)
    table.append(row(f"reader, 1 bulk channel ({state['batch']} rows/insert)", one))
    table.append(row(f"reader, {len(bulk)} bulk channels in parallel",
                     run_reader(bulk, after, args.repeat)))
    if small:
        table.append(row(f"reader, 1 channel of {state['small_batch']}-row inserts",
                         run_reader(small, after, args.repeat)))
        table.append(row(f"reader, all {len(bulk) + len(small)} channels in parallel",
                         run_reader(bulk + small, after, args.repeat)))
    table.append(row("`source dump` to /dev/null, 1 bulk channel (JSON)",
                     run_dump(bulk[0], after, args.repeat), ref=one[0]))

    kinds = one[0]["kinds"]
    print(f"\nMilvus 2.3.5 {MQ}, {state['rows']:,} bulk rows (dim {state['dim']}) on "
          f"{len(bulk)} channels + {state['small_rows']:,} rows in {state['small_batch']}-row "
          f"inserts; {os.cpu_count()} cores; median of {args.repeat} runs; "
          f"1 bulk channel holds {kinds}\n")
    head = ("run", "messages", "rows", "MB", "s", "s min–max", "msg/s", "rows/s", "MB/s",
            "peak RSS MiB", "CPU cores", "MB per CPU-s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        label, msgs, rows, mb, secs, span, mps, rps, mbps, rss, cores, mb_cpu = r
        print(f"| {label} | {msgs:,} | {rows:,} | {mb:.1f} | {secs:.2f} | {span} | {mps:,.0f} | "
              f"{rps:,.0f} | {mbps:.1f} | {rss:.1f} | {cores:.2f} | {mb_cpu:.0f} |")
    print(f"\npre-fill insert time: bulk {state['insert_seconds']['bulk']:.1f}s, tiny inserts "
          f"{state['insert_seconds']['small']:.1f}s; whole bench {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
