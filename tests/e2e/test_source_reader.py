"""The source reader on a real Milvus 2.3.5 (natsmq), read with
`milvus-cdc source dump` exactly as a replication worker reads it.

1. A pymilvus workload (an auto-id collection with a partition and a dynamic
   field; a VarChar-key collection with a partition key and two shards;
   insert, delete, upsert, indexes, load/release, aliases, databases, drops)
   must come out of the streams as exactly the expected events, in channel
   order, with the right keys, vectors and scalar values.
2. Reading a channel in pieces, each resumed `--after` the previous piece's
   last sequence, equals one uninterrupted read.
3. Killing and restarting the source Milvus (its embedded NATS goes down with
   it) under a running `--follow` dump loses and repeats nothing.

The stack may be shared with other tests: every name carries a random tag,
events are filtered by our names, and reads start after the sequences each
channel held before our workload (never at 1).

Facts these tests pin down (Milvus 2.3.5, see docs/source-reader.md):
CreatePartition, LoadPartitions, ReleasePartitions and alias operations put no
message on any stream; DropPartition carries no collection name; DML messages
carry an empty db name; an upsert is an Insert then a Delete of the same keys
with the same timestamp.
"""

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, Partition,
                      connections, db, utility)

from conftest import BIN, REPO, SOURCE_MQ, STACK, source_env, stack_env_for_restart

SOURCE = STACK["CDC_SOURCE_URI"]
SOURCE_TOKEN = "root:Milvus" if STACK.get("CDC_SOURCE_AUTH") == "1" else None
REPLICATE = "by-dev-replicate-msg"
DML = re.compile(r"^by-dev-rootcoord-dml_\d+$")
KNOWN_KINDS = {
    "create_collection", "drop_collection", "create_partition", "drop_partition", "insert",
    "delete", "time_tick", "create_database", "drop_database", "create_index", "drop_index",
    "load_collection", "release_collection", "load_partitions", "release_partitions", "flush",
    "create_alias", "drop_alias", "alter_alias",
}


# ------------------------------------------------------------------ the CLI

def cli_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    env.update(source_env())
    env["MILVUS_CDC_LOG__LEVEL"] = "info"
    return env


