"""Exact replication under concurrent writers (the source orders by
timestamp, not by arrival): four clients on separate connections upsert,
insert and delete shared keys of 1-shard and 2-shard collections at once;
the target must equal the source key by key and value by value, read with
pymilvus and checked by `milvus-cdc verify`."""

import time
import uuid

import pytest

from writers import ConcurrentWriters, create_collection, wait_equal
from conftest import STACK, TARGET_TOKEN
from conftest import create_task
from test_replication import wait_verified

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]


@pytest.mark.parametrize("shards", [1, 2])
def test_four_clients_with_shared_keys_replicate_exactly(agent, shards):
    create_task(agent)
    name = f"cw{shards}_{uuid.uuid4().hex[:8]}"
    create_collection(SOURCE, name, shards)
    writers = ConcurrentWriters(SOURCE, name, clients=4, rounds=30, seed=shards)
    writers.run()
    src = wait_equal(SOURCE, TARGET, name, TARGET_TOKEN)
    # The workload really did leave upserted, inserted and deleted keys.
    assert len(src) > 4 * 30 * 20, len(src)
    assert any(v[0].startswith("w") and "k" in v[0] for v in src.values()), "upserted values"
    assert len([k for k in src if k < 200]) < 200, "some shared keys are deleted"
    report = wait_verified([name])
    assert report["rows_compared"] >= len(src)


def test_writes_during_a_restart_of_the_agent_stay_exact(agents):
    """Concurrent writers while the only replica is killed (-9) and restarted:
    the new run replays from the last checkpoint, windows applied twice."""
    a = agents().start()
    create_task(a)
    name = f"cwk_{uuid.uuid4().hex[:8]}"
    create_collection(SOURCE, name, 2)
    writers = ConcurrentWriters(SOURCE, name, clients=4, rounds=40, seed=9, pause=0.05).start()
    for _ in range(2):
        time.sleep(3)
        a.kill9()
        a = agents(port=a.port).start()
    writers.join()
    assert not writers.errors, writers.errors
    wait_equal(SOURCE, TARGET, name, TARGET_TOKEN)
