"""The /cdc task API against real etcd and a real target Milvus 2.3.5."""

import json
import subprocess
import time

import pytest

from conftest import (BIN, STACK, TARGET_TOKEN, create_body, etcd_get_prefix, http,
                      source_env, SOURCE_MQ, target_param)

TASK_ID_HEX = "0123456789abcdef0123456789abcdef"


def task_keys(root):
    return {k: v for k, v in etcd_get_prefix(root + "/").items() if "/tasks/" in k}


def test_lifecycle_exact_shapes(agent, etcd_root):
    status, body = agent.cdc(create_body())
    assert status == 200, body
    assert body["code"] == 200
    task_id = body["data"]["task_id"]
    assert len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)

    # Stored in etcd, under the configured root, with the secret kept there.
    stored = task_keys(etcd_root)
    assert list(stored) == [f"{etcd_root}/tasks/{task_id}"]
    record = json.loads(stored[f"{etcd_root}/tasks/{task_id}"])
    assert record["state"] == "Running"

    status, body = agent.cdc({"request_type": "list"})
    assert status == 200
    assert body == {"code": 200, "data": {"tasks": [{
        "task_id": task_id,
        "milvus_connect_param": {"uri": STACK["CDC_TARGET_URI"], "connect_timeout": 10},
        "collection_infos": [{"name": "*"}],
        "state": "Running",
    }]}}

    status, body = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
    assert status == 200
    assert body["code"] == 200
    assert set(body["data"]) == {"Task"}, "the capital Task key is part of the contract"
    assert body["data"]["Task"]["state"] == "Running"
    assert "token" not in json.dumps(body) and "Milvus\"" not in json.dumps(body)

    for action, state in [("pause", "Paused"), ("pause", "Paused"),
                          ("resume", "Running"), ("resume", "Running")]:
        status, body = agent.cdc({"request_type": action, "request_data": {"task_id": task_id}})
        assert (status, body) == (200, {"code": 200, "data": {}}), (action, body)
        _, got = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
        assert got["data"]["Task"]["state"] == state

    status, body = agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})
    assert (status, body) == (200, {"code": 200, "data": {}})
    assert task_keys(etcd_root) == {}
    # Deleting twice: the task is gone.
    status, body = agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})
    assert status == 404 and body["code"] == 404 and task_id in body["message"]