def channels():
    """`source channels` as {channel: (first, last)}."""
    r = subprocess.run([str(BIN), "source", "channels"], env=cli_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = {}
    for line in r.stdout.splitlines():
        name, *rest = line.split("\t")
        kv = dict(p.split("=", 1) for p in rest)
        assert "error" not in kv, line
        out[name] = (int(kv["first"]), int(kv["last"]))
    assert REPLICATE in out and any(DML.match(c) for c in out), out
    return out


def dump_args(chans, after=None, limit=None, skip_ticks=False, idle=10.0, follow=False):
    args = [str(BIN), "source", "dump", "--idle-secs", str(idle)]
    for c in chans:
        args += ["--channel", c]
    if after is not None:
        args += ["--after", str(after)]
    if limit is not None:
        args += ["--limit", str(limit)]
    if skip_ticks:
        args.append("--skip-time-ticks")
    if follow:
        args.append("--follow")
    return args


def parse(stdout):
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    bad = [e for e in events if "error" in e or e.get("kind") not in KNOWN_KINDS]
    assert not bad, f"undecodable, unsupported or failed reads: {bad[:3]}"
    return events


def dump(chans, **kw):
    """Events of `chans` (one after another), as JSON objects."""
    r = subprocess.run(dump_args(chans, **kw), env=cli_env(), capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return parse(r.stdout)


def read_since(base, skip_ticks=True):
    """{channel: events after base[channel]} for every channel that grew."""
    now = channels()
    by_after = defaultdict(list)
    for ch, (_, last) in now.items():
        b = base.get(ch, (0, 0))[1]
        if last > b:
            by_after[b].append(ch)
    out = {}
    for after, chans in by_after.items():
        for e in dump(sorted(chans), after=after, skip_ticks=skip_ticks):
            out.setdefault(e["channel"], []).append(e)
    for ch, evs in out.items():
        seqs = [e["sequence"] for e in evs]
        assert seqs == sorted(set(seqs)), f"{ch}: sequences not strictly increasing"
        assert seqs[0] > base.get(ch, (0, 0))[1], f"{ch}: read before --after"
    return out


def wait_for(what, probe, timeout=60, every=1.0):
    """Calls probe() until it returns a truthy value; fails naming `what`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------- workload

def vec(i, dim=4):
    # multiples of 1/8: exact in float32, so JSON compares exactly
    return [((i * 3 + k) % 17 - 8) / 8 for k in range(dim)]


def connect(alias):
    kw = {"uri": SOURCE}
    if SOURCE_TOKEN:
        kw["token"] = SOURCE_TOKEN
    connections.connect(alias, **kw)
    return alias


class Workload:
    """Runs every operation once on the source and records what the
    streams must then hold."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:8]
        self.alias = connect(f"rdr-{self.tag}")
        self.A = f"rdr_auto_{self.tag}"       # auto-id, partition, dynamic field
        self.B = f"rdr_pkey_{self.tag}"       # VarChar pk, partition key, 2 shards
        self.PA = f"pa_{self.tag}"
        self.DB = f"rdr_db_{self.tag}"
        self.ALIAS = f"rdr_alias_{self.tag}"

    def run(self):
        self.base = channels()
        self.run_auto_id()
        self.run_partition_key()
        a, b = Collection(self.A, using=self.alias), Collection(self.B, using=self.alias)
        utility.create_alias(self.A, self.ALIAS, using=self.alias)
        utility.alter_alias(self.B, self.ALIAS, using=self.alias)
        utility.drop_alias(self.ALIAS, using=self.alias)
        db.create_database(self.DB, using=self.alias)
        db.drop_database(self.DB, using=self.alias)
        a.drop_partition(self.PA)
        a.drop_index()
        a.drop()
        b.drop()
        # DDL messages are sent asynchronously by rootcoord; within a minute
        # of a source restart they can take tens of seconds
        self.events = wait_for("the drops of both collections in the streams", self.complete,
                               timeout=120, every=2)

    def run_auto_id(self):
        fields = [
            FieldSchema("pk", DataType.INT64, is_primary=True, auto_id=True),
            FieldSchema("i8", DataType.INT8),
            FieldSchema("i16", DataType.INT16),
            FieldSchema("i32", DataType.INT32),
            FieldSchema("flag", DataType.BOOL),
            FieldSchema("f", DataType.FLOAT),
            FieldSchema("d", DataType.DOUBLE),
            FieldSchema("s", DataType.VARCHAR, max_length=64),
            FieldSchema("j", DataType.JSON),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=4),
        ]
        self.fields_a = fields
        a = Collection(self.A, CollectionSchema(fields, enable_dynamic_field=True),
                       using=self.alias, shards_num=1)
        a.create_partition(self.PA)

        def row(i):
            return {"i8": i - 3, "i16": -300 * i, "i32": 70000 * i - 5, "flag": i % 2 == 0,
                    "f": i * 0.25, "d": i / 3, "s": f"s{i} ü \"q\"",
                    "j": {"i": i, "tags": ["x", i], "nested": {"ok": i % 2 == 1}},
                    "v": vec(i), "extra": f"dyn{i}"}

        rows_default = [row(i) for i in range(5)]
        rows_pa = [row(i) for i in range(5, 8)]
        keys_default = list(a.insert(rows_default).primary_keys)
        keys_pa = list(a.insert(rows_pa, partition_name=self.PA).primary_keys)
        self.a_rows = dict(zip(keys_default + keys_pa, rows_default + rows_pa))
        self.a_inserts = [("_default", keys_default), (self.PA, keys_pa)]
        self.a_deleted = [keys_default[1], keys_pa[0]]
        a.delete(f"pk in {self.a_deleted}")
        a.flush()
        a.create_index("v", {"index_type": "IVF_FLAT", "metric_type": "L2",
                             "params": {"nlist": 8}}, index_name="v_idx")
        a.load()
        a.release()
        Partition(a, self.PA).load()
        Partition(a, self.PA).release()

    def run_partition_key(self):
        fields = [
            FieldSchema("id", DataType.VARCHAR, is_primary=True, max_length=64),
            FieldSchema("tenant", DataType.VARCHAR, max_length=16, is_partition_key=True),
            FieldSchema("x", DataType.DOUBLE),
            FieldSchema("arr", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=4),
        ]
        self.fields_b = fields
        b = Collection(self.B, CollectionSchema(fields), using=self.alias, shards_num=2,
                       num_partitions=4)
        keys = [f"k{i}" if i % 5 else f"k{i}-\"quoted\" é" for i in range(16)]
        self.b_rows = {k: {"id": k, "tenant": f"t{i % 4}", "x": i * 1.5, "arr": [i, -i],
                           "v": vec(i)} for i, k in enumerate(keys)}
        b.insert(list(self.b_rows.values()))
        self.b_deleted = [keys[1], keys[5], keys[6]]
        expr = "id in [" + ",".join(json.dumps(k, ensure_ascii=False) for k in self.b_deleted) + "]"
        b.delete(expr)
        # one existing, one deleted before, one new key
        self.b_upserted = {k: {"id": k, "tenant": t, "x": -1.0, "arr": [99], "v": vec(50 + n)}
                           for n, (k, t) in enumerate([(keys[2], "t2"), (keys[5], "t1"),
                                                       ("k-new", "t3")])}
        b.upsert(list(self.b_upserted.values()))
        b.create_index("v", {"index_type": "FLAT", "metric_type": "IP", "params": {}},
                       index_name="bv_idx")

    def mine(self, ev):
        if ev["kind"] == "drop_partition":
            return ev["partition"] == self.PA
        names = {self.A, self.B, self.ALIAS}
        return (ev.get("collection") in names or ev.get("db") == self.DB
                or bool(names & set(ev.get("collections", [])))
                or ev.get("alias") == self.ALIAS)

    def complete(self):
        """Our events per channel once both drops are in; None before."""
        events = read_since(self.base)
        ours = {ch: [e for e in evs if self.mine(e)] for ch, evs in events.items()}
        ours = {ch: evs for ch, evs in ours.items() if evs}
        drops = Counter(e["collection"] for evs in ours.values() for e in evs
                        if e["kind"] == "drop_collection")
        dropped_part = any(e["kind"] == "drop_partition" for evs in ours.values() for e in evs)
        # drop_index: the replicate channel's last message of ours
        if (drops[self.A] >= 1 and drops[self.B] >= 2 and dropped_part
                and any(e["kind"] == "drop_index" for e in ours.get(REPLICATE, []))):
            self.all_events = events
            return ours
        return None

    def of(self, name):
        """{channel: events of collection `name`} on the DML channels (one
        physical channel may carry several collections)."""
        out = defaultdict(list)
        for ch, evs in self.events.items():
            for e in evs:
                if ch != REPLICATE and (e.get("collection") == name or (
                        name == self.A and e["kind"] == "drop_partition")):
                    out[ch].append(e)
        return out

    def channel_of(self, name):
        creates = [e for evs in self.events.values() for e in evs
                   if e["kind"] == "create_collection" and e["collection"] == name]
        return sorted(e["channel"] for e in creates), creates


@pytest.fixture(scope="module")
def wl():
    w = Workload()
    t0 = time.time()
    w.run()
    w.seconds = time.time() - t0
    return w


# ------------------------------------------------------------------ checks

def field_summary(fields):
    out = []
    for f in fields:
        params = {k: str(v) for k, v in f.params.items()
                  if k in ("dim", "max_length", "max_capacity")}
        out.append({"name": f.name, "data_type": int(f.dtype), "is_primary_key": f.is_primary,
                    "auto_id": bool(f.auto_id), "is_partition_key": bool(f.is_partition_key),
                    "type_params": params})
    return out


def check_create(ev, name, fields, dynamic, shards):
    assert ev["collection"] == name and ev["db"] == ""
    got = [{k: f[k] for k in ("name", "data_type", "is_primary_key", "auto_id",
                              "is_partition_key")}
           | {"type_params": {k: v for k, v in f["type_params"].items()
                              if k in ("dim", "max_length", "max_capacity")}}
           for f in ev["fields"] if f["name"] != "$meta"]
    assert got == field_summary(fields)
    assert ev["enable_dynamic_field"] is dynamic
    # the dynamic field is a JSON field named $meta, listed after the others
    meta = [f for f in ev["fields"] if f["name"] == "$meta"]
    assert [(f["data_type"], ev["fields"][-1] == f) for f in meta] == \
        ([(int(DataType.JSON), True)] if dynamic else [])
    assert ev["collection_id"] > 0
    assert len(ev["virtual_channels"]) == shards == len(ev["physical_channels"])
    for v, p in zip(ev["virtual_channels"], ev["physical_channels"]):
        assert v.startswith(p + "_" + str(ev["collection_id"]) + "v"), (v, p)


def rows_of(ev, pk):
    """{pk: {column: value}} of an insert event; checks the column lengths."""
    cols = ev["columns"]
    n = ev["num_rows"]
    assert all(len(v) == n for v in cols.values()), {k: len(v) for k, v in cols.items()}
    return {cols[pk][r]: {c: vals[r] for c, vals in cols.items()} for r in range(n)}


def test_auto_id_collection_events_in_channel_order(wl):
    chans, creates = wl.channel_of(wl.A)
    assert len(chans) == 1, creates
    ch = chans[0]
    evs = wl.of(wl.A)[ch]
    # DropPartition is sent asynchronously: it normally comes right before
    # the DropCollection, but only its presence after the delete is certain
    (drop_part,) = [e for e in evs if e["kind"] == "drop_partition"]
    assert evs.index(drop_part) > 3, [e["kind"] for e in evs]
    evs = [e for e in evs if e is not drop_part]
    assert [e["kind"] for e in evs] == [
        "create_collection", "insert", "insert", "delete", "drop_collection"]
    create, ins_default, ins_pa, delete, drop = evs
    check_create(create, wl.A, wl.fields_a, dynamic=True, shards=1)
    assert create["physical_channels"] == [ch]
    for ev, (partition, keys) in zip((ins_default, ins_pa), wl.a_inserts):
        assert ev["collection"] == wl.A and ev["db"] == "" and ev["partition"] == partition
        assert ev["shard"] == create["virtual_channels"][0]
        assert ev["num_rows"] == len(keys)
        rows = rows_of(ev, "pk")
        assert list(rows) == keys, "auto-generated keys, in insert order"
        for k, got in rows.items():
            want = wl.a_rows[k]
            meta = got.pop("$meta")
            assert meta == {"extra": want["extra"]}, "dynamic field"
            assert got == {"pk": k} | {c: v for c, v in want.items() if c != "extra"}, k
        assert set(ev["row_timestamps"]) == {ev["timestamp"]}
    assert delete["collection"] == wl.A and delete["db"] == ""
    assert sorted(delete["primary_keys"]) == sorted(wl.a_deleted)
    assert drop_part["partition"] == wl.PA
    if "collection_id" in drop_part:  # not printed by the dump yet
        assert drop_part["collection_id"] == create["collection_id"]
    assert drop["collection_id"] == create["collection_id"]
    stamps = [e["timestamp"] for e in evs]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), stamps
    assert drop_part["timestamp"] > delete["timestamp"]


