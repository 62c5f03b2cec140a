#!/usr/bin/env python3
"""Fault-injection suite of milvus-cdc: three real agent replicas replicate a
seeded workload from a real source Milvus 2.3.5 to a real target while faults
are injected; after each fault the target must become an exact replica again
and no two replicas may ever have written as leader at the same time.

    chaos-tests/run.sh [short|long] [scenario ...] [options]

short: every scenario once (under 10 minutes; part of scripts/test.sh).
long:  every scenario --reps times (default 10) with different seeds, in
       rounds, bounded by --max-minutes.

See chaos-tests/README.md and docs/reliability.md.
"""

import argparse
import atexit
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/e2e/writers.py: the concurrent writers (not the e2e conftest).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from cluster import (REGISTRY, REPO, Agent, DelayProxy, Etcd, Stack, free_port,  # noqa: E402
                     log, wait_for)

TTL_S = 3
TASK_CHANNELS = 17           # 16 DML channels + the replicate channel
LAG_OK_S = 3.0               # "caught up": every channel's lag below this...
LAG_STABLE_POLLS = 3         # ...on this many consecutive polls, 0.5 s apart
TARGET_TOKEN = "root:Milvus"
VERIFY_SAMPLE = 1_000_000    # compare the values of every row

SCENARIOS = ["kill9_leader", "sigstop_leader", "sigterm_leader", "kill9_follower",
             "etcd_restart", "target_restart", "source_restart", "slow_target", "etcd_delay"]

# Scenarios in which four concurrent clients also write shared keys of a
# collection of their own (the source must stay up for them: every other
# scenario). Their rows must be on the target exactly as on the source.
CONCURRENT_WRITERS = [s for s in SCENARIOS if s != "source_restart"]
# Scenarios that restart the target Milvus: differences that a release + load
# of the target collection clears are the target's fault (wait_verified).
TARGET_RESTARTS = {"target_restart"}

DESCRIPTIONS = {
    "kill9_leader": "kill -9 the leader at a random moment",
    "sigstop_leader": "SIGSTOP the leader for TTL+1..TTL+4 s, then SIGCONT",
    "sigterm_leader": "SIGTERM the leader (graceful handover)",
    "kill9_follower": "kill -9 a follower, restart it 1-3 s later",
    "etcd_restart": "kill -9 the agents' etcd, restart it 1-6 s later",
    "target_restart": "kill -9 the target Milvus process group, scripts/stack.sh start",
    "source_restart": "kill -9 the source Milvus process group, scripts/stack.sh start",
    "slow_target": "SIGSTOP the target's process group 4-6 s, then SIGCONT",
    "etcd_delay": "0.2-2 s one-way delay between agents and their etcd for 8-12 s",
}

# ------------------------------------------------------------------ helpers


def seed_for(base, scenario, rep):
    h = hashlib.sha256(f"{base}/{scenario}/{rep}".encode()).hexdigest()
    return int(h[:8], 16)


def stats3(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{min(vals):.1f} / {statistics.median(vals):.1f} / {max(vals):.1f}"


ANSI = re.compile(r"\x1b\[[0-9;]*m")
WRITE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+\w+\s+(.*?)"
    r"pipeline\{task_id=(\w+) channel=(\S+) term=(\d+)\}: [\w:]+: (batch applied|applied)(?: |$)")


def parse_ts(s):
    if "." in s:
        head, frac = s.split(".")
        s = f"{head}.{frac[:6].ljust(6, '0')}"
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp()


class WriteLog:
    """Every write a replica applied as leader (`batch applied` / `applied`
    lines in the `pipeline{... term=N}` span), merged across agents."""

    def __init__(self):
        self.offsets = {}
        self.writes = []   # (ts, term, agent, line)

    def scan(self, agents, task_id):
        for a in agents:
            for path in a.logs:
                off = self.offsets.get(path, 0)
                try:
                    with open(path, "rb") as f:
                        f.seek(off)
                        data = f.read()
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1
                self.offsets[path] = off + end
                for raw in data[:end].decode(errors="replace").splitlines():
                    m = WRITE_RE.match(ANSI.sub("", raw))
                    if m and m.group(3) == task_id:
                        self.writes.append((parse_ts(m.group(1)), int(m.group(5)),
                                            f"agent-{a.index}", raw.strip()))

    def violations(self):
        """Writes of an older term after a write of a newer term."""
        out = []
        newest = None
        for w in sorted(self.writes, key=lambda w: (w[0], w[1])):
            if newest is not None and w[1] < newest[1]:
                out.append((w, newest))
            if newest is None or w[1] > newest[1]:
                newest = w
        return out

    def terms(self, since, until):
        return sorted({w[1] for w in self.writes if since <= w[0] <= until})


class Monitor(threading.Thread):
    """Polls every replica twice a second: who leads, and the leader's lag."""

    def __init__(self, run):
        super().__init__(daemon=True, name="monitor")
        self.run_ = run
        self.stop_event = threading.Event()
        self.max_lag = 0.0
        self.max_dml_lag = 0.0
        self.max_lag_channel = None
        self.samples = []          # (monotonic, leader index or None, leader_lag() or None)
        self.multi_leader = []     # polls where two replicas said leader
        self.lock = threading.Lock()

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - keep monitoring
                log(f"monitor: {e}")
            self.stop_event.wait(0.5)

    def poll(self):
        agents = self.run_.agents
        st = [(a, a.status(timeout=0.7)) for a in agents]
        leaders = [(a, s) for a, s in st if s and s.get("role") == "leader"]
        if len(leaders) > 1:
            self.multi_leader.append((time.time(), [(a.index, s.get("term")) for a, s in leaders]))
        lag = None
        lead = None
        if len(leaders) == 1:
            lead = leaders[0][0]
            lag = self.run_.leader_lag(lead)
        with self.lock:
            self.samples.append((time.monotonic(), lead.index if lead else None, lag))
            if lag is not None:
                if lag[0] > self.max_lag:
                    self.max_lag, self.max_lag_channel = lag[0], lag[3]
                self.max_dml_lag = max(self.max_dml_lag, lag[2])

    def reset(self):
        with self.lock:
            self.max_lag = 0.0
            self.max_dml_lag = 0.0
            self.max_lag_channel = None
            self.samples = []
            self.multi_leader = []

    def stop(self):
        self.stop_event.set()
        self.join(timeout=10)


