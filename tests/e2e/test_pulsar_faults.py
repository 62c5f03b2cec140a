"""Faults of a Pulsar source (the stack's pulsar-lite behind scripts/pulsar_shim.py), end to end.

Each test starts its own shim in front of the stack's pulsar-lite (the same
topics Milvus writes through the stack's shim), so that it can freeze, kill
or configure it without touching Milvus:

- A refused token: a shim with --require-token (Apache Pulsar's token
  authentication: ERROR AuthenticationError on CONNECT, then close).
  `milvus-cdc check` fails with a clear line and exit code 1; a server
  retries with capped backoff and reports it (log, source_error in get/list,
  /readyz), never prints the token; with the right token it replicates.
- TLS (`pulsar+ssl://`): a shim with --tls-cert/--tls-key and a CA made at
  test time with the openssl CLI: the agent reads through it with `tls_ca`,
  and a wrong CA fails clearly.
- A wrong namespace / unknown topic: named, not taken for an empty source.
- A checkpoint past the end of its topic (a recreated topic whose ids
  started over) is retried and shown in read_errors, never moved onto the
  new topic; a checkpoint whose ledger is gone (a recreated topic on Apache
  Pulsar, whose ledger ids are never reused, or retention) is lost history,
  reported in history_gaps. Both are made with task start positions, as
  pulsar-lite can neither delete a topic nor expire messages.
- A broker outage (the shim frozen, then killed and restarted): every row
  arrives once, and SIGTERM during an outage exits within
  server.shutdown_timeout.

Skipped unless the stack's source is Pulsar (CDC_SOURCE_MQ=pulsar).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from brokers import (BrokerProcess, alive_for, assert_every_row_once, assert_read_error_shown,
                     collection, insert, lines_naming, log_offset, log_since, physical_channel,
                     reconnects, retry_delays, start_outage_test, stopped_at_end, wait_contains,
                     wait_target)
from conftest import (BIN, REPO, SOURCE_MQ, STACK, create_body, create_task, free_port,
                      get_task, http, source_env)
from test_positions import decode_position, msg_position

pytestmark = pytest.mark.skipif(SOURCE_MQ != "pulsar",
                                reason="needs a Pulsar source (CDC_SOURCE_MQ=pulsar)")

SHIM = REPO / "scripts" / "pulsar_shim.py"
SHIM_PYTHON = Path(os.environ.get("CDC_PULSAR_TOOLS", REPO / ".venv" / "pulsar")) / "venv" \
    / "bin" / "python"
BROKER = STACK.get("CDC_PULSAR_BROKER_URL", "").split("://", 1)[-1]


# ----------------------------------------------------------------- helpers

@pytest.fixture
def shim(tmp_path):
    """Starts a pulsar_shim.py in front of the stack's pulsar-lite:
    make(port=None, args=()) (a free port by default); all killed at the end."""
    with stopped_at_end() as started:
        def make(port=None, args=()):
            port = port or free_port(avoid={p.port for p in started})
            s = BrokerProcess("shim", [str(SHIM_PYTHON), str(SHIM), "--listen",
                                       f"127.0.0.1:{port}", "--broker", BROKER, *args],
                              port, tmp_path / f"shim-{port}.log")
            started.append(s)
            return s.start()

        yield make


def pulsar_env(address, **extra):
    """The agent's source settings: Pulsar at `address`, the stack's tenant
    and namespace unless overridden."""
    env = {**source_env(), "MILVUS_CDC_SOURCE__PULSAR__ADDRESS": address}
    env.update({f"MILVUS_CDC_SOURCE__PULSAR__{k.upper()}": v for k, v in extra.items()})
    return env


def check(env):
    """`milvus-cdc check` with the stack's etcd and source Milvus and `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    full.update({"MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([STACK["CDC_ETCD_ENDPOINT"]]),
                 "MILVUS_CDC_SOURCE__MILVUS_URI": STACK["CDC_SOURCE_URI"],
                 "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": '"5s"', **env})
    t0 = time.time()
    r = subprocess.run([str(BIN), "check"], env=full, capture_output=True, text=True,
                       timeout=120)
    return r, time.time() - t0


