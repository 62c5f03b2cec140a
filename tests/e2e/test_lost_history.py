"""Source history that retention removed before a task read it is reported
in the task (`get` and `list`: `history_gaps`), with the source collections
that use the channel, and in the logs and `milvus_cdc_source_gaps_total`.

Retention is simulated by purging the source's JetStream streams (what
natsmq's `maxAge` does after 3 days). That destroys the history every later
task would replay, so this module runs after every other test
(`destroys_history` marker, ordered last by conftest.py).
"""

import asyncio
import time
import uuid

import nats
import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema

from conftest import STACK, create_body, http, natsmq_only
from workload import connect

pytestmark = [pytest.mark.destroys_history, natsmq_only]


async def _purge_all_streams():
    nc = await nats.connect(STACK["CDC_NATS_URL"], connect_timeout=10)
    try:
        jsm = nc.jsm()
        names = [s.config.name for s in await jsm.streams_info()]
        purged = {}
        for name in names:
            if name.startswith("by-dev-"):
                await jsm.purge_stream(name)
                # The last purged sequence: the stream starts right after it
                # (a time tick appended while purging is purged too, so the
                # last sequence read before the purge could be one short).
                after = await jsm.stream_info(name)
                purged[name] = after.state.first_seq - 1
        return purged
    finally:
        await nc.close()


def test_lost_history_is_reported_in_get_and_list(agent):
    tag = uuid.uuid4().hex[:8]
    alias = connect(f"lost-{tag}", STACK["CDC_SOURCE_URI"])
    name = f"lost_{tag}"
    c = Collection(name, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]), using=alias, shards_num=1)
    c.insert([list(range(50)), [[0.1, 0.2, 0.3, 0.4]] * 50])
    time.sleep(1)  # let the insert reach the stream
    purged = asyncio.run(_purge_all_streams())
    assert any(last > 0 for last in purged.values()), purged

    status, body = agent.cdc(create_body())
    assert status == 200, body
    task_id = body["data"]["task_id"]

    gaps = []
    deadline = time.time() + 60
    while time.time() < deadline:
        status, got = agent.cdc({"request_type": "get", "request_data": {"task_id": task_id}})
        assert status == 200, got
        gaps = got["data"]["Task"].get("history_gaps", [])
        if any(f"default.{name}" in g["collections"] for g in gaps):
            break
        time.sleep(0.5)
    ours = [g for g in gaps if f"default.{name}" in g["collections"]]
    assert len(ours) == 1, gaps  # one shard: one channel
    gap = ours[0]
    assert gap["channel"] in purged, gap
    # Everything the stream held before the purge is reported lost.
    assert gap["first_lost"] == 1 and gap["last_lost"] == purged[gap["channel"]], (gap, purged)
    assert gap["detected_at_ms"] > 0
    # Channels that had no message have no gap.
    assert all(purged.get(g["channel"], 0) > 0 for g in gaps), (gaps, purged)

    status, listed = agent.cdc({"request_type": "list", "request_data": {}})
    assert status == 200, listed
    mine = [t for t in listed["data"]["tasks"] if t["task_id"] == task_id]
    assert mine and mine[0].get("history_gaps"), listed

    _, text, _ = http("GET", agent.url + "/metrics")
    counted = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                  if l.startswith("milvus_cdc_source_gaps_total{") and task_id in l)
    assert counted >= len(gaps), text
    assert "source history lost before it was read" in agent.log_tail(400)
