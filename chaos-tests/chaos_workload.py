"""The seeded workload the chaos scenarios drive on the source Milvus.

Each scenario gets its own database `chaos_<tag>` and, in it, a main
collection (int64 keys, a `ver` column, two shards, a partition) plus small
auxiliary collections. A background thread mixes, from a seeded RNG:

- inserts of new, known primary keys (into `_default` or a partition),
- deletes of existing keys,
- upserts of existing and of deleted keys (each bumps the row's `ver`),
- DDL: new collections (with rows), new partitions, an index (and load) on
  a collection, a drop of a collection.

`expected` is an exact model of what the source (and so the target) must
hold: collection -> {primary key: ver}. Every call is retried until the
source accepts it, so the model stays exact when the source restarts under
the workload: a failed insert is retried as an upsert of the same rows (an
insert that reached the stream before the error would otherwise be written
twice), deletes and upserts are idempotent, DDL checks what exists first.
"""

import random
import threading
import time

from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, connections, db,
                      utility)
from pymilvus.exceptions import MilvusException

MAIN = "main"
DIM = 8
AUX_DIM = 4


def connect(alias, uri, token=None, db_name="default"):
    kw = {"uri": uri, "db_name": db_name}
    if token:
        kw["token"] = token
    try:
        connections.disconnect(alias)
    except Exception:  # noqa: BLE001 - not connected yet
        pass
    connections.connect(alias, **kw)
    return alias


class Stopped(Exception):
    """The workload was asked to stop while an operation was being retried."""


