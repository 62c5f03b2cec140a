#!/usr/bin/env python3
"""Capture raw Milvus msgstream messages from a running test stack as fixtures.

Drives the *source* Milvus (natsmq) with pymilvus -- create a small collection,
insert 5 rows, delete 2 by primary key, flush, create an index, load -- then
reads every message the workload produced from the JetStream streams
(``by-dev-rootcoord-dml_N`` and ``by-dev-replicate-msg``; subject = stream
name) with nats-py, and writes

* ``<out>/<kind>.bin``: ONE raw JetStream message body per kind
  (create_collection, insert, delete, time_tick from the DML channel;
  create_index, load_collection, flush from the replicate channel),
* ``<out>/manifest.json``: per fixture the stream, JetStream sequence,
  msg_type and the decoded truth a decoder test should assert,
* ``<out>/README.md``: every msg_type seen per stream during the workload.

Truth is decoded with the protobuf classes shipped in pymilvus
(``pymilvus.grpc_gen.msg_pb2`` / ``milvus_pb2``); each fixture is also checked
to re-serialize byte-for-byte and to carry no unknown fields.

Usage (stack running, venv python):
    .venv/bin/python scripts/capture_fixtures.py [--out tests/fixtures]
"""

import argparse
import asyncio
import collections
import datetime
import hashlib
import json
import os
import sys
import time

import nats
from nats.js.errors import NotFoundError
from pymilvus import (Collection, CollectionSchema, DataType, FieldSchema,
                      connections, utility)
from pymilvus import __version__ as pymilvus_version
from pymilvus.grpc_gen import common_pb2, milvus_pb2, msg_pb2, schema_pb2

COLLECTION = "cdc_fixture"
ROWS = {
    "pk": [1, 2, 3, 4, 5],
    # dyadic fractions: exact in float32 and in JSON, so tests can compare with ==
    "vec": [[float(i), i + 0.5, -float(i), i * 0.25] for i in range(1, 6)],
    "name": ["alpha", "beta", "gamma", "delta", "epsilon"],
}
DELETE_PKS = [2, 4]
INDEX_PARAMS = {"index_type": "IVF_FLAT", "metric_type": "L2", "params": {"nlist": 8}}
INDEX_NAME = "vec_idx"

MSG_TYPE_NAMES = {v.number: v.name for v in common_pb2.MsgType.DESCRIPTOR.values}

# fixture kind -> (msg_type, which stream, protobuf class)
KINDS = {
    "create_collection": (common_pb2.CreateCollection, "dml", msg_pb2.CreateCollectionRequest),
    "insert": (common_pb2.Insert, "dml", msg_pb2.InsertRequest),
    "delete": (common_pb2.Delete, "dml", msg_pb2.DeleteRequest),
    "time_tick": (common_pb2.TimeTick, "dml", msg_pb2.TimeTickMsg),
    "create_index": (common_pb2.CreateIndex, "replicate", milvus_pb2.CreateIndexRequest),
    "load_collection": (common_pb2.LoadCollection, "replicate", milvus_pb2.LoadCollectionRequest),
    "flush": (common_pb2.Flush, "replicate", milvus_pb2.FlushRequest),
}


def log(msg):
    print(f"[capture] {msg}", file=sys.stderr, flush=True)


def msg_base(data: bytes) -> common_pb2.MsgBase:
    """Field 1 of every msgstream message is common.MsgBase."""
    return msg_pb2.TimeTickMsg.FromString(data).base


def base_truth(base: common_pb2.MsgBase) -> dict:
    out = {
        "msg_type": base.msg_type,
        "msg_type_name": MSG_TYPE_NAMES.get(base.msg_type, "?"),
        "msgID": base.msgID,
        "timestamp": base.timestamp,
        "timestamp_physical_ms": base.timestamp >> 18,
        "timestamp_logical": base.timestamp & ((1 << 18) - 1),
        "sourceID": base.sourceID,
        "targetID": base.targetID,
    }
    if base.properties:
        out["properties"] = dict(base.properties)
    if base.HasField("replicateInfo"):
        out["replicateInfo"] = {"isReplicate": base.replicateInfo.isReplicate,
                                "msgTimestamp": base.replicateInfo.msgTimestamp}
    return out


