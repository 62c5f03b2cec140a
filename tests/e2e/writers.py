"""Concurrent writers: several pymilvus clients, each on its own connection,
upsert, insert and delete shared keys of one collection at the same time, so
that their messages interleave in the channels (an upsert's insert and delete
halves with other clients' messages between them). Used by the e2e suite, the
chaos suite and the replication benchmark.

The source is the truth: `snapshot()` reads every row of a collection on a
Milvus with pymilvus, and the target must equal it row for row."""

import random
import threading
import time

from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema, connections,
                      utility)

DIM = 8
SHARED_KEYS = 200


def _connect(alias, uri, token=None, db_name="default"):
    kw = {"uri": uri, "db_name": db_name}
    if token:
        kw["token"] = token
    connections.connect(alias=alias, **kw)
    return alias


def create_collection(uri, name, shards, token=None, db_name="default"):
    """A collection with an int64 key, a value, a round number and a vector,
    indexed and loaded (so that it can be queried on both sides)."""
    alias = _connect(f"cw-admin-{db_name}-{name}", uri, token, db_name)
    fields = [
        FieldSchema("pk", DataType.INT64, is_primary=True),
        FieldSchema("val", DataType.VARCHAR, max_length=64),
        FieldSchema("n", DataType.INT64),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=DIM),
    ]
    c = Collection(name, CollectionSchema(fields), shards_num=shards, using=alias)
    c.create_index("vec", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    return c


def _vec(rng):
    return [rng.random() for _ in range(DIM)]


class ConcurrentWriters:
    """`clients` threads, each with its own connection, writing `rounds`
    rounds: upsert `upserts` shared keys, insert `inserts` fresh keys, delete
    `deletes` shared keys (pk < SHARED_KEYS)."""

    def __init__(self, uri, name, clients=4, rounds=30, upserts=40, inserts=20, deletes=5,
                 token=None, seed=1, pause=0.0, db_name="default"):
        self.uri, self.name, self.token, self.db_name = uri, name, token, db_name
        self.clients, self.rounds = clients, rounds
        self.upserts, self.inserts, self.deletes = upserts, inserts, deletes
        self.seed, self.pause = seed, pause
        self.errors = []
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def _client(self, c):
        rng = random.Random(self.seed * 1000 + c)
        alias = _connect(f"cw-{self.name}-{c}-{id(self)}", self.uri, self.token, self.db_name)
        coll = Collection(self.name, using=alias)
        try:
            for r in range(self.rounds):
                if self._stop.is_set():
                    return
                shared = rng.sample(range(SHARED_KEYS), self.upserts)
                coll.upsert([shared, [f"w{c}r{r}k{k}" for k in shared], [r] * len(shared),
                             [_vec(rng) for _ in shared]])
                fresh = [100_000 + c * 100_000_000 + r * self.inserts + i
                         for i in range(self.inserts)]
                coll.insert([fresh, [f"w{c}r{r}f{k}" for k in fresh], [r] * len(fresh),
                             [_vec(rng) for _ in fresh]])
                gone = rng.sample(range(SHARED_KEYS), self.deletes)
                coll.delete(f"pk in {gone}")
                with self._lock:
                    self.requests += 3
                if self.pause:
                    time.sleep(self.pause)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"client {c}: {e!r}")
        finally:
            connections.disconnect(alias)

    def start(self):
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True)
                         for c in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        """Stops after each client's current request."""
        self._stop.set()
        self.join()

    def join(self, timeout=600):
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "writers did not finish"

    def run(self):
        self.start()
        self.join()
        assert not self.errors, self.errors


def snapshot(uri, name, token=None, db_name="default"):
    """{pk: (val, n, vec)} of every row of a loaded collection, read in key
    order with Strong consistency."""
    alias = _connect(f"snap-{uri}-{db_name}-{name}", uri, token, db_name)
    c = Collection(name, using=alias)
    out, last = {}, None
    while True:
        expr = "" if last is None else f"pk > {last}"
        rows = c.query(expr, output_fields=["pk", "val", "n", "vec"], limit=16384,
                       consistency_level="Strong")
        if not rows:
            return out
        for r in rows:
            out[r["pk"]] = (r["val"], r["n"], tuple(round(x, 6) for x in r["vec"]))
        last = max(r["pk"] for r in rows)


def wait_equal(source_uri, target_uri, name, target_token=None, timeout=240, db_name="default"):
    """Waits until the target holds exactly the source's rows; returns the
    source's snapshot. Raises with a summary of the difference."""
    src = snapshot(source_uri, name, db_name=db_name)
    deadline = time.time() + timeout
    diff = None
    tgt_alias = _connect(f"cw-tgt-{db_name}", target_uri, target_token, db_name)
    while time.time() < deadline:
        if utility.has_collection(name, using=tgt_alias):
            try:
                tgt = snapshot(target_uri, name, target_token, db_name)
            except Exception as e:  # noqa: BLE001 - not loaded yet
                diff = f"target not readable yet: {e!r}"
                time.sleep(2)
                continue
            if tgt == src:
                return src
            missing = sorted(set(src) - set(tgt))
            extra = sorted(set(tgt) - set(src))
            stale = sorted(k for k in set(src) & set(tgt) if src[k] != tgt[k])
            diff = (f"{len(src)} rows on the source, {len(tgt)} on the target: "
                    f"missing {len(missing)} {missing[:10]}, extra {len(extra)} {extra[:10]}, "
                    f"different {len(stale)} "
                    f"{[(k, src[k][0], tgt[k][0]) for k in stale[:5]]}")
        time.sleep(2)
    raise AssertionError(f"{name}: the target never equalled the source: {diff}")