def partition_key_ops(wl):
    """B's channels, creates, and its DML grouped by operation: every message
    of one pymilvus call carries that call's timestamp, so the groups in
    timestamp order are [insert, delete, upsert]."""
    chans, creates = wl.channel_of(wl.B)
    assert len(chans) == 2, creates
    groups = defaultdict(list)
    for ch in chans:
        for e in wl.of(wl.B)[ch][1:-1]:
            groups[e["timestamp"]].append(e)
    assert len(groups) == 3, sorted(groups)
    return chans, creates, [groups[t] for t in sorted(groups)]


def test_partition_key_collection_on_two_shards(wl):
    chans, creates, (insert_op, delete_op, upsert_op) = partition_key_ops(wl)
    assert creates[0]["collection_id"] == creates[1]["collection_id"]
    for c in creates:
        check_create(c, wl.B, wl.fields_b, dynamic=False, shards=2)
        assert sorted(c["physical_channels"]) == chans
    for ch in chans:
        evs = wl.of(wl.B)[ch]
        assert evs[0]["kind"] == "create_collection" and evs[-1]["kind"] == "drop_collection"
        assert evs[-1]["collection_id"] == creates[0]["collection_id"]
        dml = evs[1:-1]
        assert dml and {e["kind"] for e in dml} <= {"insert", "delete"}, [e["kind"] for e in evs]
        stamps = [e["timestamp"] for e in evs]
        assert stamps == sorted(stamps), f"{ch}: operations out of order"
        vchan = next(v for v in creates[0]["virtual_channels"] if v.startswith(ch + "_"))
        for e in dml:
            assert e["collection"] == wl.B and e["db"] == "" and e["shard"] == vchan
            assert set(e["row_timestamps"]) == {e["timestamp"]}

    # the insert: every row exactly once, routed to a partition by its tenant
    assert {e["kind"] for e in insert_op} == {"insert"}
    seen, partition_of = Counter(), {}
    for e in insert_op:
        assert re.fullmatch(r"_default_\d+", e["partition"]), e["partition"]
        for k, got in rows_of(e, "id").items():
            seen[k] += 1
            assert got == wl.b_rows[k], k
            assert partition_of.setdefault(got["tenant"], e["partition"]) == e["partition"], \
                "one tenant, one partition"
    assert seen == Counter(list(wl.b_rows)), "each inserted key exactly once"
    assert len({e["channel"] for e in insert_op}) == 2, "rows hashed to both shards"

    assert {e["kind"] for e in delete_op} == {"delete"}
    assert sorted(k for e in delete_op for k in e["primary_keys"]) == sorted(wl.b_deleted)