def field_data_truth(fd: schema_pb2.FieldData) -> dict:
    out = {"field_name": fd.field_name, "field_id": fd.field_id,
           "type": schema_pb2.DataType.Name(fd.type)}
    if fd.HasField("scalars"):
        kind = fd.scalars.WhichOneof("data")
        out["scalars_kind"] = kind
        out["values"] = list(getattr(fd.scalars, kind).data)
    elif fd.HasField("vectors"):
        kind = fd.vectors.WhichOneof("data")
        out["vectors_kind"] = kind
        out["dim"] = fd.vectors.dim
        if kind == "float_vector":
            flat = list(fd.vectors.float_vector.data)
            out["values"] = [flat[i:i + fd.vectors.dim] for i in range(0, len(flat), fd.vectors.dim)]
        else:
            out["values_hex"] = getattr(fd.vectors, kind).hex()
    return out


def ids_truth(ids: schema_pb2.IDs) -> dict:
    kind = ids.WhichOneof("id_field")
    if kind is None:
        return {}
    return {"kind": kind, "values": list(getattr(ids, kind).data)}


def schema_truth(raw: bytes) -> dict:
    sch = schema_pb2.CollectionSchema.FromString(raw)
    fields = []
    for f in sch.fields:
        fields.append({
            "fieldID": f.fieldID, "name": f.name, "is_primary_key": f.is_primary_key,
            "autoID": f.autoID, "data_type": schema_pb2.DataType.Name(f.data_type),
            "data_type_number": f.data_type,
            "type_params": {kv.key: kv.value for kv in f.type_params},
            "index_params": {kv.key: kv.value for kv in f.index_params},
            "is_partition_key": f.is_partition_key,
            "is_dynamic": f.is_dynamic,
        })
    return {"name": sch.name, "description": sch.description, "autoID": sch.autoID,
            "enable_dynamic_field": sch.enable_dynamic_field, "fields": fields}


def decode_truth(kind: str, data: bytes) -> dict:
    cls = KINDS[kind][2]
    msg = cls.FromString(data)
    truth = {"proto": cls.DESCRIPTOR.full_name, "base": base_truth(msg.base)}
    if kind == "create_collection":
        truth.update({
            "db_name": msg.db_name, "collection_name": msg.collectionName,
            "partition_name": msg.partitionName, "dbID": msg.dbID,
            "collectionID": msg.collectionID, "partitionID": msg.partitionID,
            "partitionIDs": list(msg.partitionIDs),
            "virtual_channel_names": list(msg.virtualChannelNames),
            "physical_channel_names": list(msg.physicalChannelNames),
            "schema_bytes_len": len(msg.schema),
            "schema": schema_truth(msg.schema),
        })
    elif kind == "insert":
        truth.update({
            "shard_name": msg.shardName, "db_name": msg.db_name,
            "collection_name": msg.collection_name, "partition_name": msg.partition_name,
            "dbID": msg.dbID, "collectionID": msg.collectionID, "partitionID": msg.partitionID,
            "segmentID": msg.segmentID, "num_rows": msg.num_rows,
            "version": msg_pb2.InsertDataVersion.Name(msg.version),
            "timestamps": list(msg.timestamps), "rowIDs": list(msg.rowIDs),
            "row_data_len": len(msg.row_data),
            "fields_data": [field_data_truth(fd) for fd in msg.fields_data],
        })
    elif kind == "delete":
        truth.update({
            "shard_name": msg.shardName, "db_name": msg.db_name,
            "collection_name": msg.collection_name, "partition_name": msg.partition_name,
            "dbID": msg.dbID, "collectionID": msg.collectionID, "partitionID": msg.partitionID,
            "num_rows": msg.num_rows, "timestamps": list(msg.timestamps),
            "int64_primary_keys": list(msg.int64_primary_keys),
            "primary_keys": ids_truth(msg.primary_keys),
        })
    elif kind == "create_index":
        truth.update({
            "db_name": msg.db_name, "collection_name": msg.collection_name,
            "field_name": msg.field_name, "index_name": msg.index_name,
            "extra_params": {kv.key: kv.value for kv in msg.extra_params},
        })
    elif kind == "load_collection":
        truth.update({
            "db_name": msg.db_name, "collection_name": msg.collection_name,
            "replica_number": msg.replica_number, "resource_groups": list(msg.resource_groups),
            "refresh": msg.refresh,
        })
    elif kind == "flush":
        truth.update({"db_name": msg.db_name, "collection_names": list(msg.collection_names)})
    # Go and python order fields differently in some messages (FieldData: Go puts
    # field_id 5 before the oneof 3), so False here is not an error.
    truth["roundtrip_exact"] = msg.SerializeToString() == data
    truth["unknown_fields"] = _unknown_field_numbers(msg)
    return truth