def pulsar_line(r):
    lines = [l for l in r.stdout.splitlines() if "source pulsar" in l]
    assert len(lines) == 1, r.stdout + r.stderr
    return lines[0]


# ------------------------------------------------------------ bad token

def test_check_refuses_a_bad_token_and_names_a_wrong_port(shim):
    # `check` wants a message in one of Milvus's topics (see the namespace test).
    insert(collection(uuid.uuid4().hex[:8], "pchk")[3], range(3))
    token = f"tok-{uuid.uuid4().hex}"
    auth = shim(args=["--require-token", token])
    url = f"pulsar://127.0.0.1:{auth.port}"

    # The right token: ok (so the failures below are the token's).
    r, _ = check(pulsar_env(url, auth_token=token))
    assert r.returncode == 0, r.stdout + r.stderr
    assert pulsar_line(r).startswith("ok"), r.stdout

    bad = f"tok-{uuid.uuid4().hex}"
    for env in (pulsar_env(url, auth_token=bad), pulsar_env(url)):
        r, secs = check(env)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        line = pulsar_line(r)
        assert line.startswith("FAIL") and url in line, line
        assert "AuthenticationError" in line and "Unable to authenticate" in line, line
        assert secs < 30, f"check took {secs:.0f}s: {line}"
        assert bad not in r.stdout + r.stderr and token not in r.stdout + r.stderr, \
            "a token is printed"
        # The other dependencies are still checked and reported.
        assert re.search(r"^ok\s+etcd", r.stdout, re.M), r.stdout
        assert re.search(r"^ok\s+source milvus", r.stdout, re.M), r.stdout

    # Nothing listens on that port.
    dead = free_port(avoid={auth.port})
    r, secs = check(pulsar_env(f"pulsar://127.0.0.1:{dead}"))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    line = pulsar_line(r)
    assert line.startswith("FAIL") and f"127.0.0.1:{dead}" in line, line
    assert secs < 30, f"check took {secs:.0f}s"


def test_server_with_a_bad_token_reports_it_and_retries_then_the_right_one_replicates(
        agents, shim):
    token = f"tok-{uuid.uuid4().hex}"
    bad = f"tok-{uuid.uuid4().hex}"
    auth = shim(args=["--require-token", token])
    url = f"pulsar://127.0.0.1:{auth.port}"
    agent = agents(extra_env=pulsar_env(url, auth_token=bad))
    offset = log_offset(agent)
    agent.start()  # ready: etcd answers; the queue is connected lazily
    task_id = create_task(agent)
    t0 = time.time()
    lines = []
    while time.time() - t0 < 90:
        time.sleep(3)
        assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        lines = [l for l in log_since(agent, offset).splitlines()
                 if "cannot open channel" in l and url in l]
        per = {}
        for l in lines:
            m = re.search(r"channel=(\S+)", l)
            per.setdefault(m.group(1) if m else "?", []).append(l)
        if len(per) >= 17 and min(len(v) for v in per.values()) >= 3:
            break
    assert len(per) >= 17, sorted(per)
    assert any("AuthenticationError" in l for l in lines), lines[:3]
    for ch, ls in per.items():
        delays = retry_delays(ls)
        assert len(delays) >= 2 and max(delays) <= 10, (ch, delays)
        assert len(ls) <= 30, f"{ch}: {len(ls)} attempts in {time.time() - t0:.0f}s"
    # get, list and /readyz say so too.
    task = get_task(agent, task_id)
    assert task["state"] == "Running", task
    err = task.get("source_error")
    assert err and "AuthenticationError" in err["message"] and err["since_ms"] > 0, task
    status, listed = agent.cdc({"request_type": "list"})
    assert status == 200, listed
    mine = [t for t in listed["data"]["tasks"] if t["task_id"] == task_id]
    assert mine and mine[0].get("source_error"), listed
    _, ready, _ = http("GET", agent.url + "/readyz")
    assert ready["source"] != "ok", ready
    log = log_since(agent, offset)
    assert bad not in log and token not in log, "a token is logged"
    agent.stop()
    assert bad not in json.dumps(task) + json.dumps(listed) + json.dumps(ready)

    # The same task with the right token: it replicates.
    good = agents(port=agent.port, extra_env=pulsar_env(url, auth_token=token))
    good.start()
    tag = uuid.uuid4().hex[:8]
    _src, tgt, name, coll = collection(tag, "ptok")
    insert(coll, range(50))
    wait_target(tgt, name, set(range(50)), agent=good)
    assert "source_error" not in get_task(good, task_id)
    assert token not in log_since(good, offset), "a token is logged"


