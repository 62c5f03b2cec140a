//! Source positions in Milvus's own encoding, so that a position taken from
//! Milvus or from the official milvus-cdc can start a task, and a task's
//! checkpoints can be read by their tools: base64 of a serialized
//! `msgpb.MsgPosition` whose `msgID` is the queue's message id. On natsmq
//! and Kafka that id is 8 bytes, little-endian: the JetStream stream
//! sequence, or the Kafka offset.

use base64::Engine as _;
use prost::Message as _;

use crate::{config::MqType, proto::msg::MsgPosition};

/// A position that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PositionError(String);

/// The message a checkpoint points at: the agent's sequence of the last
/// message it has read past, and the source time reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    /// Agent sequence (natsmq: stream sequence; Kafka: offset + 1).
    pub sequence: u64,
    /// Milvus hybrid timestamp.
    pub timestamp: u64,
}

/// The message id Milvus uses for the message with agent `sequence`.
fn msg_id(mq: MqType, sequence: u64) -> [u8; 8] {
    let raw = match mq {
        MqType::Natsmq => sequence,
        MqType::Kafka => sequence.saturating_sub(1),
    };
    raw.to_le_bytes()
}

/// Base64 of the `MsgPosition` of `pos` on physical channel `channel`.
pub fn encode(mq: MqType, channel: &str, pos: SourcePosition) -> String {
    let p = MsgPosition {
        channel_name: channel.to_string(),
        msg_id: msg_id(mq, pos.sequence).to_vec(),
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
    let id: [u8; 8] = p.msg_id.as_slice().try_into().map_err(|_| {
        PositionError(format!(
            "msgID has {} bytes; {mq:?} message ids have 8 (little-endian)",
            p.msg_id.len()
        ))
    })?;
    let raw = u64::from_le_bytes(id);
    let sequence = match mq {
        MqType::Natsmq => raw,
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