def cls_roundtrip_sorted(kind: str, data: bytes):
    """True if parse -> re-encode -> parse gives an equal message."""
    cls = KINDS[kind][2]
    msg = cls.FromString(data)
    return cls.FromString(msg.SerializeToString()) == msg


def _unknown_field_numbers(msg) -> list:
    """Unknown field numbers at top level (empty = the class matches the bytes)."""
    try:
        from google.protobuf import unknown_fields  # protobuf >= 4.22
        return sorted({f.field_number for f in unknown_fields.UnknownFieldSet(msg)})
    except ImportError:  # pragma: no cover
        return []


# ---------------------------------------------------------------------------
# JetStream side

async def stream_states(js) -> dict:
    out = {}
    for si in await js.streams_info():
        out[si.config.name] = {"first_seq": si.state.first_seq, "last_seq": si.state.last_seq,
                               "subjects": list(si.config.subjects or [])}
    return out


async def read_new(js, before: dict, after: dict):
    """Every message appended to any stream between the two snapshots."""
    msgs = []
    for name, st in sorted(after.items()):
        start = before.get(name, {}).get("last_seq", 0) + 1
        start = max(start, st["first_seq"])
        for seq in range(start, st["last_seq"] + 1):
            try:
                raw = await js.get_msg(name, seq)
            except NotFoundError:
                continue
            msgs.append((name, seq, raw.data or b"", dict(raw.headers or {})))
    return msgs


# ---------------------------------------------------------------------------
# Milvus side

def run_workload(uri: str, token: str) -> dict:
    connections.connect(alias="default", uri=uri, token=token)
    if utility.has_collection(COLLECTION):
        log(f"dropping existing collection {COLLECTION}")
        utility.drop_collection(COLLECTION)
    return {"server_version": utility.get_server_version()}


def run_workload_ops(shards: int) -> dict:
    fields = [
        FieldSchema("pk", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4),
        FieldSchema("name", DataType.VARCHAR, max_length=64),
    ]
    schema = CollectionSchema(fields, description="cdc fixture collection")
    t0 = time.time()
    col = Collection(COLLECTION, schema, shards_num=shards, consistency_level="Strong")
    log("created collection")
    res = col.insert([ROWS["pk"], ROWS["vec"], ROWS["name"]])
    log(f"inserted {res.insert_count} rows")
    res = col.delete(f"pk in {DELETE_PKS}")
    log(f"deleted {res.delete_count} rows")
    col.flush()
    log("flushed")
    col.create_index("vec", INDEX_PARAMS, index_name=INDEX_NAME)
    log("created index")
    col.load()
    log("loaded")
    rows = col.query("pk >= 0", output_fields=["pk", "name"])
    return {"workload_seconds": round(time.time() - t0, 2),
            "rows_visible_after_load": sorted(r["pk"] for r in rows)}


