//! Source positions in Milvus's own encoding, so that a position taken from
//! Milvus or from the official milvus-cdc can start a task, and a task's
//! checkpoints can be read by their tools: base64 of a serialized
//! `msgpb.MsgPosition` whose `msgID` is the queue's message id. On natsmq
//! and Kafka that id is 8 bytes, little-endian: the JetStream stream
//! sequence, or the Kafka offset. On Pulsar it is a serialized Pulsar
//! `MessageIdData` (what pulsar-client-go's `MessageID.Serialize()` writes):
//! ledger id, entry id, partition, batch index.

use base64::Engine as _;
use prost::Message as _;

use super::pulsar::PulsarMessageId;
use crate::{config::MqType, proto::msg::MsgPosition};

/// Pulsar's `MessageIdData` (PulsarApi.proto), the fields Milvus's
/// positions carry. Proto2: every field is optional on the wire; pulsar-client-go
/// writes ledger, entry, partition and batch index.
#[derive(Clone, PartialEq, prost::Message)]
struct PulsarMessageIdData {
    #[prost(uint64, optional, tag = "1")]
    ledger_id: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    entry_id: Option<u64>,
    #[prost(int32, optional, tag = "3")]
    partition: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    batch_index: Option<i32>,
    #[prost(int32, optional, tag = "6")]
    batch_size: Option<i32>,
}

/// A position that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PositionError(String);

/// The message a checkpoint points at: the agent's sequence of the last
/// message it has read past, and the source time reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    /// Agent sequence (natsmq: stream sequence; Kafka: offset + 1; Pulsar:
    /// the message id packed as [`PulsarMessageId::sequence`] says).
    pub sequence: u64,
    /// Milvus hybrid timestamp.
    pub timestamp: u64,
}

/// The message id Milvus uses for the message with agent `sequence`.
fn msg_id(mq: MqType, sequence: u64) -> Vec<u8> {
    match mq {
        MqType::Natsmq => sequence.to_le_bytes().to_vec(),
        MqType::Kafka => sequence.saturating_sub(1).to_le_bytes().to_vec(),
        MqType::Pulsar => {
            let id = match PulsarMessageId::from_sequence(sequence) {
                // As a Milvus 2.3 consumer (pulsar-client-go) serializes a
                // received message's id: partition 0, batch index 0 for a
                // message that is not in a batch.
                Some(id) => PulsarMessageIdData {
                    ledger_id: Some(id.ledger_id),
                    entry_id: Some(id.entry_id),
                    partition: Some(0),
                    batch_index: Some(i32::try_from(id.batch_index).unwrap_or(i32::MAX)),
                    batch_size: None,
                },
                // Nothing read yet: Pulsar's "earliest" id (-1:-1).
                None => PulsarMessageIdData {
                    ledger_id: Some(u64::MAX),
                    entry_id: Some(u64::MAX),
                    partition: Some(-1),
                    batch_index: Some(-1),
                    batch_size: None,
                },
            };
            id.encode_to_vec()
        }
    }
}

/// The agent sequence of a Pulsar `msgID`.
fn pulsar_sequence(msg_id: &[u8]) -> Result<u64, PositionError> {
    let id = PulsarMessageIdData::decode(msg_id).map_err(|e| {
        PositionError(format!(
            "msgID is not a serialized Pulsar MessageIdData ({} bytes): {e}",
            msg_id.len()
        ))
    })?;
    let (Some(ledger), Some(entry)) = (id.ledger_id, id.entry_id) else {
        return Err(PositionError(format!(
            "msgID ({} bytes) is not a Pulsar MessageIdData: it has no ledgerId/entryId",
            msg_id.len()
        )));
    };
    if ledger == u64::MAX && entry == u64::MAX {
        // The "earliest" id: before the first message.
        return Ok(0);
    }
    PulsarMessageId::from_raw(ledger, entry, id.batch_index)
        .and_then(|m| m.sequence())
        .map_err(|e| PositionError(format!("Pulsar msgID: {e}")))
}

