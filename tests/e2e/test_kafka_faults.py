"""Faults of a Kafka source (the stack's tansu broker), end to end.

- The broker is unreachable for a while (frozen, then gone): the agent does
  not crash, says so (log lines naming the broker, the reconnect metric),
  and afterwards the target holds exactly the source's rows, those written
  before and during the outage included. The outage is made with a tansu
  proxy between the agent and the broker, so the source Milvus keeps
  writing to the broker meanwhile.
- A wrong broker list or refused credentials: `milvus-cdc check` fails with
  a clear line and exit code 1; a server keeps running, logs the reason and
  retries with backoff.
- A checkpoint past the end of the topic (the in-memory broker restarted,
  losing every topic): reported, never silently skipped or rewound. This
  one wipes the source (a new broker means a new, empty source), so it is
  marked `destroys_history` and runs after every other test.

Skipped unless the stack's source is Kafka (CDC_SOURCE_MQ=kafka).
"""

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pymilvus import Collection, connections

from brokers import (SCHEMA, BrokerProcess, alive_for, assert_every_row_once,
                     assert_read_error_shown, collection, insert, lines_naming, log_offset,
                     log_since, physical_channel, port_open, reconnects, retry_delays,
                     start_outage_test, stopped_at_end, wait_contains, wait_target)
from conftest import (BIN, REPO, STACK, create_task, etcd_get_prefix, free_port, get_task, http,
                      kafka_only, stack_env_for_restart)
from workload import connect

pytestmark = kafka_only

TANSU = Path(os.environ.get("CDC_KAFKA_TOOLS", REPO / ".venv" / "kafka")) / "tansu"
BROKER = STACK.get("CDC_KAFKA_BROKERS", "")


# ----------------------------------------------------------------- helpers

@pytest.fixture
def tansu(tmp_path):
    """Starts a tansu broker or proxy: make(args, port); all killed at the end."""
    with stopped_at_end() as started:
        def make(args, port):
            t = BrokerProcess("tansu", [str(TANSU), *args], port, tmp_path / f"tansu-{port}.log")
            started.append(t)
            return t.start()

        yield make


def proxy_args(port):
    return ["proxy", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
            "--origin-url", f"tcp://{BROKER}"]


def kafka_env(brokers, **extra):
    env = {"MILVUS_CDC_SOURCE__MQ_TYPE": "kafka",
           "MILVUS_CDC_SOURCE__KAFKA__BROKERS": json.dumps(brokers)}
    env.update({f"MILVUS_CDC_SOURCE__KAFKA__{k.upper()}": v for k, v in extra.items()})
    return env


# ------------------------------------------------------------ the outage

def test_broker_outage_is_reported_then_every_row_arrives_exactly(agents, tansu):
    proxy_port = free_port()
    proxy = tansu(proxy_args(proxy_port), proxy_port)
    agent = agents(extra_env=kafka_env([f"127.0.0.1:{proxy_port}"]))
    out = start_outage_test(agent, "kout")
    offset, task_id, src, tgt, name = out.offset, out.task_id, out.src, out.tgt, out.name
    channel, before, writer = out.channel, out.before, out.writer
    try:
        # 1. The broker hangs (every request of the agent goes unanswered).
        proxy.signal(signal.SIGSTOP)
        seen_frozen = ""
        alive_for(agent, 25)
        log = log_since(agent, offset)
        frozen = lines_naming(agent, offset, channel, f"127.0.0.1:{proxy_port}",
                              "channel read failed", "cannot open channel")
        assert frozen, f"no log line says the broker does not answer: {log[-3000:]}"
        assert any("no answer within" in l for l in frozen), frozen
        seen_frozen = frozen[0]
        assert reconnects(agent, task_id, channel) > before, "reconnects not counted"
        assert get_task(agent, task_id)["state"] == "Running"
        status, _, _ = http("GET", agent.url + "/healthz")
        assert status == 200
        proxy.signal(signal.SIGCONT)
        acked_frozen = set(writer.acked)
        assert len(acked_frozen) >= 200, "the source kept taking writes during the outage"

        # Everything, written before and during the outage, arrives once.
        mid = reconnects(agent, task_id, channel)
        wait_contains(tgt, name, set(range(100)) | acked_frozen, agent)

        # 2. The broker is gone (connections refused), then back.
        offset2 = log_offset(agent)
        proxy.stop()
        alive_for(agent, 15)
        gone = lines_naming(agent, offset2, channel, f"127.0.0.1:{proxy_port}",
                            "cannot open channel")
        assert gone, \
            f"no log line says the broker is unreachable: {log_since(agent, offset2)[-3000:]}"
        assert reconnects(agent, task_id, channel) > mid
        proxy = tansu(proxy_args(proxy_port), proxy_port)
        time.sleep(5)
    finally:
        proxy.signal(signal.SIGCONT)
        writer.stop()
    assert_every_row_once(agent, out)
    assert agent.proc.poll() is None
    print(f"outage logged as: {seen_frozen[:300]}")


