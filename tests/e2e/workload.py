"""A seeded pymilvus workload on the source that covers everything the agent
replicates: databases, collections (int64 and VarChar keys, auto-id, a
partition key, dynamic fields, JSON, binary vectors, several shards),
partitions, inserts, deletes, upserts, indexes, load/release, aliases, drops.

`expected` records what the target must contain afterwards, so tests can check
it with pymilvus directly (besides `milvus-cdc verify`).
"""

import random
import threading
import time

from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, connections, db,
                      utility)


def connect(alias, uri, token=None, db_name="default"):
    kw = {"uri": uri, "db_name": db_name}
    if token:
        kw["token"] = token
    connections.connect(alias, **kw)
    return alias


def vec(rng, dim):
    return [rng.random() for _ in range(dim)]


def labelled_collection(alias, name, partitions=()):
    """A loaded 1-shard collection of `id` (INT64 key), `s` (VarChar label)
    and `v` (4-dim float vector, FLAT index); `partitions` are created
    before the index."""
    schema = CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                               FieldSchema("s", DataType.VARCHAR, max_length=64),
                               FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)])
    c = Collection(name, schema, using=alias, shards_num=1)
    for p in partitions:
        c.create_partition(p)
    c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    return c


def insert_labelled(c, ids, label, partition=None):
    """Inserts `ids` into a `labelled_collection`, each row labelled
    `label` + key, in requests of at most 5,000 rows."""
    ids = list(ids)
    for lo in range(0, len(ids), 5000):
        part = ids[lo:lo + 5000]
        c.insert([part, [f"{label}{i}" for i in part], [[float(i % 7), 0.0, 1.0, 2.0] for i in part]],
                 partition_name=partition)


