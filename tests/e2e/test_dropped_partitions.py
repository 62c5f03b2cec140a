"""A partition dropped and re-created under its name survives a restart of
the agent that leaves one channel's checkpoint before the drop.

Milvus 2.3.5 sends the DropPartition to every DML channel of the collection.
The agent applies the first copy, and the others do nothing; which drops it
applied is recorded in etcd with the task, so a new process (after a
restart or a failover) that replays one channel from before the drop skips
that channel's rows of the old partition and its copy of the drop. Without
the record, the lagging channel writes the old rows into the re-created
partition and then drops it, with the other channel's newer rows.

The lag is made exactly: the lagging channel's checkpoint, read from etcd
before the old partition's rows were written, is put back while the agent
is stopped."""

import json
import os
import subprocess
import uuid

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility
from pymilvus.grpc_gen import milvus_pb2

from conftest import STACK, TARGET_TOKEN, create_task, etcd_get_prefix, wait_for
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
# Flushes (and so checkpoints) every second, so that the test's waits on
# checkpoints are short.
FAST = {"MILVUS_CDC_REPLICATE__FLUSH_INTERVAL": "1s"}

BASE = list(range(0, 100))  # in _default
OLD = list(range(1000, 1200))  # in "p" before its drop
NEW = list(range(2000, 2200))  # in "p" re-created under the same name


def rows(keys):
    return [keys, [[float(k % 7), 0.5, 0.25, 1.0] for k in keys]]


def described(alias, name):
    """(collection id, physical channels) of a source collection."""
    d = connections._fetch_handler(alias)._stub.DescribeCollection(  # noqa: SLF001
        milvus_pb2.DescribeCollectionRequest(collection_name=name))
    return d.collectionID, list(d.physical_channel_names)


def checkpoints(root, task_id):
    """{channel: checkpoint dict} of the task, read from etcd."""
    prefix = f"{root}/positions/{task_id}/"
    return {k[len(prefix):]: json.loads(v) for k, v in etcd_get_prefix(prefix).items()}


def wait_checkpoints_past(root, task_id, channels, ts, timeout=120):
    def probe():
        cps = checkpoints(root, task_id)
        return all(cps.get(ch, {}).get("timestamp", 0) >= ts for ch in channels) and cps
    return wait_for(probe, f"checkpoints of {channels} at or past {ts}", timeout, interval=0.5,
                    show=lambda _: checkpoints(root, task_id))


def etcd_put(key, value):
    subprocess.run(["etcdctl", "--endpoints", STACK["CDC_ETCD_ENDPOINT"], "put", key, value],
                   check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
                   timeout=30)


def partition_keys(alias, name, partition):
    c = Collection(name, using=alias)
    got = c.query("id >= 0", output_fields=["id"], partition_names=[partition], limit=16384,
                  consistency_level="Strong")
    return sorted(r["id"] for r in got)


def loaded(alias, name):
    c = Collection(name, using=alias)
    if not c.indexes:
        c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    return c


def test_a_replayed_drop_keeps_the_partition_recreated_under_its_name(agents, etcd_root):
    src = connect("dropped-src", SOURCE)
    tgt = connect("dropped-tgt", TARGET, TARGET_TOKEN)
    name = f"dropped_{uuid.uuid4().hex[:8]}"
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
    c = Collection(name, CollectionSchema(fields), shards_num=2, using=src)
    c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.create_partition("p")  # not loaded: a loaded partition cannot be dropped
    collection_id, channels = described(src, name)
    assert len(channels) == 2, channels
    base_ts = c.insert(rows(BASE)).timestamp

    agent = agents(extra_env=FAST).start()
    task_id = create_task(agent)
    before = wait_checkpoints_past(etcd_root, task_id, channels, base_ts)
    # The channel that will lag: its checkpoint before the old rows.
    lagging = channels[1]

    c.insert(rows(OLD), partition_name="p")
    c.drop_partition("p")
    c.create_partition("p")
    new_ts = c.insert(rows(NEW), partition_name="p").timestamp
    wait_checkpoints_past(etcd_root, task_id, channels, new_ts)
    # (Other records may come from the stack's history: each task replays it.)
    records = f"{etcd_root}/dropped/{task_id}/{collection_id}/"
    assert len(etcd_get_prefix(records)) == 1, etcd_get_prefix(f"{etcd_root}/dropped/")

    # A restart that replays the lagging channel from before the drop.
    agent.stop()
    etcd_put(f"{etcd_root}/positions/{task_id}/{lagging}", json.dumps(before[lagging]))
    agent = agents(extra_env=FAST).start()
    # Past the insert that follows the drop: the replayed drop is applied.
    wait_checkpoints_past(etcd_root, task_id, channels, new_ts)

    loaded(src, name)
    wait_for(lambda: utility.has_collection(name, using=tgt), "target collection", 60)
    loaded(tgt, name)
    assert partition_keys(src, name, "p") == NEW
    got = partition_keys(tgt, name, "p")
    assert not set(got) & set(OLD), "rows of the dropped partition were written into the new one"
    assert got == NEW, (f"the re-created partition lost {len(set(NEW) - set(got))} of its "
                        f"{len(NEW)} rows")
    assert partition_keys(tgt, name, "_default") == BASE

    # The records of a collection go when its drop is applied.
    utility.drop_collection(name, using=src)
    wait_for(lambda: not etcd_get_prefix(records),
             "the dropped collection's records removed", 60, interval=0.5)
    status, resp = agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})
    assert status == 200, resp