class ChaosWorkload(threading.Thread):
    def __init__(self, uri, tag, seed, token=None, pace=(0.02, 0.15), retry_for=300,
                 max_keys=30000, log=print):
        super().__init__(daemon=True, name=f"workload-{tag}")
        self.uri, self.tag, self.token = uri, tag, token
        self.db = f"chaos_{tag}"
        self.rng = random.Random(seed)
        self.pace = pace
        self.max_keys = max_keys  # beyond this many live keys in main, no new keys
        self.retry_for = retry_for
        self.log = log
        # Collections in the database written by others (not in the model).
        self.others = set()
        self.expected = {}        # collection -> {pk: ver}
        self.partition_of = {}    # main pk -> partition it was first written to
        self.partitions = ["_default", "p1"]
        self.aux = []             # live aux collection names, oldest first
        self.aux_indexed = set()
        self.aux_seq = 0
        self.next_id = 0
        self.deleted = set()      # main keys currently deleted (candidates for upsert)
        self.stats = {"insert": 0, "delete": 0, "upsert": 0, "ddl": 0, "rows": 0,
                      "retries": 0, "ops": 0}
        self.ddl_log = []
        self.stop_event = threading.Event()
        self.error = None
        self.alias = f"chaos-src-{tag}"
        self.db_alias = f"chaos-src-{tag}-db"
        self._colls = {}

    # ------------------------------------------------------------ plumbing
    def _retry(self, what, fn, first=None):
        """Runs fn() until it succeeds; `first` (if given) is used for the
        first attempt only (an insert, retried as an upsert)."""
        deadline = time.time() + self.retry_for
        attempt = 0
        while True:
            call = first if (first is not None and attempt == 0) else fn
            try:
                return call()
            except Exception as e:  # noqa: BLE001 - any error: the source may be down
                attempt += 1
                self.stats["retries"] += 1
                if time.time() > deadline:
                    raise RuntimeError(f"{what}: source did not accept it for "
                                       f"{self.retry_for}s: {e}") from e
                if attempt in (1, 5) or attempt % 20 == 0:
                    self.log(f"  workload: {what} failed (attempt {attempt}), retrying: "
                             f"{str(e)[:160]}")
                time.sleep(min(2.0, 0.2 * attempt))
                if attempt % 5 == 0:
                    self._reconnect()

    def _reconnect(self):
        try:
            connect(self.alias, self.uri, self.token)
            connect(self.db_alias, self.uri, self.token, db_name=self.db)
            self._colls.clear()
        except Exception:  # noqa: BLE001 - still down
            pass

    def coll(self, name):
        c = self._colls.get(name)
        if c is None:
            c = Collection(name, using=self.db_alias)
            self._colls[name] = c
        return c

    # ---------------------------------------------------------------- setup
    def setup(self):
        """Database and main collection (indexed, loaded); before the fault."""
        connect(self.alias, self.uri, self.token)

        def mkdb():
            if self.db not in db.list_database(using=self.alias):
                db.create_database(self.db, using=self.alias)
        self._retry("create database", mkdb)
        connect(self.db_alias, self.uri, self.token, db_name=self.db)
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("ver", DataType.INT64),
                  FieldSchema("note", DataType.VARCHAR, max_length=64),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=DIM)]
        schema = CollectionSchema(fields, description="chaos main")

        def mkmain():
            if not utility.has_collection(MAIN, using=self.db_alias):
                Collection(MAIN, schema, using=self.db_alias, shards_num=2)
            c = Collection(MAIN, using=self.db_alias)
            if not c.has_partition("p1"):
                c.create_partition("p1")
            if not c.has_index():
                c.create_index("v", {"index_type": "IVF_FLAT", "metric_type": "L2",
                                     "params": {"nlist": 16}}, index_name="v_idx")
            c.load()
        self._retry("create main collection", mkmain)
        self.expected[MAIN] = {}
        self.stats["ddl"] += 1

    # ----------------------------------------------------------- operations
    def _rows(self, ids, ver, dim=DIM):
        return [{"id": i, "ver": ver.get(i, 0) if isinstance(ver, dict) else ver,
                 "note": f"{self.tag}-{i}", "v": [self.rng.random() for _ in range(dim)]}
                for i in ids]

    def op_insert(self):
        n = self.rng.randint(20, 300)
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        part = self.rng.choice(self.partitions)
        rows = self._rows(ids, 0)
        c = self.coll(MAIN)
        self._retry(f"insert {n} rows",
                    lambda: c.upsert(rows, partition_name=part),
                    first=lambda: c.insert(rows, partition_name=part))
        for i in ids:
            self.expected[MAIN][i] = 0
            self.partition_of[i] = part
        self.stats["insert"] += 1
        self.stats["rows"] += n

    def op_delete(self):
        live = self.expected[MAIN]
        if not live:
            return
        n = min(len(live), self.rng.randint(1, 40))
        gone = self.rng.sample(sorted(live), n)
        c = self.coll(MAIN)
        self._retry(f"delete {n} keys", lambda: c.delete(f"id in {sorted(gone)}"))
        for i in gone:
            del live[i]
            self.deleted.add(i)
        self.stats["delete"] += 1
        self.stats["rows"] += n

    def op_upsert(self):
        live = self.expected[MAIN]
        pool = sorted(live)
        cand = self.rng.sample(pool, min(len(pool), self.rng.randint(1, 60)))
        if self.deleted:
            back = sorted(self.deleted)
            cand += self.rng.sample(back, min(len(back), self.rng.randint(0, 10)))
        if not cand:
            return
        # Upsert each key into the partition that holds it (an upsert's
        # delete half only reaches the partition it is sent to).
        by_part = {}
        for i in cand:
            by_part.setdefault(self.partition_of[i], []).append(i)
        c = self.coll(MAIN)
        for part, ids in sorted(by_part.items()):
            ver = {i: live.get(i, 0) + 1 if i in live else self.rng.randint(100, 200)
                   for i in ids}
            rows = self._rows(ids, ver)
            self._retry(f"upsert {len(ids)} rows",
                        lambda rows=rows, part=part: c.upsert(rows, partition_name=part))
            for i in ids:
                live[i] = ver[i]
                self.deleted.discard(i)
            self.stats["rows"] += len(ids)
        self.stats["upsert"] += 1

    def op_ddl(self):
        choice = self.rng.random()
        if choice < 0.40 or not self.aux:
            self._new_aux()
        elif choice < 0.60:
            self._new_partition()
        elif choice < 0.80:
            self._index_aux()
        else:
            self._drop_aux()
        self.stats["ddl"] += 1

    def _new_aux(self):
        name = f"aux_{self.aux_seq}"
        self.aux_seq += 1
        fields = [FieldSchema("id", DataType.INT64, is_primary=True),
                  FieldSchema("ver", DataType.INT64),
                  FieldSchema("v", DataType.FLOAT_VECTOR, dim=AUX_DIM)]
        schema = CollectionSchema(fields, description=f"chaos aux {name}")
        shards = self.rng.choice([1, 2])

        def mk():
            if not utility.has_collection(name, using=self.db_alias):
                Collection(name, schema, using=self.db_alias, shards_num=shards)
        self._retry(f"create collection {name}", mk)
        n = self.rng.randint(10, 200)
        ids = list(range(n))
        rows = [{"id": i, "ver": 7, "v": [self.rng.random() for _ in range(AUX_DIM)]}
                for i in ids]
        c = self.coll(name)
        self._retry(f"insert into {name}", lambda: c.upsert(rows), first=lambda: c.insert(rows))
        self.expected[name] = {i: 7 for i in ids}
        self.aux.append(name)
        self.stats["rows"] += n
        self.ddl_log.append(f"create collection {name} ({n} rows, {shards} shards)")

    def _new_partition(self):
        name = f"px_{len(self.partitions)}"
        c = self.coll(MAIN)

        def mk():
            if not c.has_partition(name):
                c.create_partition(name)
        self._retry(f"create partition {name}", mk)
        self.partitions.append(name)
        self.ddl_log.append(f"create partition {name}")

    def _index_aux(self):
        todo = [a for a in self.aux if a not in self.aux_indexed]
        if not todo:
            return self._new_aux()
        name = self.rng.choice(todo)
        self._index_and_load(name)
        self.ddl_log.append(f"create index + load {name}")

    def _index_and_load(self, name):
        c = self.coll(name)
        kind = self.rng.choice(["FLAT", "IVF_FLAT", "HNSW"])
        params = {"FLAT": {}, "IVF_FLAT": {"nlist": 8}, "HNSW": {"M": 8, "efConstruction": 32}}

        def mk():
            if not c.has_index():
                c.create_index("v", {"index_type": kind, "metric_type": "L2",
                                     "params": params[kind]}, index_name="v_idx")
            c.load()
        self._retry(f"index {name}", mk)
        self.aux_indexed.add(name)

    def _drop_aux(self):
        if len(self.aux) < 2:
            return self._new_aux()
        name = self.aux.pop(0)

        def drop():
            if utility.has_collection(name, using=self.db_alias):
                utility.drop_collection(name, using=self.db_alias)
        self._retry(f"drop collection {name}", drop)
        self._colls.pop(name, None)
        del self.expected[name]
        self.aux_indexed.discard(name)
        self.ddl_log.append(f"drop collection {name}")

    # ------------------------------------------------------------ the loop
    def step(self):
        r = self.rng.random()
        live = len(self.expected[MAIN])
        if live < 200 or (r < 0.55 and live < self.max_keys):
            self.op_insert()
        elif r < 0.55:
            self.op_upsert()
        elif r < 0.70:
            self.op_delete()
        elif r < 0.88:
            self.op_upsert()
        else:
            self.op_ddl()
        self.stats["ops"] += 1

    def run(self):
        try:
            while not self.stop_event.is_set():
                self.step()
                time.sleep(self.rng.uniform(*self.pace))
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            self.error = e

    def stop(self, timeout=400):
        self.stop_event.set()
        self.join(timeout=timeout)
        if self.is_alive():
            raise RuntimeError("the workload thread did not stop")

    def finish(self):
        """After stop(): every live collection gets an index and is loaded,
        so that verify compares its rows."""
        for name in list(self.aux):
            if name not in self.aux_indexed:
                self._index_and_load(name)
                self.ddl_log.append(f"create index + load {name} (final)")
        # The main collection is loaded since setup; load again in case a
        # source restart released it.
        self._retry("load main", lambda: self.coll(MAIN).load())

    # --------------------------------------------------------------- reads
    def read_rows(self, alias, name, key_space):
        """{pk: ver} of a loaded collection, read by key ranges; also the
        number of rows returned (more than keys: duplicate rows)."""
        c = Collection(name, using=alias)
        out, returned, step = {}, 0, 8000
        for lo in range(0, max(key_space, 1), step):
            rows = c.query(f"id >= {lo} and id < {lo + step}", output_fields=["id", "ver"],
                           limit=16384, consistency_level="Strong")
            returned += len(rows)
            for r in rows:
                out[r["id"]] = r["ver"]
        return out, returned

    def key_space(self, name):
        return self.next_id if name == MAIN else 256

    def compare(self, alias, side):
        """Problems found comparing `alias` (source or target, connected to
        this scenario's database) with the model; empty list: exact."""
        problems = []
        # Collections of this database that other writers own (and check).
        have = set(utility.list_collections(using=alias)) - self.others
        want = set(self.expected)
        for name in sorted(want - have):
            problems.append(f"{side}: collection {name} missing")
        for name in sorted(have - want):
            problems.append(f"{side}: unexpected collection {name}")
        for name in sorted(want & have):
            got, returned = self.read_rows(alias, name, self.key_space(name))
            exp = self.expected[name]
            missing = sorted(set(exp) - set(got))
            extra = sorted(set(got) - set(exp))
            wrong = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
            if missing:
                problems.append(f"{side}: {name}: {len(missing)} rows missing, e.g. {missing[:8]}")
            if extra:
                problems.append(f"{side}: {name}: {len(extra)} extra rows, e.g. {extra[:8]}")
            if wrong:
                problems.append(f"{side}: {name}: {len(wrong)} rows with a stale version, e.g. "
                                + ", ".join(f"{k}: want {exp[k]} got {got[k]}"
                                            for k in wrong[:5]))
            if returned != len(got):
                problems.append(f"{side}: {name}: {returned - len(got)} duplicate rows "
                                f"({returned} rows for {len(got)} keys)")
        return problems

    def drop_database(self):
        """Drops everything this workload created (replicated like any DDL)."""
        def drop():
            connect(self.db_alias, self.uri, self.token, db_name=self.db)
            for name in utility.list_collections(using=self.db_alias):
                utility.drop_collection(name, using=self.db_alias)
            if self.db in db.list_database(using=self.alias):
                db.drop_database(self.db, using=self.alias)
        self.retry_for = 120
        self._retry(f"drop database {self.db}", drop)

    def summary(self):
        s = self.stats
        return (f"{s['ops']} ops: {s['insert']} inserts, {s['delete']} deletes, "
                f"{s['upsert']} upserts, {s['ddl']} DDL; {s['rows']} rows written; "
                f"{len(self.expected)} live collections, {len(self.expected.get(MAIN, {}))} "
                f"live keys in main; {s['retries']} retried calls")


def disconnect_all(prefix):
    for alias, _ in connections.list_connections():
        if alias.startswith(prefix):
            try:
                connections.disconnect(alias)
            except Exception:  # noqa: BLE001
                pass


_ = MilvusException  # imported for callers that want to catch it