class Workload:
    """Drives the source. Every name carries `tag`, so runs never collide."""

    def __init__(self, uri, tag, seed=7, token=None):
        self.uri = uri
        self.tag = tag
        self.token = token
        self.rng = random.Random(seed)
        self.alias = connect(f"src-{tag}", uri, token)
        self.expected = {}  # collection name -> {"count": n, "present": set, "absent": set}

    # ---------------------------------------------------------------- pieces
    def name(self, base):
        return f"{base}_{self.tag}"

    def main_collection(self, rows=3000, batch=500):
        """int64 pk, VarChar, JSON, float vector dim 8, dynamic field, 2 shards,
        a partition, deletes and upserts, an index, loaded."""
        name = self.name("items")
        fields = [
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("title", DataType.VARCHAR, max_length=128),
            FieldSchema("meta", DataType.JSON),
            FieldSchema("score", DataType.DOUBLE),
            FieldSchema("emb", DataType.FLOAT_VECTOR, dim=8),
        ]
        schema = CollectionSchema(fields, enable_dynamic_field=True, description="main")
        c = Collection(name, schema, using=self.alias, shards_num=2)
        c.create_partition("p1")
        present = set()
        for start in range(0, rows, batch):
            ids = list(range(start, min(start + batch, rows)))
            data = [{"id": i, "title": f"t{i}", "meta": {"i": i, "even": i % 2 == 0},
                     "score": i / 7, "emb": vec(self.rng, 8), "extra": f"dyn{i}"} for i in ids]
            part = "p1" if start // batch % 2 else "_default"
            c.insert(data, partition_name=part)
            present.update(ids)
        deleted = set(range(0, rows, 10))
        c.delete(f"id in {sorted(deleted)}")
        present -= deleted
        # Upserts: rewrite some rows of the _default partition. (On Milvus
        # 2.3.5 an upsert of a key that lives in another partition leaves the
        # old row there too, a duplicate on the source itself.)
        up = [k for k in range(5, rows, 50) if (k // batch) % 2 == 0]
        c.upsert([{"id": i, "title": f"up{i}", "meta": {"i": i, "up": True}, "score": -1.0,
                   "emb": vec(self.rng, 8), "extra": "up"} for i in up])
        present |= set(up)
        c.create_index("emb", {"index_type": "IVF_FLAT", "metric_type": "L2",
                               "params": {"nlist": 16}}, index_name="emb_idx")
        c.create_index("title", {"index_type": "Trie"}, index_name="title_idx")
        c.load()
        self.expected[name] = {"present": present, "upserted": set(up), "loaded": True,
                               "partitions": {"_default", "p1"}}
        return name

    def auto_id_collection(self, rows=1000):
        name = self.name("auto")
        fields = [FieldSchema("pk", DataType.INT64, is_primary=True, auto_id=True),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
        c = Collection(name, CollectionSchema(fields), using=self.alias)
        res = c.insert([[vec(self.rng, 4) for _ in range(rows)]])
        keys = list(res.primary_keys)
        gone = set(keys[::3])
        c.delete(f"pk in {sorted(gone)}")
        c.create_index("v", {"index_type": "FLAT", "metric_type": "IP", "params": {}})
        c.load()
        self.expected[name] = {"present": set(keys) - gone, "loaded": True}
        return name

    def varchar_partition_key_collection(self, rows=1200):
        name = self.name("docs")
        fields = [FieldSchema("doc_id", DataType.VARCHAR, is_primary=True, max_length=64),
                  FieldSchema("tenant", DataType.VARCHAR, max_length=32, is_partition_key=True),
                  FieldSchema("body", DataType.VARCHAR, max_length=256),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
        c = Collection(name, CollectionSchema(fields), using=self.alias, num_partitions=8)
        keys = [f"doc-{i}\"q" if i % 97 == 0 else f"doc-{i}" for i in range(rows)]
        c.insert([{"doc_id": k, "tenant": f"t{i % 5}", "body": f"body {i} ü",
                   "v": vec(self.rng, 4)} for i, k in enumerate(keys)])
        gone = set(keys[::4])
        expr = "doc_id in [" + ",".join('"' + k.replace('"', '\\"') + '"' for k in sorted(gone)) + "]"
        c.delete(expr)
        c.create_index("v", {"index_type": "HNSW", "metric_type": "COSINE",
                             "params": {"M": 8, "efConstruction": 32}})
        c.load()
        self.expected[name] = {"present": set(keys) - gone, "loaded": True}
        return name

    def binary_collection(self, rows=300):
        name = self.name("bin")
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("flag", DataType.BOOL),
                  FieldSchema("small", DataType.INT16),
                  FieldSchema("bv", DataType.BINARY_VECTOR, dim=16)]
        c = Collection(name, CollectionSchema(fields), using=self.alias)
        c.insert([list(range(rows)), [i % 2 == 0 for i in range(rows)],
                  [i % 1000 for i in range(rows)],
                  [bytes([i % 256, (i * 7) % 256]) for i in range(rows)]])
        c.create_index("bv", {"index_type": "BIN_FLAT", "metric_type": "HAMMING", "params": {}})
        # Left released on purpose: load state must match too.
        self.expected[name] = {"present": set(range(rows)), "loaded": False}
        return name

    def ddl_churn(self):
        """Drop a collection, a partition and an index; aliases; recreate a name."""
        tmp = self.name("tmp")
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=2)]
        c = Collection(tmp, CollectionSchema(fields), using=self.alias)
        c.insert([[1, 2, 3], [[0.1, 0.2]] * 3])
        c.drop()
        # Same name again, different content: the replica must hold only this one.
        c = Collection(tmp, CollectionSchema(fields), using=self.alias)
        c.insert([[10, 11], [[0.3, 0.4]] * 2])
        c.create_partition("gone")
        c.insert([[20], [[0.5, 0.6]]], partition_name="gone")
        c.drop_partition("gone")
        c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        c.drop_index()
        c.create_index("v", {"index_type": "IVF_FLAT", "metric_type": "L2",
                             "params": {"nlist": 4}})
        c.load()
        self.expected[tmp] = {"present": {10, 11}, "loaded": True}
        main = self.name("items")
        if main in self.expected:
            utility.create_alias(main, self.name("alias_a"), using=self.alias)
            utility.create_alias(tmp, self.name("alias_b"), using=self.alias)
            utility.alter_alias(main, self.name("alias_b"), using=self.alias)
            utility.drop_alias(self.name("alias_a"), using=self.alias)
        return tmp

    def other_database(self, rows=200):
        dbname = f"db_{self.tag}"
        db.create_database(dbname, using=self.alias)
        alias = connect(f"src-{self.tag}-db", self.uri, self.token, db_name=dbname)
        name = self.name("indb")
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
        c = Collection(name, CollectionSchema(fields), using=alias)
        c.insert([list(range(rows)), [vec(self.rng, 4) for _ in range(rows)]])
        c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        c.load()
        self.expected[(dbname, name)] = {"present": set(range(rows)), "loaded": True}
        return dbname, name

    def flush_all(self):
        for name in utility.list_collections(using=self.alias):
            if name.endswith(self.tag):
                Collection(name, using=self.alias).flush()

    def run_all(self):
        self.main_collection()
        self.auto_id_collection()
        self.varchar_partition_key_collection()
        self.binary_collection()
        self.ddl_churn()
        self.other_database()
        self.flush_all()


class BackgroundInserts(threading.Thread):
    """Keeps inserting batches of known keys (with periodic deletes) until
    stopped; used while faults are injected. `present` is the expected key set."""

    def __init__(self, uri, tag, token=None, batch=200, pause=0.05, seed=11):
        super().__init__(daemon=True)
        self.alias = connect(f"bg-{tag}", uri, token)
        self.name = f"stream_{tag}"
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("n", DataType.INT64),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
        self.coll = Collection(self.name, CollectionSchema(fields), using=self.alias, shards_num=2)
        self.batch, self.pause = batch, pause
        self.rng = random.Random(seed)
        self.present, self.next_id, self.batches = set(), 0, 0
        self.stop_event = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop_event.is_set():
                ids = list(range(self.next_id, self.next_id + self.batch))
                self.coll.insert([ids, [i * 3 for i in ids], [vec(self.rng, 4) for _ in ids]])
                self.present.update(ids)
                self.next_id += self.batch
                self.batches += 1
                if self.batches % 5 == 0:
                    gone = ids[::7]
                    self.coll.delete(f"id in {gone}")
                    self.present -= set(gone)
                time.sleep(self.pause)
        except Exception as e:  # reported by the test
            self.error = e

    def stop(self):
        self.stop_event.set()
        self.join(timeout=60)
        self.coll.flush()
        self.coll.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        self.coll.load()
