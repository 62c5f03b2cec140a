"""A corpus of bad /cdc bodies: each gets a 4xx JSON error, never a 5xx, a
panic or a hang, and the store is unchanged afterwards (read from etcd)."""

import http.client
import json

import pytest

import uuid

from conftest import TARGET_TOKEN, Agent, etcd_get_prefix, target_param
from conftest import http as http_call

ID = "0123456789abcdef0123456789abcdef"
# A password that must never appear in an answer or in the agent's log.
SECRET = "Sup3r-S3cret-pw"


def create(param=None, infos=None, **extra):
    data = {"milvus_connect_param": target_param() if param is None else param,
            "collection_infos": [{"name": "*"}] if infos is None else infos}
    data.update(extra)
    return json.dumps({"request_type": "create", "request_data": data}).encode()


def raw(obj):
    return json.dumps(obj).encode()


CORPUS = {
    # malformed JSON and wrong top-level shapes
    "empty": b"",
    "whitespace": b"   \n ",
    "truncated": b'{"request_type": "list"',
    "trailing_garbage": b'{"request_type": "list"} xyz',
    "single_quotes": b"{'request_type': 'list'}",
    "not_json": b"request_type=list",
    "array": b"[]",
    "string": b'"list"',
    "number": b"42",
    "null": b"null",
    "non_utf8": b'{"request_type": "\xff\xfe"}',
    "nul_bytes": b'{"request_type": "li\x00st"}',
    "deep_nesting_arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep_nesting_in_data": b'{"request_type":"list","request_data":' + b'{"a":' * 5000
                            + b"1" + b"}" * 5000 + b"}",
    # request_type problems
    "missing_request_type": raw({"request_data": {}}),
    "null_request_type": raw({"request_type": None}),
    "numeric_request_type": raw({"request_type": 1}),
    "bool_request_type": raw({"request_type": True}),
    "object_request_type": raw({"request_type": {"x": 1}}),
    "unknown_request_type": raw({"request_type": "explode"}),
    "uppercase_request_type": raw({"request_type": "LIST"}),
    "long_request_type": raw({"request_type": "x" * 100_000}),
    "extra_top_level_field": raw({"request_type": "list", "debug": True}),
    # request_data problems
    "list_with_data": raw({"request_type": "list", "request_data": {"task_id": ID}}),
    "get_without_data": raw({"request_type": "get"}),
    "get_null_data": raw({"request_type": "get", "request_data": None}),
    "get_array_data": raw({"request_type": "get", "request_data": [ID]}),
    "get_string_data": raw({"request_type": "get", "request_data": ID}),
    "get_missing_task_id": raw({"request_type": "get", "request_data": {}}),
    "get_numeric_task_id": raw({"request_type": "get", "request_data": {"task_id": 5}}),
    "get_null_task_id": raw({"request_type": "get", "request_data": {"task_id": None}}),
    "get_short_task_id": raw({"request_type": "get", "request_data": {"task_id": "abc"}}),
    "get_path_task_id": raw({"request_type": "get", "request_data": {"task_id": "../" * 11}}),
    "pause_long_task_id": raw({"request_type": "pause", "request_data": {"task_id": "a" * (10**6 // 2)}}),
    "resume_extra_field": raw({"request_type": "resume", "request_data": {"task_id": ID, "x": 1}}),
    "delete_wildcard": raw({"request_type": "delete", "request_data": {"task_id": "*"}}),
    # create problems
    "create_no_data": raw({"request_type": "create"}),
    "create_empty_data": raw({"request_type": "create", "request_data": {}}),
    "create_missing_param": raw({"request_type": "create",
                                 "request_data": {"collection_infos": [{"name": "*"}]}}),
    "create_missing_infos": raw({"request_type": "create",
                                 "request_data": {"milvus_connect_param": target_param()}}),
    "create_null_param": raw({"request_type": "create", "request_data": {
        "milvus_connect_param": None, "collection_infos": [{"name": "*"}]}}),
    "create_param_string": create(param="http://localhost:19530"),
    "create_param_empty": create(param={}),
    "create_uri_no_scheme": create(param={"uri": "localhost:19530"}),
    "create_uri_number": create(param={"uri": 19530}),
    "create_uri_and_host": create(param=target_param(host="127.0.0.1")),
    "create_bad_port_type": create(param={"host": "127.0.0.1", "port": "19540"}),
    "create_negative_port": create(param={"host": "127.0.0.1", "port": -1}),
    "create_huge_port": create(param={"host": "127.0.0.1", "port": 70000}),
    "create_zero_timeout": create(param=target_param(connect_timeout=0)),
    "create_negative_timeout": create(param=target_param(connect_timeout=-5)),
    "create_float_timeout": create(param=target_param(connect_timeout=1.5)),
    "create_string_timeout": create(param=target_param(connect_timeout="10")),
    "create_huge_timeout": create(param=target_param(connect_timeout=10**12)),
    "create_tls_string": create(param=target_param(enable_tls="yes")),
    "create_token_and_user": create(param=target_param(token="a:b", username="a",
                                                       password="b")),
    "create_user_without_password": create(param=target_param(username="root")),
    "create_unknown_param_field": create(param=target_param(tokn="x")),
    "create_long_uri": create(param={"uri": "http://" + "h" * 100_000}),
    "create_control_chars": create(param={"uri": "http://127.0.0.1:19540\r\nX: y"}),
    "create_infos_empty": create(infos=[]),
    "create_infos_named": create(infos=[{"name": "my_collection"}]),
    "create_infos_two": create(infos=[{"name": "*"}, {"name": "*"}]),
    "create_infos_object": create(infos={"name": "*"}),
    "create_infos_null_name": create(infos=[{"name": None}]),
    "create_infos_extra": create(infos=[{"name": "*", "db": "x"}]),
    "create_extra_field": create(extra_field=1),
    # credentials in bad requests are never echoed
    "create_userinfo_in_uri": create(param={"uri": f"http://root:{SECRET}@127.0.0.1:19540"}),
    "create_unreachable_with_token": create(param={"uri": "http://127.0.0.1:1",
                                                   "token": f"root:{SECRET}",
                                                   "connect_timeout": 2}),
}

if TARGET_TOKEN:  # the target checks credentials: wrong ones are refused
    CORPUS["create_wrong_password"] = create(param=target_param(token=f"root:{SECRET}"))
    CORPUS["create_wrong_user_password"] = create(param={
        **{k: v for k, v in target_param().items() if k != "token"},
        "username": "root", "password": SECRET})


def tasks(agent):
    """The task records in etcd (checkpoints under positions/ move on their
    own while the module's task replicates, so they are not compared)."""
    return etcd_get_prefix(agent.root + "/tasks/")


@pytest.fixture(scope="module")
def module_agent():
    a = Agent(root=f"milvus-cdc-test/{uuid.uuid4().hex[:12]}").start()
    # One real task so "unchanged" means more than "still empty".
    status, body = a.cdc({"request_type": "create", "request_data": {
        "milvus_connect_param": target_param(), "collection_infos": [{"name": "*"}]}})
    assert status == 200, body
    yield a
    a.stop()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_body_gets_4xx_json_and_store_unchanged(module_agent, name):
    before = tasks(module_agent)
    assert len(before) == 1
    status, body, headers = http_call("POST", module_agent.url + "/cdc", CORPUS[name],
                                 headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= status < 500, (name, status, body)
    assert isinstance(body, dict), (name, body)
    assert body["code"] == status, (name, body)
    assert isinstance(body["message"], str) and body["message"], (name, body)
    assert SECRET not in json.dumps(body), (name, body)
    assert headers["Content-Type"] == "application/json"
    assert tasks(module_agent) == before, name
    # The agent is still alive and answering.
    assert http_call("GET", module_agent.url + "/healthz")[0] == 200


def test_ten_megabyte_body_is_413(module_agent):
    """The agent answers 413 as soon as it knows the body is too large and may
    close the connection before the client has sent it all, as curl sees it."""
    before = tasks(module_agent)
    big = b'{"request_type": "list", "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    conn = http.client.HTTPConnection("127.0.0.1", module_agent.port, timeout=60)
    conn.putrequest("POST", "/cdc")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(big)))
    conn.endheaders()
    try:
        for i in range(0, len(big), 65536):
            conn.send(big[i:i + 65536])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: its answer is already on the socket
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 413 and body["code"] == 413
    assert tasks(module_agent) == before


def test_bad_requests_are_counted(module_agent):
    http_call("POST", module_agent.url + "/cdc", b"{")
    _, text, _ = http_call("GET", module_agent.url + "/metrics")
    assert 'milvus_cdc_api_requests_total{request_type="invalid",code="400"}' in text


def test_no_secret_in_the_agent_log(module_agent):
    """Runs last in this module: after every bad body above, the agent's
    log (debug level) never contains the password they carried."""
    for name in ("create_userinfo_in_uri", "create_wrong_password",
                 "create_unreachable_with_token"):
        if name not in CORPUS:
            continue
        http_call("POST", module_agent.url + "/cdc", CORPUS[name], timeout=30)
    text = module_agent.log_path.read_text(errors="replace")
    assert text, "the agent logged something"
    assert SECRET not in text
