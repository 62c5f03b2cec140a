"""High availability end to end: three real agent replicas elect one leader on
a real etcd, followers answer /cdc exactly like the leader, and the leader can
be killed, terminated, frozen or cut off from etcd without losing or
duplicating a row on the real target Milvus.

The replicas coordinate through an etcd of their own, started by this module
(``EtcdServer``): the stack's etcd also holds both Milvus instances' metadata,
so restarting it would break Milvus. Every replica runs with a 3 s lease, so a
killed leader is replaced within TTL + 1 s.

``EtcdServer`` and the status helpers are also used by
``benches/failover_bench.py``.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from http.client import HTTPException
from pathlib import Path

import pytest
from pymilvus import Collection

from conftest import (BIN, REPO, SOURCE_MQ, STACK, TARGET_TOKEN, create_body, create_task, free_port,
                      http, source_env)
from test_replication import keys, wait_verified
from workload import BackgroundInserts, connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
ETCD_BIN = os.environ.get("CDC_ETCD_BIN", shutil.which("etcd") or "/usr/bin/etcd")
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"

TTL_S = 3
DONE = (200, {"code": 200, "data": {}})


# ---------------------------------------------------------------- etcd of the replicas

class EtcdServer:
    """A single-member etcd on free ports with its own data folder; restartable
    on the same ports and data."""

    def __init__(self, base_dir):
        self.base = Path(base_dir)
        self.data_dir = self.base / "data"
        self.log_path = self.base / "etcd.log"
        self.proc = None
        self._pick_ports()

    def _pick_ports(self):
        self.client_port, self.peer_port = free_port(), free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.client_port}"

    def agent_env(self, ttl_s=TTL_S):
        """Environment overrides that point an agent at this etcd with a short lease."""
        return {
            "MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([self.endpoint]),
            "MILVUS_CDC_HA__LEASE_TTL": f'"{ttl_s}s"',
        }

    def _command(self):
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [ETCD_BIN, "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}"]

    def start(self, timeout=20):
        self.base.mkdir(parents=True, exist_ok=True)
        fresh = not self.data_dir.exists()
        for _ in range(3):
            with open(self.log_path, "ab") as log:
                log.write(f"===== start {time.strftime('%H:%M:%S')} =====\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self._command(), stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_healthy(timeout):
                return self
            self.stop()
            if not fresh:
                break  # a restart must keep its ports; do not hide the failure
            # A fresh member can move to other ports (one was taken meanwhile).
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._pick_ports()
        raise RuntimeError(f"etcd did not become healthy: {self.log_tail()}")

    def _wait_healthy(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, body, _ = http("GET", f"http://{self.endpoint}/health", timeout=1)
                if status == 200 and isinstance(body, dict) and body.get("health") == "true":
                    return True
            except (OSError, HTTPException):
                pass
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def remove_data(self):
        """Stops etcd and deletes its data (64 MB of preallocated WAL); keeps the log."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def get_prefix(self, prefix):
        """Every key/value under prefix, read with etcdctl."""
        out = subprocess.run(
            [ETCDCTL_BIN, "--endpoints", self.endpoint, "get", "--prefix", prefix, "-w", "json"],
            check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
        ).stdout
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in json.loads(out).get("kvs", [])
        }


def etcd_server(name):
    """A started EtcdServer in a new folder under .run/ha/ (its log stays there)."""
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_run_dir()))
    return EtcdServer(base).start()


def _run_dir():
    d = REPO / ".run" / "ha"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- replica helpers

def status(agent, timeout=1.0):
    """The replica's /status, or None when it does not answer in time."""
    try:
        code, body, _ = http("GET", agent.url + "/status", timeout=timeout)
    except (OSError, HTTPException):
        return None
    return body if code == 200 and isinstance(body, dict) else None


def samples(agent, name):
    """(labels, value) of every sample of metric `name` on the replica's /metrics."""
    _, text, _ = http("GET", agent.url + "/metrics", timeout=5)
    for line in str(text).splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            yield labels, float(m.group(3))


