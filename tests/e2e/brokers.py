"""What the broker fault suites (test_kafka_faults.py, test_pulsar_faults.py)
share: a broker-side process that a test starts, freezes (SIGSTOP), thaws and
kills itself (a tansu broker or proxy, a pulsar_shim.py), the fixture helper
that stops every one at the end, and the checks of an outage: the agent's log
and reconnect metric, the source's and target's rows, a steady writer.
"""

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections
from pymilvus.grpc_gen import milvus_pb2

from conftest import STACK, TARGET_TOKEN, create_task, get_task, http
from test_replication import keys
from workload import connect

SCHEMA = CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                           FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)])


# ------------------------------------------------------------ processes

def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class BrokerProcess:
    """A process in the broker's path (`argv`, listening on `port`, output
    to `log_path`) that a test starts, signals and stops itself."""

    def __init__(self, what, argv, port, log_path):
        self.what, self.argv, self.port = what, list(argv), port
        self.log_path = Path(log_path)
        self.proc = None

    def start(self):
        """Starts it and waits until `port` accepts connections."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            if port_open(self.port):
                return self
            time.sleep(0.1)
        raise AssertionError(f"{self.what} on {self.port} not listening: "
                             f"{self.log_path.read_text()[-2000:]}")

    def signal(self, sig):
        """SIGSTOP freezes it (connections stay open, nothing is answered),
        SIGCONT thaws it; nothing happens once it has exited."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self):
        """Kills it (thawed first, so that a frozen one dies too)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def stopped_at_end():
    """A list to append started BrokerProcesses to; each is stopped on exit
    (a fixture's `with stopped_at_end() as started: ... yield make`)."""
    started = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


# ------------------------------------------------------------ the agent

def log_offset(agent):
    try:
        return agent.log_path.stat().st_size
    except OSError:
        return 0


def log_since(agent, offset):
    """What the agent logged since `offset` (its log file is shared by every
    agent that ever ran on that port)."""
    with open(agent.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def retry_delays(lines):
    """The retry_in of each line, in seconds."""
    out = []
    for l in lines:
        m = re.search(r"retry_in=([0-9.]+)(ms|s|µs)", l)
        if m:
            out.append(float(m.group(1)) / {"ms": 1e3, "s": 1, "µs": 1e6}[m.group(2)])
    return out


def reconnects(agent, task_id, channel=None):
    """milvus_cdc_source_reconnects_total of the task (one channel or all)."""
    _, text, _ = http("GET", agent.url + "/metrics")
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("milvus_cdc_source_reconnects_total{") and task_id in line
                and (channel is None or f'channel="{channel}"' in line)):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_read_error_shown(agent, task_id, channel, words):
    """`get` and `list` both show a read error of `channel` whose message
    holds `words`, with the time it started."""
    task = get_task(agent, task_id)
    status, listed = agent.cdc({"request_type": "list"})
    assert status == 200, listed
    mine = [t for t in listed["data"]["tasks"] if t["task_id"] == task_id]
    for shown in (task, mine[0]):
        errors = [e for e in shown.get("read_errors", []) if e["channel"] == channel]
        assert errors and words in errors[0]["message"], \
            f"get/list do not report {words!r} on {channel}: {shown}"
        assert errors[0]["since_ms"] > 0, errors


# ------------------------------------------------------------ source and target

def collection(tag, prefix, shards=1):
    """(source alias, target alias, name, source Collection) of a new
    collection `{prefix}_{tag}` on the stack's source."""
    src = connect(f"{prefix}-src-{tag}", STACK["CDC_SOURCE_URI"])
    tgt = connect(f"{prefix}-tgt-{tag}", STACK["CDC_TARGET_URI"], TARGET_TOKEN)
    name = f"{prefix}_{tag}"
    coll = Collection(name, SCHEMA, using=src, shards_num=shards)
    return src, tgt, name, coll


def physical_channel(alias, name):
    return connections._fetch_handler(alias)._stub.DescribeCollection(  # noqa: SLF001
        milvus_pb2.DescribeCollectionRequest(collection_name=name)).physical_channel_names


def source_keys(alias, name):
    c = Collection(name, using=alias)
    if not c.indexes:
        c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    return keys(alias, name)


def target_rows(alias, name):
    """(distinct keys, number of rows) of the target collection, or None
    while it is not there yet."""
    try:
        t = Collection(name, using=alias)
        if not t.indexes:
            t.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        t.load()
        n = t.query("", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
        return keys(alias, name), n
    except Exception:  # noqa: BLE001 - not replicated yet
        return None


def wait_target(alias, name, want, timeout=180, agent=None):
    deadline, got = time.time() + timeout, None
    while time.time() < deadline:
        if agent is not None:
            assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        got = target_rows(alias, name)
        if got is not None and got[0] == want:
            return got
        time.sleep(1)
    missing = sorted(want - got[0])[:20] if got else "all"
    extra = sorted(got[0] - want)[:20] if got else []
    raise AssertionError(f"target never matched: missing {missing}, extra {extra}, "
                         f"agent log: {agent.log_tail() if agent else ''}")


def wait_contains(alias, name, want, agent, timeout=180):
    deadline, got = time.time() + timeout, None
    while time.time() < deadline:
        assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        got = target_rows(alias, name)
        if got is not None and want <= got[0]:
            return
        time.sleep(1)
    raise AssertionError(f"missing on the target: {sorted(want - (got[0] if got else set()))[:20]}")


def insert(coll, ids):
    coll.insert([list(ids), [[0.1, 0.2, 0.3, 0.4]] * len(ids)])


class Writer(threading.Thread):
    """Inserts batches of 10 rows every 0.3 s until stopped; keeps the keys
    the source acknowledged (and the errors, which there should be none of:
    the outage is between the agent and the broker only)."""

    def __init__(self, coll, first):
        super().__init__(daemon=True)
        self.coll, self.next = coll, first
        self.acked, self.errors = set(), []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            ids = range(self.next, self.next + 10)
            self.next += 10
            try:
                insert(self.coll, ids)
                self.acked.update(ids)
            except Exception as e:  # noqa: BLE001 - recorded, asserted later
                self.errors.append(repr(e))
            time.sleep(0.3)

    def stop(self):
        self.halt.set()
        self.join(timeout=60)


def alive_for(agent, secs):
    """Waits `secs` seconds, failing as soon as the agent exits."""
    t0 = time.time()
    while time.time() - t0 < secs:
        assert agent.proc.poll() is None, f"agent exited: {agent.log_tail()}"
        time.sleep(1)


def lines_naming(agent, offset, channel, address, *phrases):
    """The agent's log lines since `offset` that name `channel` and the
    broker `address` and hold one of `phrases`."""
    return [l for l in log_since(agent, offset).splitlines()
            if channel in l and address in l and any(p in l for p in phrases)]


@dataclass
class Outage:
    """An outage test under way: the agent's task replicates collection
    `name` (`coll` on the source alias `src`, the target alias `tgt`) whose
    `channel` had `before` reconnects when the `writer` started."""

    offset: int
    task_id: str
    src: str
    tgt: str
    name: str
    coll: Collection
    channel: str
    before: float
    writer: Writer


def start_outage_test(agent, prefix):
    """The start of an outage test: the agent started with a `*` task, 100
    rows (keys 0-99) of a new collection replicated, then a Writer from key
    1000 on."""
    offset = log_offset(agent)
    agent.start()
    task_id = create_task(agent)
    src, tgt, name, coll = collection(uuid.uuid4().hex[:8], prefix)
    channel = physical_channel(src, name)[0]
    insert(coll, range(100))
    wait_target(tgt, name, set(range(100)), agent=agent)
    before = reconnects(agent, task_id, channel)
    writer = Writer(coll, 1000)
    writer.start()
    return Outage(offset, task_id, src, tgt, name, coll, channel, before, writer)


def assert_every_row_once(agent, out):
    """After the outage (the writer stopped): the source holds exactly the
    keys it acknowledged, and the target each of them once; the agent
    reopened the channel."""
    writer = out.writer
    assert not writer.errors, writer.errors[:5]
    acked = set(range(100)) | writer.acked
    src_keys = source_keys(out.src, out.name)
    assert src_keys == acked, (sorted(src_keys - acked)[:10], sorted(acked - src_keys)[:10])
    wait_target(out.tgt, out.name, acked, agent=agent)
    # Counted again now that every key is there (wait_target's count was
    # taken before its key scan, possibly while the last rows arrived).
    got_keys, rows = target_rows(out.tgt, out.name)
    assert got_keys == acked
    assert rows == len(acked), f"{rows} rows on the target for {len(acked)} keys: duplicates"
    assert "channel reopened" in log_since(agent, out.offset), "never reopened"