# ------------------------------------------- wrong brokers and credentials

def check(env):
    """`milvus-cdc check` with the stack's etcd and source Milvus and `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    full.update({"MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([STACK["CDC_ETCD_ENDPOINT"]]),
                 "MILVUS_CDC_SOURCE__MILVUS_URI": STACK["CDC_SOURCE_URI"], **env})
    t0 = time.time()
    r = subprocess.run([str(BIN), "check"], env=full, capture_output=True, text=True,
                       timeout=120)
    return r, time.time() - t0


def kafka_line(out):
    lines = [l for l in out.splitlines() if "source kafka" in l]
    assert len(lines) == 1, out
    return lines[0]


def test_check_names_a_wrong_broker_and_refused_credentials(tansu):
    # The right broker: ok (so the failures below are the configuration's).
    r, _ = check(kafka_env([BROKER]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert kafka_line(r.stdout).startswith("ok"), r.stdout

    # Nothing listens on that port.
    dead = free_port()
    r, secs = check(kafka_env([f"127.0.0.1:{dead}"]))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    line = kafka_line(r.stdout)
    assert line.startswith("FAIL"), r.stdout
    assert f"127.0.0.1:{dead}" in line and "refused" in line.lower(), line
    assert secs < 30, f"check took {secs:.0f}s"
    # The other dependencies are still checked and reported.
    assert re.search(r"^ok\s+etcd", r.stdout, re.M) and re.search(r"^ok\s+source milvus",
                                                                 r.stdout, re.M), r.stdout

    # A broker that requires authentication (tansu --authentication, no
    # user: every credential is wrong).
    port = free_port(avoid={dead})
    tansu(["broker", "--authentication", "--listener-url", f"tcp://127.0.0.1:{port}",
           "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
           "--storage-engine", "memory://tansu/"], port)
    secret = f"pw-{uuid.uuid4().hex[:10]}"
    # Each SCRAM attempt hashes the password 8192 times, seconds of CPU in a
    # debug build on a busy machine: a longer timeout, so an attempt ends
    # with the broker's answer rather than with "no answer".
    r, _ = check({**kafka_env([f"127.0.0.1:{port}"], security_protocol="SASL_PLAINTEXT",
                              sasl_mechanism="SCRAM-SHA-512", sasl_username="cdc",
                              sasl_password=secret),
                  "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": '"15s"'})
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    line = kafka_line(r.stdout)
    assert line.startswith("FAIL") and f"127.0.0.1:{port}" in line, line
    assert "sasl" in line.lower() and "unknown user" in line.lower(), line
    assert secret not in r.stdout + r.stderr, "the password is printed"
    # Without SASL against it: refused too, not an ok.
    r, _ = check(kafka_env([f"127.0.0.1:{port}"]))
    assert r.returncode == 1 and kafka_line(r.stdout).startswith("FAIL"), r.stdout

    # An invalid setting is a configuration error (exit code 2), named.
    r, _ = check(kafka_env([BROKER], sasl_mechanism="scram"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "sasl_mechanism" in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["wrong_broker", "bad_credentials"])
def test_server_with_an_unreachable_broker_logs_it_and_retries_with_backoff(agents, tansu,
                                                                            case):
    secret = f"pw-{uuid.uuid4().hex[:10]}"
    if case == "wrong_broker":
        port = free_port()
        env = kafka_env([f"127.0.0.1:{port}"])
        reason = "refused"
    else:
        port = free_port()
        tansu(["broker", "--authentication", "--listener-url", f"tcp://127.0.0.1:{port}",
               "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
               "--storage-engine", "memory://tansu/"], port)
        env = kafka_env([f"127.0.0.1:{port}"], security_protocol="SASL_PLAINTEXT",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="cdc",
                        sasl_password=secret)
        reason = "unknown user"
    agent = agents(extra_env=env)
    offset = log_offset(agent)
    agent.start()  # ready: etcd answers; the queue is connected lazily
    task_id = create_task(agent)
    t0 = time.time()
    # Until every channel (16 DML + replicate) was tried three times.
    while True:
        time.sleep(5)
        assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        log = log_since(agent, offset)
        lines = [l for l in log.splitlines()
                 if "cannot open channel" in l and f"127.0.0.1:{port}" in l]
        tried = {}
        for l in lines:
            m = re.search(r"channel=(\S+)", l)
            tried[m.group(1) if m else "?"] = tried.get(m.group(1) if m else "?", 0) + 1
        if (len(tried) >= 17 and min(tried.values()) >= 3) or time.time() - t0 > 120:
            break
    assert lines, f"no log line names the broker: {log[-3000:]}"
    assert any(reason in l.lower() for l in lines), lines[:3]
    assert secret not in log, "the password is logged"
    # Backoff: per channel, a handful of attempts, with growing delays (the
    # task's one replay after the takeover grace period starts them over).
    per_channel = {}
    for l in lines:
        m = re.search(r"channel=(\S+)", l)
        per_channel.setdefault(m.group(1) if m else "?", []).append(l)
    assert len(per_channel) >= 16, sorted(per_channel)  # every DML channel tried
    for ch, ls in per_channel.items():
        assert len(ls) <= 30, f"{ch}: {len(ls)} attempts in {time.time() - t0:.0f}s"
        delays = retry_delays(ls)
        assert len(delays) >= 2 and max(delays) <= 10, (ch, delays)
        assert any(b > a for a, b in zip(delays, delays[1:])), (ch, delays)
    assert reconnects(agent, task_id) >= len(per_channel)
    task = get_task(agent, task_id)
    assert task["state"] == "Running", task
    status, _, _ = http("GET", agent.url + "/healthz")
    assert status == 200


# ------------------------------------------- checkpoint past the end

def restart_broker():
    """Kills the stack's in-memory broker and starts the stack again: a new,
    empty broker, so scripts/stack.sh starts the source from empty too."""
    run_dir = Path(STACK["CDC_RUN_DIR"])
    pid = int((run_dir / "broker.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 20
    while time.time() < deadline and port_open(int(BROKER.rsplit(":", 1)[1])):
        time.sleep(0.2)
    env = {**os.environ, **stack_env_for_restart(STACK),
           "CDC_KAFKA_PORT": BROKER.rsplit(":", 1)[1]}
    errors = []
    for _ in range(3):
        r = subprocess.run([str(REPO / "scripts" / "stack.sh"), "start"], env=env,
                           capture_output=True, text=True, timeout=400)
        if r.returncode == 0:
            return
        errors.append(r.stderr[-2000:])
        time.sleep(5)
    raise AssertionError("the stack did not restart:\n" + "\n---\n".join(errors))


def checkpoint(etcd_root, task_id, channel):
    kv = etcd_get_prefix(f"{etcd_root}/positions/{task_id}/")
    v = kv.get(f"{etcd_root}/positions/{task_id}/{channel}")
    return json.loads(v)["sequence"] if v else 0


def topic_end(channel):
    """Last sequence of the channel's topic (0: empty or missing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    env.update(kafka_env([BROKER]))
    out = subprocess.run([str(BIN), "source", "channels"], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    for line in out.splitlines():
        name, *rest = line.split("\t")
        if name == channel:
            return int(dict(p.split("=", 1) for p in rest)["last"])
    return 0


def recreated_topic_behind_checkpoint(agents, etcd_root):
    """A task replicates a collection; its agent stops; the broker restarts
    empty and the new source writes the channel again, fewer messages than
    the checkpoint. Returns (agent on the same port, not started, task id,
    channel, checkpoint sequence)."""
    tag = uuid.uuid4().hex[:8]
    src, tgt, name, coll = collection(tag, "kpast")
    channel = physical_channel(src, name)[0]
    # Many messages on the channel, so the recreated topic stays shorter than
    # the checkpoint for minutes (time ticks add about 5 per second).
    for i in range(0, 600, 2):
        insert(coll, range(i, i + 2))
    agent = agents()
    agent.start()
    task_id = create_task(agent)
    wait_target(tgt, name, set(range(600)), agent=agent)
    deadline = time.time() + 60
    while time.time() < deadline and checkpoint(etcd_root, task_id, channel) < 300:
        time.sleep(1)
    agent.stop()
    cp = checkpoint(etcd_root, task_id, channel)
    assert cp >= 300, f"checkpoint of {channel}: {cp}"

    restart_broker()
    # The new source writes the channel again (one collection on all 16
    # channels), so the topic exists, shorter than the checkpoint.
    connections.disconnect(src)
    # The new source answers /healthz before its proxy takes connections
    # under load: connect with retries.
    deadline = time.time() + 120
    for attempt in range(1000):
        try:
            src = connect(f"kpast-src2-{tag}-{attempt}", STACK["CDC_SOURCE_URI"])
            break
        except Exception:  # noqa: BLE001 - pymilvus raises MilvusException or grpc errors
            if time.time() > deadline:
                raise
            time.sleep(2)
    again = Collection(f"kpast2_{tag}", SCHEMA, using=src, shards_num=16)
    insert(again, range(10))
    deadline = time.time() + 60
    while time.time() < deadline and topic_end(channel) == 0:
        time.sleep(1)
    end = topic_end(channel)
    assert 0 < end < cp, f"precondition: recreated topic {channel} ends at {end}, checkpoint {cp}"
    return agents(port=agent.port), task_id, channel, cp, end


def wait_past_end_logged(agent, offset, channel):
    deadline, past = time.time() + 60, []
    while time.time() < deadline and not past:
        assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        past = [l for l in log_since(agent, offset).splitlines()
                if channel in l and "past the end of the topic" in l]
        time.sleep(1)
    assert past, f"not reported: {log_since(agent, offset)[-3000:]}"
    return past


@pytest.mark.destroys_history
def test_checkpoint_past_the_end_of_a_recreated_topic_is_reported(agents, etcd_root):
    agent, task_id, channel, cp, end = recreated_topic_behind_checkpoint(agents, etcd_root)
    offset = log_offset(agent)
    agent.start()
    wait_past_end_logged(agent, offset, channel)
    # Retried, not given up, and never moved onto the new topic: every open
    # asks for an offset past its end (the task may resume a little before
    # its last checkpoint, never at the new topic's start), and the
    # checkpoint is not rewritten to a position in the new topic.
    time.sleep(10)
    assert agent.proc.poll() is None
    assert reconnects(agent, task_id, channel) >= 2
    past = [l for l in log_since(agent, offset).splitlines()
            if channel in l and "past the end of the topic" in l]
    assert len(past) >= 2, past
    asked = [int(re.search(r"position offset (\d+)", l).group(1)) for l in past]
    assert all(end < a <= cp for a in asked), (asked, end, cp)
    after = checkpoint(etcd_root, task_id, channel)
    assert end < after <= cp, (after, end, cp)
    assert not [l for l in log_since(agent, offset).splitlines()
                if channel in l and "channel reopened" in l], "it read the new topic"
    # get and list say so too (`read_errors`), not only the log.
    assert_read_error_shown(agent, task_id, channel, "past the end")
