"""Stuck and idle Pulsar readers (issue #16), end to end.

The agent reads each Pulsar topic with a pulsar-rs consumer on a connection of
its own. A reader that receives nothing for 10 s (SILENCE_CHECK in
src/source/pulsar/mod.rs) asks the broker for its topic's newest message id on
that connection: a topic with nothing newer than what was delivered is idle
(Milvus ticks only the DML channels of live collections), anything else (newer
messages, no answer) is a stuck reader, reopened after its last sequence on a
new connection.

- Idle channels are left alone: for 35 s without writes (longer than the 30 s
  guard this replaced, which reopened every idle DML channel every 30 s) no
  channel fails and no reconnect is counted, including the channel of a
  collection dropped at the start (Milvus no longer ticks it).
- A wedged connection (TCP open, nothing passes either way: what the chaos
  run `sigstop_leader` showed, all readers of a connection silent for
  minutes) is detected and left: rows written after it arrive within 27 s
  (10 s of silence + a 3 s check + the reopen, or pulsar-rs's own keep-alive
  ping, whose failure now reaches the only consumer of the connection; the
  old shared connection with its 30 s guard could not), each exactly once,
  and every reader had a connection of its own (at least 17 wedged).

A relay in this file sits between the agent and a shim of its own in front of
the stack's pulsar-lite (Milvus keeps writing through the stack's shim); it
can wedge the connections open at a moment, new ones pass normally.

Skipped unless the stack's source is Pulsar (CDC_SOURCE_MQ=pulsar).
"""

import socket
import threading
import time
import uuid

import pytest

from conftest import SOURCE_MQ, create_task
from brokers import (collection, insert, log_offset, log_since, physical_channel, reconnects,
                     target_rows, wait_target)
from test_pulsar_faults import pulsar_env, shim  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(SOURCE_MQ != "pulsar",
                                reason="needs a Pulsar source (CDC_SOURCE_MQ=pulsar)")

SILENCE_CHECK_S = 10
CHECK_TIMEOUT_S = 3


class WedgeRelay:
    """A loopback TCP relay to `upstream_port`. `wedge()` makes every
    connection open at that moment swallow what either side sends (the
    sockets stay open: no error, no close); later connections pass."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.states = []
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            state = {"wedged": False}
            with self.lock:
                self.states.append(state)
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, state), daemon=True).start()

    @staticmethod
    def _pump(src, dst, state):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not state["wedged"]:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def wedge(self):
        """Wedges the open connections; returns how many."""
        with self.lock:
            for s in self.states:
                s["wedged"] = True
            return len(self.states)

    def close(self):
        self.closed = True
        self.server.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass


def failures(agent, offset):
    return [l for l in log_since(agent, offset).splitlines() if "channel read failed" in l]


def test_idle_channels_are_left_alone_and_a_wedged_connection_is_left_in_seconds(agents,
                                                                                shim):  # noqa: F811
    relay = WedgeRelay(shim().port)
    try:
        url = f"pulsar://127.0.0.1:{relay.port}"
        agent = agents(extra_env={**pulsar_env(url),
                                  "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": f'"{CHECK_TIMEOUT_S}s"'})
        agent.start()
        task_id = create_task(agent)
        tag = uuid.uuid4().hex[:8]
        # A collection dropped at once: Milvus stops ticking its channel
        # (unless another collection uses it), which is then idle for good.
        src, _, dropped_name, dropped = collection(tag, "pstalldrop")
        idle = physical_channel(src, dropped_name)[0]
        insert(dropped, range(10))
        dropped.drop()
        src, tgt, name, coll = collection(tag, "pstall")
        channel = physical_channel(src, name)[0]
        insert(coll, range(100))
        wait_target(tgt, name, set(range(100)), agent=agent)

        # 1. Idle: nothing is written for longer than the old 30 s guard.
        offset = log_offset(agent)
        before = reconnects(agent, task_id)
        time.sleep(35)
        assert agent.proc.poll() is None, agent.log_tail()
        assert not failures(agent, offset), failures(agent, offset)[:5]
        assert reconnects(agent, task_id) == before
        print(f"idle for 35 s: {idle} (dropped collection), test collection on {channel}")

        # 2. Every connection open now is wedged; then rows are written.
        offset = log_offset(agent)
        wedged = relay.wedge()
        # One connection per reader (16 DML channels + the replicate one).
        assert wedged >= 17, f"only {wedged} connections: readers share one"
        t0 = time.time()
        insert(coll, range(100, 200))
        wait_target(tgt, name, set(range(200)), timeout=27, agent=agent)
        took = time.time() - t0
        got_keys, rows = target_rows(tgt, name)
        assert got_keys == set(range(200))
        assert rows == 200, f"{rows} rows for 200 keys: duplicates"
        assert agent.proc.poll() is None, agent.log_tail()
        # Who noticed first depends on timing: the reader's silence check
        # (a "channel read failed ... reopening on a new connection" line),
        # or pulsar-rs's keep-alive ping (30 s), whose timeout now reaches
        # the connection's only consumer, which resubscribes by itself.
        lines = failures(agent, offset)
        assert all("reopening on a new connection" in l for l in lines), lines[:3]
        print(f"rows after the wedge arrived in {took:.1f}s; {len(lines)} reader(s) reopened, "
              f"first: {lines[0][-250:] if lines else None}; channel {channel}")
    finally:
        relay.close()