async def main_async(args) -> int:
    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=1)
    js = nc.jetstream()

    info = run_workload(args.milvus_uri, args.token)
    # the drop above (if any) is before the baseline; give it time to land
    await asyncio.sleep(1.0)
    before = await stream_states(js)
    wall_start = datetime.datetime.now(datetime.timezone.utc)
    info.update(run_workload_ops(args.shards))
    log(f"waiting {args.settle}s for trailing time ticks")
    await asyncio.sleep(args.settle)
    after = await stream_states(js)
    msgs = await read_new(js, before, after)
    await nc.close()
    log(f"read {len(msgs)} new messages from {len(after)} streams")

    counts = collections.defaultdict(collections.Counter)
    header_keys = collections.Counter()
    picked = {}
    coll_id = None
    for name, seq, data, headers in msgs:
        for k in headers:
            header_keys[k] += 1
        try:
            base = msg_base(data)
            mtype = base.msg_type
        except Exception:  # pylint: disable=broad-except
            mtype = -1
        counts[name][mtype] += 1
        if mtype == common_pb2.CreateCollection:
            cc = msg_pb2.CreateCollectionRequest.FromString(data)
            # rootcoord leaves db_name/collectionName empty: the name is in the schema
            if schema_pb2.CollectionSchema.FromString(cc.schema).name == COLLECTION:
                coll_id = cc.collectionID
    if coll_id is None:
        log("no CreateCollection message for the fixture collection was seen")
        return 1

    # one message per kind, belonging to the fixture collection
    dml_stream = None
    for name, seq, data, headers in msgs:
        mtype = msg_base(data).msg_type if data else -1
        for kind, (want, where, cls) in KINDS.items():
            if kind in picked or mtype != want or kind == "time_tick":
                continue
            is_repl = name.endswith("replicate-msg")
            if (where == "replicate") != is_repl:
                continue
            msg = cls.FromString(data)
            cname = getattr(msg, "collection_name", None) or getattr(msg, "collectionName", None)
            if kind == "create_collection":
                cname = COLLECTION if msg.collectionID == coll_id else None
            if kind == "flush":
                cname = COLLECTION if COLLECTION in msg.collection_names else None
            if cname != COLLECTION:
                continue
            if kind == "create_collection":
                dml_stream = name
            picked[kind] = (name, seq, data, headers)
    # a time tick from the collection's DML stream, after the insert
    ins_seq = picked.get("insert", (None, 0))[1]
    for name, seq, data, headers in msgs:
        if name == dml_stream and seq > ins_seq and msg_base(data).msg_type == common_pb2.TimeTick:
            picked["time_tick"] = (name, seq, data, headers)
            break
    missing = sorted(set(KINDS) - set(picked))
    if missing:
        log(f"missing fixture kinds: {missing}")
        return 1

    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "generated_by": "scripts/capture_fixtures.py",
        "captured_at": wall_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "milvus_server_version": info["server_version"],
        "milvus_pypi_package": "milvus==2.3.5 (natsmq)",
        "pymilvus": pymilvus_version,
        "workload": {
            "collection": COLLECTION, "shards_num": args.shards,
            "schema": "pk INT64 primary (auto_id=false), vec FLOAT_VECTOR dim 4, name VARCHAR(64)",
            "inserted": ROWS, "deleted_pks": DELETE_PKS,
            "index": {"field": "vec", "index_name": INDEX_NAME, **INDEX_PARAMS},
            "seconds": info["workload_seconds"],
            "rows_visible_after_load": info["rows_visible_after_load"],
        },
        "collection_id": coll_id,
        "dml_stream": dml_stream,
        "jetstream_header_keys": dict(header_keys),
        "dml_stream_trace": trace_of(msgs, dml_stream, 12),
        "replicate_stream_trace": trace_of(msgs, "by-dev-replicate-msg", 12),
        "fixtures": {},
    }
    for kind in KINDS:
        name, seq, data, headers = picked[kind]
        fname = f"{kind}.bin"
        with open(os.path.join(args.out, fname), "wb") as fp:
            fp.write(data)
        truth = decode_truth(kind, data)
        if truth["unknown_fields"]:
            log(f"WARNING {kind}: unknown_fields={truth['unknown_fields']}")
        if cls_roundtrip_sorted(kind, data) is False:
            log(f"WARNING {kind}: bytes differ from pymilvus' encoding beyond field order")
        manifest["fixtures"][kind] = {
            "file": fname, "stream": name, "subject": name, "sequence": seq,
            "msg_type": truth["base"]["msg_type"],
            "msg_type_name": truth["base"]["msg_type_name"],
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "headers": sorted(headers),
            "expected": truth,
        }
        log(f"{fname}: {name} seq {seq} {len(data)} bytes")
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as fp:
        json.dump(manifest, fp, indent=2, sort_keys=False)
        fp.write("\n")
    write_readme(args.out, manifest, counts, after, before)
    print(json.dumps({k: {m: c for m, c in v.items()} for k, v in counts.items()}, indent=1))
    return 0