def metric(agent, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None if absent."""
    values = [v for have, v in samples(agent, name)
              if all(have.get(k) == want for k, want in labels.items())]
    return sum(values) if values else None


def metric_by(agent, name, label, **labels):
    """Samples of `name` (with `labels`) summed per value of `label`."""
    out = {}
    for have, v in samples(agent, name):
        if label in have and all(have.get(k) == want for k, want in labels.items()):
            out[have[label]] = out.get(have[label], 0.0) + v
    return out


def single_leader(replicas, timeout=1.0):
    """The leader if exactly one replica says leader and every other one
    follows it; else None."""
    st = [status(a, timeout) for a in replicas]
    leaders = [a for a, s in zip(replicas, st) if s and s["role"] == "leader"]
    if len(leaders) != 1:
        return None
    lead = leaders[0]
    for a, s in zip(replicas, st):
        if a is not lead and not (s and s["role"] == "follower" and s["leader"] == lead.url):
            return None
    return lead


def wait_single_leader(replicas, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lead = single_leader(replicas)
        if lead:
            return lead
        time.sleep(0.05)
    raise AssertionError(
        f"no single leader within {timeout}s: {[status(a) for a in replicas]}\n"
        + logs(replicas))


def wait_leader_among(candidates, since, timeout, interval=0.01):
    """Polls until one of candidates says leader; returns (that agent, seconds
    since `since`), `since` being a time.monotonic() value. Fails if two say
    leader at once."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        now = [(a, status(a, timeout=0.5)) for a in candidates]
        leaders = [a for a, s in now if s and s["role"] == "leader"]
        assert len(leaders) <= 1, f"two leaders at once: {[s for _, s in now]}"
        if leaders:
            return leaders[0], time.monotonic() - since
        time.sleep(interval)
    raise AssertionError(f"no leader among the survivors within {timeout}s:\n"
                         + logs(candidates))


def wait_for(what, check, timeout, interval=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def logs(replicas, n=25):
    return "\n".join(f"--- {a.url} ({a.log_path})\n{a.log_tail(n)}" for a in replicas)


def wait_applied(agent, task_id, rows=1000, timeout=60):
    """Until `agent` has written `rows` inserted rows of the task to the target."""
    wait_for(f"{rows} rows applied by {agent.url}",
             lambda: (metric(agent, "milvus_cdc_applied_rows_total", task_id=task_id,
                             kind="insert") or 0) >= rows, timeout)


def running_on(agent, task_id):
    s = status(agent)
    return bool(s) and task_id in s["running_tasks"]


def tag():
    return uuid.uuid4().hex[:8]


def checkpoints(etcd, root, task_id):
    prefix = f"{root}/positions/{task_id}/"
    return {k[len(prefix):]: json.loads(v)["sequence"]
            for k, v in etcd.get_prefix(prefix).items()}


def stream_last_sequences():
    """Last sequence of every source channel, read with `milvus-cdc source channels`."""
    out = subprocess.run(
        [str(BIN), "source", "channels"], capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ, **source_env()}).stdout
    return {name: int(last)
            for name, last in re.findall(r"^(\S+)\tfirst=\d+\tlast=(\d+)$", out, re.M)}


def messages_between(cp, last):
    """How many messages of a channel follow agent sequence `cp`, up to `last`.

    natsmq sequences and Kafka offsets are contiguous from 1. A Pulsar sequence
    packs a message id: ((ledger << 32) | (entry << 10) | batch index) + 1;
    the test broker (pulsar-lite) keeps each topic in one ledger and Milvus
    does not batch, so there the entries count the messages."""
    if SOURCE_MQ != "pulsar":
        return last - cp
    if last == 0:
        return 0
    ledger, entry = (last - 1) >> 32, ((last - 1) >> 10) & ((1 << 22) - 1)
    if cp == 0:
        return entry + 1
    assert (cp - 1) >> 32 == ledger, f"sequences {cp} and {last} in two Pulsar ledgers"
    return entry - (((cp - 1) >> 10) & ((1 << 22) - 1))


def count_star(alias, name):
    rows = Collection(name, using=alias).query("", output_fields=["count(*)"],
                                               consistency_level="Strong")
    return rows[0]["count(*)"]


def assert_target_exact(alias, bg):
    """Waits until pymilvus reads exactly the expected keys on the target, then
    checks that `milvus-cdc verify` finds no difference and that each key is
    there once (count(*) counts a key written twice twice)."""
    t0 = time.monotonic()
    last = {}

    def caught_up():
        try:
            last["keys"] = keys(alias, bg.name)
        except Exception as e:  # not created or not loaded on the target yet
            last["keys"] = e
            return False
        return last["keys"] == bg.present

    try:
        wait_for("the target holds the workload's keys", caught_up, 180, interval=1)
    except AssertionError:
        got = last["keys"]
        if isinstance(got, set):
            missing, extra = sorted(bg.present - got), sorted(got - bg.present)
            raise AssertionError(f"{bg.name}: missing {len(missing)} keys {missing[:20]}, "
                                 f"extra {len(extra)} keys {extra[:20]}") from None
        raise
    # Same answer from `milvus-cdc verify` (schema, index, load state, every
    # key and every row's values), so a bug shared by the writer and this
    # check cannot hide.
    report = wait_verified([bg.name])
    print(f"target verified {time.monotonic() - t0:.1f}s after the workload stopped")
    assert report["collections"] == 1
    assert report["rows_compared"] >= len(bg.present)
    assert count_star(alias, bg.name) == len(bg.present), "duplicate keys on the target"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ha_etcd():
    """The replicas' own etcd, shared by this module's tests (each test has its
    own root); always stopped at module teardown."""
    etcd = etcd_server("etcd-ha")
    try:
        yield etcd
    finally:
        etcd.remove_data()


@pytest.fixture(scope="module")
def target_alias():
    return connect("tgt-ha", TARGET, TARGET_TOKEN)


def start_replicas(agents, etcd, log_dir, n=3):
    replicas = [agents(extra_env=etcd.agent_env(), log_dir=log_dir) for _ in range(n)]
    for a in replicas:
        a.start(wait=False)
    for a in replicas:
        a.wait_ready()
    return replicas


@pytest.fixture
def make_cluster(agents, tmp_path):
    """Starts three replicas on a given etcd; on teardown wakes any replica a
    test left SIGSTOPped so the agents fixture can stop it."""
    started = []

    def make(etcd):
        replicas = start_replicas(agents, etcd, tmp_path)
        started.extend(replicas)
        return replicas

    yield make
    for a in started:
        if a.proc is not None and a.proc.poll() is None:
            try:
                os.kill(a.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def workload():
    """Factory of background inserts (and some deletes) on the source, a few
    hundred rows a second: enough to be mid-write at any moment, small enough
    to verify every row quickly. Each collection is dropped on the source at
    teardown, so later tasks (which replay the source from its first message)
    skip its rows instead of writing them again."""
    started = []

    def make():
        bg = BackgroundInserts(SOURCE, tag(), batch=100, pause=0.1)
        started.append(bg)
        return bg

    yield make
    for bg in started:
        bg.stop_event.set()
        bg.join(timeout=60)
        try:
            bg.coll.drop()
        except Exception as e:  # best effort: keep the test's own result
            print(f"could not drop {bg.name}: {e}")


@pytest.fixture
def cluster(make_cluster, ha_etcd):
    return make_cluster(ha_etcd)


@pytest.fixture
def private_etcd():
    """An etcd for one test that restarts it. Requested before the replicas,
    so it is stopped after them."""
    etcd = etcd_server("etcd-restart")
    try:
        yield etcd
    finally:
        etcd.remove_data()


# ---------------------------------------------------------------- tests

def test_one_leader_and_every_follower_answers_like_it(cluster):
    lead = wait_single_leader(cluster)
    followers = [a for a in cluster if a is not lead]
    replicas = [lead] + followers

    st = status(lead)
    assert st["leader"] == lead.url == st["advertise"]
    assert isinstance(st["term"], int) and st["term"] > 0
    assert isinstance(st["lease_id"], int) and st["lease_id"] != 0
    for f in followers:
        s = status(f)
        assert (s["role"], s["leader"], s["term"], s["lease_id"]) == ("follower", lead.url,
                                                                      None, None)
    assert metric(lead, "milvus_cdc_is_leader") == 1
    assert metric(lead, "milvus_cdc_leader_changes_total") == 1
    for f in followers:
        assert metric(f, "milvus_cdc_is_leader") == 0
        assert metric(f, "milvus_cdc_leader_changes_total") == 0
    for a in replicas:
        assert metric(a, "milvus_cdc_election_attempts_total") >= 1
        assert metric(a, "milvus_cdc_lease_renewal_age_seconds") < TTL_S

    forwarded = {f.url: 0 for f in followers}

    def same(body, forwards=True):
        """The same request through every replica: the answers must be equal."""
        answers = []
        for a in replicas:
            answers.append(a.cdc(body))
            if a is not lead and forwards:
                forwarded[a.url] += 1
        assert answers[1:] == answers[:1] * (len(answers) - 1), (body, answers)
        return answers[0]

    # create through each replica: same status and shape
    created = []
    for i, a in enumerate(replicas):
        body = create_body()  # tasks to one target select disjoint collections
        body["request_data"]["collection_infos"] = [{"name": f"ha_c{i}"}]
        code, body = a.cdc(body)
        if a is not lead:
            forwarded[a.url] += 1
        assert code == 200, body
        task_id = body["data"]["task_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", task_id)
        assert body == {"code": 200, "data": {"task_id": task_id}}
        created.append(task_id)
    assert len(set(created)) == 3

    code, body = same({"request_type": "list"})
    assert code == 200
    assert sorted(t["task_id"] for t in body["data"]["tasks"]) == sorted(created)
    assert {t["state"] for t in body["data"]["tasks"]} == {"Running"}
    assert "token" not in json.dumps(body), "secrets are never echoed, by any replica"

    for task_id in created:
        code, body = same({"request_type": "get", "request_data": {"task_id": task_id}})
        assert code == 200 and body["data"]["Task"]["task_id"] == task_id
        assert body["data"]["Task"]["state"] == "Running"
    # Workers run on the leader only.
    wait_for("leader runs the three tasks",
             lambda: sorted(status(lead)["running_tasks"]) == sorted(created), 10)
    for f in followers:
        assert status(f)["running_tasks"] == []

    # pause through every replica (the repeats are accepted, unchanged)
    for task_id in created:
        assert same({"request_type": "pause", "request_data": {"task_id": task_id}}) == DONE
        code, body = same({"request_type": "get", "request_data": {"task_id": task_id}})
        assert body["data"]["Task"]["state"] == "Paused"
    code, body = same({"request_type": "list"})
    assert {t["state"] for t in body["data"]["tasks"]} == {"Paused"}
    assert status(lead)["running_tasks"] == []

    for task_id in created:
        assert same({"request_type": "resume", "request_data": {"task_id": task_id}}) == DONE
        code, body = same({"request_type": "get", "request_data": {"task_id": task_id}})
        assert body["data"]["Task"]["state"] == "Running"
    assert sorted(status(lead)["running_tasks"]) == sorted(created)

    # delete: each task through a different replica, same answer
    deleted = []
    for a, task_id in zip(replicas, created):
        deleted.append(a.cdc({"request_type": "delete", "request_data": {"task_id": task_id}}))
        if a is not lead:
            forwarded[a.url] += 1
    assert deleted == [DONE] * 3
    assert same({"request_type": "list"}) == (200, {"code": 200, "data": {"tasks": []}})
    assert status(lead)["running_tasks"] == []

    # errors pass through unchanged too
    gone = created[0]
    for kind in ("get", "pause", "resume", "delete"):
        code, body = same({"request_type": kind, "request_data": {"task_id": gone}})
        assert code == 404 and body["code"] == 404 and gone in body["message"], body
    # A request that does not parse is answered by the replica itself, identically.
    code, body = same({"request_type": "no_such_type"}, forwards=False)
    assert code == 400 and body["code"] == 400
    answers = []
    for a in replicas:
        c, b, _ = http("POST", a.url + "/cdc", b'{"request_type": ', timeout=10)
        answers.append((c, b))
    assert answers[0][0] == 400 and answers[1:] == answers[:1] * 2, answers

    # Every forwarded request is counted on its follower (and none failed).
    for f in followers:
        assert metric(f, "milvus_cdc_forwarded_requests_total", outcome="ok") == forwarded[f.url]
        assert not metric(f, "milvus_cdc_forwarded_requests_total", outcome="failed")
    assert not metric(lead, "milvus_cdc_forwarded_requests_total")
    assert single_leader(replicas) is lead


def test_kill9_leader_mid_workload_follower_resumes_from_checkpoints(
        cluster, ha_etcd, etcd_root, target_alias, workload):
    lead = wait_single_leader(cluster)
    survivors = [a for a in cluster if a is not lead]
    task_id = create_task(survivors[0])  # through a follower
    assert running_on(lead, task_id)
    bg = workload()
    bg.start()
    try:
        # The leader is replicating the workload and has checkpointed some of it.
        wait_applied(lead, task_id)
        # Checkpoints follow target flushes (replicate.flush_interval, 10 s).
        wait_for("checkpoints saved", lambda: checkpoints(ha_etcd, etcd_root, task_id), 40)
        time.sleep(1)
        t0 = time.monotonic()
        lead.kill9()
        # The dead leader can write nothing more: these are the positions to resume from.
        at_kill = checkpoints(ha_etcd, etcd_root, task_id)
        new, took = wait_leader_among(survivors, t0, timeout=TTL_S + 10)
        print(f"kill -9 failover: new leader after {took:.2f}s")
        assert took < TTL_S + 1, f"failover took {took:.2f}s (TTL {TTL_S}s)"
        wait_for("the new leader runs the task", lambda: running_on(new, task_id), 10)
        wait_single_leader(survivors)
        time.sleep(3)  # the workload goes on under the new leader
    finally:
        bg.stop()
    assert bg.error is None, bg.error
    assert_target_exact(target_alias, bg)

    # It resumed from the checkpoints the dead leader left, neither from the
    # start of the streams nor past them: on each channel it read exactly the
    # messages after its checkpoint (messages_between counts them).
    assert any(seq > 0 for seq in at_kill.values()), at_kill

    # ha.takeover_replay: 2 * TTL + 2 s after taking over, the new leader
    # reads the takeover window once more, from the same checkpoints.
    replay_line = "takeover grace period over"
    wait_for("the takeover replay", lambda: replay_line in new.log_tail(2000), 2 * TTL_S + 20)
    short = {}

    def read_after_checkpoints():
        before = stream_last_sequences()
        read = metric_by(new, "milvus_cdc_source_messages_total", "channel", task_id=task_id)
        after = stream_last_sequences()
        short.clear()
        for ch, cp in at_kill.items():
            n = read.get(ch, 0)
            # Twice at most: the first run and the replay, both from `cp`.
            assert n <= 2 * messages_between(cp, after[ch]), \
                f"{ch}: read {n} messages, only {messages_between(cp, after[ch])} after {cp} " \
                "(twice at most)"
            if n < messages_between(cp, before[ch]):
                short[ch] = {"read": n, "after_checkpoint": messages_between(cp, before[ch]),
                             "checkpoint": cp}
        return not short

    try:
        wait_for("the new leader read every message after the checkpoints",
                 read_after_checkpoints, 30, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}: {short}") from None
    assert_target_exact(target_alias, bg)  # still exact after the replay
    assert metric(new, "milvus_cdc_leader_changes_total") == 1
    assert metric(new, "milvus_cdc_is_leader") == 1


def test_sigterm_hands_over_in_under_a_second(cluster, target_alias, workload):
    lead = wait_single_leader(cluster)
    survivors = [a for a in cluster if a is not lead]
    task_id = create_task(lead)
    bg = workload()
    bg.start()
    try:
        wait_applied(lead, task_id)
        t0 = time.monotonic()
        lead.proc.send_signal(signal.SIGTERM)
        new, took = wait_leader_among(survivors, t0, timeout=10, interval=0.005)
        print(f"SIGTERM handover: new leader after {took * 1000:.0f} ms")
        assert took < 1.0, f"handover took {took:.3f}s\n{logs([lead])}"
        assert lead.proc.wait(timeout=20) == 0, "a terminated leader exits cleanly"
        old_log = lead.log_path.read_text(errors="replace")
        assert "task workers stopped after a final checkpoint" in old_log
        assert "write refused" not in old_log
        wait_for("the new leader runs the task", lambda: running_on(new, task_id), 10)
        assert wait_single_leader(survivors) is new
        time.sleep(2)
    finally:
        bg.stop()
    assert bg.error is None, bg.error
    assert_target_exact(target_alias, bg)


def test_sigstopped_leader_is_fenced_after_takeover(cluster, target_alias, workload):
    lead = wait_single_leader(cluster)
    survivors = [a for a in cluster if a is not lead]
    task_id = create_task(lead)
    bg = workload()
    bg.start()
    try:
        wait_applied(lead, task_id)
        assert metric(lead, "milvus_cdc_fencing_refusals_total") == 0
        term_before = status(lead)["term"]
        t0 = time.monotonic()
        os.kill(lead.proc.pid, signal.SIGSTOP)
        try:
            new, took = wait_leader_among(survivors, t0, timeout=TTL_S + 10)
            print(f"SIGSTOP failover: new leader after {took:.2f}s")
            assert took < TTL_S + 1
            wait_for("the new leader runs the task", lambda: running_on(new, task_id), 10)
            new_term = status(new)["term"]
            assert new_term > term_before
            # The workload goes on while the old leader is frozen, so it has
            # unread messages (and maybe a write of its own) waiting.
            time.sleep(2)
            bg.stop()
            assert bg.error is None, bg.error
            # The new leader alone made the target exact...
            assert_target_exact(target_alias, bg)
        finally:
            os.kill(lead.proc.pid, signal.SIGCONT)
        # ...and the old one, awake again, has its writes refused, steps down
        # and follows the new leader.
        wait_for("the old leader counts refused writes",
                 lambda: (metric(lead, "milvus_cdc_fencing_refusals_total") or 0) > 0, 15)
        wait_for("the old leader follows the new one",
                 lambda: (status(lead) or {}).get("leader") == new.url
                 and status(lead)["role"] == "follower", 15)
        assert "write refused" in lead.log_path.read_text(errors="replace")
        assert metric(lead, "milvus_cdc_is_leader") == 0
        assert status(lead)["running_tasks"] == []
        assert wait_single_leader(cluster) is new
        assert status(new)["term"] == new_term, "the new leader kept its term"
    finally:
        bg.stop_event.set()
    # Nothing the old leader did after waking changed the target.
    time.sleep(2)
    got = keys(target_alias, bg.name)
    assert got == bg.present, (f"after the old leader woke up: extra keys "
                               f"{sorted(got - bg.present)[:20]}, missing "
                               f"{sorted(bg.present - got)[:20]}\n{logs([lead])}")
    assert count_star(target_alias, bg.name) == len(bg.present)
    assert single_leader(cluster) is new


def test_etcd_restart_reelects_one_leader_and_replication_goes_on(
        private_etcd, make_cluster, target_alias, workload):
    etcd = private_etcd
    replicas = make_cluster(etcd)
    lead = wait_single_leader(replicas)
    task_id = create_task(lead)
    bg = workload()
    bg.start()
    try:
        wait_applied(lead, task_id)
        etcd.stop()
        down = time.monotonic()
        # Without etcd nobody may lead once the renew deadline has passed,
        # and no replica says it is ready.
        wait_for("every replica stepped down",
                 lambda: all((status(a) or {}).get("role") != "leader" for a in replicas),
                 TTL_S + 2)
        print(f"etcd down: leader stepped down after {time.monotonic() - down:.2f}s")
        for a in replicas:
            assert http("GET", a.url + "/readyz", timeout=10)[0] == 503
        time.sleep(max(0.0, down + TTL_S + 1 - time.monotonic()))
        etcd.start()
        back = time.monotonic()
        new = wait_single_leader(replicas, timeout=30)
        print(f"etcd restart: one leader {time.monotonic() - back:.2f}s after etcd is back")
        wait_for("the leader runs the task", lambda: running_on(new, task_id), 15)
        for a in replicas:
            assert http("GET", a.url + "/readyz", timeout=10)[0] == 200
        time.sleep(3)  # replication goes on
    finally:
        bg.stop()
    assert bg.error is None, bg.error
    assert_target_exact(target_alias, bg)
    assert single_leader(replicas) is new
