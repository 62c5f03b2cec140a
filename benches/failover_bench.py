#!/usr/bin/env python3
"""Failover time of three milvus-cdc replicas, on the real stack (not a test).

    CDC_RUN_DIR=.run/test-stack .venv/bin/python benches/failover_bench.py \\
        [--rounds 10] [--ttl 3] [--deadline 900] [--no-workload]

Three replicas elect a leader on an etcd of their own (started here, like
tests/e2e/test_ha.py does, so the stack's etcd, which Milvus uses, is never
touched). One replication task runs, with a light insert workload on the source
unless --no-workload. Then, `--rounds` times each:

- kill -9: SIGKILL the leader; the time until a survivor's /status says
  "leader", until the task's workers run there (/status running_tasks) and,
  with the workload, until the new leader applied its first write
  (milvus_cdc_applied_messages_total);
- SIGTERM: the same after a graceful stop (final checkpoints, lease revoked).

After each round the stopped replica is started again on its port, so every
round starts from three replicas. Times are measured from just before the
signal. Prints every round and a min/median/max table.

Bounded: every wait has its own timeout, and no round starts after --deadline
(partial results are printed, exit code 1). Every process started here (agents,
etcd) is stopped on the way out, also after an error, Ctrl-C or SIGTERM.
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from conftest import STACK, Agent, create_body  # noqa: E402
from test_ha import (EtcdServer, metric, running_on, wait_leader_among,  # noqa: E402
                     wait_single_leader)
from workload import BackgroundInserts  # noqa: E402


class Deadline(Exception):
    pass


class Bench:
    def __init__(self, args):
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="failover-bench-",
                                          dir=_mkdir(REPO / ".run" / "bench")))
        self.etcd = None
        self.replicas = []
        self.every_agent = []
        self.bg = None
        self.task_id = None
        self.root = f"milvus-cdc-bench/{uuid.uuid4().hex[:12]}"
        self.t_end = time.monotonic() + args.deadline
        self.results = {}  # (mode, what) -> [seconds]

    # ------------------------------------------------------------ processes
    def agent(self, port=None):
        a = Agent(self.root, port=port, extra_env=self.etcd.agent_env(self.args.ttl),
                  log_dir=self.base / "agents")
        self.every_agent.append(a)
        return a

    def setup(self):
        self.etcd = EtcdServer(self.base / "etcd").start()
        self.replicas = [self.agent() for _ in range(3)]
        for a in self.replicas:
            a.start(wait=False)
        for a in self.replicas:
            a.wait_ready()
        lead = wait_single_leader(self.replicas, timeout=30)
        code, body = lead.cdc(create_body())
        if code != 200:
            raise RuntimeError(f"cannot create the task: {code} {body}")
        self.task_id = body["data"]["task_id"]
        if not self.args.no_workload:
            self.bg = BackgroundInserts(STACK["CDC_SOURCE_URI"], f"bench{uuid.uuid4().hex[:6]}",
                                        batch=100, pause=0.1)
            self.bg.start()
        self.wait(lambda: running_on(lead, self.task_id), 30, "task running on the leader")

    def teardown(self):
        """Stops everything started here; never raises."""
        if self.bg is not None:
            self.bg.stop_event.set()
            self.bg.join(timeout=30)
            try:
                self.bg.coll.drop()
            except Exception as e:  # best effort: the stack may be gone
                print(f"note: could not drop {self.bg.name} on the source: {e}", file=sys.stderr)
        for a in self.every_agent:
            try:
                if a.proc is not None and a.proc.poll() is None:
                    os.kill(a.proc.pid, signal.SIGCONT)
                a.stop(timeout=10)
            except Exception as e:
                print(f"note: stopping agent {a.url}: {e}", file=sys.stderr)
                if a.proc is not None and a.proc.poll() is None:
                    a.proc.kill()
        if self.etcd is not None:
            self.etcd.remove_data()

    # ------------------------------------------------------------ rounds
    @staticmethod
    def wait(check, timeout, what):
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            if check():
                return
            time.sleep(0.01)
        raise RuntimeError(f"{what}: not within {timeout}s")

    def round(self, mode):
        # A round is only started if a normal one fits before the deadline; the
        # waits inside have their own limits, so a run ends at most one slow
        # round after --deadline.
        if time.monotonic() + 2 * self.args.ttl + 10 > self.t_end:
            raise Deadline(f"--deadline {self.args.deadline:.0f}s reached")
        lead = wait_single_leader(self.replicas, timeout=30)
        survivors = [a for a in self.replicas if a is not lead]
        # Let the leader settle into steady replication before the fault.
        self.wait(lambda: running_on(lead, self.task_id), 30, "task running on the leader")
        time.sleep(self.args.settle)
        # Writes each survivor has applied so far (one may have led before).
        applied_before = {a.url: self.applied(a) for a in survivors}
        t0 = time.monotonic()
        if mode == "kill -9":
            lead.proc.send_signal(signal.SIGKILL)
        else:
            lead.proc.send_signal(signal.SIGTERM)
        new, took = wait_leader_among(survivors, t0, timeout=self.args.ttl * 3 + 10,
                                      interval=0.005)
        self.wait(lambda: running_on(new, self.task_id), 30, "task running on the new leader")
        task = time.monotonic() - t0
        write = None
        if self.bg is not None:
            self.wait(lambda: self.applied(new) > applied_before[new.url], 60,
                      "a write applied by the new leader")
            write = time.monotonic() - t0
        lead.proc.wait(timeout=30)
        if mode == "SIGTERM" and lead.proc.returncode != 0:
            raise RuntimeError(f"the terminated leader exited with {lead.proc.returncode}")
        # Back to three replicas: the stopped one comes back as a follower.
        back = self.agent(port=lead.port).start()
        self.replicas[self.replicas.index(lead)] = back
        wait_single_leader(self.replicas, timeout=30)
        self.results.setdefault((mode, "new leader"), []).append(took)
        self.results.setdefault((mode, "task running"), []).append(task)
        if write is not None:
            self.results.setdefault((mode, "first write"), []).append(write)
        return took, task, write

    def applied(self, agent):
        return metric(agent, "milvus_cdc_applied_messages_total", task_id=self.task_id) or 0

    def run(self):
        for mode in ("kill -9", "SIGTERM"):
            for i in range(self.args.rounds):
                took, task, write = self.round(mode)
                print(f"{mode:8} round {i + 1:2}: new leader {took:6.3f}s, task running "
                      f"{task:6.3f}s" + (f", first write {write:6.3f}s" if write else ""),
                      flush=True)
                if self.bg is not None and self.bg.error is not None:
                    raise RuntimeError(f"workload failed: {self.bg.error}")

    @staticmethod
    def _order(item):
        (mode, what), _ = item
        return (mode != "kill -9", ["new leader", "task running", "first write"].index(what))

    def table(self):
        rows = [("failover", "rounds", "min s", "median s", "max s")]
        for (mode, what), xs in sorted(self.results.items(), key=self._order):
            rows.append((f"{mode} -> {what}", str(len(xs)), f"{min(xs):.3f}",
                         f"{statistics.median(xs):.3f}", f"{max(xs):.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for n, r in enumerate(rows):
            lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                             for i, (c, w) in enumerate(zip(r, widths))) + " |")
            if n == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def _mkdir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def _raise_on_signal(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=10, help="rounds per mode [10]")
    p.add_argument("--ttl", type=int, default=3, help="lease TTL of the replicas, seconds [3]")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of steady replication before each fault [1]")
    p.add_argument("--deadline", type=float, default=900,
                   help="stop after this many seconds in all [900]")
    p.add_argument("--no-workload", action="store_true",
                   help="no inserts on the source during the rounds")
    args = p.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)

    bench = Bench(args)
    started = time.monotonic()
    ok = False
    try:
        bench.setup()
        print(f"3 replicas, lease TTL {args.ttl}s, one task, "
              f"{'no workload' if args.no_workload else 'insert workload on the source'}; "
              f"{os.cpu_count()} CPUs; logs in {bench.base}", flush=True)
        bench.run()
        ok = True
    except Deadline as e:
        print(f"stopped early: {e}", file=sys.stderr)
    except Exception:  # report what was measured before the failure
        traceback.print_exc()
    finally:
        bench.teardown()
    if bench.results:
        print()
        print(bench.table())
    print(f"\n{time.monotonic() - started:.0f}s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
