"""Renamed collections. Milvus 2.3.5 puts no rename in its message streams
(later messages just carry the new name under the same collection id), so
the agent follows the source's names: the target collection that holds a
source collection's rows is renamed with it, also when a new collection
takes the old name right after (the "swap" pattern) and when two names are
swapped. Checked with pymilvus on the target and with `milvus-cdc verify`."""

from pymilvus import Collection, utility

from conftest import STACK, TARGET_TOKEN, create_task
from test_replication import tag, wait_verified
from workload import connect, insert_labelled as insert, labelled_collection

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
SOURCE_ID = "milvus-cdc.source-collection-id"


def make(alias, name, ids, label):
    """A loaded 1-shard collection holding `ids` (VarChar `label` + key)."""
    c = labelled_collection(alias, name)
    insert(c, ids, label)
    return c


def target_rows(alias, name):
    """key -> label of every row of a target collection."""
    c = Collection(name, using=alias)
    c.load()
    rows = c.query("id >= 0", output_fields=["id", "s"], limit=16384,
                   consistency_level="Strong")
    return {r["id"]: r["s"] for r in rows}


def source_id_on_target(alias, name):
    props = Collection(name, using=alias).describe().get("properties", {})
    return props.get(SOURCE_ID) if isinstance(props, dict) else None


def test_a_renamed_collection_keeps_its_rows_when_a_new_one_takes_its_name(agent):
    src = connect(f"src-ren-{tag()}", SOURCE)
    tgt = connect(f"tgt-ren-{tag()}", TARGET, TARGET_TOKEN)
    create_task(agent)
    t = tag()
    a, b = f"ren_a_{t}", f"ren_b_{t}"
    old = make(src, a, range(100), "old")
    wait_verified([a])
    old_id = str(Collection(a, using=src).describe()["collection_id"])

    utility.rename_collection(a, b, using=src)
    moved = Collection(b, using=src)
    insert(moved, range(100, 150), "old")
    moved.delete(f"id in {list(range(10))}")
    make(src, a, range(1000, 1030), "new")
    del old

    wait_verified([a, b])
    rows_b = target_rows(tgt, b)
    assert set(rows_b) == set(range(10, 150)), sorted(set(rows_b) ^ set(range(10, 150)))[:20]
    assert all(v.startswith("old") for v in rows_b.values())
    rows_a = target_rows(tgt, a)
    assert rows_a == {i: f"new{i}" for i in range(1000, 1030)}
    # The renamed target collection is still the replica of the same source
    # collection: renamed, not dropped and re-created.
    assert source_id_on_target(tgt, b) in (old_id, None), source_id_on_target(tgt, b)
    names = utility.list_collections(using=tgt)
    assert not [n for n in names if "_cdc_renaming_" in n], names


def swap_setup(agent, prefix):
    """A `*` task and two collections `x` (keys 0-39) and `y` (500-519),
    replicated; returns (source, target, task id, x, y, tmp)."""
    src = connect(f"src-{prefix}-{tag()}", SOURCE)
    tgt = connect(f"tgt-{prefix}-{tag()}", TARGET, TARGET_TOKEN)
    task_id = create_task(agent)
    t = tag()
    x, y, tmp = f"{prefix}_x_{t}", f"{prefix}_y_{t}", f"{prefix}_tmp_{t}"
    make(src, x, range(0, 40), "x")
    make(src, y, range(500, 520), "y")
    wait_verified([x, y])
    return src, tgt, task_id, x, y, tmp


def swap_names(src, x, y, tmp):
    """Swaps the names on the source, through a temporary one."""
    utility.rename_collection(x, tmp, using=src)
    utility.rename_collection(y, x, using=src)
    utility.rename_collection(tmp, y, using=src)


def assert_swapped(tgt, x, y, tmp):
    """The target holds each collection's rows under its new name, and no
    temporary name is left."""
    wait_verified([x, y])
    assert target_rows(tgt, y) == {i: f"x{i}" for i in range(0, 50)}
    assert target_rows(tgt, x) == {i: f"y{i}" for i in range(500, 525)}
    names = utility.list_collections(using=tgt)
    assert tmp not in names and not [n for n in names if "_cdc_renaming_" in n], names


def write_after_swap(src, x, y):
    """Writes to both under their new names."""
    insert(Collection(y, using=src), range(40, 50), "x")
    insert(Collection(x, using=src), range(520, 525), "y")


def test_swapped_names_follow_the_source(agent):
    src, tgt, task_id, x, y, tmp = swap_setup(agent, "swap")
    swap_names(src, x, y, tmp)
    write_after_swap(src, x, y)
    assert_swapped(tgt, x, y, tmp)

    # A new task replays the history: its CreateCollection messages carry the
    # names the collections had then (the schema's name too), and must land
    # under their names of now, on the replicas that exist.
    # Replayed onto a target that lost both replicas, so that they are
    # created again from those messages.
    status, body = agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})
    assert status == 200, body
    for n in (x, y):
        utility.drop_collection(n, using=tgt)
    create_task(agent)
    insert(Collection(x, using=src), range(525, 530), "y")
    wait_verified([x, y])
    assert target_rows(tgt, x) == {i: f"y{i}" for i in range(500, 530)}
    assert target_rows(tgt, y) == {i: f"x{i}" for i in range(0, 50)}


def test_a_task_replaying_history_follows_a_swap_made_while_none_ran(agent):
    """The target still has both replicas under their old names when a new
    task replays the history: its CreateCollection of `x` (named `y` on the
    source now) finds `y` held on the target by the other collection, which
    is not a drop but a swap, so the replicas swap names too."""
    src, tgt, task_id, x, y, tmp = swap_setup(agent, "swapr")
    status, body = agent.cdc({"request_type": "delete", "request_data": {"task_id": task_id}})
    assert status == 200, body
    swap_names(src, x, y, tmp)
    create_task(agent)
    write_after_swap(src, x, y)
    assert_swapped(tgt, x, y, tmp)


def test_an_index_made_before_a_rename_reaches_the_replica_of_a_new_task(agent):
    """Renamed before any task ran: a new task replays the collection's
    creation and its index and load under the old name, which neither side
    has now. They must reach the replica, created under the new name."""
    src = connect(f"src-renidx-{tag()}", SOURCE)
    tgt = connect(f"tgt-renidx-{tag()}", TARGET, TARGET_TOKEN)
    t = tag()
    a, b = f"renidx_a_{t}", f"renidx_b_{t}"
    c = make(src, a, range(0, 30), "a")
    c.release()
    c.drop_index()
    c.create_index("v", {"index_type": "IVF_FLAT", "metric_type": "IP", "params": {"nlist": 8}})
    c.load()
    utility.rename_collection(a, b, using=src)
    create_task(agent)
    wait_verified([b])
    index = Collection(b, using=tgt).index().params
    assert index["index_type"] == "IVF_FLAT" and index["metric_type"] == "IP", index
    assert target_rows(tgt, b) == {i: f"a{i}" for i in range(0, 30)}
    assert a not in utility.list_collections(using=tgt)