/// Base64 of the `MsgPosition` of `pos` on physical channel `channel`.
pub fn encode(mq: MqType, channel: &str, pos: SourcePosition) -> String {
    let p = MsgPosition {
        channel_name: channel.to_string(),
        msg_id: msg_id(mq, pos.sequence),
        msg_group: String::new(),
        timestamp: pos.timestamp,
    };
    base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec())
}

/// Decodes a base64 `MsgPosition`: reading resumes after the message it
/// names, and skips changes at or before its timestamp.
pub fn decode(mq: MqType, b64: &str) -> Result<SourcePosition, PositionError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| PositionError(format!("not base64: {e}")))?;
    let p = MsgPosition::decode(bytes.as_slice())
        .map_err(|e| PositionError(format!("not a serialized MsgPosition: {e}")))?;
    if mq == MqType::Pulsar {
        return Ok(SourcePosition {
            sequence: pulsar_sequence(&p.msg_id)?,
            timestamp: p.timestamp,
        });
    }
    let id: [u8; 8] = p.msg_id.as_slice().try_into().map_err(|_| {
        PositionError(format!(
            "msgID has {} bytes; {mq:?} message ids have 8 (little-endian)",
            p.msg_id.len()
        ))
    })?;
    let raw = u64::from_le_bytes(id);
    let sequence = match mq {
        MqType::Natsmq | MqType::Pulsar => raw,
        MqType::Kafka => raw
            .checked_add(1)
            .ok_or_else(|| PositionError("offset out of range".into()))?,
    };
    Ok(SourcePosition {
        sequence,
        timestamp: p.timestamp,
    })
}