def trace_of(msgs, stream, limit):
    """First messages of one stream of the workload: order, type and timestamps."""
    out = []
    for name, seq, data, headers in msgs:
        if name != stream:
            continue
        base = msg_base(data)
        out.append({"seq": seq, "msg_type": base.msg_type,
                    "msg_type_name": MSG_TYPE_NAMES.get(base.msg_type, "?"),
                    "timestamp": base.timestamp,
                    "timestamp_physical_ms": base.timestamp >> 18,
                    "timestamp_logical": base.timestamp & ((1 << 18) - 1),
                    "msgID": base.msgID, "sourceID": base.sourceID,
                    "size": len(data), "headers": sorted(headers)})
        if len(out) >= limit:
            break
    return out


def write_readme(out, manifest, counts, after, before):
    lines = [
        "# Captured Milvus msgstream fixtures",
        "",
        "Raw JetStream message bodies captured from a real Milvus 2.3.5 standalone (PyPI `milvus`",
        "package, `mq.type=natsmq`) by `scripts/capture_fixtures.py`. Each `.bin` is exactly one",
        "message body as stored in the stream (subject = stream name); it starts with field 1 =",
        "`common.MsgBase`. `manifest.json` records for each file its stream, JetStream sequence,",
        "msg_type, sha256 and the decoded values (`expected`) a decoder test should assert;",
        "`expected.roundtrip_exact` says whether pymilvus' protobuf classes re-encode the bytes",
        "identically (Go writes `FieldData.field_id` (5) before the oneof (3), so `insert` is",
        "not byte-identical although it decodes to the same message); `expected.unknown_fields`",
        "lists top-level fields those classes do not know (empty for all).",
        "",
        "Refresh: `scripts/stack.sh reset && scripts/stack.sh start && "
        ".venv/bin/python scripts/capture_fixtures.py` (ids and timestamps change each run).",
        "",
        f"Workload on collection `{manifest['workload']['collection']}` "
        f"(shards_num={manifest['workload']['shards_num']}, DML stream `{manifest['dml_stream']}`): "
        "create collection, insert 5 rows, delete 2 by pk, flush, create index (IVF_FLAT/L2), load.",
        f"It took {manifest['workload']['seconds']} s; messages were read for a few seconds after it.",
        "",
        "| file | stream | seq | msg_type | proto | bytes |",
        "|---|---|---|---|---|---|",
    ]
    for kind, fx in manifest["fixtures"].items():
        lines.append(f"| `{fx['file']}` | `{fx['stream']}` | {fx['sequence']} | "
                     f"{fx['msg_type']} {fx['msg_type_name']} | `{fx['expected']['proto']}` | {fx['size']} |")
    lines += [
        "",
        "## Message types seen during the workload (per stream)",
        "",
        "Time tick counts depend on how long the capture ran (about one per 200 ms on each",
        "channel that has a collection while `common.ttMsgEnabled=true`).",
        "",
        "| stream | msg_type | name | count |",
        "|---|---|---|---|",
    ]
    for name in sorted(counts, key=_stream_sort_key):
        for mtype, cnt in sorted(counts[name].items()):
            lines.append(f"| `{name}` | {mtype} | {MSG_TYPE_NAMES.get(mtype, 'undecodable')} | {cnt} |")
    quiet = sorted((n for n in after if n not in counts), key=_stream_sort_key)
    lines += ["", f"Streams that existed but received nothing during the workload: "
              f"{', '.join('`' + n + '`' for n in quiet) or 'none'}.", ""]
    lines += ["JetStream headers seen: " + ", ".join(
        f"`{k}` ×{v}" for k, v in sorted(manifest["jetstream_header_keys"].items())) + ".", ""]
    lines += ["## Notes for decoders (checked on this capture)", ""] + decoder_notes(manifest) + [""]
    lines += [
        "## Order and timestamps on the DML stream (first messages)",
        "",
        "Timestamps are hybrid: `physical_ms << 18 | logical`. A time tick does not",
        "necessarily carry a timestamp >= the messages just before it on the stream; Milvus'",
        "own consumer moves messages whose ts is above the tick into the next pack. Resume by",
        "JetStream sequence, not by timestamp.",
        "",
        "| seq | msg_type | physical ms | logical | msgID | sourceID | bytes | headers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in manifest["dml_stream_trace"] + [None] + manifest["replicate_stream_trace"]:
        if t is None:
            lines += ["", "Replicate stream `by-dev-replicate-msg`:", "",
                      "| seq | msg_type | physical ms | logical | msgID | sourceID | bytes | headers |",
                      "|---|---|---|---|---|---|---|---|"]
            continue
        lines.append(f"| {t['seq']} | {t['msg_type']} {t['msg_type_name']} | {t['timestamp_physical_ms']} | "
                     f"{t['timestamp_logical']} | {t['msgID']} | {t['sourceID']} | {t['size']} | "
                     f"{', '.join(t['headers']) or '-'} |")
    lines.append("")
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines))


