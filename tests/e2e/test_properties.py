"""Collection properties changed after creation (e.g. a TTL): Milvus 2.3.5
puts AlterCollection in none of its streams, so the reconciler copies the
source's properties to the target. Checked with pymilvus on the target."""

import time

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema

from conftest import STACK, TARGET_TOKEN, create_task
from test_replication import tag, wait_verified
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]


def properties(alias, name):
    props = Collection(name, using=alias).describe().get("properties", {})
    return props if isinstance(props, dict) else {}


def test_a_ttl_set_after_creation_reaches_the_target(agent):
    src = connect(f"src-props-{tag()}", SOURCE)
    tgt = connect(f"tgt-props-{tag()}", TARGET, TARGET_TOKEN)
    task_id = create_task(agent)
    name = f"props_{tag()}"
    schema = CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                               FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)])
    c = Collection(name, schema, using=src, shards_num=1)
    c.insert([[1, 2, 3], [[0.0, 1.0, 2.0, 3.0]] * 3])
    c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    wait_verified([name])
    assert "collection.ttl.seconds" not in properties(tgt, name)

    # A new run of the task (as after a failover or a resume) starts from
    # its checkpoints, past everything of this collection: the reconciler
    # must still know it has a replica to keep in step.
    for request in ("pause", "resume"):
        status, body = agent.cdc({"request_type": request, "request_data": {"task_id": task_id}})
        assert status == 200, body
    time.sleep(2)
    c.set_properties({"collection.ttl.seconds": 86400})
    deadline = time.time() + 60  # the reconciler runs every 10 s
    while time.time() < deadline:
        props = properties(tgt, name)
        if props.get("collection.ttl.seconds") == "86400":
            break
        time.sleep(1)
    assert props.get("collection.ttl.seconds") == "86400", props
    # The replica keeps its marker (what the loop guard and promote read).
    assert props.get("milvus-cdc.source-collection-id"), props
