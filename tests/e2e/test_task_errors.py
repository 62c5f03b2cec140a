"""Honest errors: a change the target refuses for good (rows that do not fit
a same-named collection created by hand on the target) stops the task with
the error in get/list instead of retrying forever in silence; after the cause
is removed, resume clears the error and the task catches up."""

import time
import uuid

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

from conftest import STACK, TARGET_TOKEN, create_body, http
from test_replication import keys
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]


def wait_for(what, check, limit=120):
    deadline = time.time() + limit
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {limit}s (last: {last!r})")


def target_holds(tgt, name, want):
    """A check for wait_for: the target's collection `name` (indexed and
    loaded here once it exists) holds exactly the keys `want`."""
    def check():
        if not utility.has_collection(name, using=tgt):
            return None
        t = Collection(name, using=tgt)
        if not t.indexes:
            t.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        t.load()
        return keys(tgt, name) == want or None
    return check


def test_a_permanent_refusal_pauses_the_task_with_its_error(agent):
    name = f"clash_{uuid.uuid4().hex[:8]}"
    tgt = connect("err-tgt", TARGET, TARGET_TOKEN)
    # A hand-made target collection with another schema under the same name.
    Collection(name, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("other", DataType.VARCHAR, max_length=8),
        FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]), using=tgt)
    src = connect("err-src", SOURCE)
    c = Collection(name, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]), shards_num=1, using=src)
    c.insert([list(range(20)), [[0.5] * 4] * 20])
    status, body = agent.cdc(create_body())
    assert status == 200, body
    task_id = body["data"]["task_id"]

    def paused():
        _, b = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
        t = b["data"]["Task"]
        return t if t["state"] == "Paused" and "last_error" in t else None

    task = wait_for("the task stops with its error", paused)
    err = task["last_error"]
    assert "invalid parameter" in err["message"] or "1100" in err["message"], err
    assert err["channel"].startswith("by-dev-rootcoord-dml_"), err
    _, listed = agent.cdc({"request_type": "list"})
    assert any(t.get("last_error") for t in listed["data"]["tasks"]), listed
    _, text, _ = http("GET", agent.url + "/metrics")
    assert any(l.startswith("milvus_cdc_apply_errors_total{") and 'kind="task_failed"' in l
               for l in text.splitlines()), "the stop is counted"
    # Remove the cause, resume: the error is cleared and the rows arrive.
    utility.drop_collection(name, using=tgt)
    status, body = agent.cdc({"request_type": "resume", "request_data": {"task_id": task_id}})
    assert status == 200, body
    _, b = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
    assert "last_error" not in b["data"]["Task"] and b["data"]["Task"]["state"] == "Running"

    wait_for("the rows reach the target after resume", target_holds(tgt, name, set(range(20))),
             limit=180)
