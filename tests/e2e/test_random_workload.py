"""Exact replication of a seeded random workload: per seed, a random schema
of what Milvus 2.3.5 supports (int64 or VarChar key, 1 or 2 shards, maybe a
partition key, maybe a dynamic field, a random set of scalar fields among
them JSON and ARRAY, a float or a binary vector) and a random mix of
operations from four writers on their own connections at once (inserts,
inserts of keys that exist already, upserts, deletes by key and by a non-key
expression, into explicit partitions when the schema allows them), while a
DDL client races them (a partition created and dropped, a scalar index,
release and load, a second collection dropped and re-created under its name
with another random schema).

The source is the truth, read with pymilvus partition by partition and
compared field by field with the target, except where the documentation says
otherwise: a key inserted twice into one partition leaves both rows on the
source and only the latest on the target (docs/replication.md, "Duplicate
keys"); a query on the source returns either of the two, so such keys are
checked against the latest row the workload wrote. `milvus-cdc verify` must
agree too.

Seeds: RANDOM_WORKLOAD_SEEDS="5,6,7" runs others (exploration); every run
prints its seed and the workload it drew."""

import logging
import os
import random
import threading
import time
import uuid

import pytest
from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, MilvusException,
                      connections, utility)

from conftest import STACK, TARGET_TOKEN, create_task
from test_mixed_workload import UNICODE, _literal, difference, snapshot
from test_replication import wait_verified
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
DEFAULT_SEEDS = [1, 2, 5, 8]  # 8: a partition key, an upsert and a re-insert of a key
WRITERS = 4
SHARED = 60  # keys every writer upserts and deletes

INT_RANGES = {DataType.INT8: 2**7, DataType.INT16: 2**15, DataType.INT32: 2**31,
              DataType.INT64: 2**63}
SCALARS = [DataType.BOOL, DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64,
           DataType.FLOAT, DataType.DOUBLE, DataType.VARCHAR, DataType.JSON, DataType.ARRAY]
ELEMENTS = [DataType.BOOL, DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64,
            DataType.FLOAT, DataType.DOUBLE, DataType.VARCHAR]


def seeds():
    env = os.environ.get("RANDOM_WORKLOAD_SEEDS")
    return [int(s) for s in env.split(",") if s.strip()] if env else DEFAULT_SEEDS


# ------------------------------------------------------------------ schemas
def _length(dtype, n):
    return {"max_length": n} if dtype == DataType.VARCHAR else {}