# ------------------------------------------------------------ TLS

def make_ca(d, name):
    """A CA (ca.pem/ca.key) in d/name, made with the openssl CLI."""
    p = Path(d) / name
    p.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", f"/CN=milvus-cdc test CA {name}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout", str(p / "ca.key"), "-out", str(p / "ca.pem")],
                   check=True, capture_output=True)
    return p


def make_server_cert(ca):
    """A server certificate for 127.0.0.1 signed by `ca`: (cert, key)."""
    key, csr, cert, ext = (ca / "srv.key", ca / "srv.csr", ca / "srv.pem", ca / "srv.ext")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.pem"),
                    "-CAkey", str(ca / "ca.key"), "-CAcreateserial", "-days", "2",
                    "-extfile", str(ext), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def dump_env(env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    full.update({"MILVUS_CDC_LOG__LEVEL": "info", "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": '"5s"',
                 **env})
    return full


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_reads_with_the_right_ca_and_fails_clearly_with_a_wrong_one(shim, tmp_path):
    ca = make_ca(tmp_path, "right")
    other = make_ca(tmp_path, "wrong")
    cert, key = make_server_cert(ca)
    tls = shim(args=["--tls-cert", str(cert), "--tls-key", str(key)])
    url = f"pulsar+ssl://127.0.0.1:{tls.port}"

    # Something to read: a collection's CreateCollection and Insert.
    tag = uuid.uuid4().hex[:8]
    src, _tgt, name, coll = collection(tag, "ptls")
    insert(coll, range(7))
    channel = physical_channel(src, name)[0]
    r = subprocess.run([str(BIN), "source", "dump", "--channel", channel, "--idle-secs", "5",
                        "--skip-time-ticks"],
                       env=dump_env(pulsar_env(url, tls_ca=str(ca / "ca.pem"))),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert not [e for e in events if "error" in e], events[:3]
    mine = [e for e in events if name in json.dumps(e)]
    kinds = [e.get("kind") for e in mine]
    assert "create_collection" in kinds and "insert" in kinds, kinds

    # check through TLS: ok with the right CA.
    r, _ = check(pulsar_env(url, tls_ca=str(ca / "ca.pem")))
    assert r.returncode == 0 and pulsar_line(r).startswith("ok"), r.stdout + r.stderr
    # A CA that did not sign the broker's certificate: refused, and said so.
    r, secs = check(pulsar_env(url, tls_ca=str(other / "ca.pem")))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    line = pulsar_line(r)
    assert line.startswith("FAIL") and url in line, line
    assert "certificate" in line.lower() and "unknown" in line.lower(), line
    assert secs < 30, f"check took {secs:.0f}s"
    # No CA at all: the public roots do not know the test CA either.
    r, _ = check(pulsar_env(url))
    assert r.returncode == 1 and "certificate" in pulsar_line(r).lower(), r.stdout
    # Plain Pulsar against the TLS port: fails, not hangs.
    r, secs = check(pulsar_env(f"pulsar://127.0.0.1:{tls.port}"))
    assert r.returncode == 1 and pulsar_line(r).startswith("FAIL"), r.stdout
    assert secs < 30, f"check took {secs:.0f}s"


# ------------------------------------------------------------ wrong namespace

def test_check_names_an_unknown_namespace(shim):
    ns = f"nope{uuid.uuid4().hex[:6]}"
    r, _ = check({**source_env(), "MILVUS_CDC_SOURCE__PULSAR__NAMESPACE": ns})
    line = pulsar_line(r)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert line.startswith("FAIL") and f"persistent://public/{ns}/" in line, line
    assert "holds a message" in line and "namespace" in line, line
    # The stack's namespace holds Milvus's messages: ok (the test's own
    # collection makes sure of it on a fresh stack).
    tag = uuid.uuid4().hex[:8]
    _src, _tgt, _name, coll = collection(tag, "pns")
    insert(coll, range(3))
    r, _ = check(source_env())
    assert r.returncode == 0 and pulsar_line(r).startswith("ok"), r.stdout + r.stderr


# ------------------------------------------------------------ outage

def test_broker_outage_loses_and_repeats_nothing_and_sigterm_is_bounded(agents, shim):
    relay = shim()
    url = f"pulsar://127.0.0.1:{relay.port}"
    agent = agents(extra_env={**pulsar_env(url), "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": '"3s"',
                              "MILVUS_CDC_SERVER__SHUTDOWN_TIMEOUT": '"8s"'})
    out = start_outage_test(agent, "pout")
    offset, task_id, src, tgt, name = out.offset, out.task_id, out.src, out.tgt, out.name
    channel, before, writer = out.channel, out.before, out.writer
    try:
        # 1. The broker hangs: every request of the agent goes unanswered.
        relay.signal(signal.SIGSTOP)
        alive_for(agent, 15)
        frozen = lines_naming(agent, offset, channel, url,
                              "channel read failed", "cannot open channel")
        relay.signal(signal.SIGCONT)
        acked_frozen = set(writer.acked)
        assert len(acked_frozen) >= 100, "the source kept taking writes during the outage"
        wait_contains(tgt, name, set(range(100)) | acked_frozen, agent)

        # 2. The broker is gone (connections refused), then back.
        offset2 = log_offset(agent)
        relay.stop()
        alive_for(agent, 10)
        gone = lines_naming(agent, offset2, channel, url, "cannot open channel")
        assert gone, \
            f"no log line says the broker is unreachable: {log_since(agent, offset2)[-3000:]}"
        assert reconnects(agent, task_id, channel) > before, "reconnects not counted"
        relay = shim(port=relay.port)
    finally:
        relay.signal(signal.SIGCONT)
        writer.stop()
    assert_every_row_once(agent, out)
    print(f"frozen broker logged as: {frozen[:1]}")

    # 3. SIGTERM while the broker hangs: a clean exit within shutdown_timeout.
    relay.signal(signal.SIGSTOP)
    time.sleep(6)
    t0 = time.time()
    agent.proc.send_signal(signal.SIGTERM)
    try:
        rc = agent.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.proc.kill()
        raise AssertionError(f"no exit 30 s after SIGTERM: {agent.log_tail()}")
    took = time.time() - t0
    relay.signal(signal.SIGCONT)
    assert took < 8 + 2, (took, agent.log_tail())
    assert rc in (0, 1), (rc, agent.log_tail())


# ------------------------------------------------------------ gaps

def last_sequence(channel):
    out = subprocess.run([str(BIN), "source", "channels"], capture_output=True, text=True,
                         timeout=60, env={**dump_env(source_env())}).stdout
    for line in out.splitlines():
        name, *rest = line.split("\t")
        if name == channel:
            return int(dict(p.split("=", 1) for p in rest)["last"])
    return 0


def task_at(agent, channel, sequence):
    """A task that starts after `sequence` of `channel` (and at the end of
    every other channel's history: a position for each)."""
    body = create_body()
    body["request_data"]["collection_infos"] = [
        {"name": "*", "positions": {channel: msg_position(channel, sequence)}}]
    status, resp = agent.cdc(body)
    assert status == 200, resp
    return resp["data"]["task_id"]


def split(seq):
    packed = seq - 1
    return packed >> 32, (packed >> 10) & ((1 << 22) - 1)


def seq_of(ledger, entry):
    return ((ledger << 32) | (entry << 10)) + 1


def test_a_checkpoint_past_the_end_of_its_topic_is_retried_and_shown(agents):
    """What a deleted and recreated topic looks like when the new topic's
    ids are below the checkpoint (a broker whose ledger ids started over,
    as pulsar-lite's after its data is wiped): never moved onto it."""
    tag = uuid.uuid4().hex[:8]
    src, _tgt, name, coll = collection(tag, "ppast")
    insert(coll, range(10))
    channel = physical_channel(src, name)[0]
    deadline = time.time() + 30
    while time.time() < deadline and last_sequence(channel) == 0:
        time.sleep(1)
    ledger, entry = split(last_sequence(channel))
    past = seq_of(ledger, entry + 100_000)
    agent = agents()
    offset = log_offset(agent)
    agent.start()
    task_id = task_at(agent, channel, past)
    deadline, lines = time.time() + 60, []
    while time.time() < deadline and len(lines) < 2:
        time.sleep(1)
        lines = [l for l in log_since(agent, offset).splitlines()
                 if channel in l and "past the end of the topic" in l]
    assert len(lines) >= 2, f"not reported and retried: {log_since(agent, offset)[-3000:]}"
    assert f"position {ledger}:{entry + 100_000}:0" in lines[0], lines[0]
    assert not [l for l in log_since(agent, offset).splitlines()
                if channel in l and "channel reopened" in l], "it read the topic"
    assert reconnects(agent, task_id, channel) >= 2
    assert_read_error_shown(agent, task_id, channel, "past the end")
    status, resp = agent.cdc({"request_type": "position", "request_data": {"task_id": task_id}})
    assert status == 200, resp
    for p in resp["data"]["positions"]:
        if p["channel_name"] == channel:
            assert decode_position(p["msg_id"])[1] == past, "the checkpoint moved"


def test_a_checkpoint_before_its_topic_is_reported_as_lost_history(agents):
    """What a deleted and recreated topic looks like on Apache Pulsar
    (ledger ids are never reused, so the new topic's are above the
    checkpoint), and what retention that removed the checkpoint's ledger
    looks like: the same ids. Reported as lost history (history_gaps), then
    the topic is read."""
    tag = uuid.uuid4().hex[:8]
    src, tgt, name, coll = collection(tag, "pgone")
    insert(coll, range(10))
    channel = physical_channel(src, name)[0]
    deadline = time.time() + 30
    while time.time() < deadline and last_sequence(channel) == 0:
        time.sleep(1)
    ledger, _ = split(last_sequence(channel))
    assert ledger > 0, ledger
    gone = seq_of(ledger - 1, 7)  # an entry of an earlier ledger, no longer in the topic
    agent = agents()
    agent.start()
    task_id = task_at(agent, channel, gone)
    deadline, ours = time.time() + 60, []
    while time.time() < deadline and not ours:
        time.sleep(1)
        ours = [g for g in get_task(agent, task_id).get("history_gaps", [])
                if g["channel"] == channel]
    assert ours, get_task(agent, task_id)
    assert ours[0]["first_lost"] == gone + 1, (ours, gone)
    status, listed = agent.cdc({"request_type": "list"})
    mine = [t for t in listed["data"]["tasks"] if t["task_id"] == task_id]
    assert mine and mine[0].get("history_gaps"), listed
    # Then the topic is read: no read error stays on the channel.
    assert "checkpoint is older than the retained stream" in agent.log_tail(400)
    deadline = time.time() + 30
    while time.time() < deadline and [e for e in get_task(agent, task_id).get("read_errors", [])
                                      if e["channel"] == channel]:
        time.sleep(1)
    assert not [e for e in get_task(agent, task_id).get("read_errors", [])
                if e["channel"] == channel], get_task(agent, task_id)