def test_upsert_is_insert_then_delete_of_same_keys_same_timestamp(wl):
    chans, _, (_, _, upsert_op) = partition_key_ops(wl)
    inserted, deleted = Counter(), Counter()
    for ch in chans:
        mine = [e for e in upsert_op if e["channel"] == ch]
        if not mine:
            continue
        kinds = [e["kind"] for e in mine]
        assert kinds[-1] == "delete" and kinds.count("delete") == 1, \
            f"{ch}: the insert(s) first, then one delete: {kinds}"
        ins_keys = sorted(k for e in mine if e["kind"] == "insert" for k in rows_of(e, "id"))
        assert ins_keys == sorted(mine[-1]["primary_keys"]), \
            f"{ch}: the delete names exactly the keys the insert rewrites"
        for e in mine:
            # same row timestamps: Milvus keeps the insert (a delete only
            # hides rows older than itself); the decoder took the insert's
            # time from its rows, its message timestamp being 0
            assert set(e["row_timestamps"]) == {e["timestamp"]}
            if e["kind"] == "insert":
                for k, got in rows_of(e, "id").items():
                    assert got == wl.b_upserted[k]
                    inserted[k] += 1
            else:
                deleted.update(e["primary_keys"])
    assert inserted == deleted == Counter(list(wl.b_upserted))


