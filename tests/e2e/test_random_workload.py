"""Exact replication of a seeded random workload: per seed, a random schema
of what Milvus 2.3.5 supports (int64 or VarChar key, 1 or 2 shards, maybe a
partition key, maybe a dynamic field, a random set of scalar fields among
them JSON and ARRAY, a float or a binary vector) and a random mix of
operations from four writers on their own connections at once (inserts,
inserts of keys that exist already, upserts, deletes by key and by a non-key
expression, into explicit partitions when the schema allows them), while a
DDL client races them (a partition created and dropped, a scalar index,
release and load, a second collection dropped and re-created under its name
with another random schema), and, per seed as a second rng draws them:
a database with its own collection that a sixth client writes into (maybe
dropped and re-created), an alias of the main collection that two writers
write through and that is then moved to the second collection (maybe
dropped), and index churn on the second collection (released, its vector
index dropped and another type created, loaded again).

The source is the truth, read with pymilvus partition by partition and
compared field by field with the target, except where the documentation says
otherwise: a key inserted twice into one partition leaves both rows on the
source and only the latest on the target (docs/replication.md, "Duplicate
keys"); a query on the source returns either of the two, so such keys are
checked against the latest row the workload wrote. The target must also
have the database, each collection's aliases and its indexes (type and
parameters) as on the source. `milvus-cdc verify` must agree too.

Seeds: RANDOM_WORKLOAD_SEEDS="5,6,7" runs others (exploration); every run
prints its seed and the workload it drew.

RANDOM_WORKLOAD_KEEP=1 keeps a failed run's collections (its alias and
database too): nothing is dropped at teardown, and the names are printed.
scripts/test.sh stops the stack afterwards but keeps its run folder until
its next run; `scripts/stack.sh start` with the same CDC_* variables (see
scripts/test.sh) brings both Milvus back to inspect them."""

import logging
import os
import random
import threading
import time
import uuid

