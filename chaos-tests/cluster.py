"""The processes the chaos suite runs and breaks: the real stack (through
scripts/stack.sh), the agents' own etcd, the delay proxy in front of it, and
the agent replicas. Every process started here is registered in `REGISTRY`
and stopped by `REGISTRY.cleanup()` (called from try/finally, atexit and the
signal handlers of run.py).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from ports import free_port_in  # noqa: E402  (tests/e2e/ports.py)

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# Ports for agents, their etcd and the delay proxy: below Linux's ephemeral
# range (32768-60999), which outgoing connections use at random, and above the
# fixed stack ports (all below 30000). Only the chaos suite uses 28000-30000.
FREE_PORT_RANGE = (28000, 29500)


def free_port(avoid=()):
    """A port nothing listens on now, chosen in FREE_PORT_RANGE."""
    return free_port_in(*FREE_PORT_RANGE, avoid=avoid)


def queue_env(stack):
    """The agent's MILVUS_CDC_SOURCE__* variables for the stack's queue."""
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


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what, check, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


# ------------------------------------------------------------------ registry

class Registry:
    """Everything to undo at exit: child processes (by process group),
    process groups left SIGSTOPped, and the stack to stop."""

    def __init__(self):
        self.lock = threading.RLock()
        self.procs = []          # objects with .kill_now()
        self.stopped_groups = set()
        self.stack = None        # Stack to stop at exit, if any
        self.done = False

    def add(self, p):
        with self.lock:
            self.procs.append(p)

    def cleanup(self):
        with self.lock:
            if self.done:
                return
            self.done = True
        for pgid in list(self.stopped_groups):
            try:
                os.killpg(pgid, signal.SIGCONT)
            except OSError:
                pass
        for p in reversed(self.procs):
            try:
                p.kill_now()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup: {e}", file=sys.stderr)
        if self.stack is not None:
            try:
                self.stack.stop()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup: stack stop: {e}", file=sys.stderr)


REGISTRY = Registry()


class Child:
    """A child process in its own process group."""

    def __init__(self, name, cmd, log_path, env=None):
        self.name, self.cmd, self.log_path = name, cmd, Path(log_path)
        self.env = env
        self.proc = None
        REGISTRY.add(self)

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as f:
            f.write(f"===== {self.name} start {time.strftime('%FT%T')} =====\n".encode())
            f.flush()
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def pause(self):
        self.send(signal.SIGSTOP)
        REGISTRY.stopped_groups.add(self.proc.pid)

    def resume(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            REGISTRY.stopped_groups.discard(self.proc.pid)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Signals and waits; SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.resume()
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(timeout=30)
        # Reap anything else left in the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        return self.proc.returncode

    def kill_now(self):
        self.stop(signal.SIGKILL, timeout=10)


# ---------------------------------------------------------------------- etcd

class Etcd(Child):
    """The agents' own single-member etcd, restartable on the same ports and
    data. Milvus keeps using the stack's etcd, so restarting this one never
    disturbs it."""

    def __init__(self, base, client_port, peer_port):
        self.base = Path(base)
        self.client_port, self.peer_port = client_port, peer_port
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        etcd_bin = os.environ.get("CDC_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
        cmd = [etcd_bin, "--name", "chaos", "--data-dir", str(self.base / "data"),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"chaos={peer}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        super().__init__("etcd", cmd, self.base / "etcd.log", env)

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.client_port}"

    def healthy(self):
        try:
            status, body = http("GET", f"http://{self.endpoint}/health", timeout=1)
        except (OSError, HTTPException):
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def start(self, timeout=30):
        super().start()
        wait_for("agents' etcd healthy", lambda: self.healthy() or
                 (not self.alive() and RuntimeError("etcd exited")), timeout, 0.1)
        if not self.alive():
            raise RuntimeError(f"etcd exited at start; see {self.log_path}")
        return self


class DelayProxy(Child):
    """delayproxy.py between the agents and their etcd."""

    def __init__(self, base, listen_port, upstream):
        self.control = Path(base) / "delay_ms"
        self.control.write_text("0")
        self.port = listen_port
        cmd = [str(PY), str(Path(__file__).with_name("delayproxy.py")),
               "--listen", f"127.0.0.1:{listen_port}", "--upstream", upstream,
               "--control", str(self.control)]
        super().__init__("delayproxy", cmd, Path(base) / "delayproxy.log")

    def start(self):
        super().start()
        wait_for("delay proxy listening", lambda: port_open(self.port), 15, 0.1)
        return self

    def set_delay(self, ms):
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(str(int(ms)))
        tmp.replace(self.control)


# -------------------------------------------------------------------- agents

METRIC_RE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {labels}, value)] of a Prometheus text exposition."""
    out = []
    for line in str(text).splitlines():
        m = METRIC_RE.match(line)
        if not m or line.startswith("#"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")), value))
    return out


class Agent(Child):
    """One `milvus-cdc serve` replica. Each (re)start logs to a new file, so
    every incarnation's log is kept for the write-term check."""

    def __init__(self, index, port, bin_path, etcd_endpoint, root, stack, log_dir, ttl_s):
        self.index, self.port = index, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = Path(log_dir)
        self.incarnation = 0
        self.logs = []
        env = {
            **os.environ,
            "MILVUS_CDC_SERVER__LISTEN": f"127.0.0.1:{port}",
            "MILVUS_CDC_SERVER__ADVERTISE": self.url,
            "MILVUS_CDC_ETCD__ENDPOINTS": json.dumps([etcd_endpoint]),
            "MILVUS_CDC_ETCD__ROOT": root,
            "MILVUS_CDC_SOURCE__MILVUS_URI": stack["CDC_SOURCE_URI"],
            **queue_env(stack),
            "MILVUS_CDC_HA__LEASE_TTL": f'"{ttl_s}s"',
            "MILVUS_CDC_LOG__LEVEL": "milvus_cdc=debug,info",
        }
        for k in [k for k in env if k.startswith("MILVUS_CDC_") and k not in (
                "MILVUS_CDC_SERVER__LISTEN", "MILVUS_CDC_SERVER__ADVERTISE",
                "MILVUS_CDC_ETCD__ENDPOINTS", "MILVUS_CDC_ETCD__ROOT",
                "MILVUS_CDC_SOURCE__MILVUS_URI", "MILVUS_CDC_SOURCE__NATS_URL",
                "MILVUS_CDC_SOURCE__MQ_TYPE", "MILVUS_CDC_SOURCE__KAFKA__BROKERS",
                "MILVUS_CDC_SOURCE__PULSAR__ADDRESS", "MILVUS_CDC_SOURCE__PULSAR__TENANT",
                "MILVUS_CDC_SOURCE__PULSAR__NAMESPACE",
                "MILVUS_CDC_HA__LEASE_TTL", "MILVUS_CDC_LOG__LEVEL")]:
            del env[k]  # nothing from the caller's environment changes the agents
        super().__init__(f"agent-{index}", [str(bin_path), "serve"], log_dir, env)

    def start(self):
        self.incarnation += 1
        self.log_path = self.log_dir / f"agent-{self.index}.{self.incarnation}.log"
        self.logs.append(self.log_path)
        wait_for(f"port {self.port} free for agent-{self.index}",
                 lambda: not port_open(self.port), 30, 0.1)
        return super().start()

    def wait_ready(self, timeout=60):
        def ready():
            if not self.alive():
                raise AssertionError(f"agent-{self.index} exited with "
                                     f"{self.proc.returncode}: {self.log_tail()}")
            try:
                return http("GET", self.url + "/readyz", timeout=2)[0] == 200
            except (OSError, HTTPException):
                return False
        wait_for(f"agent-{self.index} ready", ready, timeout, 0.1)

    def status(self, timeout=1.0):
        if not self.alive():
            return None
        try:
            code, body = http("GET", self.url + "/status", timeout=timeout)
        except (OSError, HTTPException):
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def metrics(self, timeout=3.0):
        try:
            code, text = http("GET", self.url + "/metrics", timeout=timeout)
        except (OSError, HTTPException):
            return None
        return parse_metrics(text) if code == 200 else None

    def metric(self, name, timeout=3.0, **labels):
        ms = self.metrics(timeout)
        if ms is None:
            return None
        vals = [v for n, l, v in ms if n == name and all(l.get(k) == x for k, x in labels.items())]
        return sum(vals) if vals else 0.0

    def cdc(self, body, timeout=60):
        return http("POST", self.url + "/cdc", body, timeout=timeout)

    def log_tail(self, n=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


# --------------------------------------------------------------------- stack

class Stack:
    """scripts/stack.sh with this suite's own run folder and ports."""

    def __init__(self, env):
        self.env = {**os.environ, **env}
        self.run_dir = Path(env["CDC_RUN_DIR"])
        self.started_here = False

    def sh(self, action, timeout=600, check=True):
        r = subprocess.run([str(REPO / "scripts" / "stack.sh"), action], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"scripts/stack.sh {action} failed ({r.returncode}):\n"
                               f"{r.stderr[-3000:]}")
        return r

    def status_ok(self):
        return self.sh("status", timeout=60, check=False).returncode == 0

    def start(self):
        self.sh("start")

    def stop(self):
        log(f"stopping the stack ({self.run_dir})")
        self.sh("stop", timeout=300, check=False)

    def reset(self):
        self.sh("reset", timeout=300, check=False)

    def values(self):
        out = {}
        for line in (self.run_dir / "stack.env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k] = v
        return out

    def pgid(self, part):
        """Process group of `source` or `target` (first field of its pid file)."""
        return int((self.run_dir / f"{part}.pid").read_text().split()[0])
