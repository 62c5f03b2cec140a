//! Human- and test-readable JSON views of events and column data, used by
//! `milvus-cdc source dump` (and by tests that compare what the reader saw
//! with what pymilvus wrote).

use serde_json::{json, Value};

use super::event::{Event, EventKind};
use crate::proto::schema::{
    field_data::Field, i_ds::IdField, scalar_field::Data as Scalar, vector_field::Data as Vector,
    FieldData, IDs,
};

/// The values of one column as a JSON array (vectors as arrays of numbers,
/// binary data as hex strings, JSON fields parsed).
pub fn column_values(field: &FieldData) -> Value {
    match &field.field {
        Some(Field::Scalars(s)) => match &s.data {
            Some(Scalar::BoolData(d)) => json!(d.data),
            Some(Scalar::IntData(d)) => json!(d.data),
            Some(Scalar::LongData(d)) => json!(d.data),
            Some(Scalar::FloatData(d)) => json!(d.data),
            Some(Scalar::DoubleData(d)) => json!(d.data),
            Some(Scalar::StringData(d)) => json!(d.data),
            Some(Scalar::BytesData(d)) => {
                Value::Array(d.data.iter().map(|b| json!(hex::encode(b))).collect())
            }
            Some(Scalar::JsonData(d)) => Value::Array(
                d.data
                    .iter()
                    .map(|b| {
                        serde_json::from_slice(b)
                            .unwrap_or_else(|_| json!(String::from_utf8_lossy(b)))
                    })
                    .collect(),
            ),
            Some(Scalar::ArrayData(d)) => Value::Array(
                d.data
                    .iter()
                    .map(|inner| {
                        column_values(&FieldData {
                            field: Some(Field::Scalars(inner.clone())),
                            ..Default::default()
                        })
                    })
                    .collect(),
            ),
            None => json!([]),
        },
        Some(Field::Vectors(v)) => {
            let dim = usize::try_from(v.dim).unwrap_or(0).max(1);
            match &v.data {
                Some(Vector::FloatVector(d)) => {
                    Value::Array(d.data.chunks(dim).map(|c| json!(c)).collect())
                }
                Some(Vector::BinaryVector(b)) => Value::Array(
                    b.chunks(dim.div_ceil(8))
                        .map(|c| json!(hex::encode(c)))
                        .collect(),
                ),
                Some(Vector::Float16Vector(b)) | Some(Vector::Bfloat16Vector(b)) => {
                    Value::Array(b.chunks(dim * 2).map(|c| json!(hex::encode(c))).collect())
                }
                None => json!([]),
            }
        }
        None => json!([]),
    }
}

/// Primary keys as a JSON array.
pub fn ids_values(ids: Option<&IDs>) -> Value {
    match ids.and_then(|i| i.id_field.as_ref()) {
        Some(IdField::IntId(l)) => json!(l.data),
        Some(IdField::StrId(s)) => json!(s.data),
        None => json!([]),
    }
}