import pytest
from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, MilvusException,
                      connections, db, utility)

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

    def other_index(self, rng):
        """Another vector index than create's (name, params) for index churn."""
        nlist = rng.choice([4, 16, 128])
        if self.binary:
            return "vec_bivf", {"index_type": "BIN_IVF_FLAT", "params": {"nlist": nlist},
                                "metric_type": rng.choice(["HAMMING", "JACCARD"])}
        return "vec_ivf", {"index_type": rng.choice(["IVF_FLAT", "IVF_SQ8"]),
                           "params": {"nlist": nlist}, "metric_type": rng.choice(["L2", "IP"])}

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
        # The DDL added later draws from its own rng, so that the schemas and
        # the writers' operations of a seed stay what they were.
        extra = random.Random(f"extra-{seed}")
        self.database = f"rwdb_{self.tag}" if extra.random() < 0.7 else None
        self.in_db = f"rw_indb_{self.tag}"
        self.alias = f"rw_alias_{self.tag}" if extra.random() < 0.7 else None
        self.index_churn = extra.random() < 0.7
        self.alias_ready = threading.Event()  # created on the main collection
        self.alias_free = threading.Event()  # no writer writes through it any more
        self.alias_writers = 2 if self.alias else 0
        if not self.alias:
            self.alias_free.set()
        self.in_db_schema = None
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
        main = c = Collection(self.main, using=alias)
        # Writers 0 and 1 write through the alias in their first rounds
        # (while it names the main collection), then release it.
        via_alias = w < self.alias_writers
        own = 100_000 * (w + 1)  # this writer's own key indexes start here
        inserted = {}  # own key index -> partition of its last plain insert
        parts = ["_default", "p1", "dp"] if self.explicit_partitions else [None]
        ops = ["upsert_shared", "insert_fresh", "insert_again", "upsert_own", "delete_keys",
               "delete_expr"]
        weights = [rng.randint(1, 5) for _ in ops]
        for r in range(self.rounds):
            if via_alias and r == 0:
                assert self.alias_ready.wait(60), "the alias was not created"
                c = Collection(self.alias, using=alias)
                self.note("writers through the alias")
            elif via_alias and r == self.rounds // 2:
                c = main
                with self._lock:
                    self.alias_writers -= 1
                    if not self.alias_writers:
                        self.alias_free.set()
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
        extra = random.Random(f"ddl-{self.seed}")
        if self.alias:
            utility.create_alias(self.main, self.alias, using=alias)
            self.alias_ready.set()
            self.note("alias created")
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
                # Through the alias while it names the main collection: the
                # source's messages then carry the alias, not the name.
                via = (self.alias and not self.counts.get("alias moved")
                       and extra.random() < 0.5)
                cc = Collection(self.alias, using=alias) if via else c
                cc.release()
                time.sleep(rng.random() * 0.3)
                cc.load()
                self.note("release/load through the alias" if via else "release/load")
            elif what == "index" and not self.counts.get("scalar index"):
                via = (self.alias and not self.counts.get("alias moved")
                       and extra.random() < 0.5)
                cc = Collection(self.alias, using=alias) if via else c
                cc.create_index("age", {"index_type": "STL_SORT"}, index_name="age_idx")
                self.note("scalar index")
                if via:
                    self.note("scalar index through the alias")
            else:
                self.reborn_generation(alias, rng, gen)
                gen += 1
            self.move_alias(alias)
        if not gen:
            self.reborn_generation(alias, rng, gen)
        # Once, on the last generation: an earlier generation's index
        # changes, replayed while the target already holds a later one of
        # the same vector type, can land on it (docs/replication.md, "Name
        # reuse").
        if self.index_churn:
            self.churn_index(alias, extra)
        if self.alias:
            assert self.alias_free.wait(120), "writers never left the alias"
            self.move_alias(alias)
            # Milvus 2.3.5 drops a collection's aliases with it: a re-created
            # second collection has none.
            if extra.random() < 0.4 and utility.has_collection(self.alias, using=alias):
                utility.drop_alias(self.alias, using=alias)
                self.note("alias dropped")

    def move_alias(self, alias):
        """Points the alias at the second collection once no writer uses it."""
        if (self.alias and self.alias_free.is_set() and not self.counts.get("alias moved")
                and utility.has_collection(self.reborn, using=alias)):
            utility.alter_alias(self.reborn, self.alias, using=alias)
            self.note("alias moved")

    def churn_index(self, alias, rng):
        """Replaces the second collection's vector index with another type."""
        c = Collection(self.reborn, using=alias)
        c.release()
        for ix in c.indexes:
            if ix.field_name == "vec":
                c.drop_index(index_name=ix.index_name)
        name, params = self.reborn_schema.other_index(rng)
        c.create_index("vec", params, index_name=name)
        c.load()
        self.note("index churn")

    def db_client(self, alias, rng, _):
        """Creates a database and a collection in it, writes into it (inserts
        of fresh keys, upserts, deletes), maybe drops and re-creates it."""
        db.create_database(self.database, using=alias)
        self.note("database")
        conn = connect(f"rw-{self.tag}-indb", SOURCE, db_name=self.database)
        try:
            for gen in range(rng.choice([1, 2])):
                if gen:
                    utility.drop_collection(self.in_db, using=conn)
                    self.note("in-db re-created")
                s = Schema(random.Random(self.seed * 53 + gen))
                self.in_db_schema = s
                c = s.create(conn, self.in_db)
                c.load()
                fresh = 0
                for _ in range(rng.randint(3, 8)):
                    op = rng.choice(["insert", "insert", "upsert", "delete", "delete_expr"])
                    if op == "insert" or not fresh:
                        n = rng.randint(5, 60)
                        c.insert(s.rows(rng, range(fresh, fresh + n)))
                        fresh += n
                    elif op == "upsert":
                        # Keys written before, and new ones (never inserted).
                        idx = rng.sample(range(fresh), min(fresh, rng.randint(1, 20)))
                        idx += rng.sample(range(500_000, 500_050), rng.randint(0, 3))
                        c.upsert(s.rows(rng, idx, moved=True))
                    elif op == "delete":
                        c.delete(s.key_expr(rng.sample(range(fresh), min(fresh, 6))))
                    else:
                        c.delete(f"age == {rng.randint(0, 30)}")
                    self.note(f"in-db {op}")
                    time.sleep(rng.random() * 0.2)
        finally:
            connections.disconnect(conn)

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
        if self.database:
            jobs.append((self.db_client, WRITERS + 1))
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


def wait_documented(wl, src_alias, tgt_alias, src_db=None, timeout=180):
    """Waits until the target holds the documented rows of every collection
    (the database's too); returns the source's snapshots and the target's
    connection to the database (None without one)."""
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    src = {n: snapshot(src_alias, n) for n in (wl.main, wl.reborn)}
    want = {wl.main: normalized(documented_target(wl, src[wl.main]), wl.schema),
            wl.reborn: normalized(src[wl.reborn], wl.reborn_schema)}
    schemas = {wl.main: wl.schema, wl.reborn: wl.reborn_schema}
    if wl.database:
        src[wl.in_db] = snapshot(src_db, wl.in_db)
        want[wl.in_db] = normalized(src[wl.in_db], wl.in_db_schema)
        schemas[wl.in_db] = wl.in_db_schema
    deadline, diffs, tgt_db = time.time() + timeout, {}, None
    while time.time() < deadline:
        diffs = {}
        for n in want:
            side = tgt_alias
            if n == wl.in_db:
                if tgt_db is None:
                    if wl.database not in db.list_database(using=tgt_alias):
                        diffs[n] = f"the target has no database {wl.database}"
                        continue
                    tgt_db = connect(f"rw-{wl.tag}-target-db", TARGET, TARGET_TOKEN,
                                     db_name=wl.database)
                side = tgt_db
            try:
                tgt = normalized(snapshot(side, n), schemas[n])
            except Exception as e:  # noqa: BLE001 - not created or loaded yet
                diffs[n] = f"not readable: {e}"[:300]  # repr hides the message
                continue
            d = difference(want[n], tgt)
            if d:
                diffs[n] = d[:1500]
        if not diffs:
            return src, tgt_db
        time.sleep(2)
    raise AssertionError(f"seed {wl.seed}: the target never held the documented rows: {diffs}")


