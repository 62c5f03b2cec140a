"""Replication end to end on two real Milvus 2.3.5: a task created over HTTP
makes the target an exact replica (checked by `milvus-cdc verify` and, with
pymilvus, by reading the target directly)."""

import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from pymilvus import Collection, connections, utility

from conftest import BIN, STACK, TARGET_TOKEN, create_task, http, stack_env_for_restart
from workload import BackgroundInserts, Workload, connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]


def verify(collections, timeout=300):
    """Runs `milvus-cdc verify` on the given collections (other tests' data is
    compared by their own tests); returns (exit code, report, stderr)."""
    args = [str(BIN), "verify", "--source", SOURCE, "--target", TARGET, "--json",
            "--sample", "100000"]
    for c in collections:
        args += ["--collection", c]
    if TARGET_TOKEN:
        args += ["--target-token", TARGET_TOKEN]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    report = json.loads(r.stdout) if r.stdout.strip().startswith("{") else None
    return r.returncode, report, r.stderr


def wait_verified(collections, limit=420):
    """Polls verify until it reports no difference; returns the last report."""
    deadline = time.time() + limit
    last = None
    while time.time() < deadline:
        code, report, err = verify(collections)
        last = (code, report, err)
        if code == 0:
            return report
        time.sleep(3)
    raise AssertionError(f"target never matched the source: {last}")


def tag():
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def target_alias():
    return connect("tgt-e2e", TARGET, TARGET_TOKEN)


def keys(alias, name, pk="id"):
    """Every primary key of a loaded collection, read page by page in key order
    (distinct keys, unlike count(*), which counts duplicate rows)."""
    c = Collection(name, using=alias)
    out, last = set(), None
    while True:
        if last is None:
            expr = ""
        elif isinstance(last, int):
            expr = f"{pk} > {last}"
        else:
            escaped = last.replace("\\", "\\\\").replace('"', '\\"')
            expr = f'{pk} > "{escaped}"'
        rows = c.query(expr, output_fields=[pk], limit=16384, consistency_level="Strong")
        if not rows:
            return out
        page = [r[pk] for r in rows]
        out.update(page)
        last = max(page)


def count(alias, name, pk="id"):
    return len(keys(alias, name, pk))


def test_full_workload_is_replicated_exactly(agent, target_alias):
    create_task(agent)
    w = Workload(SOURCE, tag())
    w.run_all()
    names = [k[1] if isinstance(k, tuple) else k for k in w.expected]
    report = wait_verified(names)
    assert report["collections"] >= 6
    # Read the target with pymilvus too, so a bug shared by our writer and our
    # verifier cannot hide.
    main = w.name("items")
    tgt = Collection(main, using=target_alias)
    exp = w.expected[main]
    assert keys(target_alias, main) == exp["present"]
    rows = tgt.query("id in [5, 10, 11, 55]", output_fields=["*"], consistency_level="Strong")
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {5, 11, 55}, "10 was deleted; 5 and 55 upserted"
    assert 5 in exp["upserted"] and 55 in exp["upserted"]
    assert by_id[5]["title"] == "up5" and by_id[5]["meta"] == {"i": 5, "up": True}
    assert by_id[11]["title"] == "t11" and by_id[11]["extra"] == "dyn11"
    assert {p.name for p in tgt.partitions} == {"_default", "p1"}
    idx = {i.index_name: i.params for i in tgt.indexes}
    assert idx["emb_idx"]["index_type"] == "IVF_FLAT"
    assert json.loads(json.dumps(idx["emb_idx"]["params"])) in ({"nlist": 16}, {"nlist": "16"})
    assert utility.load_state(main, using=target_alias).name == "Loaded"
    # auto-id collection keeps the source's keys
    auto = w.name("auto")
    assert keys(w.alias, auto, "pk") == keys(target_alias, auto, "pk") == w.expected[auto]["present"]
    # VarChar keys with quotes, partition key
    docs = w.name("docs")
    assert keys(target_alias, docs, "doc_id") == w.expected[docs]["present"]
    # the dropped-and-recreated name holds only the new content
    tmp = w.name("tmp")
    assert keys(target_alias, tmp) == {10, 11}
    # aliases
    assert utility.list_aliases(main, using=target_alias) == [w.name("alias_b")]
    # the released binary collection stays released
    assert utility.load_state(w.name("bin"), using=target_alias).name == "NotLoad"
    # other database
    (dbname, indb), = [k for k in w.expected if isinstance(k, tuple)]
    alias_db = connect("tgt-e2e-db", TARGET, TARGET_TOKEN, db_name=dbname)
    assert count(alias_db, indb) == 200


