"""Shared harness of the end-to-end suite.

The real stack (etcd, source and target Milvus 2.3.5) is started by
``scripts/stack.sh start`` before pytest runs (``scripts/test.sh`` does it);
its addresses come from the run folder's ``stack.env``. This harness starts
and stops the agent processes itself, each test with its own etcd root so
tests never see each other's tasks.
"""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from pymilvus import utility

from ports import free_port_in

REPO = Path(__file__).resolve().parents[2]


def _stack_env():
    run_dir = Path(os.environ.get("CDC_RUN_DIR", REPO / ".run" / "stack"))
    env_file = run_dir / "stack.env"
    if not env_file.exists():
        raise RuntimeError(
            f"{env_file} not found: start the stack first (scripts/stack.sh start)"
        )
    values = {}
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            values[k] = v
    return values


STACK = _stack_env()
# The source's message queue: natsmq (default), kafka or pulsar (CDC_SOURCE_MQ).
SOURCE_MQ = STACK.get("CDC_SOURCE_MQ", "natsmq")


def source_env(stack=None):
    """The agent's MILVUS_CDC_SOURCE__* variables for the stack's queue."""
    stack = stack or STACK
    if stack.get("CDC_SOURCE_MQ", "natsmq") == "kafka":
        return {"MILVUS_CDC_SOURCE__MQ_TYPE": "kafka",
                "MILVUS_CDC_SOURCE__KAFKA__BROKERS": json.dumps([stack["CDC_KAFKA_BROKERS"]])}
    if stack.get("CDC_SOURCE_MQ", "natsmq") == "pulsar":
        # the stack's protocol shim in front of pulsar-lite (scripts/pulsar_shim.py)
        return {"MILVUS_CDC_SOURCE__MQ_TYPE": "pulsar",
                "MILVUS_CDC_SOURCE__PULSAR__ADDRESS": stack["CDC_PULSAR_URL"],
                "MILVUS_CDC_SOURCE__PULSAR__TENANT": stack["CDC_PULSAR_TENANT"],
                "MILVUS_CDC_SOURCE__PULSAR__NAMESPACE": stack["CDC_PULSAR_NAMESPACE"]}
    return {"MILVUS_CDC_SOURCE__NATS_URL": stack["CDC_NATS_URL"]}


natsmq_only = pytest.mark.skipif(SOURCE_MQ != "natsmq",
                                 reason="reads or damages natsmq's JetStream directly "
                                        "(skipped on Kafka and Pulsar sources)")
kafka_only = pytest.mark.skipif(SOURCE_MQ != "kafka",
                                reason="needs a Kafka source (CDC_SOURCE_MQ=kafka)")
BIN = Path(os.environ.get("CDC_BIN", REPO / "target" / "debug" / "milvus-cdc"))
TARGET_TOKEN = "root:Milvus" if STACK.get("CDC_TARGET_AUTH") == "1" else None


# Ports for agents and helper servers that tests start: below Linux's
# ephemeral range (32768-60999), which outgoing connections use at random, and
# away from the fixed stack ports (2379-29549 blocks of the demo, the test and
# the chaos stacks lie below 30000).
FREE_PORT_RANGE = (30000, 32700)


def free_port(avoid=()):
    """A port nothing listens on now, chosen in FREE_PORT_RANGE."""
    return free_port_in(*FREE_PORT_RANGE, avoid=avoid)


def http(method, url, body=None, headers=None, timeout=60):
    """Returns (status, parsed JSON or raw text, headers)."""
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def wait_for(probe, what, timeout, interval=2.0, until=bool, tolerate=(), show=repr):
    """Calls `probe()` every `interval` s until `until(value)` holds, and
    returns that value. An exception in `tolerate` counts as "not yet" (the
    thing may not exist yet). After `timeout` s: an AssertionError saying
    `what` was awaited and, through `show`, the last value or exception."""
    deadline, seen = time.time() + timeout, None
    while True:
        try:
            seen = probe()
            if until(seen):
                return seen
        except tolerate as e:
            seen = e
        if time.time() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last seen: {show(seen)}")
        time.sleep(interval)