def metadata(alias, name):
    """A collection's aliases and indexes (field, name, type and parameters)."""
    c = Collection(name, using=alias)
    return (sorted(utility.list_aliases(name, using=alias)),
            sorted((ix.field_name, ix.index_name, repr(sorted(ix.params.items())))
                   for ix in c.indexes))


def wait_metadata(pairs, timeout=60):
    """Waits until every (name, source, target) has the source's aliases and
    indexes on the target (aliases reach it through the reconciler)."""
    deadline = time.time() + timeout
    while True:
        diffs = {n: (metadata(s, n), metadata(t, n)) for n, s, t in pairs}
        diffs = {n: d for n, d in diffs.items() if d[0] != d[1]}
        if not diffs or time.time() > deadline:
            return diffs
        time.sleep(2)


def print_agent_warnings(agent, also):
    """Prints the agent's warnings and errors, and the lines `also` picks,
    for a failure to show what the agent said about it."""
    print("agent log, warnings:\n" + "\n".join(
        line for line in agent.log_tail(4000).splitlines()
        if " WARN " in line or " ERROR " in line or also(line))[-8000:])


@pytest.mark.parametrize("seed", seeds())
def test_random_workload_replicates_exactly(agent, seed):
    print(f"random workload seed {seed} (RANDOM_WORKLOAD_SEEDS={seed} repeats it)")
    create_task(agent)
    wl = RandomWorkload(seed)
    print(f"main: {wl.schema.describe()}")
    print(f"database {wl.database}, alias {wl.alias}, index churn {wl.index_churn}")
    admin, src_db, t0, passed = None, None, time.time(), False
    try:
        admin = wl.run()
        t1 = time.time()
        print(f"reborn: {wl.reborn_schema.describe()}")
        if wl.database:
            print(f"in database: {wl.in_db_schema.describe()}")
            src_db = connect(f"rw-{wl.tag}-db", SOURCE, db_name=wl.database)
        print(f"ops: {sorted(wl.counts.items())}, re-inserted rows {len(wl.latest)}")
        tgt = connect(f"rw-{wl.tag}-target", TARGET, TARGET_TOKEN)
        try:
            src, tgt_db = wait_documented(wl, admin, tgt, src_db)
        except AssertionError:
            print_agent_warnings(agent, lambda line: wl.reborn in line)
            raise
        t2 = time.time()
        assert sum(len(r) for _, r in src[wl.main].values()) > 100, "rows were written"
        pairs = [(wl.main, admin, tgt), (wl.reborn, admin, tgt)]
        if wl.database:
            assert wl.database in db.list_database(using=tgt)
            pairs.append((wl.in_db, src_db, tgt_db))
        for n, s_side, t_side in pairs:
            s_fields = [(f.name, f.dtype) for f in Collection(n, using=s_side).schema.fields]
            t_fields = [(f.name, f.dtype) for f in Collection(n, using=t_side).schema.fields]
            assert s_fields == t_fields, n
        diffs = wait_metadata(pairs)
        if diffs:
            print_agent_warnings(agent, lambda line: "alias" in line.lower())
        assert not diffs, f"seed {seed}: (aliases, indexes) source vs target: {diffs}"
        t3 = time.time()
        wait_verified([wl.main, wl.reborn] + ([wl.in_db] if wl.database else []), limit=90)
        print(f"seconds: workload {t1 - t0:.0f}, rows {t2 - t1:.0f}, aliases and indexes "
              f"{t3 - t2:.0f}, verify {time.time() - t3:.0f}")
        passed = True
    finally:
        if not passed and os.environ.get("RANDOM_WORKLOAD_KEEP") == "1":
            print(f"RANDOM_WORKLOAD_KEEP=1: kept collections {wl.main}, {wl.reborn}, alias "
                  f"{wl.alias}, database {wl.database} (collection {wl.in_db})")
        else:
            cleanup(wl, admin or connect(f"rw-{wl.tag}-admin", SOURCE))


def cleanup(wl, admin):
    """Drops what the workload made on the source (the agent replicates the
    drops): the alias, the collections, the database's collection and the
    database (which Milvus drops only when empty)."""
    if wl.alias:
        for n in (wl.main, wl.reborn):
            if utility.has_collection(n, using=admin) and \
                    wl.alias in utility.list_aliases(n, using=admin):
                utility.drop_alias(wl.alias, using=admin)
    for n in (wl.main, wl.reborn):
        utility.drop_collection(n, using=admin, timeout=30)
    if wl.database and wl.database in db.list_database(using=admin):
        src_db = connect(f"rw-{wl.tag}-db-cleanup", SOURCE, db_name=wl.database)
        try:
            utility.drop_collection(wl.in_db, using=src_db, timeout=30)
        finally:
            connections.disconnect(src_db)
        db.drop_database(wl.database, using=admin)