/// The physical channel of a channel name: a virtual channel
/// `<pchannel>_<collection id>v<shard>` or a physical one as it is.
pub fn physical_channel(name: &str) -> &str {
    if let Some((p, v)) = name.rsplit_once('_') {
        if let Some((coll, shard)) = v.split_once('v') {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(coll) && digits(shard) {
                return p;
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_offsets_round_trip_with_milvus_encoding() {
        let pos = SourcePosition {
            sequence: 43,
            timestamp: 7,
        };
        let b64 = encode(MqType::Kafka, "by-dev-rootcoord-dml_0", pos);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .unwrap();
        let p = MsgPosition::decode(raw.as_slice()).unwrap();
        assert_eq!(
            p.msg_id,
            42u64.to_le_bytes().to_vec(),
            "offset 42 = sequence 43"
        );
        assert_eq!(p.channel_name, "by-dev-rootcoord-dml_0");
        assert_eq!(decode(MqType::Kafka, &b64).unwrap(), pos);
    }

    #[test]
    fn natsmq_sequences_round_trip() {
        let pos = SourcePosition {
            sequence: 9,
            timestamp: 1,
        };
        assert_eq!(
            decode(MqType::Natsmq, &encode(MqType::Natsmq, "c", pos)).unwrap(),
            pos
        );
    }

    #[test]
    fn bad_positions_say_why() {
        assert!(decode(MqType::Kafka, "%%%")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        let short = MsgPosition {
            msg_id: vec![1, 2, 3],
            ..Default::default()
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(short.encode_to_vec());
        assert!(decode(MqType::Kafka, &b64)
            .unwrap_err()
            .to_string()
            .contains("3 bytes"));
    }

    fn msg_id_of(b64: &str) -> Vec<u8> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        MsgPosition::decode(raw.as_slice()).unwrap().msg_id
    }

    #[test]
    fn pulsar_ids_round_trip_with_milvus_encoding() {
        let id = PulsarMessageId {
            ledger_id: 1,
            entry_id: 9,
            batch_index: 0,
        };
        let pos = SourcePosition {
            sequence: id.sequence().unwrap(),
            timestamp: 455_000_000_000_000_001,
        };
        let b64 = encode(MqType::Pulsar, "by-dev-rootcoord-dml_0", pos);
        // Byte for byte what Milvus 2.3.5 (pulsar-client-go) writes for
        // ledger 1, entry 9: ledgerId, entryId, partition 0, batch_index 0.
        assert_eq!(
            msg_id_of(&b64),
            [0x08, 0x01, 0x10, 0x09, 0x18, 0x00, 0x20, 0x00]
        );
        assert_eq!(decode(MqType::Pulsar, &b64).unwrap(), pos);
        // A batched message and a large ledger.
        let id = PulsarMessageId {
            ledger_id: 4_000_000_000,
            entry_id: 49_999,
            batch_index: 17,
        };
        let pos = SourcePosition {
            sequence: id.sequence().unwrap(),
            timestamp: 1,
        };
        assert_eq!(
            decode(MqType::Pulsar, &encode(MqType::Pulsar, "c", pos)).unwrap(),
            pos
        );
        // Nothing read yet: Pulsar's earliest id, and back.
        let zero = SourcePosition {
            sequence: 0,
            timestamp: 0,
        };
        assert_eq!(
            decode(MqType::Pulsar, &encode(MqType::Pulsar, "c", zero)).unwrap(),
            zero
        );
    }

    #[test]
    fn pulsar_position_as_milvus_writes_it() {
        // A datacoord channel checkpoint of Milvus 2.3.5 on Pulsar (etcd
        // `datacoord-meta/channel-cp/<vchannel>`): msgID 08 01 10 09 18 00
        // 20 00, i.e. ledger 1, entry 9, partition 0, batch index 0.
        let p = MsgPosition {
            channel_name: "by-dev-rootcoord-dml_0_470848848341762074v0".into(),
            msg_id: vec![0x08, 0x01, 0x10, 0x09, 0x18, 0x00, 0x20, 0x00],
            msg_group: "datanode-1-by-dev-rootcoord-dml_0_470848848341762074v0-true".into(),
            timestamp: 455_000_000_000_000_001,
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec());
        let pos = decode(MqType::Pulsar, &b64).unwrap();
        assert_eq!(pos.sequence, (1 << 32) + (9 << 10) + 1);
        assert_eq!(pos.timestamp, 455_000_000_000_000_001);
        // The official client's writing with batch_size (field 6) and
        // partition -1 decodes to the same message.
        let other = PulsarMessageIdData {
            ledger_id: Some(1),
            entry_id: Some(9),
            partition: Some(-1),
            batch_index: Some(-1),
            batch_size: Some(1),
        };
        assert_eq!(
            pulsar_sequence(&other.encode_to_vec()).unwrap(),
            pos.sequence
        );
    }

    #[test]
    fn bad_pulsar_positions_say_why() {
        let with_id = |msg_id: Vec<u8>| {
            let p = MsgPosition {
                msg_id,
                ..Default::default()
            };
            base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec())
        };
        // A Kafka/natsmq 8-byte id is not a MessageIdData.
        let err = decode(MqType::Pulsar, &with_id(42u64.to_le_bytes().to_vec()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MessageIdData"), "{err}");
        let err = decode(MqType::Pulsar, &with_id(vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ledgerId/entryId"), "{err}");
        let huge = PulsarMessageIdData {
            ledger_id: Some(1 << 40),
            entry_id: Some(0),
            ..Default::default()
        };
        let err = decode(MqType::Pulsar, &with_id(huge.encode_to_vec()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn virtual_channels_map_to_physical_ones() {
        assert_eq!(
            physical_channel("by-dev-rootcoord-dml_3_470846437388714380v1"),
            "by-dev-rootcoord-dml_3"
        );
        assert_eq!(
            physical_channel("by-dev-rootcoord-dml_3"),
            "by-dev-rootcoord-dml_3"
        );
        assert_eq!(
            physical_channel("by-dev-replicate-msg"),
            "by-dev-replicate-msg"
        );
    }
}
