"""A source that does not answer is reported as such (the task's
`source_error`, `/readyz`, `/status`, `milvus_cdc_source_up`), replication
waits, and when the source answers again every change arrives and the
reports clear. The agent reaches the stack's queue through a TCP proxy that
is not running at first (any queue: natsmq, Kafka, Pulsar)."""

import subprocess
import sys
import time
import uuid

import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema

from conftest import REPO, SOURCE_MQ, STACK, TARGET_TOKEN, create_body, free_port, get_task, http
from test_task_errors import target_holds, wait_for
from workload import connect

PROXY = REPO / "chaos-tests" / "delayproxy.py"


def queue_address():
    """host:port of the stack's source queue."""
    if SOURCE_MQ == "kafka":
        return STACK["CDC_KAFKA_BROKERS"]
    if SOURCE_MQ == "pulsar":
        return STACK["CDC_PULSAR_URL"].split("://", 1)[1]
    return STACK["CDC_NATS_URL"].split("://", 1)[1]


def queue_env(port):
    """The agent's source settings pointing at 127.0.0.1:`port`."""
    if SOURCE_MQ == "kafka":
        return {"MILVUS_CDC_SOURCE__MQ_TYPE": "kafka",
                "MILVUS_CDC_SOURCE__KAFKA__BROKERS": f'["127.0.0.1:{port}"]'}
    if SOURCE_MQ == "pulsar":
        return {"MILVUS_CDC_SOURCE__MQ_TYPE": "pulsar",
                "MILVUS_CDC_SOURCE__PULSAR__ADDRESS": f"pulsar://127.0.0.1:{port}",
                "MILVUS_CDC_SOURCE__PULSAR__TENANT": STACK["CDC_PULSAR_TENANT"],
                "MILVUS_CDC_SOURCE__PULSAR__NAMESPACE": STACK["CDC_PULSAR_NAMESPACE"]}
    return {"MILVUS_CDC_SOURCE__NATS_URL": f"nats://127.0.0.1:{port}"}


def source_up(agent):
    _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
    for line in text.splitlines():
        if line.startswith("milvus_cdc_source_up "):
            return float(line.split()[1])
    return None


def test_an_unreachable_source_is_reported_and_replication_resumes(agents, tmp_path):
    port = free_port()
    agent = agents(extra_env={**queue_env(port), "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": "2s"}).start()
    name = f"srcdown_{uuid.uuid4().hex[:8]}"
    src = connect("srcdown-src", STACK["CDC_SOURCE_URI"])
    c = Collection(name, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]), shards_num=1, using=src)
    c.insert([list(range(50)), [[0.25] * 4] * 50])
    status, body = agent.cdc(create_body())
    assert status == 200, body
    task_id = body["data"]["task_id"]

    def reported_down():
        t = get_task(agent, task_id)
        return t.get("source_error") if source_up(agent) == 0 else None

    err = wait_for("the task says its source does not answer", reported_down, limit=60)
    assert err["message"] and err["since_ms"] > 0, err
    _, ready, _ = http("GET", agent.url + "/readyz")
    assert ready["source"] != "ok", ready
    _, status_body, _ = http("GET", agent.url + "/status")
    assert status_body["source"]["state"] == "down", status_body
    _, listed = agent.cdc({"request_type": "list"})
    assert any(t.get("source_error") for t in listed["data"]["tasks"]), listed
    # More changes while the agent cannot read them.
    c.delete("id in [0, 1, 2]")
    c.insert([list(range(50, 80)), [[0.5] * 4] * 30])

    proxy = subprocess.Popen(
        [sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}",
         "--upstream", queue_address(), "--control", str(tmp_path / "delay")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tgt = connect("srcdown-tgt", STACK["CDC_TARGET_URI"], TARGET_TOKEN)
        want = set(range(3, 80))

        wait_for("every change reaches the target once the source answers",
                 target_holds(tgt, name, want),
                 limit=240)
        wait_for("the source is reported up again", lambda: source_up(agent) == 1, limit=30)
        assert "source_error" not in get_task(agent, task_id)
        _, ready, _ = http("GET", agent.url + "/readyz")
        assert ready["source"] == "ok", ready
    finally:
        proxy.terminate()
        proxy.wait(10)
        time.sleep(0.1)


def dml_lag(agent):
    """The largest replication lag over the agent's DML channels (None
    before any is reported)."""
    _, text, _ = http("GET", agent.url + "/metrics", timeout=10)
    lags = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
            if l.startswith("milvus_cdc_replication_lag_seconds{") and "rootcoord" in l]
    return max(lags) if lags else None


@pytest.mark.skipif(SOURCE_MQ == "kafka", reason="a Kafka client bootstraps through the proxy, then "
                    "reads from the broker's advertised address: killing the proxy cuts nothing")
def test_the_lag_keeps_rising_while_the_queue_cannot_be_read(agents, tmp_path):
    # The source Milvus keeps taking writes while the agent's path to its
    # queue is cut: no message arrives, but the channels are not quiet, so
    # the lag must rise (not fall to 0 as for an idle source) and fall again
    # once the changes are read.
    port = free_port()
    cmd = [sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}",
           "--upstream", queue_address(), "--control", str(tmp_path / "delay")]
    proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        agent = agents(extra_env={**queue_env(port),
                                  "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": "2s"}).start()
        name = f"lagdown_{uuid.uuid4().hex[:8]}"
        src = connect("lagdown-src", STACK["CDC_SOURCE_URI"])
        c = Collection(name, CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]), shards_num=1, using=src)
        status, body = agent.cdc(create_body())
        assert status == 200, body
        tgt = connect("lagdown-tgt", STACK["CDC_TARGET_URI"], TARGET_TOKEN)

        c.insert([list(range(20)), [[0.25] * 4] * 20])
        wait_for("the first rows are replicated", target_holds(tgt, name, set(range(20))),
                 limit=120)
        wait_for("the lag is reported", lambda: dml_lag(agent) is not None, limit=30)

        proxy.kill()
        proxy.wait(10)
        cut_at = time.time()
        seen = []
        while time.time() - cut_at < 25:
            c.insert([[1000 + len(seen)], [[0.5] * 4]])
            seen.append(dml_lag(agent))
            time.sleep(1)
        assert seen[-1] is not None and seen[-1] > 12, \
            f"the lag must keep rising while the queue cannot be read: {seen}"

        proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        want = set(range(20)) | {1000 + i for i in range(len(seen))}
        wait_for("every change written meanwhile arrives", target_holds(tgt, name, want),
                 limit=240)
        wait_for("the lag falls again", lambda: (dml_lag(agent) or 0) < 5, limit=60)
    finally:
        proxy.terminate()
        proxy.wait(10)
        time.sleep(0.1)