class ScenarioFailed(AssertionError):
    pass


# --------------------------------------------------------------------- run

class ChaosRun:
    def __init__(self, args):
        self.args = args
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.dir = REPO / ".run" / "chaos" / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results = []
        self.agents = []
        self.etcd = None
        self.proxy = None
        self.task_id = None
        self.writes = WriteLog()
        self.reported_violations = 0
        self.t_start = time.monotonic()
        stack_env = {
            "CDC_RUN_DIR": args.stack_dir,
            "CDC_ETCD_PORT": str(args.stack_etcd_port),
            "CDC_SOURCE_PORT": str(args.source_port),
            "CDC_NATS_PORT": str(args.nats_port),
            "CDC_SOURCE_MQ": args.source_mq,
            "CDC_TARGET_PORT": str(args.target_port),
            "CDC_TARGET_AUTH": "1",
            "CDC_SOURCE_AUTH": "0",
            "CDC_START_TIMEOUT": os.environ.get("CDC_START_TIMEOUT", "240"),
        }
        self.stack = Stack(stack_env)
        self.monitor = None

    # ---------------------------------------------------------- setup
    def setup(self):
        a = self.args
        # A private copy of the binary: others may rebuild target/debug while we run.
        src_bin = Path(a.bin)
        if not src_bin.exists():
            raise RuntimeError(f"{src_bin} not found: cargo build first")
        self.bin = self.dir / "milvus-cdc"
        shutil.copy2(src_bin, self.bin)
        self.bin_sha = hashlib.sha256(self.bin.read_bytes()).hexdigest()[:12]
        # The tree the binary was (presumably) built from: now, not at the end.
        self.commit = git_rev()
        log(f"run {self.run_id}: logs in {self.dir}; binary sha256 {self.bin_sha}")

        if self.stack.status_ok():
            log(f"reusing the running stack in {a.stack_dir}")
        else:
            if not a.reuse_stack:
                log(f"starting a fresh stack in {a.stack_dir} (scripts/stack.sh reset + start)")
                self.stack.reset()
            else:
                log(f"starting the stack in {a.stack_dir}")
            t = time.monotonic()
            self.stack.start()
            log(f"stack healthy in {time.monotonic() - t:.0f}s")
        if not (a.reuse_stack or a.keep_stack):
            REGISTRY.stack = self.stack
        self.stack_values = self.stack.values()
        self.source_uri = self.stack_values["CDC_SOURCE_URI"]
        self.target_uri = self.stack_values["CDC_TARGET_URI"]

        used = set()
        etcd_client, etcd_peer = free_port(), free_port()
        used |= {etcd_client, etcd_peer}
        self.etcd = Etcd(self.dir / "etcd", etcd_client, etcd_peer).start()
        proxy_port = free_port(used)
        used.add(proxy_port)
        self.proxy = DelayProxy(self.dir, proxy_port, self.etcd.endpoint).start()
        root = f"chaos/{self.run_id}"
        for i in range(3):
            port = free_port(used)
            used.add(port)
            self.agents.append(Agent(i, port, self.bin, f"127.0.0.1:{proxy_port}", root,
                                     self.stack_values, self.dir / "agents", TTL_S))
        for ag in self.agents:
            ag.start()
        for ag in self.agents:
            ag.wait_ready()
        lead = self.wait_single_leader(timeout=60)
        follower = next(x for x in self.agents if x is not lead)
        body = {"request_type": "create", "request_data": {
            "milvus_connect_param": {"uri": self.target_uri, "token": TARGET_TOKEN,
                                     "connect_timeout": 10},
            "collection_infos": [{"name": "*"}]}}
        code, resp = follower.cdc(body)
        if code != 200:
            raise RuntimeError(f"create task through follower agent-{follower.index}: "
                               f"{code} {resp}")
        self.task_id = resp["data"]["task_id"]
        log(f"task {self.task_id} created through follower agent-{follower.index} "
            f"(leader agent-{lead.index})")
        wait_for("the leader runs the task", lambda: self.task_running(lead), 30)
        self.monitor = Monitor(self)
        self.monitor.start()
        t = time.monotonic()
        # A new task replays the source's retained history first.
        self.wait_caught_up(timeout=a.initial_catchup)
        log(f"initial catch-up (history replay) took {time.monotonic() - t:.1f}s")

    # -------------------------------------------------------- cluster
    def task_running(self, agent):
        s = agent.status()
        return bool(s) and self.task_id in s.get("running_tasks", [])

    def single_leader(self, agents=None):
        agents = agents or [a for a in self.agents if a.alive()]
        st = [(a, a.status()) for a in agents]
        leaders = [a for a, s in st if s and s.get("role") == "leader"]
        if len(leaders) != 1:
            return None
        lead = leaders[0]
        for a, s in st:
            if a is not lead and not (s and s.get("role") == "follower"
                                      and s.get("leader") == lead.url):
                return None
        return lead

    def wait_single_leader(self, agents=None, timeout=60):
        try:
            return wait_for("a single leader that every replica follows",
                            lambda: self.single_leader(agents), timeout, 0.1)
        except AssertionError as e:
            raise ScenarioFailed(f"{e}\n{self.agent_tails()}") from None

    def wait_leader_among(self, candidates, since, timeout):
        """(agent, seconds since `since`) for the first candidate that says
        leader; polled every 20 ms."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            for a in candidates:
                s = a.status(timeout=0.3)
                if s and s.get("role") == "leader":
                    return a, time.monotonic() - since
            time.sleep(0.02)
        raise ScenarioFailed(f"no new leader within {timeout}s\n{self.agent_tails()}")

    def leader_lag(self, lead):
        """(max lag over the task's channels, channels reported) or None."""
        ms = lead.metrics(timeout=1.0)
        if ms is None:
            return None
        lags = [(v, l.get("channel", "")) for n, l, v in ms
                if n == "milvus_cdc_replication_lag_seconds" and l.get("task_id") == self.task_id]
        if not lags:
            return None
        top = max(lags)
        dml = [v for v, c in lags if "-dml_" in c]
        return top[0], len(lags), max(dml) if dml else 0.0, top[1]

    def caught_up_now(self):
        lead = self.single_leader()
        if lead is None or not self.task_running(lead):
            return False
        lag = self.leader_lag(lead)
        return bool(lag) and lag[1] >= TASK_CHANNELS and lag[0] < LAG_OK_S

    def wait_caught_up(self, timeout):
        """Seconds until the leader's lag stayed low for LAG_STABLE_POLLS polls
        (measured from the first of them)."""
        t0 = time.monotonic()
        first_ok, ok = None, 0
        last = None
        while time.monotonic() - t0 < timeout:
            if self.caught_up_now():
                ok += 1
                first_ok = first_ok or time.monotonic()
                if ok >= LAG_STABLE_POLLS:
                    return first_ok
            else:
                ok, first_ok = 0, None
                lead = self.single_leader()
                last = (lead and lead.index, lead and self.leader_lag(lead))
            time.sleep(0.5)
        raise ScenarioFailed(f"replication did not catch up within {timeout}s "
                             f"(leader, (max lag, channels)): {last}\n{self.agent_tails()}")

    def ensure_cluster(self):
        """Back to the normal state: stack healthy, etcd up without delay,
        three replicas running, one leader running the task."""
        self.proxy.set_delay(0)
        if not self.proxy.alive():
            self.proxy.start()
        if not self.etcd.alive():
            self.etcd.start()
        for part in ("source", "target"):
            try:
                os.killpg(self.stack.pgid(part), signal.SIGCONT)
            except (OSError, ValueError):
                pass
        if not self.stack.status_ok():
            log("stack not healthy: scripts/stack.sh start")
            self.stack.start()
        for a in self.agents:
            a.resume()
            if not a.alive():
                log(f"restarting agent-{a.index}")
                a.start()
        for a in self.agents:
            a.wait_ready()
        lead = self.wait_single_leader(timeout=60)
        wait_for("the leader runs the task", lambda: self.task_running(lead), 30)
        return lead

    def agent_tails(self, n=12):
        return "\n".join(f"--- agent-{a.index} ({a.log_path})\n{a.log_tail(n)}"
                         for a in self.agents)

    # ---------------------------------------------------------- verify
    def verify(self, database=None, timeout=600):
        cmd = [str(self.bin), "verify", "--source", self.source_uri, "--target",
               self.target_uri, "--target-token", TARGET_TOKEN, "--json",
               "--sample", str(VERIFY_SAMPLE)]
        for db_name in ([database] if isinstance(database, str) else database or []):
            cmd += ["--database", db_name]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        report = None
        if r.stdout.strip().startswith("{"):
            try:
                report = json.loads(r.stdout)
            except ValueError:
                pass
        return r.returncode, report, r.stderr.strip()[-2000:]

    def wait_verified(self, database, timeout, res=None):
        """Runs verify until it reports no difference and every collection's
        rows were compared. Returns (report, attempts, seconds).

        With `res` (a scenario that restarted the target), differences that
        outlast `timeout` get one more chance: the target collections they
        name are released and loaded again (the target then serves what its
        storage holds) and verify runs again. Clean then means the agent
        wrote everything right and the *target* served a wrong view of it
        (Milvus 2.3.5 after a kill -9, see docs/reliability.md): recorded in
        res["target_fault"] and the notes, not a replication failure."""
        t0 = time.monotonic()
        attempts = 0
        last = None
        reloaded = False
        while True:
            attempts += 1
            code, report, err = self.verify(database)
            uncompared = [n for n in (report or {}).get("notes", [])
                          if "rows not compared" in n]
            if code == 0 and report is not None and not uncompared:
                return report, attempts, time.monotonic() - t0
            last = (code, report and report.get("differences"), uncompared, err)
            if attempts == 1:
                self.first_verify_diff = json.dumps(last[1] or last[2] or last[3])[:600]
            if time.monotonic() - t0 > timeout and res is not None and not reloaded:
                reloaded = True
                before = json.dumps(last[1])[:1500]
                names = self.reload_target(database, last[1] or [])
                if names:
                    res["target_fault"] = {"reloaded": names, "differences_before": before,
                                           "after_s": round(time.monotonic() - t0, 1)}
                    log(f"  verify not clean after {attempts} runs; released and loaded "
                        f"{names} on the target to tell a target fault apart")
                    timeout = time.monotonic() - t0 + 60
                    continue
            if time.monotonic() - t0 > timeout:
                if reloaded and res is not None and res.get("target_fault"):
                    res["target_fault"]["clean_after_reload"] = False
                raise ScenarioFailed(f"verify not clean after {attempts} runs in "
                                     f"{timeout}s; last: exit {last[0]}, differences "
                                     f"{json.dumps(last[1])[:3000]}, notes {last[2]}, "
                                     f"stderr {last[3]}")
            time.sleep(3)

    def reload_target(self, database, differences):
        """Releases and loads again the loaded target collections that
        `differences` (verify's JSON) name; returns their names."""
        from pymilvus import Collection, utility
        from chaos_workload import connect
        names = sorted({d.get("scope", "").split(".", 1)[1] for d in differences
                        if d.get("scope", "").startswith(f"{database}.")})
        if not names:
            return []
        alias = connect("reload-tgt", self.target_uri, TARGET_TOKEN, db_name=database)
        done = []
        for name in names:
            try:
                if str(utility.load_state(name, using=alias)) != "Loaded":
                    continue
                c = Collection(name, using=alias)
                c.release()
                c.load(timeout=120)
                done.append(name)
            except Exception as e:  # noqa: BLE001 - the verify that follows tells
                log(f"  could not reload {database}.{name} on the target: {e}")
        return done

    def record_lag(self, res):
        m = self.monitor
        res["max_lag_s"] = round(m.max_lag, 2)
        res["max_dml_lag_s"] = round(m.max_dml_lag, 2)
        res["max_lag_channel"] = m.max_lag_channel

    def term_problem(self):
        """Scans the agents' logs; a description of every write of an older
        term logged after a write of a newer term not reported yet, or None.
        Called at the end of every scenario, passed or failed, so each
        violation is reported by the scenario during which it happened."""
        self.writes.scan(self.agents, self.task_id)
        v = self.writes.violations()
        new = v[self.reported_violations:]
        self.reported_violations = len(v)
        if not new:
            return None
        lines = [f"{old[2]} wrote with term {old[1]} at "
                 f"{dt.datetime.fromtimestamp(old[0], dt.timezone.utc):%H:%M:%S.%f}, "
                 f"{old[0] - newer[0]:.2f}s after {newer[2]} wrote with term {newer[1]} "
                 f"[{old[3][:200]}]" for old, newer in new[:5]]
        return (f"two working leaders: {len(new)} write(s) of an older term after a write of "
                f"a newer term: " + " | ".join(lines))

    # -------------------------------------------------------- scenarios
    def run_scenario(self, name, rep, seed):
        from chaos_workload import ChaosWorkload, connect, disconnect_all

        prof = self.args.timing
        rng = random.Random(seed)
        tag = f"{name[:12]}_{rep}_{seed % 100000}"
        res = {"scenario": name, "rep": rep, "seed": seed, "ok": False, "notes": [],
               "new_leader_s": None, "caught_up_s": None, "max_lag_s": None, "rows": 0}
        log(f"=== {name} #{rep} (seed {seed}): {DESCRIPTIONS[name]}")
        t_begin = time.time()
        t_mono0 = time.monotonic()
        wl = None
        cw = None
        try:
            self.ensure_cluster()
            # Start from a caught-up replica, so the lag measured below is
            # this scenario's (the previous one ends with DDL: its drops).
            self.wait_caught_up(timeout=self.args.recovery_timeout)
            self.monitor.reset()
            t_mono0 = time.monotonic()
            wl = ChaosWorkload(self.source_uri, tag, seed, max_keys=prof["max_keys"],
                               log=lambda m: log(m))
            wl.setup()
            if name in CONCURRENT_WRITERS:
                from writers import ConcurrentWriters, create_collection
                create_collection(self.source_uri, "concurrent", 2, db_name=wl.db)
                wl.others.add("concurrent")  # compared row by row below
                cw = ConcurrentWriters(self.source_uri, "concurrent", clients=4, rounds=10**6,
                                       upserts=20, inserts=10, deletes=3, seed=seed,
                                       pause=0.2, db_name=wl.db).start()
            wl.start()
            time.sleep(rng.uniform(*prof["warmup"]))
            if wl.error:
                raise ScenarioFailed(f"workload failed before the fault: {wl.error}")
            fault = getattr(self, "fault_" + name)
            t_fault, extra = fault(rng, res)
            res["fault_at_s"] = round(t_fault - t_mono0, 1)
            caught = self.wait_caught_up(timeout=self.args.recovery_timeout)
            res["caught_up_s"] = caught - t_fault
            log(f"  caught up {res['caught_up_s']:.1f}s after the fault")
            time.sleep(rng.uniform(*prof["after"]))
            wl.stop()
            if cw is not None:
                cw.stop()
                if cw.errors:
                    raise ScenarioFailed(f"concurrent writers failed: {cw.errors}")
            if wl.error:
                raise ScenarioFailed(f"workload failed: {wl.error!r}")
            wl.finish()
            res["rows"] = wl.stats["rows"]
            log(f"  workload: {wl.summary()}")
            self.wait_caught_up(timeout=self.args.recovery_timeout)
            report, attempts, took = self.wait_verified(
                wl.db, timeout=prof["converge"],
                res=res if name in TARGET_RESTARTS else None)
            if res.get("target_fault"):
                res["target_fault"]["clean_after_reload"] = True
                res["notes"].append(
                    "TARGET FAULT: verify differed until the target collections "
                    f"{res['target_fault']['reloaded']} were released and loaded again (the "
                    "target's storage was exact, its serving view was not): a Milvus fault "
                    "after its restart, not replication")
            res["verify"] = {"attempts": attempts, "seconds": round(took, 1),
                             "rows_compared": report["rows_compared"],
                             "collections": report["collections"]}
            if attempts > 1:
                res["verify"]["first_run_differences"] = self.first_verify_diff
            log(f"  verify clean: {report['collections']} collections, "
                f"{report['rows_compared']} rows compared ({attempts} run(s), {took:.1f}s)")
            # Read both sides with pymilvus too, against the workload's model.
            src = connect(f"chk-src-{tag}", self.source_uri, None, db_name=wl.db)
            tgt = connect(f"chk-tgt-{tag}", self.target_uri, TARGET_TOKEN, db_name=wl.db)
            problems = wl.compare(src, "source")
            if problems:
                raise ScenarioFailed("the SOURCE does not hold what the workload wrote (a "
                                     "source Milvus problem, not replication): "
                                     + "; ".join(problems))
            problems = wl.compare(tgt, "target")
            if problems:
                raise ScenarioFailed("model check of the target: " + "; ".join(problems))
            if cw is not None:
                from writers import wait_equal
                rows = wait_equal(self.source_uri, self.target_uri, "concurrent", TARGET_TOKEN,
                                  timeout=prof["converge"], db_name=wl.db)
                res["concurrent_rows"] = len(rows)
                res["concurrent_requests"] = cw.requests
                log(f"  concurrent writers: {cw.requests} requests, {len(rows)} rows equal "
                    "on both sides")
            self.record_lag(res)
            problem = self.term_problem()
            if problem:
                raise ScenarioFailed(problem)
            res["terms"] = self.writes.terms(t_begin, time.time())
            if extra:
                extra()
            res["ok"] = True
            try:
                wl.drop_database()
            except Exception as e:  # noqa: BLE001 - hygiene only; the next scenario is independent
                res["notes"].append(f"could not drop database {wl.db}: {e}")
            disconnect_all("chk-")
            log(f"  PASS {name} #{rep}: new leader {res['new_leader_s']}, caught up "
                f"{res['caught_up_s']:.1f}s, max lag {res['max_lag_s']}s, rows {res['rows']}")
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            res["error"] = f"{type(e).__name__}: {e}"
            res["traceback"] = traceback.format_exc()
            try:
                problem = self.term_problem()
            except Exception as e2:  # noqa: BLE001
                problem = f"term check failed: {e2}"
            if problem:
                res["error"] += f" -- and {problem}"
            if cw is not None:
                cw._stop.set()  # its threads end after their current request
            if wl is not None:
                res["rows"] = wl.stats["rows"]
                if wl.is_alive():
                    wl.stop_event.set()
                    wl.join(timeout=60)
            if self.monitor:
                self.record_lag(res)
            log(f"  FAIL {name} #{rep}: {res['error'][:4000]}")
            if wl is not None:
                res["notes"].append(f"database {wl.db} kept for inspection")
        res["seconds"] = round(time.time() - t_begin, 1)
        res["multi_leader_polls"] = len(self.monitor.multi_leader)
        with self.monitor.lock:
            res["lag_timeline"] = [[round(t - t_mono0, 1), i, lag and round(lag[0], 2),
                                    lag and round(lag[2], 2), lag and lag[3]]
                                   for t, i, lag in self.monitor.samples]
        self.results.append(res)
        self.save_results()
        return res

    # ------------------------------------------------------------ faults
    # Each returns (monotonic time of the fault, optional post-check) and
    # fills res (new_leader_s, notes).

    def fault_kill9_leader(self, rng, res):
        lead = self.wait_single_leader()
        survivors = [a for a in self.agents if a is not lead]
        t0 = time.monotonic()
        lead.send(signal.SIGKILL)
        new, took = self.wait_leader_among(survivors, t0, TTL_S + 20)
        res["new_leader_s"] = round(took, 2)
        log(f"  kill -9 agent-{lead.index} (leader): agent-{new.index} leads after {took:.2f}s")
        lead.proc.wait(timeout=30)
        lead.start()
        return t0, None

    def fault_sigstop_leader(self, rng, res):
        lead = self.wait_single_leader()
        survivors = [a for a in self.agents if a is not lead]
        term_before = lead.status()["term"]
        refusals_before = lead.metric("milvus_cdc_fencing_refusals_total") or 0
        pause = rng.uniform(TTL_S + 1, TTL_S + 4)
        t0 = time.monotonic()
        lead.pause()
        try:
            new, took = self.wait_leader_among(survivors, t0, TTL_S + 20)
            res["new_leader_s"] = round(took, 2)
            new_term = new.status()["term"]
            if not new_term or new_term <= term_before:
                raise ScenarioFailed(f"new term {new_term} not above {term_before}")
            wait_for("the new leader runs the task", lambda: self.task_running(new), 20)
            time.sleep(max(0.0, t0 + max(pause, took + 1.0) - time.monotonic()))
        finally:
            lead.resume()
        paused_for = time.monotonic() - t0
        log(f"  SIGSTOP agent-{lead.index} (leader, term {term_before}) for {paused_for:.1f}s: "
            f"agent-{new.index} leads after {took:.2f}s (term {new_term})")

        def refused():
            v = lead.metric("milvus_cdc_fencing_refusals_total")
            return v is not None and v > refusals_before and v
        try:
            n = wait_for("the resumed leader counts refused writes", refused, 20, 0.2)
        except AssertionError:
            n = lead.metric("milvus_cdc_fencing_refusals_total")
            raise ScenarioFailed(f"milvus_cdc_fencing_refusals_total on the resumed leader "
                                 f"agent-{lead.index} stayed at {n} (expected > "
                                 f"{refusals_before})\n{lead.log_tail(40)}") from None
        res["fencing_refusals"] = n - refusals_before
        res["notes"].append(f"paused {paused_for:.1f}s; fencing refusals "
                            f"{n - refusals_before:.0f}")
        wait_for("the resumed leader follows the new one",
                 lambda: (lead.status() or {}).get("role") == "follower", 20)
        return t0, None

    def fault_sigterm_leader(self, rng, res):
        lead = self.wait_single_leader()
        survivors = [a for a in self.agents if a is not lead]
        t0 = time.monotonic()
        lead.send(signal.SIGTERM)
        new, took = self.wait_leader_among(survivors, t0, TTL_S + 20)
        res["new_leader_s"] = round(took, 2)
        code = lead.proc.wait(timeout=60)
        log(f"  SIGTERM agent-{lead.index} (leader): agent-{new.index} leads after "
            f"{took:.2f}s; old leader exited with {code}")
        if code != 0:
            raise ScenarioFailed(f"terminated leader exited with {code}\n{lead.log_tail(30)}")
        text = lead.log_path.read_text(errors="replace")
        if "task workers stopped after a final checkpoint" not in text:
            res["notes"].append("old leader logged no final checkpoint")
        lead.start()
        return t0, None

    def fault_kill9_follower(self, rng, res):
        lead = self.wait_single_leader()
        term = lead.status()["term"]
        victim = rng.choice([a for a in self.agents if a is not lead])
        t0 = time.monotonic()
        victim.send(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        time.sleep(rng.uniform(1, 3))
        victim.start()
        victim.wait_ready()
        now = self.wait_single_leader()
        log(f"  kill -9 agent-{victim.index} (follower), restarted; leader agent-{now.index}")
        if now is not lead or now.status()["term"] != term:
            raise ScenarioFailed(f"killing a follower changed the leader: agent-{lead.index} "
                                 f"term {term} -> agent-{now.index} term {now.status()['term']}")
        return t0, None

    def fault_etcd_restart(self, rng, res):
        lead = self.wait_single_leader()
        term = lead.status()["term"]
        down = rng.uniform(1, 6)
        t0 = time.monotonic()
        self.etcd.send(signal.SIGKILL)
        self.etcd.proc.wait(timeout=30)
        time.sleep(down)
        self.etcd.start()
        lead2 = self.wait_single_leader(timeout=90)
        took = time.monotonic() - t0
        res["new_leader_s"] = round(took, 2)
        term2 = lead2.status()["term"]
        res["notes"].append(f"etcd down {down:.1f}s; leader agent-{lead.index} term {term} -> "
                            f"agent-{lead2.index} term {term2}")
        log(f"  kill -9 agents' etcd, down {down:.1f}s: single leader agent-{lead2.index} "
            f"(term {term2}) {took:.2f}s after the kill")
        return t0, None

    def _kill_milvus(self, part):
        pgid = self.stack.pgid(part)
        os.killpg(pgid, signal.SIGKILL)

        def gone():
            try:
                os.killpg(pgid, 0)
                return False
            except ProcessLookupError:
                return True
        # Zombies whose parent is gone count as gone (stack.sh does the same).
        try:
            wait_for(f"{part} process group gone", gone, 30, 0.1)
        except AssertionError:
            pass

    def _restart_milvus(self, part, res):
        t0 = time.monotonic()
        self._kill_milvus(part)
        t_kill = time.monotonic()
        self.stack.start()
        took = time.monotonic() - t_kill
        res["notes"].append(f"{part} restarted in {took:.0f}s")
        log(f"  kill -9 {part} Milvus, scripts/stack.sh start: healthy after {took:.1f}s")
        return t0, None

    def fault_target_restart(self, rng, res):
        return self._restart_milvus("target", res)

    def fault_source_restart(self, rng, res):
        return self._restart_milvus("source", res)

    def fault_slow_target(self, rng, res):
        pgid = self.stack.pgid("target")
        hold = rng.uniform(4, 6)
        t0 = time.monotonic()
        os.killpg(pgid, signal.SIGSTOP)
        REGISTRY.stopped_groups.add(pgid)
        try:
            time.sleep(hold)
        finally:
            os.killpg(pgid, signal.SIGCONT)
            REGISTRY.stopped_groups.discard(pgid)
        res["notes"].append(f"target stopped {hold:.1f}s")
        log(f"  SIGSTOP target Milvus for {hold:.1f}s, SIGCONT")
        return t0, None

    def fault_etcd_delay(self, rng, res):
        lead = self.wait_single_leader()
        term = lead.status()["term"]
        delay = rng.uniform(200, 2000)
        hold = rng.uniform(8, 12)
        t0 = time.monotonic()
        self.proxy.set_delay(delay)
        time.sleep(hold)
        self.proxy.set_delay(0)
        lead2 = self.wait_single_leader(timeout=90)
        term2 = lead2.status()["term"]
        changed = term2 != term
        if changed:
            res["new_leader_s"] = round(time.monotonic() - t0, 2)
        res["notes"].append(f"delay {delay:.0f} ms one way for {hold:.1f}s; leader "
                            f"{'changed' if changed else 'kept'} (term {term} -> {term2})")
        log(f"  etcd delay {delay:.0f} ms for {hold:.1f}s: leader agent-{lead2.index} "
            f"term {term2} ({'changed' if changed else 'unchanged'})")
        return t0, None

    # ---------------------------------------------------------- final
    def final_verify(self):
        res = {"scenario": "final: whole cluster", "rep": 1, "seed": None, "ok": False,
               "notes": [], "new_leader_s": None, "caught_up_s": None, "max_lag_s": None,
               "rows": 0}
        t = time.time()
        try:
            self.ensure_cluster()
            self.wait_caught_up(timeout=self.args.recovery_timeout)
            # Every database of either side, except those of failed scenarios
            # (already reported; kept for inspection).
            from pymilvus import db as pdb
            from chaos_workload import connect
            kept = {f"chaos_{n.split('database chaos_', 1)[1].split(' ')[0]}"
                    for r in self.results for n in r.get("notes", [])
                    if n.startswith("database chaos_")}
            dbs = set(pdb.list_database(using=connect("final-src", self.source_uri)))
            dbs |= set(pdb.list_database(using=connect("final-tgt", self.target_uri,
                                                       TARGET_TOKEN)))
            todo = sorted(dbs - kept)
            if kept:
                res["notes"].append(f"not compared: databases of failed scenarios "
                                    f"{sorted(kept)}")
            report, attempts, took = self.wait_verified(todo, timeout=120)
            self.writes.scan(self.agents, self.task_id)
            v = self.writes.violations()
            if v:
                raise ScenarioFailed(f"{len(v)} write(s) of an older term after a newer one "
                                     f"over the run (reported by their scenarios)")
            res["ok"] = True
            res["verify"] = {"attempts": attempts, "seconds": round(took, 1),
                             "rows_compared": report["rows_compared"],
                             "collections": report["collections"]}
            res["notes"].append(f"{report['collections']} collections, "
                                f"{report['rows_compared']} rows compared; "
                                f"{len(self.writes.writes)} leader writes checked, terms "
                                f"{sorted({w[1] for w in self.writes.writes})[:3]}..."
                                f"{sorted({w[1] for w in self.writes.writes})[-1:]}")
            log(f"final verify of the whole cluster clean ({report['collections']} collections)")
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}"
            log(f"FAIL final verify: {res['error'][:3000]}")
        res["seconds"] = round(time.time() - t, 1)
        self.results.append(res)
        self.save_results()

    def save_results(self, note=""):
        if not hasattr(self, "commit"):
            self.commit = git_rev()
        (self.dir / "results.json").write_text(json.dumps({
            "run_id": self.run_id, "profile": self.args.profile, "seed": self.args.seed,
            "binary_sha256": getattr(self, "bin_sha", None), "commit": self.commit,
            "elapsed_s": round(time.monotonic() - self.t_start), "note": note,
            "finished": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            "results": self.results,
        }, indent=2, default=str))

    # ---------------------------------------------------------- report
    def table(self):
        rows = ["| scenario | runs | passed | new leader after fault, s (min / median / max) | "
                "caught up after fault, s (min / median / max) | max lag seen, s (any channel / DML "
                "channels) | rows written | "
                "result |", "|---|---|---|---|---|---|---|---|"]
        names = [s for s in SCENARIOS if any(r["scenario"] == s for r in self.results)]
        names += [r["scenario"] for r in self.results if r["scenario"] not in SCENARIOS]
        for s in dict.fromkeys(names):
            rs = [r for r in self.results if r["scenario"] == s]
            ok = sum(r["ok"] for r in rs)
            lags = [r["max_lag_s"] for r in rs if r["max_lag_s"] is not None]
            dml = [r["max_dml_lag_s"] for r in rs if r.get("max_dml_lag_s") is not None]
            rows.append(
                f"| {s} | {len(rs)} | {ok} | {stats3([r['new_leader_s'] for r in rs])} | "
                f"{stats3([r['caught_up_s'] for r in rs])} | "
                f"{max(lags) if lags else '-'} / {max(dml) if dml else '-'} | "
                f"{sum(r['rows'] for r in rs)} | "
                f"{'PASS' if ok == len(rs) else 'FAIL'}{target_faults(rs)} |")
        return "\n".join(rows)

    def details(self):
        out = []
        for r in self.results:
            line = (f"- `{r['scenario']}` #{r['rep']} seed {r['seed']}: "
                    f"{'pass' if r['ok'] else 'FAIL'} in {r.get('seconds')}s")
            if r.get("new_leader_s") is not None:
                line += f"; new leader {r['new_leader_s']}s"
            if r.get("caught_up_s") is not None:
                line += f"; caught up {r['caught_up_s']:.1f}s"
            if r.get("max_lag_s") is not None:
                line += (f"; max lag {r['max_lag_s']}s ({r.get('max_lag_channel')}), DML "
                         f"{r.get('max_dml_lag_s')}s")
            if r.get("verify"):
                v = r["verify"]
                line += (f"; verify {v['rows_compared']} rows / {v['collections']} collections "
                         f"({v['attempts']} run(s))")
            if r.get("terms"):
                line += f"; leader terms {r['terms']}"
            if r.get("multi_leader_polls"):
                line += (f"; {r['multi_leader_polls']} status poll(s) where two replicas said "
                         f"leader")
            if r.get("notes"):
                line += "; " + "; ".join(r["notes"])
            if r.get("error"):
                line += f"\n  - error: `{r['error'][:600]}`"
            out.append(line)
        return "\n".join(out)

    def summary_md(self, elapsed, note=""):
        a = self.args
        head = (f"Run `{self.run_id}`, profile `{a.profile}`, base seed {a.seed}, "
                f"{len([r for r in self.results if r['seed'] is not None])} scenario runs in "
                f"{elapsed / 60:.1f} min, binary sha256 `{getattr(self, 'bin_sha', '?')}` "
                f"(built at commit {getattr(self, 'commit', '?')}), "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
        if note:
            head += f" {note}"
        return f"{head}\n\n{self.table()}\n\n<details><summary>every run</summary>\n\n" \
               f"{self.details()}\n\n</details>\n"


def merged_report(run_ids, profile, write):
    """Table and details of several runs' results.json together (e.g. a long
    profile run in chunks, or one that was interrupted and run again)."""
    runs = []
    for rid in run_ids:
        path = REPO / ".run" / "chaos" / rid / "results.json"
        runs.append(json.loads(path.read_text()))
    results = [r for run in runs for r in run["results"]]
    view = argparse.Namespace(results=results)
    n = len([r for r in results if r["seed"] is not None])
    lines = [f"Combined from {len(runs)} run(s), {n} scenario runs in "
             f"{sum(run.get('elapsed_s', 0) for run in runs) / 60:.0f} min:", ""]
    for run in runs:
        k = len([r for r in run["results"] if r["seed"] is not None])
        lines.append(f"- `{run['run_id']}`: profile `{run['profile']}`, base seed {run['seed']}, "
                     f"{k} scenario runs in {run.get('elapsed_s', 0) / 60:.0f} min, binary "
                     f"sha256 `{run.get('binary_sha256')}` (built at commit {run.get('commit', '?')}), "
                     f"{run.get('finished', '?')}. {run.get('note') or ''}".rstrip())
    md = ("\n".join(lines) + f"\n\n{ChaosRun.table(view)}\n\n<details><summary>every run"
          f"</summary>\n\n{ChaosRun.details(view)}\n\n</details>\n")
    print(md)
    if write:
        write_doc(profile, md)
        log("results written to docs/reliability.md")
    return all(r["ok"] for r in results)


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_doc(profile, text):
    """Replaces this profile's results section of docs/reliability.md."""
    doc = REPO / "docs" / "reliability.md"
    begin, end = f"<!-- chaos-results:{profile}:begin -->", f"<!-- chaos-results:{profile}:end -->"
    block = f"{begin}\n{text}{end}"
    content = doc.read_text() if doc.exists() else "# Reliability\n"
    if begin in content and end in content:
        pre, rest = content.split(begin, 1)
        post = rest.split(end, 1)[1]
        content = pre + block + post
    else:
        content = content.rstrip("\n") + f"\n\n### Latest `{profile}` run\n\n{block}\n"
    doc.write_text(content)


PROFILES = {
    "short": {"reps": 1, "warmup": (2.0, 4.0), "after": (1.5, 2.5), "converge": 90,
              "max_keys": 12000,
              "max_minutes": 20, "seed": 1},
    "long": {"reps": 10, "warmup": (2.0, 7.0), "after": (2.0, 5.0), "converge": 120,
             "max_keys": 30000,
             "max_minutes": 240, "seed": None},
}


def target_faults(rs):
    """The result column's mark of results whose differences only a release
    and load of the target collections cleared (empty if none)."""
    n = sum(1 for r in rs if (r.get("target_fault") or {}).get("clean_after_reload"))
    return f" ({n} target fault{'s' if n > 1 else ''})" if n else ""


def main():
    ap = argparse.ArgumentParser(description="milvus-cdc fault-injection suite",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="scenarios: " + ", ".join(SCENARIOS))
    ap.add_argument("profile", nargs="?", default="short", choices=sorted(PROFILES))
    ap.add_argument("scenarios", nargs="*", help="only these scenarios (default: all)")
    ap.add_argument("--reps", type=int, help="repetitions per scenario (short 1, long 10)")
    ap.add_argument("--seed", type=int, help="base seed (short: 1; long: from the clock)")
    ap.add_argument("--max-minutes", type=float,
                    help="start no new scenario after this (short 20, long 240)")
    ap.add_argument("--reuse-stack", action="store_true",
                    help="use the stack as it is (no reset) and leave it running")
    ap.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    ap.add_argument("--bin", default=os.environ.get("CDC_BIN",
                                                    str(REPO / "target/debug/milvus-cdc")))
    ap.add_argument("--stack-dir", default=os.environ.get(
        "CHAOS_RUN_DIR", str(REPO / ".run" / "chaos-stack")))
    ap.add_argument("--stack-etcd-port", type=int, default=int(os.environ.get(
        "CHAOS_ETCD_PORT", 22379)))
    ap.add_argument("--source-port", type=int, default=int(os.environ.get(
        "CHAOS_SOURCE_PORT", 25530)))
    ap.add_argument("--source-mq", choices=["natsmq", "kafka", "pulsar"],
                    default=os.environ.get("CHAOS_SOURCE_MQ", "natsmq"),
                    help="the source Milvus's queue (kafka: on a tansu broker, which takes "
                         "the natsmq port; pulsar: on pulsar-lite behind scripts/pulsar_shim.py, "
                         "which takes the natsmq port, pulsar-lite the next two)")
    ap.add_argument("--nats-port", type=int, default=int(os.environ.get(
        "CHAOS_NATS_PORT", 24222)))
    ap.add_argument("--target-port", type=int, default=int(os.environ.get(
        "CHAOS_TARGET_PORT", 25540)))
    ap.add_argument("--recovery-timeout", type=float, default=240,
                    help="seconds allowed to catch up after a fault")
    ap.add_argument("--initial-catchup", type=float, default=900,
                    help="seconds allowed for the new task's replay of the source history")
    ap.add_argument("--report-from", nargs="+", metavar="RUN_ID",
                    help="run nothing: print (and write to docs/reliability.md under the "
                         "profile's section) the combined results of these earlier runs "
                         "(.run/chaos/<RUN_ID>/results.json)")
    args = ap.parse_args()
    if args.report_from:
        sys.exit(0 if merged_report(args.report_from, args.profile, not args.no_doc) else 1)
    prof = PROFILES[args.profile]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    args.reps = args.reps or prof["reps"]
    args.seed = args.seed if args.seed is not None else (prof["seed"] or int(time.time()) % 100000)
    args.max_minutes = args.max_minutes or prof["max_minutes"]
    args.timing = prof
    chosen = args.scenarios or SCENARIOS

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(REGISTRY.cleanup)

    run = ChaosRun(args)
    note = ""
    try:
        run.setup()
        deadline = run.t_start + args.max_minutes * 60
        plan = [(s, rep) for rep in range(1, args.reps + 1) for s in chosen]
        for i, (s, rep) in enumerate(plan):
            if time.monotonic() > deadline:
                left = len(plan) - i
                note = (f"Time budget of {args.max_minutes:.0f} min reached: {left} of "
                        f"{len(plan)} planned scenario runs not started.")
                log(note)
                break
            run.run_scenario(s, rep, seed_for(args.seed, s, rep))
        run.final_verify()
    except SystemExit as e:
        note = f"Interrupted (exit {e.code})."
        log(note)
        raise
    except Exception as e:  # noqa: BLE001
        note = f"Setup failed: {type(e).__name__}: {e}"
        log(note)
        traceback.print_exc()
        run.results.append({"scenario": "setup", "rep": 1, "seed": None, "ok": False,
                            "notes": [], "new_leader_s": None, "caught_up_s": None,
                            "max_lag_s": None, "rows": 0, "error": str(e)})
    finally:
        elapsed = time.monotonic() - run.t_start
        if run.monitor:
            run.monitor.stop()
        REGISTRY.cleanup()
        if run.results:
            md = run.summary_md(elapsed, note)
            print("\n" + md)
            run.save_results(note)
            if not args.no_doc:
                write_doc(args.profile, md)
                log("results written to docs/reliability.md")
        log(f"logs and results.json in {run.dir}")
    failed = [r for r in run.results if not r["ok"]]
    if failed or note.startswith(("Setup", "Interrupted")):
        log(f"{len(failed)} failed: " + ", ".join(f"{r['scenario']}#{r['rep']}" for r in failed))
        sys.exit(1)
    log(f"all {len(run.results)} passed in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