def test_replicate_channel_carries_ddl_dcl_in_order(wl):
    evs = wl.events[REPLICATE]
    got = [(e["kind"], e.get("collection") or e.get("collections") or e.get("db"))
           for e in evs]
    assert got == [
        ("flush", [wl.A]),
        ("create_index", wl.A),
        ("load_collection", wl.A),
        ("release_collection", wl.A),
        ("create_index", wl.B),
        ("create_database", wl.DB),
        ("drop_database", wl.DB),
        ("drop_index", wl.A),
    ], "partition load/release and aliases leave no message"
    flush, idx_a, load, _, idx_b, *_ = evs
    for e in evs:
        if e["kind"] not in ("create_database", "drop_database"):
            assert e["db"] == "default", e
    assert idx_a["field"] == "v" and idx_a["index_name"] == "v_idx"
    assert idx_a["params"]["index_type"] == "IVF_FLAT"
    assert idx_a["params"]["metric_type"] == "L2"
    assert json.loads(idx_a["params"]["params"]) == {"nlist": 8}
    assert idx_b["index_name"] == "bv_idx" and idx_b["params"]["metric_type"] == "IP"
    assert load["replicas"] in (0, 1)
    stamps = [e["timestamp"] for e in evs]
    assert stamps == sorted(stamps)


