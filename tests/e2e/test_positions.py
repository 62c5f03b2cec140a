"""Positions in Milvus's own encoding (base64 of a serialized msgpb.MsgPosition
whose msgID is the 8-byte little-endian natsmq sequence or Kafka offset, or on
Pulsar a serialized MessageIdData): a task created with
`collection_infos[].positions` starts after them, and the `position` request
returns a task's checkpoints in the same encoding."""

import base64
import os
import re
import struct
import subprocess
import time
import uuid

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility
from pymilvus.grpc_gen import msg_pb2

from conftest import BIN, SOURCE_MQ, STACK, TARGET_TOKEN, create_body, source_env
from test_replication import keys
from workload import connect

SOURCE = STACK["CDC_SOURCE_URI"]
TARGET = STACK["CDC_TARGET_URI"]


def last_sequences():
    """{channel: last agent sequence} from `milvus-cdc source channels`."""
    out = subprocess.run([str(BIN), "source", "channels"], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, **source_env()}).stdout
    return {c: int(last) for c, last in re.findall(r"^(\S+)\tfirst=\d+\tlast=(\d+)$", out, re.M)}


# Pulsar: the agent's sequence packs a message id (ledger, entry, batch index)
# as ((ledger << 32) | (entry << 10) | batch) + 1; Milvus's msgID is the
# MessageIdData that pulsar-client-go serializes: ledgerId (1), entryId (2),
# partition (3), batch_index (4).
PULSAR_ENTRY_BITS, PULSAR_BATCH_BITS = 22, 10


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pulsar_msg_id(sequence):
    packed = sequence - 1
    ledger = packed >> (PULSAR_ENTRY_BITS + PULSAR_BATCH_BITS)
    entry = (packed >> PULSAR_BATCH_BITS) & ((1 << PULSAR_ENTRY_BITS) - 1)
    batch = packed & ((1 << PULSAR_BATCH_BITS) - 1)
    return (b"\x08" + _varint(ledger) + b"\x10" + _varint(entry) + b"\x18\x00"
            + b"\x20" + _varint(batch))


def pulsar_sequence(msg_id):
    fields, i = {}, 0
    while i < len(msg_id):
        key, shift, v = msg_id[i], 0, 0
        i += 1
        while True:
            b = msg_id[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[key >> 3] = v
    batch = fields.get(4, 0)
    batch = 0 if batch >= 1 << 31 else batch  # -1: not in a batch
    return ((fields[1] << (PULSAR_ENTRY_BITS + PULSAR_BATCH_BITS))
            | (fields[2] << PULSAR_BATCH_BITS) | batch) + 1


def msg_position(channel, sequence):
    """Milvus's MsgPosition of the message with this agent sequence."""
    if SOURCE_MQ == "pulsar":
        msg_id = pulsar_msg_id(sequence)
    else:
        raw = sequence - 1 if SOURCE_MQ == "kafka" else sequence  # Kafka: offset = sequence - 1
        msg_id = struct.pack("<Q", raw)
    p = msg_pb2.MsgPosition(channel_name=channel, msgID=msg_id)
    return base64.b64encode(p.SerializeToString()).decode()


def decode_position(b64):
    p = msg_pb2.MsgPosition()
    p.ParseFromString(base64.b64decode(b64))
    if SOURCE_MQ == "pulsar":
        return p.channel_name, pulsar_sequence(p.msgID), p.timestamp
    (raw,) = struct.unpack("<Q", p.msgID)
    return p.channel_name, (raw + 1 if SOURCE_MQ == "kafka" else raw), p.timestamp


def test_a_task_starts_after_the_given_positions(agent):
    alias = connect("pos-src", SOURCE)
    name = f"pos_{uuid.uuid4().hex[:8]}"
    fields = [FieldSchema("id", DataType.INT64, is_primary=True),
              FieldSchema("v", DataType.FLOAT_VECTOR, dim=4)]
    c = Collection(name, CollectionSchema(fields), shards_num=1, using=alias)
    c.create_index("v", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
    c.load()
    c.insert([list(range(0, 100)), [[0.1] * 4] * 100])
    from pymilvus import connections
    from pymilvus.grpc_gen import milvus_pb2
    described = connections._fetch_handler(alias)._stub.DescribeCollection(  # noqa: SLF001
        milvus_pb2.DescribeCollectionRequest(collection_name=name))
    vchannel, pchannel = described.virtual_channel_names[0], described.physical_channel_names[0]
    time.sleep(2)  # the insert and a few ticks are in the stream
    before = last_sequences()
    c.insert([list(range(100, 150)), [[0.2] * 4] * 50])
    c.delete("id in [120, 121]")
    positions = {ch: msg_position(ch, seq) for ch, seq in before.items() if seq > 0}
    assert positions, before
    # The official CDC keys positions by virtual channel: accept both.
    assert vchannel.startswith(pchannel + "_")
    positions[vchannel] = positions.pop(pchannel)
    body = create_body()
    body["request_data"]["collection_infos"] = [{"name": "*", "positions": positions}]
    status, resp = agent.cdc(body)
    assert status == 200, resp
    task_id = resp["data"]["task_id"]
    tgt = connect("pos-tgt", TARGET, TARGET_TOKEN)
    want = set(range(100, 150)) - {120, 121}
    deadline = time.time() + 180
    got = None
    while time.time() < deadline:
        try:
            if utility.has_collection(name, using=tgt):
                # The index and load before the positions are not replayed.
                tc = Collection(name, using=tgt)
                if not tc.indexes:
                    tc.create_index("v", {"index_type": "FLAT", "metric_type": "L2",
                                          "params": {}})
                tc.load()
                got = keys(tgt, name)
                if got == want:
                    break
        except Exception as e:  # noqa: BLE001 - not there yet
            got = repr(e)
        time.sleep(2)
    assert got == want, f"only what came after the positions: {got}"
    # The task's checkpoints come back in the same encoding, past the start.
    status, resp = agent.cdc({"request_type": "position", "request_data": {"task_id": task_id}})
    assert status == 200, resp
    listed = {p["channel_name"]: p for p in resp["data"]["positions"]}
    for ch, seq in before.items():
        if seq == 0 or ch not in listed:
            continue
        name_in, got_seq, ts = decode_position(listed[ch]["msg_id"])
        assert name_in == ch
        assert got_seq >= seq, (ch, got_seq, seq)
        assert listed[ch]["tt"] == ts


def test_bad_positions_are_refused_with_the_field_named(agent):
    body = create_body()
    body["request_data"]["collection_infos"] = [
        {"name": "*", "positions": {"by-dev-rootcoord-dml_0": "not base64!"}}]
    status, resp = agent.cdc(body)
    assert status == 400 and "positions" in resp["message"], resp
    body["request_data"]["collection_infos"] = [
        {"name": "*", "positions": {"no-such-channel": msg_position("x", 1)}}]
    status, resp = agent.cdc(body)
    assert status == 400 and "no-such-channel" in resp["message"], resp
    status, resp = agent.cdc({"request_type": "list"})
    assert status == 200 and resp["data"]["tasks"] == [], "no half-created task"
    status, resp = agent.cdc({"request_type": "position",
                              "request_data": {"task_id": "0123456789abcdef0123456789abcdef"}})
    assert status == 404, resp
