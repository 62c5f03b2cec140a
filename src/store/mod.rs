//! The task store: task records and per-channel checkpoints in the agent's
//! etcd, behind domain methods that hide the key layout and transactions.
//!
//! Layout under the configured root `R`:
//! - `R/tasks/<task_id>`: the [`TaskRecord`] as JSON;
//! - `R/positions/<task_id>/<channel>`: a [`Checkpoint`] as JSON;
//! - `R/dropped/<task_id>/<collection_id>/<partition_id>`: a
//!   [`DroppedPartition`] as JSON, one per source partition whose drop the
//!   task applied on the target (see `crate::replicate::pipeline`'s
//!   `dropped` module);
//! - `R/leader`: the election key (see `crate::ha`).
//!
//! Every write can be fenced ([`Fence`]): it then succeeds only while the
//! leader key still has the create revision this replica won it with, so a
//! deposed leader can never overwrite what a newer one wrote.

pub mod etcd;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::task::{TaskId, TaskRecord};

pub use etcd::{connect, TaskStore};

/// Why etcd did not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EtcdFailure {
    /// etcd answered with an error (or the connection failed).
    #[error("{what}: {source}")]
    Failed {
        /// What was asked.
        what: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// No answer in time.
    #[error("{what}: no answer within {limit:?}")]
    NoAnswer {
        /// What was asked.
        what: String,
        /// The request timeout.
        limit: std::time::Duration,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or did not answer in time.
    #[error("task store unavailable: {0}")]
    Unavailable(#[source] EtcdFailure),
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The record changed since it was read (another write won).
    #[error("task {0} was changed concurrently, retry")]
    Conflict(TaskId),
    /// This replica no longer holds leadership; nothing was written.
    #[error("not the leader any more: write refused by fencing")]
    Fenced,
    /// The configured maximum number of tasks exists already.
    #[error("the maximum number of tasks ({0}) is reached")]
    LimitReached(usize),
    /// A stored value could not be decoded.
    #[error("corrupt value at {key}: {message}")]
    Corrupt {
        /// The etcd key.
        key: String,
        /// The decode error.
        message: String,
    },
}

/// The leadership a write depends on: the leader key and the create revision
/// with which this replica holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: String,
    /// Create revision of the leader key when this replica won it.
    pub create_revision: i64,
}

/// How far a task has replicated one channel: the position of the last
/// message whose effect is durable on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stream position (JetStream sequence for natsmq) of the last applied message.
    pub sequence: u64,
    /// Source timestamp (Milvus hybrid timestamp) reached on this channel.
    pub timestamp: u64,
    /// Wall-clock time the checkpoint was written, ms since the Unix epoch.
    pub written_at_ms: u64,
}

impl Checkpoint {
    /// `(sequence, timestamp)`: how far the checkpoint is, for ordering.
    pub fn position(&self) -> (u64, u64) {
        (self.sequence, self.timestamp)
    }
}

/// A source partition whose drop a task applied on the target: later
/// copies and replays of that drop (in this process or a later one) must
/// not drop the partition that has taken its name since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedPartition {
    /// The source collection's id.
    pub collection_id: i64,
    /// The source partition's id (never reused by Milvus).
    pub partition_id: i64,
    /// The partition's name when it was dropped (for people reading etcd).
    pub partition_name: String,
    /// The channel whose copy of the drop was applied.
    pub channel: String,
    /// When the record was written, ms since the Unix epoch.
    pub recorded_at_ms: u64,
}

/// A task record together with the etcd revision it was read at, needed to
/// update it safely.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// etcd `mod_revision` of the key when read.
    pub revision: i64,
}

/// Checkpoints of one task, by channel name.
pub type Checkpoints = BTreeMap<String, Checkpoint>;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Convenience alias used by store methods.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The record type stored under `tasks/`.
pub type StoredTask = Versioned<TaskRecord>;