def test_no_message_for_create_partition_partition_load_or_aliases(wl):
    every = [e for evs in wl.all_events.values() for e in evs]
    kinds = Counter(e["kind"] for e in every if wl.mine(e) or e["kind"] in (
        "create_partition", "load_partitions", "release_partitions", "create_alias",
        "alter_alias", "drop_alias"))
    assert kinds["create_partition"] == kinds["load_partitions"] == 0, kinds
    assert kinds["release_partitions"] == 0, kinds
    assert kinds["create_alias"] == kinds["alter_alias"] == kinds["drop_alias"] == 0, kinds
    # ... while everything else the workload did is there
    assert kinds["create_collection"] == 3 and kinds["drop_collection"] == 3, kinds
    assert kinds["drop_partition"] == 1 and kinds["flush"] == 1, kinds


# ------------------------------------------------------- resume at a checkpoint

def assert_no_gap(seqs, after, what):
    """natsmq sequences and Kafka offsets number a channel's messages without
    holes. Pulsar's message ids (ledger, entry, batch index), packed into
    sequences, leave holes: there strictly increasing after `after` (each
    caller also compares what it read with one uninterrupted read)."""
    if SOURCE_MQ == "pulsar":
        assert seqs == sorted(set(seqs)) and (not seqs or seqs[0] > after), what
    else:
        assert seqs == list(range(after + 1, after + 1 + len(seqs))), what


def test_resume_after_checkpoint_equals_uninterrupted_read(wl):
    (ch,), _ = wl.channel_of(wl.A)
    base = wl.base.get(ch, (0, 0))[1]
    whole = dump([ch], after=base)
    seqs = [e["sequence"] for e in whole]
    assert_no_gap(seqs, base, "no gap in one read")
    ours = [i for i, e in enumerate(whole) if e["kind"] != "time_tick"]
    assert len(ours) >= 6
    # checkpoints: right after the create, between the two inserts, right
    # before the drop, and every few messages in between
    cuts = sorted({ours[0] + 1, ours[1] + 1, ours[-1]} | set(range(3, len(whole), 7)))
    pieces, after = [], base
    for cut in cuts:
        limit = cut - sum(len(p) for p in pieces)
        if limit <= 0:
            continue
        piece = dump([ch], after=after, limit=limit)
        assert len(piece) == limit
        pieces.append(piece)
        after = piece[-1]["sequence"]
    rest = dump([ch], after=after)
    joined = [e for p in pieces + [rest] for e in p]
    jseqs = [e["sequence"] for e in joined]
    assert_no_gap(jseqs, base, "no gap, no repeat")
    assert joined[:len(whole)] == whole, "same events, decoded the same"
    assert len(pieces) >= 4

    # the same with time ticks left out: --limit counts what is printed
    whole = dump([ch], after=base, skip_ticks=True)
    first = dump([ch], after=base, skip_ticks=True, limit=3)
    rest = dump([ch], after=first[-1]["sequence"], skip_ticks=True)
    assert [e["kind"] for e in first] == ["create_collection", "insert", "insert"]
    assert (first + rest)[:len(whole)] == whole


# ---------------------------------------------------------- source restart