class Schema:
    """A random schema; draws rows for it. Every schema has an integer field
    `age` (0..30) that non-key expression deletes select on."""

    def __init__(self, rng):
        self.pk_type = rng.choice([DataType.INT64, DataType.VARCHAR])
        self.shards = rng.choice([1, 2])
        self.partition_key = rng.choice([None, None, DataType.INT64, DataType.VARCHAR])
        self.num_partitions = rng.randint(2, 8)
        self.dynamic = rng.random() < 0.5
        self.binary = rng.random() < 0.4
        self.dim = rng.choice([8, 16, 32]) if self.binary else rng.randint(2, 24)
        self.key_mult = rng.randrange(1, 2**40, 2)  # spreads int keys, negatives too
        fields = [FieldSchema("pk", self.pk_type, is_primary=True, **_length(self.pk_type, 64)),
                  FieldSchema("age", rng.choice(list(INT_RANGES)))]
        if self.partition_key:
            fields.append(FieldSchema("tenant", self.partition_key, is_partition_key=True,
                                      **_length(self.partition_key, 16)))
        for i, t in enumerate(rng.sample(SCALARS, rng.randint(2, 6))):
            name = f"f{i}_{t.name.lower()}"
            if t == DataType.VARCHAR:
                fields.append(FieldSchema(name, t, max_length=rng.choice([16, 64, 512])))
            elif t == DataType.ARRAY:
                e = rng.choice(ELEMENTS)
                fields.append(FieldSchema(name, t, element_type=e, **_length(e, 16),
                                          max_capacity=rng.randint(1, 8)))
            else:
                fields.append(FieldSchema(name, t))
        fields.append(FieldSchema("vec", DataType.BINARY_VECTOR if self.binary
                                  else DataType.FLOAT_VECTOR, dim=self.dim))
        self.fields = fields

    def describe(self):
        return (f"pk {self.pk_type.name}, {self.shards} shard(s), partition key "
                f"{self.partition_key and self.partition_key.name}, dynamic {self.dynamic}, "
                f"fields {[(f.name, f.dtype.name) for f in self.fields]}")

    def create(self, alias, name):
        kw = {"num_partitions": self.num_partitions} if self.partition_key else {}
        c = Collection(name, CollectionSchema(self.fields, enable_dynamic_field=self.dynamic),
                       using=alias, shards_num=self.shards, **kw)
        c.create_index("vec", {"index_type": "BIN_FLAT", "metric_type": "HAMMING", "params": {}}
                       if self.binary else
                       {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        return c

    def key(self, i):
        if self.pk_type == DataType.INT64:
            return (i * self.key_mult) % 2**40 - 2**39
        return f"k{i}{UNICODE[i % len(UNICODE)]}"

    def tenant(self, i):
        """A partition-key value that depends on the key only: re-inserts
        land in the key's partition (a duplicate in one partition)."""
        return i % 11 if self.partition_key == DataType.INT64 else f"t{i % 11}"

    def _value(self, rng, f):
        t = f.dtype
        if t in INT_RANGES:
            r = INT_RANGES[t]
            return rng.randint(-r, r - 1)
        if t == DataType.BOOL:
            return rng.random() < 0.5
        if t == DataType.FLOAT:
            return rng.uniform(-1e6, 1e6)
        if t == DataType.DOUBLE:
            return rng.uniform(-1e15, 1e15)
        if t == DataType.VARCHAR:
            n = f.params["max_length"] // 12  # UNICODE's longest is 9 bytes
            return "".join(rng.choice(UNICODE + ["a", "Z", " "]) for _ in range(rng.randint(0, n)))
        if t == DataType.JSON:
            return {"n": rng.randint(-9, 9), "s": rng.choice(UNICODE), "f": rng.random(),
                    "l": [None, True, {"x": rng.random() < 0.5}]}
        if t == DataType.ARRAY:
            e = FieldSchema("e", f.element_type, **_length(f.element_type, 16))
            return [self._value(rng, e) for _ in range(rng.randint(0, f.params["max_capacity"]))]
        raise AssertionError(t)

    def rows(self, rng, idx, moved=False):
        """Rows of key indexes `idx`; `moved`: a random partition key."""
        out = []
        for i in idx:
            row = {"pk": self.key(i), "age": rng.randint(0, 30)}
            for f in self.fields[2:-1]:
                row[f.name] = self._value(rng, f)
            if self.partition_key:
                row["tenant"] = self.tenant(rng.randrange(99) if moved else i)
            if self.binary:
                row["vec"] = bytes(rng.getrandbits(8) for _ in range(self.dim // 8))
            else:
                row["vec"] = [rng.random() for _ in range(self.dim)]
            if self.dynamic and rng.random() < 0.5:
                row[f"dyn{rng.randint(0, 2)}"] = rng.choice([rng.random(), rng.choice(UNICODE),
                                                            {"d": [1, 2]}])
            out.append(row)
        return out

    def key_expr(self, idx):
        return "pk in [" + ",".join(_literal(self.key(i)) for i in idx) + "]"


# ------------------------------------------------------------------ workload
class RandomWorkload:
    """Four writers and a DDL client on their own connections; errors of
    races the DDL client causes (a partition gone, a collection released)
    are counted, anything else fails the test."""

    RACES = ("partition not found", "not loaded", "not exist", "released", "PartitionNotFound",
             "CollectionNotFound", "partition name", "is not loaded",
             # a delete by expression's query racing a release and load
             "channel not found", "delegator")

    def __init__(self, seed, rounds=14):
        self.seed = seed
        self.rng = random.Random(seed)
        self.tag = f"{seed}_{uuid.uuid4().hex[:6]}"
        self.main = f"rw_main_{self.tag}"
        self.reborn = f"rw_reborn_{self.tag}"
        self.schema = Schema(self.rng)
        self.rounds = rounds
        self.errors = []
        self.counts = {}
        # (partition, key) -> the latest row written by a plain insert of a
        # key that was inserted before: the documented target row.
        self.latest = {}
        self._lock = threading.Lock()

    @property
    def explicit_partitions(self):
        return self.schema.partition_key is None

    def note(self, what, n=1):
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def _try(self, what, fn):
        try:
            fn()
            self.note(what)
            return True
        except MilvusException as e:
            if any(r in f"{e.message}" for r in self.RACES):
                self.note(f"refused {what}")
                return False
            raise AssertionError(f"{what}: {e.code} {e.message}") from e

    def _run(self, fn, i):
        alias = connect(f"rw-{self.tag}-{fn.__name__}-{i}", SOURCE)
        try:
            fn(alias, random.Random(self.seed * 1000 + i), i)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{fn.__name__}[{i}]: {e!r}")
        finally:
            connections.disconnect(alias)

    def writer(self, alias, rng, w):
        s = self.schema
        c = Collection(self.main, using=alias)
        own = 100_000 * (w + 1)  # this writer's own key indexes start here
        inserted = {}  # own key index -> partition of its last plain insert
        parts = ["_default", "p1", "dp"] if self.explicit_partitions else [None]
        ops = ["upsert_shared", "insert_fresh", "insert_again", "upsert_own", "delete_keys",
               "delete_expr"]
        weights = [rng.randint(1, 5) for _ in ops]
        for r in range(self.rounds):
            for op in rng.choices(ops, weights, k=3):
                part = rng.choice(parts)
                if op == "upsert_shared":
                    rows = s.rows(rng, rng.sample(range(SHARED), rng.randint(1, 25)), moved=True)
                    self._try(op, lambda: c.upsert(rows, partition_name=part))
                elif op == "insert_fresh" or (op == "insert_again" and not inserted):
                    n = rng.randint(1, 40)
                    idx, own = list(range(own, own + n)), own + n
                    rows = s.rows(rng, idx)
                    if self._try("insert_fresh", lambda: c.insert(rows, partition_name=part)):
                        inserted.update((i, part) for i in idx)
                elif op == "insert_again":
                    # Keys this writer inserted before, again without upsert:
                    # duplicates on the source (in one partition or two).
                    idx = rng.sample(sorted(inserted), min(len(inserted), rng.randint(1, 15)))
                    rows = s.rows(rng, idx)
                    if self._try(op, lambda: c.insert(rows, partition_name=part)):
                        with self._lock:
                            for i, row in zip(idx, rows):
                                self.latest[(part or "*", s.key(i))] = row
                        inserted.update((i, part) for i in idx)
                elif op == "upsert_own" and inserted:
                    idx = rng.sample(sorted(inserted), min(len(inserted), rng.randint(1, 15)))
                    rows = s.rows(rng, idx)
                    if self._try(op, lambda: c.upsert(rows, partition_name=part)):
                        with self._lock:
                            for i, row in zip(idx, rows):
                                self.latest.pop((part or "*", s.key(i)), None)
                elif op == "delete_keys":
                    idx = rng.sample(range(SHARED), rng.randint(1, 8))
                    if inserted and rng.random() < 0.5:
                        idx += rng.sample(sorted(inserted), min(len(inserted), 5))
                    scope = part if rng.random() < 0.5 else None
                    self._try(op, lambda: c.delete(s.key_expr(idx), partition_name=scope))
                elif op == "delete_expr":
                    # Resolved to keys by the source (needs it loaded).
                    age = rng.randint(0, 30)
                    self._try(op, lambda: c.delete(f"age == {age}", partition_name=part))
            time.sleep(rng.random() * 0.1)

    def ddl(self, alias, rng, _):
        """Churns partition "dp" of the main collection (released around each
        drop), indexes a scalar field, releases and loads, and drops and
        re-creates the second collection with another random schema."""
        c = Collection(self.main, using=alias)
        gen = 0
        for step in range(self.rounds // 2):
            time.sleep(rng.random() * 0.6)
            what = rng.choice(["partition", "reborn", "release", "index"])
            if what == "partition" and self.explicit_partitions:
                c.release()
                if c.has_partition("dp"):
                    c.drop_partition("dp")
                    self.note("dropped partitions")
                c.create_partition("dp")
                c.load()
            elif what == "release":
                c.release()
                time.sleep(rng.random() * 0.3)
                c.load()
                self.note("release/load")
            elif what == "index" and not self.counts.get("scalar index"):
                c.create_index("age", {"index_type": "STL_SORT"}, index_name="age_idx")
                self.note("scalar index")
            else:
                self.reborn_generation(alias, rng, gen)
                gen += 1
        if not gen:
            self.reborn_generation(alias, rng, gen)

    def reborn_generation(self, alias, rng, gen):
        if utility.has_collection(self.reborn, using=alias):
            utility.drop_collection(self.reborn, using=alias)
        s = Schema(random.Random(self.seed * 31 + gen))
        self.reborn_schema = s
        c = s.create(alias, self.reborn)
        c.load()
        c.insert(s.rows(rng, range(gen * 1000, gen * 1000 + 80)))
        c.upsert(s.rows(rng, range(gen * 1000 + 40, gen * 1000 + 60), moved=True))
        c.delete(s.key_expr(range(gen * 1000, gen * 1000 + 10)))
        c.delete("age < 3")
        self.note("reborn generations")

    def run(self):
        admin = connect(f"rw-{self.tag}-admin", SOURCE)
        c = self.schema.create(admin, self.main)
        if self.explicit_partitions:
            c.create_partition("p1")
            c.create_partition("dp")
        c.load()
        jobs = [(self.writer, w) for w in range(WRITERS)] + [(self.ddl, WRITERS)]
        threads = [threading.Thread(target=self._run, args=j, daemon=True) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
        assert not self.errors, self.errors
        for name in (self.main, self.reborn):
            # Loaded already unless released last: a load then would be
            # refused when an index was created since the collection's load.
            if utility.load_state(name, using=admin).name != "Loaded":
                Collection(name, using=admin).load()
        return admin


# ------------------------------------------------------------------ checking
def documented_target(wl, src):
    """The target the documentation promises, from the source's snapshot:
    per partition one row per key (a duplicate's latest row), so count(*)
    is the number of distinct keys."""
    out = {}
    for p, (_, rows) in src.items():
        rows = dict(rows)
        for (part, key), row in wl.latest.items():
            if part == p and key in rows:
                rows[key] = {**{k: None for k in rows[key] if k not in row}, **row}
        out[p] = (len(rows), rows)
    return out


def normalized(snap, schema):
    """Rows as pymilvus returns them, with the fields a row did not give
    (dynamic keys) left out, and float32 fields rounded the way the server
    stores them."""
    import struct
    floats = {f.name for f in schema.fields if f.dtype == DataType.FLOAT}
    f32s = {f.name for f in schema.fields if f.dtype == DataType.ARRAY
            and f.element_type == DataType.FLOAT}
    vec = not schema.binary

    def f32(x):
        return struct.unpack("f", struct.pack("f", x))[0]

    out = {}
    for p, (n, rows) in snap.items():
        new = {}
        for k, r in rows.items():
            r = {f: v for f, v in r.items() if v is not None}
            for f in floats & set(r):
                r[f] = f32(r[f])
            for f in f32s & set(r):
                r[f] = [f32(x) for x in r[f]]
            if vec and "vec" in r:
                r["vec"] = [f32(x) for x in r["vec"]]
            if isinstance(r.get("vec"), list) and r["vec"] and isinstance(r["vec"][0], bytes):
                r["vec"] = b"".join(r["vec"])
            new[k] = r
        out[p] = (n, new)
    return out


def wait_documented(wl, src_alias, tgt_alias, timeout=180):
    """Waits until the target holds the documented rows of both
    collections; returns the source's snapshots."""
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    src = {n: snapshot(src_alias, n) for n in (wl.main, wl.reborn)}
    want = {wl.main: normalized(documented_target(wl, src[wl.main]), wl.schema),
            wl.reborn: normalized(src[wl.reborn], wl.reborn_schema)}
    schemas = {wl.main: wl.schema, wl.reborn: wl.reborn_schema}
    deadline, diffs = time.time() + timeout, {}
    while time.time() < deadline:
        diffs = {}
        for n in want:
            try:
                tgt = normalized(snapshot(tgt_alias, n), schemas[n])
            except Exception as e:  # noqa: BLE001 - not created or loaded yet
                diffs[n] = f"not readable: {e}"[:300]  # repr hides the message
                continue
            d = difference(want[n], tgt)
            if d:
                diffs[n] = d[:1500]
        if not diffs:
            return src
        time.sleep(2)
    raise AssertionError(f"seed {wl.seed}: the target never held the documented rows: {diffs}")


@pytest.mark.parametrize("seed", seeds())
def test_random_workload_replicates_exactly(agent, seed):
    print(f"random workload seed {seed} (RANDOM_WORKLOAD_SEEDS={seed} repeats it)")
    create_task(agent)
    wl = RandomWorkload(seed)
    print(f"main: {wl.schema.describe()}")
    admin = wl.run()
    print(f"reborn: {wl.reborn_schema.describe()}")
    print(f"ops: {sorted(wl.counts.items())}, re-inserted rows {len(wl.latest)}")
    try:
        tgt = connect(f"rw-{wl.tag}-target", TARGET, TARGET_TOKEN)
        try:
            src = wait_documented(wl, admin, tgt)
        except AssertionError:
            # What the agent said about it (shown with the failure).
            print("agent log, warnings:\n" + "\n".join(
                line for line in agent.log_tail(4000).splitlines()
                if " WARN " in line or " ERROR " in line or wl.reborn in line)[-8000:])
            raise
        assert sum(len(r) for _, r in src[wl.main].values()) > 100, "rows were written"
        for n in (wl.main, wl.reborn):
            s_fields = [(f.name, f.dtype) for f in Collection(n, using=admin).schema.fields]
            t_fields = [(f.name, f.dtype) for f in Collection(n, using=tgt).schema.fields]
            assert s_fields == t_fields, n
        wait_verified([wl.main, wl.reborn], limit=90)
    finally:
        for n in (wl.main, wl.reborn):
            utility.drop_collection(n, using=admin, timeout=30)
