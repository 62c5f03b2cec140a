"""A source message the agent cannot apply is never skipped silently: an
undecodable message published into a channel is recorded in the task
(`skipped_messages` in get and list) with its channel, position and reason,
and replication goes on around it."""

import asyncio
import time
import uuid

import nats
import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema

from conftest import STACK, TARGET_TOKEN, create_body, natsmq_only
from test_replication import keys
from workload import connect

# The source Milvus's own consumers of that channel fail on the message too
# (its datanode cannot subscribe to the channel any more): run last, with the
# other tests that damage the source's streams.
pytestmark = [natsmq_only, pytest.mark.destroys_history]


async def _publish(subject, payload):
    nc = await nats.connect(STACK["CDC_NATS_URL"], connect_timeout=10)
    try:
        ack = await nc.jetstream().publish(subject, payload)
        return ack.seq
    finally:
        await nc.close()


def test_an_undecodable_message_is_recorded_in_the_task(agent):
    from pymilvus import connections
    from pymilvus.grpc_gen import milvus_pb2
    src = connect("skip-src", STACK["CDC_SOURCE_URI"])
    name = f"skip_{uuid.uuid4().hex[:8]}"
    c = Collection(name, CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                                           FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]),
                   shards_num=1, using=src)
    channel = connections._fetch_handler(src)._stub.DescribeCollection(  # noqa: SLF001
        milvus_pb2.DescribeCollectionRequest(collection_name=name)).physical_channel_names[0]
    c.insert([[1, 2], [[0.1] * 4] * 2])
    status, body = agent.cdc(create_body())
    assert status == 200, body
    task_id = body["data"]["task_id"]
    seq = asyncio.run(_publish(channel, b"\x0a\x03not a milvus message"))
    c.insert([[3, 4], [[0.2] * 4] * 2])
    deadline = time.time() + 90
    found = None
    while time.time() < deadline and not found:
        _, b = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
        found = [s for s in b["data"]["Task"].get("skipped_messages", [])
                 if s["channel"] == channel and s["kind"] == "undecodable"]
        time.sleep(1)
    assert found, b
    assert found[0]["first_sequence"] <= seq <= found[0]["last_sequence"], (found, seq)
    assert found[0]["count"] >= 1 and found[0]["reason"], found
    _, listed = agent.cdc({"request_type": "list"})
    assert any(t.get("skipped_messages") for t in listed["data"]["tasks"])
    # Replication went on around it.
    tgt = connect("skip-tgt", STACK["CDC_TARGET_URI"], TARGET_TOKEN)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            t = Collection(name, using=tgt)
            if not t.indexes:
                t.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
            t.load()
            if keys(tgt, name) == {1, 2, 3, 4}:
                break
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(1)
    assert keys(tgt, name) == {1, 2, 3, 4}