def restart_source(attempts=3):
    """scripts/stack.sh start for the killed source. Retried: a port of the
    source can be taken for a moment by another process on a shared machine."""
    errors = []
    for _ in range(attempts):
        r = subprocess.run([str(REPO / "scripts" / "stack.sh"), "start"], timeout=300,
                           env={**os.environ, **stack_env_for_restart(STACK)},
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        errors.append(r.stderr[-2000:])
        time.sleep(5)
    raise AssertionError("the source did not restart:\n" + "\n---\n".join(errors))


def read_lines(path):
    text = Path(path).read_text()
    # a line being written when we look is not complete yet
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def inserted_keys(events, name):
    c = Counter()
    for e in events:
        if e.get("kind") == "insert" and e.get("collection") == name:
            c.update(e["columns"]["id"])
    return c


def test_source_restart_under_follow_loses_and_repeats_nothing(tmp_path):
    tag = uuid.uuid4().hex[:8]
    alias = connect(f"rdr-follow-{tag}")
    name = f"rdr_follow_{tag}"
    base = channels()
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
    coll = Collection(name, CollectionSchema(fields), using=alias, shards_num=1)

    def insert(ids):
        # a timeout bounds pymilvus' retries (75 of them, minutes) while the
        # source is down
        coll.insert([ids, [vec(i) for i in ids]], timeout=30)

    before = list(range(0, 300))
    for start in range(0, 300, 100):
        insert(before[start:start + 100])
    creates = wait_for("the create message", lambda: [
        e for evs in read_since(base).values() for e in evs
        if e["kind"] == "create_collection" and e["collection"] == name])
    (ch,) = creates[0]["physical_channels"]
    after = base.get(ch, (0, 0))[1]

    out, err = tmp_path / "follow.jsonl", tmp_path / "follow.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(dump_args([ch], after=after, follow=True, idle=900),
                                env=cli_env(), stdout=o, stderr=e, start_new_session=True)
    try:
        during = list(range(300, 500))
        insert(during)
        wait_for("the follow dump to see the rows inserted so far",
                 lambda: sum(inserted_keys(read_lines(out), name).values()) >= 500, timeout=60)

        pid = int((Path(STACK["CDC_RUN_DIR"]) / "source.pid").read_text().split()[0])
        os.killpg(pid, signal.SIGKILL)
        time.sleep(2)
        assert proc.poll() is None, f"the dump died with the source: {err.read_text()[-2000:]}"
        restart_source()

        # After the restart an insert may fail while Milvus settles; a failed
        # attempt's keys may or may not be in the stream, never twice.
        after_ok, maybe, next_id = [], [], 1000
        deadline = time.time() + 120
        while len(after_ok) < 3:
            ids = list(range(next_id, next_id + 100))
            next_id += 100
            try:
                insert(ids)
                after_ok.append(ids)
            except Exception as exc:  # noqa: BLE001 - retried, reported on timeout
                maybe.extend(ids)
                assert time.time() < deadline, f"no insert accepted after restart: {exc}"
                time.sleep(2)
        wanted = set(before) | set(during) | {i for b in after_ok for i in b}
        wait_for("the rows inserted after the restart", lambda: wanted <= set(
            inserted_keys(read_lines(out), name)), timeout=120)
        time.sleep(1)  # a few more time ticks
        assert proc.poll() is None, err.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        try:
            utility.drop_collection(name, using=alias, timeout=20)
        except Exception:  # noqa: BLE001 - cleanup only
            pass
    events = read_lines(out)
    seqs = [e["sequence"] for e in events]
    assert_no_gap(seqs, after, "strictly consecutive sequences across the restart")
    assert {e["channel"] for e in events} == {ch}
    keys = inserted_keys(events, name)
    assert [k for k, n in keys.items() if n > 1] == [], "no row read twice"
    assert wanted <= set(keys), f"missing: {sorted(wanted - set(keys))[:10]}"
    assert set(keys) <= wanted | set(maybe), "no row that was never inserted"
    creates = [e for e in events if e["kind"] == "create_collection"
               and e["collection"] == name]
    assert len(creates) == 1
    # the restarted source still holds the same messages under the same
    # sequences, and the follower decoded them as a fresh read does
    fresh = dump([ch], after=after)
    assert events == fresh[:len(events)]
    # the reader really went through a broken connection (natsmq runs inside
    # the source Milvus; a Kafka broker stays up meanwhile)
    if SOURCE_MQ == "natsmq":
        log = err.read_text()
        assert "disconnected" in log or "reopen" in log, log[-2000:]
