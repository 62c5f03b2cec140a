"""Optional TLS of the HTTP API (server.tls_cert_file / tls_key_file): every
endpoint is served over HTTPS only, followers forward /cdc to the leader over
HTTPS (verifying its certificate), plain HTTP to the port fails, the CLI
works with --cacert (or, unverified and with a warning, --insecure), and
with server.api_token as well the 401 keeps the contract's shape.

The certificates are made at test time with the openssl CLI: a private CA and
a server certificate for 127.0.0.1 signed by it. The server's file holds the
certificate and the CA (a "full chain"), so the followers trust the leader
without server.tls_ca_file (the documented default)."""

import http.client
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import BIN, create_body

TOKEN = "t0ken-for-the-tls-api"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """(ca.pem, fullchain.pem, key.pem) for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=milvus-cdc test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    (d / "fullchain.pem").write_text((d / "server.pem").read_text() + (d / "ca.pem").read_text())
    return d / "ca.pem", d / "fullchain.pem", d / "key.pem"


def https(method, url, body=None, ca=None, headers=None, timeout=60):
    """(status, parsed JSON or text) of a request verified against `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            raw, status, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def start_tls(agents, certs, n, extra=None):
    """n replicas serving HTTPS (the first one wins the lease)."""
    _, chain, key = certs
    env = {"MILVUS_CDC_SERVER__TLS_CERT_FILE": str(chain),
           "MILVUS_CDC_SERVER__TLS_KEY_FILE": str(key), **(extra or {})}
    replicas = []
    for i in range(n):
        a = agents(extra_env=env)
        a.url = f"https://127.0.0.1:{a.port}"
        a.start(wait=False)
        wait_ready(a, certs[0])
        replicas.append(a)
        if i == 0:
            time.sleep(1)
    return replicas


def wait_ready(a, ca, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if a.proc.poll() is not None:
            raise AssertionError(f"agent exited with {a.proc.returncode}: {a.log_tail()}")
        try:
            if https("GET", a.url + "/readyz", ca=ca, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"agent not ready within {timeout}s: {a.log_tail()}")


def leader_and_followers(replicas, ca, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        roles = [https("GET", a.url + "/status", ca=ca, timeout=5)[1] for a in replicas]
        leaders = [a for a, s in zip(replicas, roles) if s["role"] == "leader"]
        if len(leaders) == 1 and all(s["role"] in ("leader", "follower") for s in roles):
            lead = leaders[0]
            assert all(s["leader"] == lead.url for s in roles), roles
            return lead, [a for a in replicas if a is not lead]
        time.sleep(0.5)
    raise AssertionError("no single leader")


def forwarded_ok(a, ca):
    text = https("GET", a.url + "/metrics", ca=ca)[1]
    m = re.search(r'^milvus_cdc_forwarded_requests_total\{outcome="ok"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def cli(*args, env_extra=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MILVUS_CDC")}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                          env={**base, **(env_extra or {})})


def test_three_replicas_serve_https_and_forward_to_the_leader(agents, certs):
    ca = certs[0]
    replicas = start_tls(agents, certs, 3)
    lead, followers = leader_and_followers(replicas, ca)
    assert lead.url.startswith("https://")
    follower = followers[0]
    # A create sent to a follower is forwarded to the leader over HTTPS.
    status, body, _ = https("POST", follower.url + "/cdc", create_body(), ca=ca)
    assert status == 200, body
    task_id = body["data"]["task_id"]
    assert forwarded_ok(follower, ca) == 1
    status, body, _ = https("POST", lead.url + "/cdc", {"request_type": "list"}, ca=ca)
    assert status == 200 and [t["task_id"] for t in body["data"]["tasks"]] == [task_id], body
    for a in replicas:
        assert https("GET", a.url + "/healthz", ca=ca)[0] == 200
        # Plain HTTP to the TLS port gets no HTTP answer (a TLS alert, then
        # the connection is closed).
        plain = a.url.replace("https://", "http://")
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(plain + "/healthz", timeout=5).read()
    # A client that does not trust the CA refuses the certificate.
    with pytest.raises(urllib.error.URLError) as refused:
        https("GET", follower.url + "/healthz")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value), refused.value
    # The CLI: https with --cacert works through a follower; without the CA
    # the certificate is refused (no answer, exit 3) and the reason shown.
    r = cli("task", "list", "--server", follower.url, "--cacert", str(ca), "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert [t["task_id"] for t in json.loads(r.stdout)["data"]["tasks"]] == [task_id]
    r = cli("task", "get", task_id, "--server", follower.url, "--json",
            env_extra={"MILVUS_CDC_CACERT": str(ca)})
    assert r.returncode == 0, (r.stdout, r.stderr)
    r = cli("task", "list", "--server", follower.url)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "certificate" in r.stderr.lower(), r.stderr
    # --insecure (-k) skips the verification, opt-in, with a warning.
    for flag in ("--insecure", "-k"):
        r = cli("task", "list", "--server", follower.url, flag, "--json")
        assert r.returncode == 0, (flag, r.stdout, r.stderr)
        assert [t["task_id"] for t in json.loads(r.stdout)["data"]["tasks"]] == [task_id]
        assert "warning: --insecure" in r.stderr and "not verified" in r.stderr, r.stderr
    r = cli("status", "--server", lead.url, "--insecure", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)[0]["status"]["role"] == "leader"
    assert "warning: --insecure" in r.stderr, r.stderr
    r = cli("status", "--server", ",".join(a.url for a in replicas), "--cacert", str(ca),
            "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    status, body, _ = https("POST", follower.url + "/cdc",
                            {"request_type": "delete", "request_data": {"task_id": task_id}},
                            ca=ca)
    assert status == 200, body


def test_tls_with_the_api_token_keeps_the_401_shape(agents, certs):
    ca = certs[0]
    replicas = start_tls(agents, certs, 2, extra={"MILVUS_CDC_SERVER__API_TOKEN": TOKEN})
    _, followers = leader_and_followers(replicas, ca)
    for a in replicas:
        status, body, headers = https("POST", a.url + "/cdc", {"request_type": "list"}, ca=ca)
        assert status == 401, body
        assert body["code"] == 401 and "bearer token" in body["message"], body
        assert headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = https("POST", followers[0].url + "/cdc", {"request_type": "list"}, ca=ca,
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["data"]["tasks"] == [], body
    r = cli("task", "list", "--server", followers[0].url, "--cacert", str(ca), "--json")
    assert r.returncode == 1 and "401" in r.stderr, (r.stdout, r.stderr)
    r = cli("task", "list", "--server", followers[0].url, "--cacert", str(ca), "--json",
            env_extra={"MILVUS_CDC_API_TOKEN": TOKEN})
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_a_bad_certificate_stops_the_start_with_the_files_name(agents, certs, tmp_path):
    _, chain, _ = certs
    a = agents(extra_env={"MILVUS_CDC_SERVER__TLS_CERT_FILE": str(chain),
                          "MILVUS_CDC_SERVER__TLS_KEY_FILE": str(tmp_path / "missing.pem")})
    a.start(wait=False)
    assert a.proc.wait(timeout=30) != 0
    log = a.log_tail()
    assert "server.tls_key_file" in log and "missing.pem" in log, log
    assert "panicked" not in log, log