/// A summary of `event`: position, time, kind and the fields that identify
/// what changed (full rows for inserts, keys for deletes).
pub fn event_json(event: &Event) -> Value {
    let mut v = json!({
        "channel": &*event.position.channel,
        "sequence": event.position.sequence,
        "timestamp": event.timestamp,
        "kind": event.kind.name(),
    });
    let extra = match &event.kind {
        EventKind::CreateCollection(c) => json!({
            "db": c.request.db_name,
            "collection": c.name(),
            "collection_id": c.request.collection_id,
            "fields": c.user_fields().map(|f| json!({
                "name": f.name, "data_type": f.data_type, "is_primary_key": f.is_primary_key,
                "auto_id": f.auto_id, "is_partition_key": f.is_partition_key,
                "type_params": f.type_params.iter().map(|p| (p.key.clone(), json!(p.value))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "enable_dynamic_field": c.schema.enable_dynamic_field,
            "virtual_channels": c.request.virtual_channel_names,
            "physical_channels": c.request.physical_channel_names,
        }),
        EventKind::DropCollection(d) => {
            json!({"db": d.db_name, "collection": d.collection_name, "collection_id": d.collection_id})
        }
        EventKind::CreatePartition(p) => json!({
            "db": p.db_name, "collection": p.collection_name, "partition": p.partition_name,
            "collection_id": p.collection_id, "partition_id": p.partition_id,
        }),
        EventKind::DropPartition(p) => json!({
            "db": p.db_name, "collection": p.collection_name, "partition": p.partition_name,
            "collection_id": p.collection_id, "partition_id": p.partition_id,
        }),
        EventKind::Insert(i) => json!({
            "db": i.db_name,
            "collection": i.collection_name,
            "partition": i.partition_name,
            "shard": i.shard_name,
            "num_rows": i.num_rows,
            "row_timestamps": i.timestamps.iter().take(3).collect::<Vec<_>>(),
            "columns": i.fields_data.iter()
                .map(|f| (f.field_name.clone(), column_values(f)))
                .collect::<serde_json::Map<_, _>>(),
        }),
        EventKind::Delete(d) => json!({
            "db": d.db_name,
            "collection": d.collection_name,
            "partition": d.partition_name,
            "shard": d.shard_name,
            "num_rows": d.num_rows,
            "row_timestamps": d.timestamps.iter().take(3).collect::<Vec<_>>(),
            "primary_keys": ids_values(d.primary_keys.as_ref()),
        }),
        EventKind::CreateDatabase(d) => json!({"db": d.db_name}),
        EventKind::DropDatabase(d) => json!({"db": d.db_name}),
        EventKind::CreateIndex(i) => json!({
            "db": i.db_name, "collection": i.collection_name, "field": i.field_name,
            "index_name": i.index_name,
            "params": i.extra_params.iter().map(|p| (p.key.clone(), json!(p.value))).collect::<serde_json::Map<_, _>>(),
        }),
        EventKind::DropIndex(i) => json!({
            "db": i.db_name, "collection": i.collection_name, "field": i.field_name, "index_name": i.index_name,
        }),
        EventKind::LoadCollection(l) => {
            json!({"db": l.db_name, "collection": l.collection_name, "replicas": l.replica_number})
        }
        EventKind::ReleaseCollection(r) => {
            json!({"db": r.db_name, "collection": r.collection_name})
        }
        EventKind::LoadPartitions(l) => {
            json!({"db": l.db_name, "collection": l.collection_name, "partitions": l.partition_names})
        }
        EventKind::ReleasePartitions(r) => {
            json!({"db": r.db_name, "collection": r.collection_name, "partitions": r.partition_names})
        }
        EventKind::Flush(f) => json!({"db": f.db_name, "collections": f.collection_names}),
        EventKind::CreateAlias(a) => {
            json!({"db": a.db_name, "collection": a.collection_name, "alias": a.alias})
        }
        EventKind::DropAlias(a) => json!({"db": a.db_name, "alias": a.alias}),
        EventKind::AlterAlias(a) => {
            json!({"db": a.db_name, "collection": a.collection_name, "alias": a.alias})
        }
        EventKind::Unsupported { msg_type } => json!({"msg_type": msg_type}),
        EventKind::Undecodable(e) => json!({"error": e}),
        EventKind::TimeTick => json!({}),
    };
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    v
}

/// What `milvus-cdc source dump` reads.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Channels to read (each in order; channels one after another).
    pub channels: Vec<String>,
    /// Where to start on each channel.
    pub start: super::mq::StartAt,
    /// Stop a channel after this many events (time ticks included unless skipped).
    pub limit: Option<usize>,
    /// Stop a channel when nothing arrives for this long.
    pub idle: std::time::Duration,
    /// Leave time ticks out of the output.
    pub skip_time_ticks: bool,
    /// Keep reading new messages; otherwise stop each channel at the last
    /// message it held when the dump started.
    pub follow: bool,
}

/// Reads the channels with the production reader and writes one JSON line
/// per event to `out`. Returns the number of events written.
pub async fn dump<Q: super::mq::MessageQueue + ?Sized>(
    mq: std::sync::Arc<Q>,
    opts: &DumpOptions,
    out: &mut (dyn std::io::Write + Send),
) -> std::io::Result<usize> {
    let mut written = 0;
    for channel in &opts.channels {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let cancel = tokio_util::sync::CancellationToken::new();
        let reader = super::reader::ChannelReader::new(mq.clone(), channel, opts.start);
        let handle = tokio::spawn(reader.run(tx, cancel.clone()));
        let end = if opts.follow {
            None
        } else {
            match mq.info(channel).await {
                Ok(i) => Some(i.last_sequence),
                Err(e) => {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"channel": channel, "error": e.to_string()})
                    )?;
                    None
                }
            }
        };
        // Nothing after the start position: the channel is done.
        let start_after = match opts.start {
            super::mq::StartAt::After(s) => s,
            _ => 0,
        };
        let mut count = 0;
        while opts.limit.is_none_or(|l| count < l) && end.is_none_or(|e| e > start_after) {
            let Ok(Some(ev)) = tokio::time::timeout(opts.idle, rx.recv()).await else {
                break;
            };
            let last = end.is_some_and(|e| ev.position.sequence >= e);
            if !(opts.skip_time_ticks && ev.kind == EventKind::TimeTick) {
                count += 1;
                writeln!(out, "{}", event_json(&ev))?;
            }
            if last {
                break;
            }
        }
        cancel.cancel();
        let _ = handle.await;
        written += count;
    }
    out.flush()?;
    Ok(written)
}