def decoder_notes(manifest) -> list:
    """Facts a decoder must handle, each verified on the captured messages."""
    fx = {k: v["expected"] for k, v in manifest["fixtures"].items()}
    notes = []
    cc = fx["create_collection"]
    if not cc["collection_name"] and not cc["db_name"]:
        notes.append("- `CreateCollectionRequest` carries no `collectionName`/`db_name` (empty): take the "
                     "name from the embedded `schema` bytes (`schema.CollectionSchema.name`), the id from "
                     "`collectionID`.")
    system = [f"`{f['name']}` (fieldID {f['fieldID']})" for f in cc["schema"]["fields"] if f["fieldID"] < 100]
    if system:
        notes.append(f"- Its schema also lists the system fields {', '.join(system)}; "
                     "drop them before creating the collection elsewhere.")
    dml_db = {fx[k]["db_name"] for k in ("create_collection", "insert", "delete")}
    repl_db = {fx[k]["db_name"] for k in ("create_index", "load_collection", "flush")}
    notes.append(f"- `db_name` on the DML channel: {sorted(dml_db)}; on the replicate channel: "
                 f"{sorted(repl_db)} (treat empty as `default`).")
    de = fx["delete"]
    notes.append(f"- `DeleteRequest`: keys in `primary_keys` ({de['primary_keys'].get('kind')}), "
                 f"`int64_primary_keys` has {len(de['int64_primary_keys'])} entries; "
                 f"`partitionID` = {de['partitionID']}, `partition_name` = {de['partition_name']!r} "
                 "(all partitions).")
    ins = fx["insert"]
    notes.append(f"- `InsertRequest` is `{ins['version']}` (`fields_data`, `row_data` has "
                 f"{ins['row_data_len']} entries); `rowIDs` are Milvus-internal ids, not primary keys.")
    same = [k for k in ("create_index", "load_collection", "flush")
            if fx[k]["base"]["msgID"] == fx[k]["base"]["timestamp"]]
    if same:
        notes.append(f"- Replicate-channel messages ({', '.join(same)}) have `base.msgID == base.timestamp`.")
    trace = manifest["dml_stream_trace"]
    for prev, cur in zip(trace, trace[1:]):
        if cur["msg_type"] == common_pb2.TimeTick and prev["msg_type"] != common_pb2.TimeTick \
                and cur["timestamp"] < prev["timestamp"]:
            notes.append(f"- Seq {cur['seq']} TimeTick has ts logical {cur['timestamp_logical']} < the "
                         f"preceding {prev['msg_type_name']} (seq {prev['seq']}, logical "
                         f"{prev['timestamp_logical']}): do not assume ticks bound the messages before them.")
            break
    all_trace = manifest["dml_stream_trace"] + manifest["replicate_stream_trace"]
    ticks_bare = all(not t["headers"] for t in all_trace if t["msg_type"] == common_pb2.TimeTick)
    others_traced = all(t["headers"] == ["traceparent"] for t in all_trace
                        if t["msg_type"] != common_pb2.TimeTick)
    if ticks_bare and others_traced:
        notes.append("- JetStream headers: every non-tick message has exactly `traceparent`; "
                     "time ticks have no headers.")
    return notes


def _stream_sort_key(name):
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def main() -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--milvus-uri",
                   default=f"http://127.0.0.1:{os.environ.get('CDC_SOURCE_PORT', '19530')}")
    p.add_argument("--token", default=os.environ.get("CDC_SOURCE_TOKEN", ""),
                   help="user:password when the source has authorization enabled")
    p.add_argument("--nats-url",
                   default=f"nats://127.0.0.1:{os.environ.get('CDC_NATS_PORT', '4222')}")
    p.add_argument("--out", default=os.path.join(repo, "tests", "fixtures"))
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds to keep collecting after the workload")
    args = p.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
