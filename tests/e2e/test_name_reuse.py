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
and load state (`milvus-cdc verify` compares all of them)."""

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

from conftest import STACK, TARGET_TOKEN, create_task
from test_replication import tag, wait_verified
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]

# (vector type, dim, index) per generation, oldest first: the types
# alternate, and each type keeps its index (an earlier generation's index
# that the target accepts lands on a later one: a documented limitation).
FLOAT = (DataType.FLOAT_VECTOR, 8, {"index_type": "IVF_FLAT", "metric_type": "L2",
                                    "params": {"nlist": 16}})
BINARY = (DataType.BINARY_VECTOR, 16, {"index_type": "BIN_IVF_FLAT", "metric_type": "JACCARD",
                                       "params": {"nlist": 4}})
GENERATIONS = [FLOAT, BINARY, FLOAT, BINARY]


def generation(alias, name, gen):
    vtype, dim, index = GENERATIONS[gen]
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


def test_a_new_task_replays_earlier_generations_of_a_name_without_harm(agent):
    src = connect(f"src-reuse-{tag()}", SOURCE)
    tgt = connect(f"tgt-reuse-{tag()}", TARGET, TARGET_TOKEN)
    name = f"reuse_{tag()}"
    try:
        for gen in range(len(GENERATIONS)):
            if gen:
                utility.drop_collection(name, using=src)
            generation(src, name, gen)
        # Created now: the task replays every generation's changes.
        create_task(agent)
        wait_verified([name], limit=240)
        last = len(GENERATIONS) - 1
        t = Collection(name, using=tgt)
        assert [f.dtype for f in t.schema.fields][-1] == GENERATIONS[last][0]
        index = t.index().params
        assert index["index_type"] == GENERATIONS[last][2]["index_type"], index
        assert index["metric_type"] == GENERATIONS[last][2]["metric_type"], index
        rows = t.query("id >= 0", output_fields=["g"], consistency_level="Strong")
        assert len(rows) == 55 and {r["g"] for r in rows} == {last}, rows[:3]
    finally:
        utility.drop_collection(name, using=src)
