"""Exact replication of a mixed workload: six pymilvus clients, each on its
own connection, write at once to collections of many field types (bool,
int8..int64, float, double, VarChar, JSON, ARRAY, dynamic fields, float and
binary vectors; int64 and VarChar keys), with explicit partitions and a
partition key, while a seventh client changes the schema around them
(partitions created and dropped, a collection dropped and re-created under
its name with another schema, indexes and loads mid-stream).

What test_concurrent_writers does not cover: upserts and deletes scoped to a
partition, the same key living in two partitions, deletes by a non-key
expression (Milvus resolves them to keys), upserts that move a key to
another partition-key partition, unicode and near-max-length strings, one
20 000-row insert, and DDL racing the rows of a 2-shard collection.

The source is the truth: every row of every partition is read with pymilvus
on both sides and must be equal field by field, count(*) too; `milvus-cdc
verify` must agree (partition by partition where a key lives in two)."""

import logging
import random
import threading
import time
import uuid

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility

from conftest import STACK, TARGET_TOKEN, create_task
from test_replication import wait_verified
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
SHARED = 120  # keys every client of a collection upserts and deletes
LONG = 2048  # max_length of the long VarChar field
UNICODE = ["ü", "日本語", "🚀", "ἀλφα", "\u200b", "\"q'", "\\b"]


