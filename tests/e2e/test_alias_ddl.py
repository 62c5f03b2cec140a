"""Indexes, loads and releases made through an alias. Milvus 2.3.5 puts them
in its replicate channel with the alias as the collection name, and the
target's aliases follow the source's only at the reconciler's next pass
(`replicate.reconcile_interval`, 10 s). The agent asks the source which
collection the alias names and applies the change to that collection's
replica, so neither an alias moved since (the target's still points at the
old collection) nor a new one (the target lacks it yet) sends the change
to the wrong collection or loses it. Checked with pymilvus on the target."""

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

from conftest import STACK, TARGET_TOKEN, create_task, wait_for
from test_replication import tag
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
FLAT = {"index_type": "FLAT", "metric_type": "L2", "params": {}}
IVF = {"index_type": "IVF_FLAT", "metric_type": "L2", "params": {"nlist": 8}}


def make(alias, name, index=None):
    """A 1-shard collection with 50 rows, indexed with `index` if given."""
    schema = CollectionSchema([FieldSchema("id", DataType.INT64, is_primary=True),
                               FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)])
    c = Collection(name, schema, using=alias, shards_num=1)
    c.insert([list(range(50)), [[float(i % 7), 0.0, 1.0, 2.0] for i in range(50)]])
    if index:
        c.create_index("v", index)
    return c


def state(alias, name):
    """(index types, load state) of a collection."""
    c = Collection(name, using=alias)
    types = sorted(i.params.get("index_type", "?") for i in c.indexes)
    return types, utility.load_state(name, using=alias).name


def wait_state(tgt, name, want, timeout=60):
    wait_for(lambda: state(tgt, name), f"{name} on the target has (indexes, load) {want}",
             timeout, interval=1.0, until=lambda seen: seen == want, tolerate=(Exception,))


def test_ddl_through_an_alias_reaches_its_collection(agent):
    src = connect(f"src-ald-{tag()}", SOURCE)
    tgt = connect(f"tgt-ald-{tag()}", TARGET, TARGET_TOKEN)
    create_task(agent)
    t = tag()
    one, two, moved, new = f"ald_one_{t}", f"ald_two_{t}", f"ald_a_{t}", f"ald_b_{t}"
    make(src, one)
    make(src, two, FLAT)
    utility.create_alias(two, moved, using=src)
    wait_state(tgt, one, ([], "NotLoad"))
    wait_state(tgt, two, (["FLAT"], "NotLoad"))
    wait_for(lambda: utility.list_aliases(two, using=tgt), f"alias {moved} of {two} on the target",
             60, interval=1.0, until=lambda seen: moved in seen, tolerate=(Exception,))

    # An alias moved on the source: the target's alias still names `two`
    # until the reconciler's next pass.
    utility.alter_alias(one, moved, using=src)
    via = Collection(moved, using=src)
    via.create_index("v", IVF)
    via.load()
    assert state(src, one) == (["IVF_FLAT"], "Loaded")
    wait_state(tgt, one, (["IVF_FLAT"], "Loaded"))
    assert state(tgt, two) == (["FLAT"], "NotLoad")

    # A new alias, which the target lacks until the reconciler's next pass.
    utility.create_alias(one, new, using=src)
    via = Collection(new, using=src)
    via.release()
    via.drop_index()
    assert state(src, one) == ([], "NotLoad")
    wait_state(tgt, one, ([], "NotLoad"))
    assert state(tgt, two) == (["FLAT"], "NotLoad")

    # The aliases themselves follow through the reconciler.
    wait_for(lambda: sorted(utility.list_aliases(one, using=tgt)), f"aliases of {one} on the target",
             60, interval=1.0, until=lambda seen: seen == sorted([moved, new]), tolerate=(Exception,))
