"""Optional bearer-token authentication of the task API: with
server.api_token set, /cdc without the token is a 401 in the contract's error
shape on every replica, followers forward the token to the leader, and the
probes and /metrics stay open. The CLI sends it with --api-token."""

import os
import subprocess
import time

from conftest import BIN, http

TOKEN = "t0ken-for-the-api"


def test_the_api_token_is_required_and_forwarded(agents):
    env = {"MILVUS_CDC_SERVER__API_TOKEN": TOKEN}
    first = agents(extra_env=env).start()
    time.sleep(1)  # the first replica wins the lease
    second = agents(extra_env=env).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for a in (first, second):
        status, body, headers = http("POST", a.url + "/cdc", {"request_type": "list"})
        assert status == 401, body
        assert body["code"] == 401 and "bearer token" in body["message"], body
        assert headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = http("POST", a.url + "/cdc", {"request_type": "list"},
                               headers={"Authorization": "Bearer wrong"})
        assert status == 401, body
        assert http("GET", a.url + "/healthz")[0] == 200
        assert http("GET", a.url + "/metrics")[0] == 200
    # Whichever replica follows forwards with the token: both answer.
    for a in (first, second):
        deadline = time.time() + 30
        while True:
            status, body, _ = http("POST", a.url + "/cdc", {"request_type": "list"},
                                   headers=auth)
            if status == 200 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert status == 200, body
        assert body["data"]["tasks"] == []
    cli = [str(BIN), "task", "list", "--server", second.url, "--json"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC")}
    r = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=base)
    assert r.returncode == 1 and "401" in r.stderr, (r.stdout, r.stderr)
    r = subprocess.run(cli, capture_output=True, text=True, timeout=60,
                       env={**base, "MILVUS_CDC_API_TOKEN": TOKEN})
    assert r.returncode == 0, (r.stdout, r.stderr)
