//! The message-queue abstraction the reader consumes: an ordered stream of
//! `(sequence, payload)` per channel that can be opened at any position.
//! Implemented for natsmq ([`super::natsmq`]), Kafka ([`super::kafka`]) and
//! Pulsar ([`super::pulsar`]).

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};

/// Where a reader starts on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message still retained (replays history).
    Earliest,
    /// Only messages published from now on.
    Latest,
    /// The first message after this sequence (resume from a checkpoint).
    After(u64),
}

/// One message as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Sequence number in the channel's stream (strictly increasing; without
    /// holes only where [`MessageQueue::dense_sequences`] says so).
    pub sequence: u64,
    /// The serialized Milvus message.
    pub payload: Bytes,
}

/// A queue failure. `retriable` says whether reopening may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MqError {
    /// What failed.
    pub message: String,
    /// Whether retrying (reopening the channel) may succeed.
    pub retriable: bool,
}

impl MqError {
    /// A failure worth retrying.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: true,
        }
    }
}

/// Retention facts about a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelInfo {
    /// Sequence of the oldest retained message (0 when empty).
    pub first_sequence: u64,
    /// Sequence of the newest message (0 when empty).
    pub last_sequence: u64,
}

/// An ordered stream of a channel's messages.
pub type MessageStream = BoxStream<'static, Result<RawMessage, MqError>>;

/// A source message queue.
pub trait MessageQueue: Send + Sync + 'static {
    /// Opens `channel` at `start`. The stream yields messages in sequence
    /// order and ends or errs when the connection breaks; the caller reopens
    /// after its last sequence.
    fn open(&self, channel: &str, start: StartAt) -> BoxFuture<'_, Result<MessageStream, MqError>>;

    /// Retention of `channel` (all zero if the channel does not exist yet).
    fn info(&self, channel: &str) -> BoxFuture<'_, Result<ChannelInfo, MqError>>;

    /// Names of existing channels starting with `prefix`, sorted.
    fn channels(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, MqError>>;

    /// One cheap round trip that proves the queue answers (the health
    /// probe); by default, a channel list.
    fn probe(&self) -> BoxFuture<'_, Result<(), MqError>> {
        Box::pin(async move { self.channels("").await.map(|_| ()) })
    }

    /// Whether consecutive messages of a channel have consecutive sequences
    /// (natsmq stream sequences, Kafka offsets), so that a hole in the
    /// sequences means lost messages. Pulsar message ids jump between
    /// ledgers: there a hole means nothing, and the reader checks only
    /// whether the checkpoint's own message is still retained.
    fn dense_sequences(&self) -> bool {
        true
    }
}