def test_form_content_type_like_curl_d(agent):
    """curl -d sends application/x-www-form-urlencoded; the body is still JSON."""
    status, body, _ = http("POST", agent.url + "/cdc", '{"request_type": "list"}',
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["data"] == {"tasks": []}


def test_create_unreachable_target_stores_nothing(agent, etcd_root):
    t0 = time.time()
    status, body = agent.cdc(create_body(uri="http://127.0.0.1:1", connect_timeout=3))
    assert status == 400 and body["code"] == 400
    assert "unreachable" in body["message"]
    assert time.time() - t0 < 10
    assert task_keys(etcd_root) == {}


def test_create_blackholed_target_times_out(agent, etcd_root):
    # 10.255.255.1 is never routed here; the connect must give up at connect_timeout.
    # (No traffic leaves the machine: the connect fails locally or times out.)
    t0 = time.time()
    status, body = agent.cdc(create_body(uri="http://127.0.0.1:9", connect_timeout=2))
    assert status == 400, body
    assert time.time() - t0 < 8
    assert task_keys(etcd_root) == {}


@pytest.mark.skipif(TARGET_TOKEN is None, reason="target started without authorization")
def test_create_wrong_or_missing_credentials(agent, etcd_root):
    status, body = agent.cdc(create_body(token="root:wrong"))
    assert status == 400, body
    assert "credentials" in body["message"]
    p = target_param()
    p.pop("token")
    status, body = agent.cdc({"request_type": "create", "request_data": {
        "milvus_connect_param": p, "collection_infos": [{"name": "*"}]}})
    assert status == 400, body
    p.update(username="root", password="Milvus")
    status, body = agent.cdc({"request_type": "create", "request_data": {
        "milvus_connect_param": p, "collection_infos": [{"name": "*"}]}})
    assert status == 200, body
    listed = json.dumps(agent.cdc({"request_type": "list"})[1])
    assert "password" not in listed and "Milvus\"" not in listed
    assert len(task_keys(etcd_root)) == 1


def test_unknown_task_is_404(agent):
    for rt in ["get", "pause", "resume", "delete"]:
        status, body = agent.cdc({"request_type": rt, "request_data": {"task_id": TASK_ID_HEX}})
        assert status == 404 and body["code"] == 404, (rt, body)


def selecting(name):
    """A create body for the test target that replicates only `name` (tasks
    to one target must select disjoint collections)."""
    body = create_body()
    body["request_data"]["collection_infos"] = [{"name": name}]
    return body


def test_task_limit(agents, etcd_root):
    a = agents(extra_env={"MILVUS_CDC_TASKS__MAX_TASKS": "2"}).start()
    for i in range(2):
        assert a.cdc(selecting(f"c{i}"))[0] == 200
    status, body = a.cdc(selecting("c2"))
    assert status == 409 and "maximum number of tasks (2)" in body["message"]
    assert len(task_keys(etcd_root)) == 2


def test_compat_mode_answers_200_with_code(agents):
    a = agents(extra_env={"MILVUS_CDC_SERVER__COMPAT_HTTP_200": "true"}).start()
    status, body = a.cdc({"request_type": "get", "request_data": {"task_id": TASK_ID_HEX}})
    assert status == 200 and body["code"] == 404


def test_tasks_survive_restart(agents, etcd_root):
    a = agents().start()
    ids = [a.cdc(selecting(f"c{i}"))[1]["data"]["task_id"] for i in range(2)]
    assert a.cdc({"request_type": "pause", "request_data": {"task_id": ids[1]}})[0] == 200
    before = a.cdc({"request_type": "list"})[1]
    a.kill9()
    b = agents(port=a.port).start()
    after = b.cdc({"request_type": "list"})[1]
    assert after == before
    states = {t["task_id"]: t["state"] for t in after["data"]["tasks"]}
    assert states == {ids[0]: "Running", ids[1]: "Paused"}


def test_wrong_methods_and_paths_are_json(agent):
    status, body, _ = http("GET", agent.url + "/cdc")
    assert status == 405 and body["code"] == 405
    status, body, _ = http("GET", agent.url + "/nope")
    assert status == 404 and body["code"] == 404


def test_health_ready_status_metrics(agent):
    assert http("GET", agent.url + "/healthz")[0] == 200
    status, body, _ = http("GET", agent.url + "/readyz")
    assert status == 200 and body["ready"] is True
    status, body, _ = http("GET", agent.url + "/status")
    assert body["role"] == "leader" and body["leader"] == agent.url
    agent.cdc({"request_type": "list"})
    status, text, _ = http("GET", agent.url + "/metrics")
    assert status == 200
    assert 'milvus_cdc_api_requests_total{request_type="list",code="200"}' in text


def test_sigterm_exits_cleanly(agents):
    a = agents().start()
    a.stop()
    assert a.proc.returncode == 0, a.log_tail()


def test_wrong_etcd_fails_fast_with_clear_error(agents):
    a = agents(extra_env={"MILVUS_CDC_ETCD__ENDPOINTS": '["127.0.0.1:1"]',
                          "MILVUS_CDC_ETCD__CONNECT_TIMEOUT": '"2s"'})
    t0 = time.time()
    a.start(wait=False)
    a.proc.wait(timeout=20)
    assert a.proc.returncode == 1
    assert time.time() - t0 < 10
    assert "etcd" in a.log_tail()


def test_invalid_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[ha]\nlease_ttl = "soon"\n')
    r = subprocess.run([str(BIN), "serve", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert "ha.lease_ttl" in r.stderr
    cfg.write_text('[server]\nlisten = "0.0.0.0:8444"\nbogus = 1\n')
    r = subprocess.run([str(BIN), "config", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "bogus" in r.stderr


def test_check_command_reaches_every_dependency():
    """Smoke test of the real stack through the agent's own clients: etcd,
    the source's JetStream streams (async-nats) and GetVersion/ShowCollections
    on the target (tonic)."""
    env = {
        "MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([STACK["CDC_ETCD_ENDPOINT"]]),
        "MILVUS_CDC_SOURCE__MILVUS_URI": STACK["CDC_SOURCE_URI"],
        **source_env(),
        "PATH": "/usr/bin:/bin",
    }
    args = [str(BIN), "check", "--target", STACK["CDC_TARGET_URI"]]
    if TARGET_TOKEN:
        args += ["--target-token", TARGET_TOKEN]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "by-dev-rootcoord-dml_0" in r.stdout
    assert "by-dev-replicate-msg" in r.stdout
    assert "version v2.3.5" in r.stdout
    if SOURCE_MQ == "kafka":
        env["MILVUS_CDC_SOURCE__KAFKA__BROKERS"] = '["127.0.0.1:1"]'
    else:
        env["MILVUS_CDC_SOURCE__NATS_URL"] = "nats://127.0.0.1:1"
    env["MILVUS_CDC_SOURCE__CONNECT_TIMEOUT"] = '"2s"'
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"FAIL  source {SOURCE_MQ}" in r.stdout
