"""A collection name reused by several generations (dropped and re-created,
with a float and a binary vector in turn), then replayed by a new task.

Index and load changes travel on the replicate channel and name their
collection only. A new task replays the whole history: the earlier
generations' CreateCollection are skipped (gone on the source), but their
CreateIndex and LoadCollection still name the collection that the target
now holds as the replica of the latest generation. Applied to it, an
IVF_FLAT index for a float vector is refused on a binary one (the task
retried it forever: found in CI by `test_random_workload.py`, seeds 2 and
8). The target must end with the latest generation's schema, rows, index
and load state (`milvus-cdc verify` compares all of them).

When the generations have the same vector type, the target accepts the
earlier one's index on the later one's replica: the agent must know that
the change was made to a collection dropped since (the creations under the
name are in the DML channels) and skip it, or the replica keeps the wrong
index parameters."""

import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

from conftest import STACK, TARGET_TOKEN, create_task
from test_replication import tag, wait_verified
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]

# (vector type, dim, index) per generation, oldest first.
FLOAT = (DataType.FLOAT_VECTOR, 8, {"index_type": "IVF_FLAT", "metric_type": "L2",
                                    "params": {"nlist": 16}})
FLOAT_HNSW = (DataType.FLOAT_VECTOR, 8, {"index_type": "HNSW", "metric_type": "IP",
                                         "params": {"M": 8, "efConstruction": 64}})
BINARY = (DataType.BINARY_VECTOR, 16, {"index_type": "BIN_IVF_FLAT", "metric_type": "JACCARD",
                                       "params": {"nlist": 4}})
# The types alternate: an earlier generation's index is refused on a later one.
ALTERNATING = [FLOAT, BINARY, FLOAT, BINARY]
# One type, other index parameters: the target would accept the earlier ones.
SAME_TYPE = [FLOAT, FLOAT_HNSW, FLOAT, FLOAT_HNSW]


def generation(alias, name, generations, gen):
    vtype, dim, index = generations[gen]
    schema = CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                               FieldSchema("g", DataType.INT64),
                               FieldSchema("v", vtype, dim=dim)])
    c = Collection(name, schema, using=alias, shards_num=2)
    c.create_index("v", index)
    c.load()
    ids = list(range(gen * 100, gen * 100 + 60))
    vec = (lambda i: bytes([i % 256, gen])) if vtype == DataType.BINARY_VECTOR \
        else (lambda i: [float(i % 5), float(gen)] + [0.5] * (dim - 2))
    c.insert([ids, [gen] * len(ids), [vec(i) for i in ids]])
    c.delete(f"id in {ids[:5]}")
    return c


@pytest.mark.parametrize("generations", [ALTERNATING, SAME_TYPE], ids=["alternating", "same_type"])
def test_a_new_task_replays_earlier_generations_of_a_name_without_harm(agent, generations):
    src = connect(f"src-reuse-{tag()}", SOURCE)
    tgt = connect(f"tgt-reuse-{tag()}", TARGET, TARGET_TOKEN)
    name = f"reuse_{tag()}"
    try:
        for gen in range(len(generations)):
            if gen:
                utility.drop_collection(name, using=src)
            generation(src, name, generations, gen)
        # Created now: the task replays every generation's changes.
        create_task(agent)
        wait_verified([name], limit=240)
        last = len(generations) - 1
        t = Collection(name, using=tgt)
        assert [f.dtype for f in t.schema.fields][-1] == generations[last][0]
        index = t.index().params
        assert index["index_type"] == generations[last][2]["index_type"], index
        assert index["metric_type"] == generations[last][2]["metric_type"], index
        rows = t.query("id >= 0", output_fields=["g"], consistency_level="Strong")
        assert len(rows) == 55 and {r["g"] for r in rows} == {last}, rows[:3]
    finally:
        utility.drop_collection(name, using=src)
