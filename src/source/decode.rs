//! Decoding one msgstream payload into an [`Event`]. The message type is read
//! first from field 1 (`common.MsgBase`), shared by every Milvus message,
//! then the body is decoded once into its generated type.

use std::sync::Arc;

use prost::Message;

use super::event::{CreateCollection, Event, EventKind, Position};
use crate::proto::{common::MsgBase, common::MsgType, milvus as mpb, msg, schema};

/// A payload that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what} at {channel}#{sequence}: {message}")]
pub struct DecodeError {
    /// Channel of the message.
    pub channel: Arc<str>,
    /// Sequence of the message.
    pub sequence: u64,
    /// What was being decoded.
    pub what: &'static str,
    /// The decoder's error.
    pub message: String,
}

/// Only field 1 of any Milvus message: enough to learn its type and time.
#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(message, optional, tag = "1")]
    base: Option<MsgBase>,
}

/// Decodes `payload`, read at `position`.
pub fn decode(position: Position, payload: &[u8]) -> Result<Event, DecodeError> {
    let fail = |what: &'static str, e: &dyn std::fmt::Display| DecodeError {
        channel: position.channel.clone(),
        sequence: position.sequence,
        what,
        message: e.to_string(),
    };
    let header = Header::decode(payload).map_err(|e| fail("message header", &e))?;
    let base = header.base.unwrap_or_default();
    let msg_type = base.msg_type;

    macro_rules! body {
        ($ty:ty, $what:literal) => {
            <$ty>::decode(payload).map_err(|e| fail($what, &e))?
        };
    }

    let kind = match MsgType::try_from(msg_type) {
        Ok(MsgType::TimeTick) => EventKind::TimeTick,
        Ok(MsgType::Insert) => EventKind::Insert(Box::new(body!(msg::InsertRequest, "insert"))),
        Ok(MsgType::Delete) => EventKind::Delete(Box::new(body!(msg::DeleteRequest, "delete"))),
        Ok(MsgType::CreateCollection) => {
            let request = body!(msg::CreateCollectionRequest, "create collection");
            let schema = schema::CollectionSchema::decode(request.schema.as_slice())
                .map_err(|e| fail("collection schema", &e))?;
            EventKind::CreateCollection(Box::new(CreateCollection { request, schema }))
        }
        Ok(MsgType::DropCollection) => {
            EventKind::DropCollection(body!(msg::DropCollectionRequest, "drop collection"))
        }
        Ok(MsgType::CreatePartition) => {
            EventKind::CreatePartition(body!(msg::CreatePartitionRequest, "create partition"))
        }
        Ok(MsgType::DropPartition) => {
            EventKind::DropPartition(body!(msg::DropPartitionRequest, "drop partition"))
        }
        Ok(MsgType::CreateDatabase) => {
            EventKind::CreateDatabase(body!(mpb::CreateDatabaseRequest, "create database"))
        }
        Ok(MsgType::DropDatabase) => {
            EventKind::DropDatabase(body!(mpb::DropDatabaseRequest, "drop database"))
        }
        Ok(MsgType::CreateIndex) => {
            EventKind::CreateIndex(body!(mpb::CreateIndexRequest, "create index"))
        }
        Ok(MsgType::DropIndex) => EventKind::DropIndex(body!(mpb::DropIndexRequest, "drop index")),
        Ok(MsgType::LoadCollection) => {
            EventKind::LoadCollection(body!(mpb::LoadCollectionRequest, "load collection"))
        }
        Ok(MsgType::ReleaseCollection) => {
            EventKind::ReleaseCollection(body!(mpb::ReleaseCollectionRequest, "release collection"))
        }
        Ok(MsgType::LoadPartitions) => {
            EventKind::LoadPartitions(body!(mpb::LoadPartitionsRequest, "load partitions"))
        }
        Ok(MsgType::ReleasePartitions) => {
            EventKind::ReleasePartitions(body!(mpb::ReleasePartitionsRequest, "release partitions"))
        }
        Ok(MsgType::Flush) => EventKind::Flush(body!(mpb::FlushRequest, "flush")),
        Ok(MsgType::CreateAlias) => {
            EventKind::CreateAlias(body!(mpb::CreateAliasRequest, "create alias"))
        }
        Ok(MsgType::DropAlias) => EventKind::DropAlias(body!(mpb::DropAliasRequest, "drop alias")),
        Ok(MsgType::AlterAlias) => {
            EventKind::AlterAlias(body!(mpb::AlterAliasRequest, "alter alias"))
        }
        _ => EventKind::Unsupported { msg_type },
    };
    // An upsert's insert carries no message timestamp, only row timestamps.
    let timestamp = match (&kind, base.timestamp) {
        (EventKind::Insert(i), 0) => i.timestamps.iter().copied().max().unwrap_or(0),
        (EventKind::Delete(d), 0) => d.timestamps.iter().copied().max().unwrap_or(0),
        (_, ts) => ts,
    };
    Ok(Event {
        position,
        timestamp,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::MsgBase;

    fn pos() -> Position {
        Position {
            channel: "by-dev-rootcoord-dml_0".into(),
            sequence: 7,
        }
    }

    fn base(t: MsgType, ts: u64) -> Option<MsgBase> {
        Some(MsgBase {
            msg_type: t as i32,
            timestamp: ts,
            ..Default::default()
        })
    }

    #[test]
    fn time_tick_and_insert_round_trip() {
        let tt = msg::TimeTickMsg {
            base: base(MsgType::TimeTick, 42),
        };
        let ev = decode(pos(), &tt.encode_to_vec()).unwrap();
        assert_eq!(ev.kind, EventKind::TimeTick);
        assert_eq!(ev.timestamp, 42);
        assert_eq!(ev.position.sequence, 7);

        let ins = msg::InsertRequest {
            base: base(MsgType::Insert, 43),
            collection_name: "c".into(),
            num_rows: 2,
            ..Default::default()
        };
        let ev = decode(pos(), &ins.encode_to_vec()).unwrap();
        match ev.kind {
            EventKind::Insert(i) => assert_eq!(i.collection_name, "c"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_type_is_unsupported_not_an_error() {
        let m = msg::TimeTickMsg {
            base: base(MsgType::DataNodeTt, 1),
        };
        let ev = decode(pos(), &m.encode_to_vec()).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Unsupported {
                msg_type: MsgType::DataNodeTt as i32
            }
        );
    }

    #[test]
    fn garbage_is_an_error_with_position() {
        let err = decode(pos(), &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.sequence, 7);
        assert!(err.to_string().contains("dml_0#7"), "{err}");
    }

    #[test]
    fn bad_schema_is_an_error() {
        let m = msg::CreateCollectionRequest {
            base: base(MsgType::CreateCollection, 1),
            schema: vec![0xff, 0xff],
            ..Default::default()
        };
        let err = decode(pos(), &m.encode_to_vec()).unwrap_err();
        assert_eq!(err.what, "collection schema");
    }
}