def wait_collection(alias, name, read, want, timeout, show=repr):
    """Waits until `read(alias, name)` equals `want` on `alias`, the
    collection maybe not created or loaded yet; `show` renders what was
    last read for the failure."""
    def probe():
        return read(alias, name) if utility.has_collection(name, using=alias) else None
    wait_for(probe, f"{read.__name__}({name}) on {alias} == want", timeout,
             until=lambda seen: seen == want, tolerate=(Exception,), show=show)


def etcd_get_prefix(prefix):
    """Every key/value under prefix in the agent's etcd, read with etcdctl."""
    out = subprocess.run(
        ["etcdctl", "--endpoints", STACK["CDC_ETCD_ENDPOINT"], "get", "--prefix", prefix,
         "-w", "json"],
        check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
    ).stdout
    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in kvs
    }


class Agent:
    """One milvus-cdc replica process."""

    def __init__(self, root, port=None, extra_env=None, log_dir=None):
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.log_path = Path(log_dir or REPO / ".run" / "agents") / f"agent-{self.port}.log"
        self.proc = None

    def env(self):
        env = {
            **os.environ,
            "MILVUS_CDC_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([STACK["CDC_ETCD_ENDPOINT"]]),
            "MILVUS_CDC_ETCD__ROOT": self.root,
            "MILVUS_CDC_SOURCE__MILVUS_URI": STACK["CDC_SOURCE_URI"],
            **source_env(),
            "MILVUS_CDC_LOG__LEVEL": "milvus_cdc=debug,info",
        }
        env.update(self.extra_env)
        return env

    def start(self, wait=True):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN), "serve"], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.log_tail()}")
            return http("GET", self.url + "/readyz", timeout=2)[0] == 200
        wait_for(ready, f"agent {self.url} ready", timeout, interval=0.1, tolerate=(OSError,),
                 show=lambda _: self.log_tail())

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def cdc(self, body, **kw):
        status, data, _ = http("POST", self.url + "/cdc", body, **kw)
        return status, data

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill9(self):
        self.stop(signal.SIGKILL)


def pytest_collection_modifyitems(items):
    """Tests that destroy the source's stream history run last."""
    items.sort(key=lambda item: item.get_closest_marker("destroys_history") is not None)


@pytest.fixture
def etcd_root():
    return f"milvus-cdc-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def agents(etcd_root):
    """Factory of agent replicas sharing one etcd root; all stopped at the end."""
    started = []

    def make(**kw):
        kw.setdefault("root", etcd_root)
        a = Agent(**kw)
        started.append(a)
        return a

    yield make
    for a in started:
        a.stop()


@pytest.fixture
def agent(agents):
    return agents().start()


def target_param(**overrides):
    p = {"uri": STACK["CDC_TARGET_URI"], "connect_timeout": 10}
    if TARGET_TOKEN:
        p["token"] = TARGET_TOKEN
    p.update(overrides)
    return p


def create_body(**param_overrides):
    return {
        "request_type": "create",
        "request_data": {
            "milvus_connect_param": target_param(**param_overrides),
            "collection_infos": [{"name": "*"}],
        },
    }


def create_task(agent):
    """Creates the standard `*` task on `agent`; returns its id."""
    status, body = agent.cdc(create_body())
    assert status == 200, body
    return body["data"]["task_id"]


def get_task(agent, task_id):
    """The task as `get` shows it."""
    status, body = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
    assert status == 200, body
    return body["data"]["Task"]


def stack_env_for_restart(stack):
    """The CDC_* variables scripts/stack.sh needs to restart the same stack."""
    return {
        "CDC_RUN_DIR": stack["CDC_RUN_DIR"],
        "CDC_ETCD_PORT": stack["CDC_ETCD_ENDPOINT"].rsplit(":", 1)[1],
        "CDC_SOURCE_PORT": stack["CDC_SOURCE_ADDR"].rsplit(":", 1)[1],
        "CDC_NATS_PORT": stack["CDC_NATS_URL"].rsplit(":", 1)[1],
        "CDC_SOURCE_MQ": stack.get("CDC_SOURCE_MQ", "natsmq"),
        "CDC_TARGET_PORT": stack["CDC_TARGET_ADDR"].rsplit(":", 1)[1],
        "CDC_TARGET_AUTH": stack.get("CDC_TARGET_AUTH", "0"),
        "CDC_SOURCE_AUTH": stack.get("CDC_SOURCE_AUTH", "0"),
    }