def test_replay_after_kill9_mid_stream_is_exact(agents):
    a = agents().start()
    create_task(a)
    bg = BackgroundInserts(SOURCE, tag())
    bg.start()
    for _ in range(3):
        time.sleep(4)
        a.kill9()
        a = agents(port=a.port).start()
    time.sleep(2)
    bg.stop()
    assert bg.error is None, bg.error
    report = wait_verified([bg.name])
    assert report["rows_compared"] >= len(bg.present)
    alias = connect("tgt-kill", TARGET, TARGET_TOKEN)
    assert keys(alias, bg.name) == bg.present, "no missing and no extra keys"


def test_pause_resume_delete_drive_workers(agent):
    task_id = create_task(agent)
    t = tag()
    bg = BackgroundInserts(SOURCE, t, pause=0.02)
    bg.start()
    time.sleep(3)
    assert agent.cdc({"request_type": "pause", "request_data": {"task_id": task_id}})[0] == 200
    status, body, _ = http("GET", agent.url + "/status")
    assert body["running_tasks"] == []
    time.sleep(3)
    assert agent.cdc({"request_type": "resume", "request_data": {"task_id": task_id}})[0] == 200
    bg.stop()
    wait_verified([bg.name])
    assert agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})[0] == 200
    status, body, _ = http("GET", agent.url + "/status")
    assert body["running_tasks"] == []


def test_target_down_for_30s_then_catches_up(agents):
    # Without the takeover replay (ha.takeover_replay), which would restart
    # the task from its checkpoints during the outage on its own: this test is
    # about the rewind after a target outage.
    agent = agents(extra_env={"MILVUS_CDC_HA__TAKEOVER_REPLAY": "false"}).start()
    create_task(agent)
    bg = BackgroundInserts(SOURCE, tag(), pause=0.1)
    bg.start()
    time.sleep(3)
    pid = int(open(f"{STACK['CDC_RUN_DIR']}/target.pid").read().split()[0])
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    time.sleep(30)
    # Lag must have kept rising while the target was down.
    _, text, _ = http("GET", agent.url + "/metrics")
    lags = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
            if l.startswith("milvus_cdc_replication_lag_seconds{") and "rootcoord" in l]
    assert max(lags) > 20, lags
    errors = [l for l in text.splitlines() if l.startswith("milvus_cdc_apply_errors_total")]
    assert errors, "failed writes are counted"
    subprocess.run(["scripts/stack.sh", "start"], check=True, timeout=300,
                   env={**os.environ, **stack_env_for_restart(STACK)})
    bg.stop()
    assert bg.error is None, bg.error
    wait_verified([bg.name], limit=480)
    # The restarted target may have lost unflushed rows it had acknowledged:
    # the task must have replayed from its last flushed checkpoints.
    _, text, _ = http("GET", agent.url + "/metrics")
    assert any(l.startswith("milvus_cdc_apply_errors_total{") and 'kind="target_rewind"' in l
               and float(l.rsplit(" ", 1)[1]) >= 1 for l in text.splitlines()), \
        [l for l in text.splitlines() if "apply_errors" in l]
    # The agent's share of the lag is exported (whether the window that
    # waited through the outage is observed depends on which write succeeds
    # first: the rewind cancels the others).
    assert any(l.startswith("milvus_cdc_window_delay_seconds_count{") and float(l.rsplit(" ", 1)[1]) > 0
               for l in text.splitlines()), "milvus_cdc_window_delay_seconds observed nothing"
