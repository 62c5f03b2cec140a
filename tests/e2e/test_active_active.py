"""Active-active between two Milvus instances, and tasks that select
collections.

The stack's target runs rocksmq, which no agent can read, so the two
clusters here are the stack's source (A) and a second natsmq Milvus that this
module starts itself (B, "the peer", on free ports, its own etcd root path on
the stack's etcd). Task A->B and task B->A run at the same time while clients
write to each cluster's own collections; the loop guard (a collection that
carries milvus-cdc.source-collection-id is never replicated onward) keeps
every row from coming back.
"""

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, db, utility

from conftest import REPO, STACK, TARGET_TOKEN, create_body, http, wait_collection, wait_for
from ports import free_block_in, free_port_in
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
SOURCE_TOKEN = "root:Milvus" if STACK.get("CDC_SOURCE_AUTH") == "1" else None
RUN_DIR = Path(os.environ.get("CDC_RUN_DIR", REPO / ".run" / "stack"))
PY = REPO / ".venv" / "bin" / "python"
MARKER = "milvus-cdc.source-collection-id"


def _free_block(span=10):
    """A proxy port whose block of `span` ports is free, and a free NATS port."""
    return free_block_in(31000, 32600, span), free_port_in(32600, 32700)


@pytest.fixture(scope="module")
def peer():
    """Cluster B: a natsmq Milvus 2.3.5 started for this module."""
    proxy, nats = _free_block()
    base = RUN_DIR / f"peer-{proxy}"
    log = open(REPO / ".run" / f"peer-milvus-{proxy}.log", "ab")
    proc = subprocess.Popen(
        [str(PY), str(REPO / "scripts" / "milvus_server.py"), "--name", "peer",
         "--base-dir", str(base), "--bin-root", str(RUN_DIR), "--proxy-port", str(proxy),
         "--etcd-endpoints", STACK["CDC_ETCD_ENDPOINT"].removeprefix("http://"),
         "--etcd-root-path", f"peer-{uuid.uuid4().hex[:8]}", "--mq", "natsmq",
         "--nats-port", str(nats)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{proxy}"
    try:
        def healthy():
            assert proc.poll() is None, f"peer Milvus exited with {proc.returncode}"
            try:
                status, _, _ = http("GET", f"http://127.0.0.1:{proxy + 9}/healthz", timeout=2)
                if status != 200:
                    return False
                connect(f"peer-probe-{proxy}", uri)
                utility.list_collections(using=f"peer-probe-{proxy}")
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False
        wait_for(healthy, "peer Milvus healthy", 180, interval=1)
        yield {"uri": uri, "nats": f"nats://127.0.0.1:{nats}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# The metric checks count each row written once: the new leader's one-time
# replay of its first window (ha.takeover_replay) would write some again.
NO_REPLAY = {"MILVUS_CDC_HA__TAKEOVER_REPLAY": "false"}


def peer_env(peer):
    """An agent whose source is the peer."""
    return {**NO_REPLAY,
            "MILVUS_CDC_SOURCE__MILVUS_URI": peer["uri"],
            "MILVUS_CDC_SOURCE__MQ_TYPE": "natsmq",
            "MILVUS_CDC_SOURCE__NATS_URL": peer["nats"]}


def task_body(uri, names, token=None):
    p = {"uri": uri, "connect_timeout": 10}
    if token:
        p["token"] = token
    return {"request_type": "create", "request_data": {
        "milvus_connect_param": p, "collection_infos": [{"name": n} for n in names]}}


def create(agent, body):
    status, resp = agent.cdc(body)
    assert status == 200, resp
    return resp["data"]["task_id"]


def make_collection(alias, name):
    fields = [FieldSchema("pk", DataType.INT64, is_primary=True),
              FieldSchema("val", DataType.VARCHAR, max_length=64),
              FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4)]
    c = Collection(name, CollectionSchema(fields), shards_num=2, using=alias)
    c.create_index("vec", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    return c


def write(c, origin, rounds, batch, errors):
    try:
        for r in range(rounds):
            keys = list(range(r * batch, (r + 1) * batch))
            c.insert([keys, [f"{origin}-{k}" for k in keys],
                      [[float(k % 7), 0.5, float(r), 1.0] for k in keys]])
            time.sleep(0.05)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))


def rows(alias, name):
    """{pk: (val, vec)} of every row, Strong consistency."""
    c = Collection(name, using=alias)
    out, last = {}, None
    while True:
        expr = "pk >= 0" if last is None else f"pk > {last}"
        got = c.query(expr, output_fields=["pk", "val", "vec"], limit=16384,
                      consistency_level="Strong")
        if not got:
            return out
        for r in got:
            out[r["pk"]] = (r["val"], tuple(round(x, 5) for x in r["vec"]))
        last = max(r["pk"] for r in got)


def wait_rows(alias, name, want, timeout=240):
    wait_collection(alias, name, rows, want, timeout,
                    show=lambda seen: f"{len(seen)} rows, want {len(want)}"
                    if isinstance(seen, dict) else repr(seen))


def applied_insert_rows(agent, task_id):
    _, text, _ = http("GET", agent.url + "/metrics")
    total = 0
    for line in text.splitlines():
        if line.startswith("milvus_cdc_applied_rows_total{") and f'task_id="{task_id}"' in line \
                and 'kind="insert"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def properties(alias, name):
    return Collection(name, using=alias).describe().get("properties", {})


def test_two_tasks_in_opposite_directions_replicate_each_side_once(agents, peer):
    tag = uuid.uuid4().hex[:6]
    dbname = f"aa_{tag}"
    a = connect(f"aa-a-{tag}", SOURCE, SOURCE_TOKEN)
    b = connect(f"aa-b-{tag}", peer["uri"])
    for alias in (a, b):
        db.create_database(dbname, using=alias)
    a = connect(f"aa-a-{tag}-db", SOURCE, SOURCE_TOKEN, db_name=dbname)
    b = connect(f"aa-b-{tag}-db", peer["uri"], db_name=dbname)
    own = {"a": [f"a1_{tag}", f"a2_{tag}"], "b": [f"b1_{tag}", f"b2_{tag}"]}

    # A->B: every collection of the test's database (the stack's source is
    # shared with other tests, whose history B need not hold); B->A: `*`.
    agent_a = agents(extra_env=NO_REPLAY).start()
    agent_b = agents(root=f"milvus-cdc-test/{uuid.uuid4().hex[:12]}",
                     extra_env=peer_env(peer)).start()
    ab = create(agent_a, task_body(peer["uri"], [f"{dbname}.*"]))
    ba = create(agent_b, task_body(SOURCE, ["*"], SOURCE_TOKEN))

    rounds, batch = 20, 50
    errors, threads = [], []
    for side, alias in (("a", a), ("b", b)):
        for name in own[side]:
            c = make_collection(alias, name)
            threads.append(threading.Thread(target=write, args=(c, side, rounds, batch, errors)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    n = rounds * batch

    # Both clusters hold every collection, row for row.
    for side, here, there in (("a", a, b), ("b", b, a)):
        for name in own[side]:
            want = rows(here, name)
            assert len(want) == n, (name, len(want))
            wait_rows(there, name, want)
    for alias in (a, b):
        assert sorted(utility.list_collections(using=alias)) == sorted(own["a"] + own["b"])

    # No echo: each task wrote exactly the rows of its own side's
    # collections, and the replicas carry the marker while the originals
    # do not.
    time.sleep(5)  # anything echoed would have arrived by now
    assert applied_insert_rows(agent_a, ab) == 2 * n
    assert applied_insert_rows(agent_b, ba) == 2 * n
    for side, here, there in (("a", a, b), ("b", b, a)):
        for name in own[side]:
            assert MARKER not in properties(here, name)
            assert MARKER in properties(there, name)
            assert Collection(name, using=here).query("pk >= 0", output_fields=["count(*)"],
                                                      consistency_level="Strong")[0][
                "count(*)"] == n
    # Deletes go one way too.
    Collection(own["b"][0], using=b).delete("pk < 100")
    Collection(own["a"][0], using=a).delete("pk < 10")
    wait_rows(a, own["b"][0], rows(b, own["b"][0]))
    wait_rows(b, own["a"][0], rows(a, own["a"][0]))
    for t, ag in ((ab, agent_a), (ba, agent_b)):
        _, got = ag.cdc({"request_type": "get", "request_data": {"task_id": t}})
        assert got["data"]["Task"]["state"] == "Running", got
        assert "skipped_messages" not in got["data"]["Task"], got


def test_a_task_replicates_only_the_selected_collections(agents):
    agent = agents(extra_env=NO_REPLAY).start()
    tag = uuid.uuid4().hex[:6]
    keep, skip = f"sel_keep_{tag}", f"sel_skip_{tag}"
    src = connect(f"sel-src-{tag}", SOURCE, SOURCE_TOKEN)
    tgt = connect(f"sel-tgt-{tag}", TARGET, TARGET_TOKEN)
    body = create_body()
    body["request_data"]["collection_infos"] = [{"name": keep}, {"name": f"other_{tag}.*"}]
    status, resp = agent.cdc(body)
    assert status == 200, resp
    task_id = resp["data"]["task_id"]
    _, got = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
    assert got["data"]["Task"]["collection_infos"] == [{"name": keep},
                                                       {"name": f"other_{tag}.*"}]

    # An overlapping task to the same target is refused, naming the first.
    over = create_body()
    over["request_data"]["collection_infos"] = [{"name": f"default.{keep}"}]
    status, resp = agent.cdc(over)
    assert status == 409 and resp["code"] == 409 and task_id in resp["message"], resp
    status, resp = agent.cdc(create_body())  # `*` overlaps everything
    assert status == 409, resp
    # Bad names: the contract's 400 shape.
    for names in ([""], ["a b"], ["*", keep], [keep, keep], ["x.y.z"]):
        bad = create_body()
        bad["request_data"]["collection_infos"] = [{"name": n} for n in names]
        status, resp = agent.cdc(bad)
        assert status == 400 and resp["code"] == 400 and "collection_infos" in resp["message"], \
            (names, resp)
    # A disjoint selection to the same target is fine.
    other = create_body()
    other["request_data"]["collection_infos"] = [{"name": f"elsewhere_{tag}"}]
    assert agent.cdc(other)[0] == 200

    errors = []
    for name in (keep, skip):
        write(make_collection(src, name), "s", 4, 50, errors)
    assert not errors, errors
    wait_rows(tgt, keep, rows(src, keep))
    time.sleep(5)
    assert not utility.has_collection(skip, using=tgt)
    assert applied_insert_rows(agent, task_id) == 200
    _, got = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
    assert "skipped_messages" not in got["data"]["Task"], got


def test_promote_and_fail_back(agents, peer):
    """A->B runs; A is "lost" (its writes stop); B is promoted and written to;
    A comes back stale (its copy dropped, as the runbook says); the reverse
    task from promote's answer brings A up to date; verify says equal."""
    tag = uuid.uuid4().hex[:6]
    name = f"pr_{tag}"
    a = connect(f"pr-a-{tag}", SOURCE, SOURCE_TOKEN)
    b = connect(f"pr-b-{tag}", peer["uri"])
    agent_a = agents(extra_env=NO_REPLAY).start()
    ab = create(agent_a, task_body(peer["uri"], [name]))
    errors = []
    write(make_collection(a, name), "a", 4, 50, errors)
    assert not errors, errors
    wait_rows(b, name, rows(a, name))
    assert properties(b, name).get(MARKER)

    # A is lost: fail over to B.
    status, resp = agent_a.cdc({"request_type": "promote", "request_data": {"task_id": ab}})
    assert status == 200, resp
    data = resp["data"]
    assert data["state"] == "Paused" and data["promoted"] == [f"default.{name}"], data
    assert data["positions"] and all(p["msg_id"] and p["tt"] > 0 for p in data["positions"])
    reverse = data["reverse_task"]
    assert reverse["request_data"]["collection_infos"] == [{"name": f"default.{name}"}]
    assert reverse["request_data"]["milvus_connect_param"]["uri"] == SOURCE
    _, got = agent_a.cdc({"request_type": "get", "request_data": {"task_id": ab}})
    assert got["data"]["Task"]["state"] == "Paused"
    assert properties(b, name).get(MARKER, "") == ""  # owned now
    # promote again: nothing left to promote, still fine
    status, again = agent_a.cdc({"request_type": "promote", "request_data": {"task_id": ab}})
    assert status == 200 and again["data"]["promoted"] == [], again

    # Clients write to B (new keys and changed ones, and deletes).
    cb = Collection(name, using=b)
    cb.insert([list(range(1000, 1100)), [f"b-{k}" for k in range(1000, 1100)],
               [[1.0, 2.0, 3.0, 4.0]] * 100])
    cb.upsert([list(range(0, 20)), [f"b-up-{k}" for k in range(20)], [[0.0, 0.0, 0.0, 1.0]] * 20])
    cb.delete("pk in [30, 31, 32]")

    # A is back, stale: drop its copy (runbook), delete the old task, and
    # run the reverse task from promote's answer on an agent whose source is B.
    utility.drop_collection(name, using=a)
    assert agent_a.cdc({"request_type": "delete", "request_data": {"task_id": ab}})[0] == 200
    if SOURCE_TOKEN:
        reverse["request_data"]["milvus_connect_param"]["token"] = SOURCE_TOKEN
    agent_b = agents(root=f"milvus-cdc-test/{uuid.uuid4().hex[:12]}",
                     extra_env=peer_env(peer)).start()
    create(agent_b, reverse)
    want = rows(b, name)
    assert len(want) == 200 + 100 - 3
    wait_rows(a, name, want)
    env = {**os.environ}
    if SOURCE_TOKEN:
        env["MILVUS_CDC_TARGET_TOKEN"] = SOURCE_TOKEN
    def verify():
        return subprocess.run([str(REPO / "target" / "debug" / "milvus-cdc"), "verify", "--source",
                               peer["uri"], "--target", SOURCE, "--database", "default",
                               "--collection", name],
                              env=env, capture_output=True, text=True, timeout=120)
    # Index or load state may still be on its way.
    wait_for(verify, "milvus-cdc verify passing", 120, interval=3,
             until=lambda r: r.returncode == 0, show=lambda r: r.stdout + r.stderr)
