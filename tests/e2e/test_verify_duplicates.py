"""`milvus-cdc verify` on a source collection holding primary keys more than
once (a plain insert of keys that exist: Milvus 2.3.5 keeps both rows, the
replica keeps the latest; docs/replication.md, "Duplicate keys").

Milvus 2.3.5 answers such a collection's queries incompletely: without a
`limit`, rows of *other* keys go missing from the answer; with one, a key's
extra rows count towards the limit before they are dropped, so an answer
can hold fewer keys than the limit while more exist. verify must still see
every key: an exact replica shows no difference (the source's extra rows
and the older values a query returns for a duplicated key are notes), and
a key deleted on the target only is reported."""

import pytest
from pymilvus import Collection, utility

from conftest import STACK, TARGET_TOKEN, create_task, wait_collection
from test_replication import tag, verify
from workload import connect, insert_labelled, labelled_collection

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]
# (keys, keys from here on inserted after the duplicates, keys inserted a
# second time without upsert)
CASES = {
    # Fewer rows than one read: a query without a limit lost other keys.
    "rows_lost_without_limit": (1000, 800, range(0, 100)),
    # More rows than one read of keys (16384 with a limit): the first read
    # holds fewer keys than the limit, yet more follow.
    "short_limited_answers": (17_000, 16_000, range(0, 200)),
}


def latest(i, late, twice):
    """The label the target holds for key i: the last insert's."""
    return "b" if i in twice else ("c" if i >= late else "a")


def state(checked):
    """A reader of count(*) and the labels of the `checked` keys."""
    def read(alias, name):
        c = Collection(name, using=alias)
        n = c.query("", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
        got = c.query("id in %s" % checked, output_fields=["id", "s"], limit=100,
                      consistency_level="Strong")
        return n, sorted((r["id"], r["s"][0]) for r in got)
    return read


@pytest.mark.parametrize("case", CASES)
def test_duplicate_keys_on_the_source_verify_equal(agent, case):
    keys, late, twice = CASES[case]
    checked = sorted({0, twice.stop - 1, twice.stop, late - 1, late, keys - 1}
                     | {k for k in (16_383, 16_384) if k < keys})
    read = state(checked)
    src = connect(f"src-vd-{tag()}", SOURCE)
    tgt = connect(f"tgt-vd-{tag()}", TARGET, TARGET_TOKEN)
    task_id = create_task(agent)
    name = f"vdup_{tag()}"
    # One shard: all rows in one growing segment, where Milvus 2.3.5 keeps
    # every version of a key and its query answers lose rows.
    c = labelled_collection(src, name)
    try:
        insert_labelled(c, range(0, late), "a")
        insert_labelled(c, twice, "b")
        insert_labelled(c, range(late, keys), "c")
        rows = keys + len(twice)
        assert read(src, name)[0] == rows
        want = (keys, sorted((i, latest(i, late, twice)) for i in checked))
        wait_collection(tgt, name, read, want, 120)

        # An exact replica: every key compared once, the source's extra rows
        # a note.
        code, report, err = verify([name])
        assert code == 0, (report, err)
        assert report["differences"] == [], report
        assert report["rows_compared"] == keys, report
        notes = report["notes"]
        assert any(f"count(*) {rows} but {keys} distinct primary keys on the source" in n
                   for n in notes), notes

        # A real difference: keys deleted on the target only (the task
        # paused, so nothing replicated brings them back).
        status, body = agent.cdc({"request_type": "pause", "request_data": {"task_id": task_id}})
        assert status == 200, body
        gone = [7, late + 100]
        Collection(name, using=tgt).delete(f"id in {gone}")
        assert read(tgt, name)[0] == keys - 2
        code, report, err = verify([name])
        assert code == 1, (report, err)
        whats = [d["what"] for d in report["differences"]]
        assert any(f"2 primary keys missing on the target (source {keys}, target {keys - 2}), "
                   f"e.g. 7, {late + 100}" in w for w in whats), whats
    finally:
        utility.drop_collection(name, using=src, timeout=30)