def _index(c, field, binary=False):
    params = ({"index_type": "BIN_FLAT", "metric_type": "HAMMING", "params": {}} if binary
              else {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.create_index(field, params)


def _fvec(rng, dim):
    return [rng.random() for _ in range(dim)]


def _bvec(rng, dim):
    return bytes(rng.getrandbits(8) for _ in range(dim // 8))


def _text(rng, i):
    return f"{rng.choice(UNICODE)}{i}{rng.choice(UNICODE)}"


# ------------------------------------------------------------------ schemas
def create_typed(alias, name):
    """int64 key, every scalar type, ARRAY, JSON, dynamic field, dim-16
    float vector, 2 shards, partitions p1 and p2; loaded (deletes by
    expression need a loaded collection)."""
    fields = [
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("flag", DataType.BOOL),
        FieldSchema("i8", DataType.INT8),
        FieldSchema("i16", DataType.INT16),
        FieldSchema("i32", DataType.INT32),
        FieldSchema("age", DataType.INT64),
        FieldSchema("f", DataType.FLOAT),
        FieldSchema("d", DataType.DOUBLE),
        FieldSchema("s", DataType.VARCHAR, max_length=LONG),
        FieldSchema("j", DataType.JSON),
        FieldSchema("tags", DataType.ARRAY, element_type=DataType.INT64, max_capacity=8),
        FieldSchema("emb", DataType.FLOAT_VECTOR, dim=16),
    ]
    c = Collection(name, CollectionSchema(fields, enable_dynamic_field=True), using=alias,
                   shards_num=2)
    c.create_partition("p1")
    c.create_partition("p2")
    _index(c, "emb")
    c.load()


def typed_rows(rng, keys, tag):
    rows = []
    for k in keys:
        row = {"id": k, "flag": rng.random() < 0.5, "i8": rng.randint(-128, 127),
               "i16": rng.randint(-32768, 32767), "i32": rng.randint(-2**31, 2**31 - 1),
               "age": rng.randint(0, 30), "f": rng.random(), "d": rng.random() * 1e12,
               "s": (("x" * (LONG - 7)) + f"{k % 10**7:07d}" if rng.random() < 0.1
                     else _text(rng, tag)),
               "j": {"k": k, "t": tag, "u": rng.choice(UNICODE), "n": [1, {"a": None}]},
               "tags": [rng.randint(0, 99) for _ in range(rng.randint(0, 8))],
               "emb": _fvec(rng, 16)}
        if rng.random() < 0.5:
            row[f"dyn_{rng.randint(0, 2)}"] = _text(rng, k)
        rows.append(row)
    return rows


def create_tenants(alias, name):
    """VarChar key, int64 partition key over 4 partitions, JSON, dynamic
    field; loaded."""
    fields = [
        FieldSchema("key", DataType.VARCHAR, is_primary=True, max_length=64),
        FieldSchema("tenant", DataType.INT64, is_partition_key=True),
        FieldSchema("age", DataType.INT32),
        FieldSchema("j", DataType.JSON),
        FieldSchema("v", DataType.FLOAT_VECTOR, dim=8),
    ]
    c = Collection(name, CollectionSchema(fields, enable_dynamic_field=True), using=alias,
                   num_partitions=4, shards_num=2)
    _index(c, "v")
    c.load()


def tenant_key(i):
    return f"k{i}-{UNICODE[i % len(UNICODE)]}"


def tenant_rows(rng, keys, tag):
    return [{"key": k, "tenant": rng.randint(0, 9), "age": rng.randint(0, 30),
             "j": {"tag": tag, "s": rng.choice(UNICODE)}, "v": _fvec(rng, 8),
             "extra": rng.choice(UNICODE)} for k in keys]


def create_binary(alias, name):
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("age", DataType.INT8),
              FieldSchema("bv", DataType.BINARY_VECTOR, dim=32)]
    c = Collection(name, CollectionSchema(fields), using=alias)
    return c  # indexed and loaded mid-stream by the DDL client


def create_churn(alias, name):
    """2 shards, partition "pc" created and dropped while rows are written;
    not loaded until the end (a loaded partition cannot be dropped)."""
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("n", DataType.INT64),
              FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
    return Collection(name, CollectionSchema(fields), using=alias, shards_num=2)


def create_reborn(alias, name, generation):
    """The same name with another schema in each generation."""
    if generation == 0:
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
    else:
        fields = [FieldSchema("id", DataType.VARCHAR, is_primary=True, max_length=32),
                  FieldSchema("note", DataType.VARCHAR, max_length=64),
                  FieldSchema("j", DataType.JSON),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=6)]
    return Collection(name, CollectionSchema(fields), using=alias, shards_num=2)


# ------------------------------------------------------------------ clients
class Mixed:
    """The six writers and the DDL client. Errors are collected, not raised
    in the threads."""

    def __init__(self, tag, rounds=12):
        self.tag = tag
        self.rounds = rounds
        self.names = {b: f"mx_{b}_{tag}" for b in ("typed", "tenants", "bin", "churn",
                                                   "reborn", "big")}
        self.errors = []
        self.counts = {}
        self._lock = threading.Lock()

    def _run(self, fn, i):
        alias = connect(f"mx-{self.tag}-{fn.__name__}-{i}", SOURCE)
        try:
            fn(alias, random.Random(i * 7919 + 1), i)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{fn.__name__}[{i}]: {e}")
        finally:
            connections.disconnect(alias)

    def note(self, what, n=1):
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def typed_writer(self, alias, rng, i):
        """Upserts shared keys into _default, p1 or p2 (the same key in two
        partitions), inserts fresh keys, deletes in one partition, in all,
        and by a non-key expression."""
        c = Collection(self.names["typed"], using=alias)
        for r in range(self.rounds):
            part = ["_default", "p1", "p2"][(r + i) % 3]
            c.upsert(typed_rows(rng, rng.sample(range(SHARED), 30), r), partition_name=part)
            fresh = [10_000 * (i + 1) + r * 40 + k for k in range(40)]
            c.insert(typed_rows(rng, fresh, r), partition_name=part)
            gone = rng.sample(range(SHARED), 4)
            c.delete(f"id in {gone}", partition_name=rng.choice(["p1", "p2"]))
            self.note("partition deletes")
            c.delete(f"id in {rng.sample(range(SHARED), 2)}")
            if r % 4 == 3:
                # Resolved to keys by the source at the delete's time.
                c.delete(f"age > 27 and id >= {10_000 * (i + 1)} and id < {10_000 * (i + 2)}")
                self.note("expression deletes")
        self.note("typed rounds", self.rounds)

    def tenant_writer(self, alias, rng, i):
        """Upserts shared VarChar keys with a random partition key (moving
        them between partitions), inserts fresh keys, deletes by key and by
        the partition key."""
        c = Collection(self.names["tenants"], using=alias)
        for r in range(self.rounds):
            c.upsert(tenant_rows(rng, [tenant_key(k) for k in rng.sample(range(SHARED), 25)], r))
            c.insert(tenant_rows(rng, [f"f{i}-{r}-{k}-ü" for k in range(30)], r))
            gone = [tenant_key(k) for k in rng.sample(range(SHARED), 3)]
            c.delete("key in [" + ",".join(_literal(k) for k in gone) + "]")
            if r % 4 == 1:
                c.delete(f"tenant == {rng.randint(0, 9)} and age > 25")
                self.note("expression deletes")
        self.note("tenant rounds", self.rounds)

    def binary_writer(self, alias, rng, i):
        """Binary vectors; the DDL client indexes and loads the collection
        while this writes; deletes by expression once it is loaded."""
        c = Collection(self.names["bin"], using=alias)
        for r in range(self.rounds):
            keys = rng.sample(range(SHARED), 20) + [5000 + r * 20 + k for k in range(20)]
            c.upsert([keys, [rng.randint(-128, 127) for _ in keys],
                      [_bvec(rng, 32) for _ in keys]])
            c.delete(f"id in {rng.sample(range(SHARED), 3)}")
            if utility.load_state(c.name, using=alias).name == "Loaded":
                c.delete("age > 100")
                self.note("expression deletes")
            time.sleep(0.05)

    def ddl_client(self, alias, rng, i):
        churn = Collection(self.names["churn"], using=alias)
        for gen in range(3):
            churn.create_partition("pc")
            for r in range(4):
                keys = [gen * 1000 + r * 25 + k for k in range(25)]
                churn.insert([keys, [gen] * 25, [_fvec(rng, 4) for _ in keys]],
                             partition_name="pc")
                churn.upsert([list(range(10)), [gen * 10 + r] * 10,
                              [_fvec(rng, 4) for _ in range(10)]], partition_name="pc")
                churn.insert([[100_000 + gen * 1000 + r], [r], [_fvec(rng, 4)]])
            if gen < 2:
                churn.drop_partition("pc")
                self.note("dropped partitions")
        # The binary collection gets its index and load mid-stream.
        b = Collection(self.names["bin"], using=alias)
        _index(b, "bv", binary=True)
        b.load()
        # A name dropped and re-created with another schema while the
        # others write.
        name = self.names["reborn"]
        c = create_reborn(alias, name, 0)
        c.insert([list(range(50)), [_fvec(rng, 4) for _ in range(50)]])
        c.delete("id in [1, 2, 3]")
        c.drop()
        c = create_reborn(alias, name, 1)
        keys = [f"r{k}-{UNICODE[k % len(UNICODE)]}" for k in range(60)]
        c.insert([keys, [_text(rng, k) for k in range(60)], [{"k": k} for k in range(60)],
                  [_fvec(rng, 6) for _ in keys]])
        c.upsert([keys[:10], ["up"] * 10, [{"up": True}] * 10, [_fvec(rng, 6) for _ in range(10)]])
        try:  # an empty insert: refused by pymilvus or Milvus, or nothing
            c.insert([[], [], [], []])
        except Exception:  # noqa: BLE001 - either way no row may appear
            pass
        self.note("ddl done")

    def big_insert(self, alias, rng, i):
        """One 20 000-row insert of dim-128 vectors."""
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("s", DataType.VARCHAR, max_length=16),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=128)]
        c = Collection(self.names["big"], CollectionSchema(fields), using=alias)
        n = 20_000
        c.insert([list(range(n)), [f"b{k}" for k in range(n)],
                  [[rng.random() for _ in range(128)] for _ in range(n)]])
        c.delete(f"id in {list(range(0, n, 997))}")

    def run(self):
        admin = connect(f"mx-{self.tag}-admin", SOURCE)
        create_typed(admin, self.names["typed"])
        create_tenants(admin, self.names["tenants"])
        create_binary(admin, self.names["bin"])
        create_churn(admin, self.names["churn"])
        jobs = [(self.typed_writer, 0), (self.typed_writer, 1), (self.tenant_writer, 2),
                (self.tenant_writer, 3), (self.binary_writer, 4), (self.big_insert, 5),
                (self.ddl_client, 6)]
        threads = [threading.Thread(target=self._run, args=j, daemon=True) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
        assert not self.errors, self.errors
        # Everything indexed and loaded, so both sides can be read.
        for base in ("churn", "reborn", "big"):
            c = Collection(self.names[base], using=admin)
            _index(c, "v")
            c.load()
        return admin


# ------------------------------------------------------------------ reading
def _literal(v):
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def _norm(v):
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return b"".join(v)  # a binary vector comes back as [bytes]
    return v


def rows(alias, name, partition=None):
    """{pk: {field: value}} of every row of a loaded collection (or of one
    partition), read in key order with Strong consistency."""
    c = Collection(name, using=alias)
    pk = c.schema.primary_field.name
    out, last = {}, None
    while True:
        expr = "" if last is None else f"{pk} > {_literal(last)}"
        page = c.query(expr, output_fields=["*"], limit=16384, consistency_level="Strong",
                       partition_names=[partition] if partition else None)
        if not page:
            return out
        for r in page:
            out[r[pk]] = {k: _norm(v) for k, v in r.items()}
        last = max(r[pk] for r in page)


def count(alias, name, partition=None):
    """count(*): counts every row, a key's duplicates too."""
    c = Collection(name, using=alias)
    res = c.query("", output_fields=["count(*)"], consistency_level="Strong",
                  partition_names=[partition] if partition else None)
    return res[0]["count(*)"]


def snapshot(alias, name):
    """{partition: (count(*), rows)}, one entry per partition so that a key
    in two partitions is seen twice; a partition-key collection (whose
    partitions cannot be named in a query) as one entry "*"."""
    c = Collection(name, using=alias)
    if any(f.is_partition_key for f in c.schema.fields):
        return {"*": (count(alias, name), rows(alias, name))}
    return {p.name: (count(alias, name, p.name), rows(alias, name, p.name))
            for p in c.partitions}


def difference(src, tgt):
    if tgt is None:
        return "not readable"
    if set(src) != set(tgt):
        return f"partitions {sorted(src)} != {sorted(tgt)}"
    out = []
    for p, (s_count, s) in src.items():
        t_count, t = tgt[p]
        if s_count != t_count:
            out.append(f"{p}: count(*) {s_count} vs {t_count}")
        if s != t:
            missing = sorted(set(s) - set(t), key=str)
            extra = sorted(set(t) - set(s), key=str)
            diff = [k for k in s if k in t and s[k] != t[k]]
            out.append(f"{p}: {len(s)} rows vs {len(t)}: missing {missing[:5]}, "
                       f"extra {extra[:5]}, different {len(diff)} "
                       f"{[(k, s[k], t[k]) for k in diff[:1]]}")
    return "; ".join(out) or None


def wait_exact(src_alias, tgt_alias, names, timeout=420):
    """Waits until every collection's partitions hold the same rows on both
    sides; returns the source's snapshots."""
    src = {n: snapshot(src_alias, n) for n in names}
    # pymilvus logs every refused query: the target is read until it is loaded.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    deadline = time.time() + timeout
    diffs = {}
    while time.time() < deadline:
        diffs = {}
        for n in names:
            try:
                tgt = snapshot(tgt_alias, n) if utility.has_collection(n, using=tgt_alias) \
                    else None
            except Exception as e:  # noqa: BLE001 - not loaded yet
                tgt, diffs[n] = None, f"not readable: {e!r}"[:300]
                continue
            d = difference(src[n], tgt)
            if d:
                diffs[n] = d[:1500]
        if not diffs:
            return src
        time.sleep(2)
    raise AssertionError(f"the target never equalled the source: {diffs}")


def test_six_clients_with_partitions_types_and_ddl_replicate_exactly(agent):
    create_task(agent)
    m = Mixed(uuid.uuid4().hex[:8])
    admin = m.run()
    try:
        check_replica(m, admin)
    finally:
        # Every later test's task replays the whole stream: with these
        # collections gone, their history (20,000 rows of 128 floats among
        # it) is skipped instead of being written to the target again.
        for n in m.names.values():
            utility.drop_collection(n, using=admin, timeout=30)


def check_replica(m, admin):
    """The target equals the source, partition by partition; then `verify`."""
    tgt = connect(f"mx-{m.tag}-target", TARGET, TARGET_TOKEN)
    names = list(m.names.values())
    src = wait_exact(admin, tgt, names)

    # The workload really did what it claims.
    typed = {p: r for p, (_, r) in src[m.names["typed"]].items()}
    both = set(typed["p1"]) & set(typed["p2"])
    assert both, "some key lives in two partitions"
    assert any(len(r["s"]) == LONG for p in typed.values() for r in p.values())
    assert any(r.get("dyn_0") for p in typed.values() for r in p.values()), "dynamic fields"
    assert any(r["tags"] for p in typed.values() for r in p.values()), "arrays"
    n_tenants, tenants = src[m.names["tenants"]]["*"]
    assert len({r["tenant"] for r in tenants.values()}) == 10, "keys spread over tenants"
    assert n_tenants == len(tenants), "upserts moved keys between partitions, leaving no copy"
    _, churn = src[m.names["churn"]]["pc"]
    assert set(churn) == set(range(10)) | {2000 + k for k in range(100)}, \
        "only the last generation of the partition"
    _, reborn = src[m.names["reborn"]]["_default"]
    assert len(reborn) == 60 and all(isinstance(k, str) for k in reborn)
    assert src[m.names["big"]]["_default"][0] == 20_000 - len(range(0, 20_000, 997))
    assert m.counts.get("expression deletes", 0) >= 6, m.counts

    # The target's schemas are the source's (the re-created name above all).
    for n in names:
        s_fields = [(f.name, f.dtype) for f in Collection(n, using=admin).schema.fields]
        t_fields = [(f.name, f.dtype) for f in Collection(n, using=tgt).schema.fields]
        assert s_fields == t_fields, n

    # `verify` too, the typed collection (keys in two partitions, with other
    # values in each) partition by partition: each (partition, key) counts.
    report = wait_verified(names)
    typed_pairs = sum(len(rows) for rows in typed.values())
    assert report["rows_compared"] >= src[m.names["big"]]["_default"][0] + typed_pairs, report
