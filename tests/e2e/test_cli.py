"""The client commands (`milvus-cdc task ...` and `milvus-cdc status`) against
real agent replicas: every request of the task API through the CLI, table and
JSON output, forwarding through a follower, the status of every replica with
the leader and the lag of running tasks, and the exit codes (0 ok, 1 error
answered by the server, 2 usage, 3 server unreachable)."""

import json
import os
import re
import subprocess
import time
import uuid

import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

from conftest import BIN, STACK, TARGET_TOKEN, free_port, http, wait_collection, wait_for
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
SOURCE_TOKEN = "root:Milvus" if STACK.get("CDC_SOURCE_AUTH") == "1" else None
TARGET = STACK["CDC_TARGET_URI"]
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def cli(*args, env=None, timeout=120):
    """Runs the CLI with no MILVUS_CDC_* variable of ours leaking in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC_")}
    base.update(env or {})
    return subprocess.run([str(BIN), *args], env=base, capture_output=True, text=True,
                          timeout=timeout)


def create_args(server):
    args = ["task", "create", "--server", server, "--target-uri", TARGET,
            "--connect-timeout", "10"]
    if TARGET_TOKEN:
        args += ["--target-token", TARGET_TOKEN]
    return args


def wait_follower(agent, leader, timeout=20):
    wait_for(lambda: http("GET", agent.url + "/status", timeout=5)[1],
             f"{agent.url} following {leader.url}", timeout, interval=0.2,
             until=lambda s: s.get("role") == "follower" and s.get("leader") == leader.url)


def table_rows(text):
    """The lines of a table as lists of cells (two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_task_lifecycle_through_a_follower(agents):
    leader = agents().start()
    follower = agents().start()
    wait_follower(follower, leader)
    server = follower.url  # every request is forwarded to the leader

    r = cli(*create_args(server))
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", task_id), r.stdout

    try:
        # list: a table, then the raw answer.
        r = cli("task", "list", "--server", server)
        assert r.returncode == 0, r.stderr
        rows = table_rows(r.stdout)
        assert rows[0] == ["TASK ID", "STATE", "TARGET", "COLLECTIONS"]
        assert rows[1:] == [[task_id, "Running", TARGET, "*"]]
        r = cli("task", "list", "--server", server, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"code": 200, "data": {"tasks": [{
            "task_id": task_id,
            "milvus_connect_param": {"uri": TARGET, "connect_timeout": 10},
            "collection_infos": [{"name": "*"}],
            "state": "Running",
        }]}}
        assert "Milvus" not in r.stdout, "secrets are never shown"

        # get
        r = cli("task", "get", task_id, "--server", server)
        assert r.returncode == 0, r.stderr
        fields = dict(re.split(r":\s+", line, maxsplit=1) for line in r.stdout.splitlines())
        assert fields["task id"] == task_id
        assert fields["state"] == "Running"
        assert fields["target"] == TARGET
        assert fields["connect timeout"] == "10s"
        assert fields["collections"] == "*"
        r = cli("task", "get", task_id, "--server", server, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["data"]["Task"]["task_id"] == task_id

        # pause and resume, each twice (idempotent)
        for action, state, word in [("pause", "Paused", "paused"), ("pause", "Paused", "paused"),
                                    ("resume", "Running", "running"),
                                    ("resume", "Running", "running")]:
            r = cli("task", action, task_id, "--server", server)
            assert r.returncode == 0, (action, r.stderr)
            assert r.stdout.strip() == f"task {task_id} {word}"
            r = cli("task", "get", task_id, "--server", server, "--json")
            assert json.loads(r.stdout)["data"]["Task"]["state"] == state
        r = cli("task", "pause", task_id, "--server", server, "--json")
        assert (r.returncode, json.loads(r.stdout)) == (0, {"code": 200, "data": {}})
        r = cli("task", "resume", task_id, "--server", server)
        assert r.returncode == 0, r.stderr

        # status: both replicas, the leader, the task and its lag on the leader.
        servers = f"{leader.url},{follower.url}"
        def status():
            r = cli("status", "--server", servers, "--json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        reports = wait_for(status, f"the lag of {task_id}", 30, interval=0.5,
                           until=lambda rs: rs[0]["tasks"].get(task_id, {}).get("lag_seconds")
                           is not None)
        lag = reports[0]["tasks"][task_id]["lag_seconds"]
        assert [x["server"] for x in reports] == [leader.url, follower.url]
        assert reports[0]["status"]["role"] == "leader"
        assert reports[0]["status"]["running_tasks"] == [task_id]
        assert isinstance(reports[0]["status"]["term"], int)
        assert reports[0]["ready"] is True
        assert isinstance(lag, (int, float)) and lag >= 0, reports[0]
        assert reports[0]["tasks"][task_id]["slowest_channel"].startswith("by-dev-")
        assert reports[1]["status"]["role"] == "follower"
        assert reports[1]["status"]["leader"] == leader.url
        assert reports[1]["tasks"] == {}

        r = cli("status", "--server", servers)
        assert r.returncode == 0, r.stderr
        assert f"\nleader: {leader.url}\n" in r.stdout
        lines = r.stdout.splitlines()
        replicas = table_rows("\n".join(lines[:3]))
        assert replicas[0] == ["REPLICA", "ROLE", "READY", "LEADER", "TERM", "TASKS", "VERSION"]
        assert replicas[1][:4] == [leader.url, "leader", "yes", leader.url]
        assert replicas[1][5] == "1"
        assert replicas[2][:4] == [follower.url, "follower", "yes", leader.url]
        assert replicas[2][4:6] == ["-", "0"]
        task_line = next(line for line in lines if line.startswith(task_id))
        cells = re.split(r"\s{2,}", task_line)
        assert cells[1] == leader.url
        assert re.fullmatch(r"[0-9.]+s|\d+m\d\ds|\d+h\d\dm", cells[2]), task_line
    finally:
        r = cli("task", "delete", task_id, "--server", server)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"task {task_id} deleted"
    r = cli("task", "list", "--server", server)
    assert (r.returncode, r.stdout) == (0, "no tasks\n")
    # Deleted: get and delete now answer 404.
    for action in ["get", "delete"]:
        r = cli("task", action, task_id, "--server", server)
        assert r.returncode == 1, r.stdout
        assert "error 404" in r.stderr and task_id in r.stderr


def make_collection(alias, name, rows):
    """A loaded collection of `rows` rows on `alias`."""
    fields = [FieldSchema("pk", DataType.INT64, is_primary=True),
              FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4)]
    c = Collection(name, CollectionSchema(fields), shards_num=1, using=alias)
    c.create_index("vec", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    c.insert([list(range(rows)), [[float(k), 0.0, 0.0, 1.0] for k in range(rows)]])
    return c


def count(alias, name):
    got = Collection(name, using=alias).query("", output_fields=["count(*)"],
                                              consistency_level="Strong")
    return got[0]["count(*)"]


def wait_count(alias, name, want, timeout=180):
    wait_collection(alias, name, count, want, timeout)


def test_create_with_collection_flags_replicates_only_those(agents):
    agent = agents(extra_env={"MILVUS_CDC_HA__TAKEOVER_REPLAY": "false"}).start()
    tag = uuid.uuid4().hex[:6]
    keep, skip = f"cli_keep_{tag}", f"cli_skip_{tag}"

    # Bad selections come back as the API's 400, naming collection_infos.
    for names, words in ((["a b"], "collection_infos[0].name"),
                         (["*", keep], "cannot be combined"),
                         ([keep, f"default.{keep}"], "given twice"),
                         (["x.y.z"], "collection_infos[0].name")):
        flags = [f for n in names for f in ("--collection", n)]
        r = cli(*create_args(agent.url), *flags)
        assert r.returncode == 1, (names, r.stdout, r.stderr)
        assert r.stdout == "" and "error 400" in r.stderr and words in r.stderr, (names, r.stderr)
    r = cli("task", "list", "--server", agent.url)
    assert (r.returncode, r.stdout) == (0, "no tasks\n"), "a refused create stores nothing"

    r = cli(*create_args(agent.url), "--collection", keep, "--collection", f"other_{tag}.*")
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    src = connect(f"cli-src-{tag}", SOURCE, SOURCE_TOKEN)
    tgt = connect(f"cli-tgt-{tag}", TARGET, TARGET_TOKEN)
    try:
        r = cli("task", "get", task_id, "--server", agent.url, "--json")
        assert json.loads(r.stdout)["data"]["Task"]["collection_infos"] == [
            {"name": keep}, {"name": f"other_{tag}.*"}]
        r = cli("task", "list", "--server", agent.url)
        assert table_rows(r.stdout)[1] == [task_id, "Running", TARGET, f"{keep},other_{tag}.*"]
        # A second task over the same collection to the same target: 409.
        r = cli(*create_args(agent.url), "--collection", f"default.{keep}")
        assert r.returncode == 1 and "error 409" in r.stderr and task_id in r.stderr, r.stderr

        make_collection(src, keep, 100)
        make_collection(src, skip, 50)
        wait_count(tgt, keep, 100)
        time.sleep(5)  # the other collection's changes were read by now
        assert not utility.has_collection(skip, using=tgt)

        # position: a checkpoint per channel (once written), as the answer
        # and as a table.
        def positions_json():
            r = cli("task", "position", task_id, "--server", agent.url, "--json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["data"]["positions"]
        positions = wait_for(positions_json, "a checkpoint", 90)
        r = cli("task", "position", task_id, "--server", agent.url)
        assert r.returncode == 0, r.stderr
        rows = table_rows(r.stdout)
        assert rows[0] == ["CHANNEL", "TT", "TIME (MS)", "POSITION"], r.stdout
        assert len(rows) > 1 and all(row[0].startswith("by-dev-") and int(row[1]) > 0
                                     for row in rows[1:]), r.stdout
        assert {p["channel_name"] for p in positions} <= {row[0] for row in rows[1:]}
        r = cli("task", "position", UNKNOWN_ID, "--server", agent.url)
        assert r.returncode == 1 and "error 404" in r.stderr, r.stderr
    finally:
        cli("task", "delete", task_id, "--server", agent.url)
        for name in (keep, skip):
            for alias in (src, tgt):
                if utility.has_collection(name, using=alias):
                    utility.drop_collection(name, using=alias)


def test_exit_codes(agent):
    # 1: the server answered with an error; its code and message are printed.
    r = cli("task", "get", UNKNOWN_ID, "--server", agent.url)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "error 404" in r.stderr and UNKNOWN_ID in r.stderr
    r = cli("task", "pause", UNKNOWN_ID, "--server", agent.url, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["code"] == 404, "--json prints the error body too"
    r = cli("task", "get", "not-a-task-id", "--server", agent.url)
    assert r.returncode == 1 and "error 400" in r.stderr and "task_id" in r.stderr
    r = cli("task", "create", "--server", agent.url, "--target-uri", "http://127.0.0.1:1",
            "--connect-timeout", "2")
    assert r.returncode == 1 and "error 400" in r.stderr and "unreachable" in r.stderr

    # 3: nothing listens there.
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["task", "list"], ["task", "get", UNKNOWN_ID], ["status"]):
        r = cli(*args, "--server", dead, timeout=30)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
    r = cli("task", "list", "--server", dead)
    assert "unreachable" in r.stderr

    # 2: usage errors.
    for args in (["task", "get"],  # missing id
                 ["task", "create", "--server", agent.url],  # missing --target-uri
                 ["task", "create", "--target-uri", TARGET, "--username", "u"],  # no password
                 ["task", "create", "--target-uri", TARGET, "--target-token", "a:b",
                  "--username", "u", "--password", "p"],  # token and user conflict
                 ["task", "list", "--server", "https://127.0.0.1:8444",
                  "--cacert", "/nonexistent/ca.pem"],  # unreadable CA file
                 ["task", "create", "--target-uri", TARGET, "--collection"],  # no name
                 ["task", "position"],  # missing id
                 ["task", "frobnicate"],
                 ["status", "--server", "ftp://x"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)


def test_status_reports_unreachable_replicas_and_exits_3(agent):
    dead = f"http://127.0.0.1:{free_port()}"
    r = cli("status", "--server", f"{agent.url},{dead}", timeout=30)
    assert r.returncode == 3, r.stderr
    rows = table_rows("\n".join(r.stdout.splitlines()[:3]))
    assert rows[1][:3] == [agent.url, "leader", "yes"]
    assert rows[2][:2] == [dead, "UNREACHABLE"]
    assert f"\nleader: {agent.url}\n" in r.stdout
    assert "no task is running" in r.stdout
    assert f"error: {dead}/status unreachable" in r.stdout
    r = cli("status", "--server", f"{agent.url},{dead}", "--json", timeout=30)
    reports = json.loads(r.stdout)
    assert [x["reachable"] for x in reports] == [True, False]


def test_server_list_env_and_fallover(agent):
    dead = f"http://127.0.0.1:{free_port()}"
    # The next server is tried when the first refuses the connection.
    r = cli("task", "list", "--server", f"{dead},{agent.url}")
    assert (r.returncode, r.stdout) == (0, "no tasks\n"), r.stderr
    # MILVUS_CDC_SERVER sets the default; host:port without scheme works.
    r = cli("task", "list", env={"MILVUS_CDC_SERVER": agent.url.removeprefix("http://")})
    assert (r.returncode, r.stdout) == (0, "no tasks\n"), r.stderr
    r = cli("status", env={"MILVUS_CDC_SERVER": agent.url})
    assert r.returncode == 0 and f"leader: {agent.url}" in r.stdout


def test_compat_http_200_errors_still_exit_1(agents):
    """With server.compat_http_200 the HTTP status is 200: the JSON code decides."""
    a = agents(extra_env={"MILVUS_CDC_SERVER__COMPAT_HTTP_200": "true"}).start()
    status, body, _ = http("POST", a.url + "/cdc",
                           {"request_type": "get", "request_data": {"task_id": UNKNOWN_ID}})
    assert (status, body["code"]) == (200, 404)
    r = cli("task", "get", UNKNOWN_ID, "--server", a.url)
    assert r.returncode == 1 and "error 404" in r.stderr


@pytest.mark.parametrize("sub", [["task", "--help"], ["task", "create", "--help"],
                                 ["status", "--help"]])
def test_help_mentions_the_server_flag(sub):
    r = cli(*sub)
    assert r.returncode == 0
    assert "--server" in r.stdout or "create" in r.stdout


def test_help_lists_every_task_request_and_the_collection_flag():
    r = cli("task", "--help")
    for sub in ("create", "list", "get", "pause", "resume", "delete", "position"):
        assert re.search(rf"^\s+{sub}\s", r.stdout, re.M), (sub, r.stdout)
    r = cli("task", "create", "--help")
    assert "--collection <NAME>" in r.stdout and "db.*" in r.stdout, r.stdout
    r = cli("--help")
    assert re.search(r"^\s+promote\s", r.stdout, re.M), r.stdout
