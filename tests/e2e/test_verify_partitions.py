"""`milvus-cdc verify` on a collection where one primary key lives in two
partitions (Milvus 2.3.5 checks no key across partitions, and a delete
naming a partition removes the key there only). A query over the whole
collection shows one row per key, so verify compares such a collection
partition by partition: an exact replica shows no difference, and a key
deleted from one partition of the target only is reported, naming that
partition."""

from pymilvus import Collection, utility

from conftest import STACK, TARGET_TOKEN, create_task, wait_collection
from test_replication import tag, verify
from workload import connect, insert_labelled, labelled_collection

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
KEYS = range(100)


def rows(alias, name):
    """partition -> key -> label, every row of every partition."""
    c = Collection(name, using=alias)
    out = {}
    for p in c.partitions:
        got = c.query("id >= 0", output_fields=["id", "s"], partition_names=[p.name],
                      limit=16384, consistency_level="Strong")
        out[p.name] = {r["id"]: r["s"] for r in got}
    return out


def test_a_key_in_two_partitions_is_compared_per_partition(agent):
    src = connect(f"src-vp-{tag()}", SOURCE)
    tgt = connect(f"tgt-vp-{tag()}", TARGET, TARGET_TOKEN)
    task_id = create_task(agent)
    name = f"vparts_{tag()}"
    c = labelled_collection(src, name, partitions=("p1", "p2"))
    try:
        # The same keys in both partitions, with other values in each.
        insert_labelled(c, KEYS, "one", partition="p1")
        insert_labelled(c, KEYS, "two", partition="p2")
        # Deleted from one partition only: 0..9 stay in p2, 50..59 in p1.
        c.delete("id in [%s]" % ", ".join(map(str, range(10))), partition_name="p1")
        c.delete("id in [%s]" % ", ".join(map(str, range(50, 60))), partition_name="p2")

        want = rows(src, name)
        assert want["_default"] == {}
        assert set(want["p1"]) == set(KEYS) - set(range(10))
        assert set(want["p2"]) == set(KEYS) - set(range(50, 60))
        assert want["p1"][20] == "one20" and want["p2"][20] == "two20"
        wait_collection(tgt, name, rows, want, 180)

        # An exact replica: no difference, every (partition, key) compared.
        code, report, err = verify([name])
        assert code == 0, (report, err)
        assert report["differences"] == [], report
        assert report["rows_compared"] == len(want["p1"]) + len(want["p2"]), report

        # The target differs in p2 only: key 20 deleted there (it stays in
        # p1), key 30 rewritten there. The task is paused, so nothing
        # replicated overwrites it.
        status, body = agent.cdc({"request_type": "pause", "request_data": {"task_id": task_id}})
        assert status == 200, body
        t = Collection(name, using=tgt)
        t.delete("id in [20]", partition_name="p2")
        t.upsert([[30], ["changed"], [[0.0, 0.0, 0.0, 0.0]]], partition_name="p2")
        changed = rows(tgt, name)
        assert 20 not in changed["p2"] and changed["p1"][20] == "one20"
        assert changed["p2"][30] == "changed" and changed["p1"][30] == "one30"

        code, report, err = verify([name])
        assert code == 1, (report, err)
        whats = [d["what"] for d in report["differences"]]
        assert all(d["scope"] == f"default.{name}" for d in report["differences"]), report
        assert all(w.startswith("partition p2: ") for w in whats), whats
        assert any("missing on the target" in w and "e.g. 20" in w for w in whats), whats
        assert any(w.startswith('partition p2: row 30: s (source "two30", target "changed")')
                   for w in whats), whats
    finally:
        utility.drop_collection(name, using=src, timeout=30)
