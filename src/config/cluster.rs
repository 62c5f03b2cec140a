//! `[etcd]` (the agents' own store), `[ha]`, `[tasks]` and `[replicate]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redacted;

/// `[etcd]`: the agent's coordination store.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix under which tasks, checkpoints and the leader key live.
    pub root: String,
    /// Optional etcd user.
    pub username: Option<String>,
    /// Optional etcd password.
    pub password: Option<String>,
    /// File holding the etcd password (e.g. a mounted Kubernetes secret),
    /// instead of `password`.
    pub password_file: Option<std::path::PathBuf>,
    /// Time allowed to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            root: "milvus-cdc/default".into(),
            username: None,
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `[ha]`: leader election.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// Lease time-to-live.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Whether a new leader replays each task's takeover window once,
    /// `2 · lease_ttl + 2s` after it took over (covers a deposed leader that
    /// was frozen inside a target write and completed it late).
    pub takeover_replay: bool,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(5),
            takeover_replay: true,
        }
    }
}

/// `[tasks]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// Most tasks that may exist at once (the official server's default is 100).
    pub max_tasks: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self { max_tasks: 100 }
    }
}

/// `[replicate]`: pipeline tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicateConfig {
    /// Most rows in one batched insert.
    pub batch_rows: usize,
    /// Most bytes in one batched insert.
    pub batch_bytes: usize,
    /// Bytes of source events a task may hold queued between its readers
    /// and pipelines, shared by its channels (one message larger than this
    /// is let through alone).
    pub max_buffer_bytes: usize,
    /// Ignored, kept so that existing files load: windows are closed by the
    /// source's time ticks.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// How often checkpoints are written.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How often aliases and empty partitions (not in Milvus 2.3.5's
    /// streams) are compared with the source and synced.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How often the target collections written since the last time are
    /// flushed; checkpoints only record positions whose rows the target has
    /// flushed (a killed Milvus 2.3.5 can lose unflushed rows it had
    /// acknowledged). `0s`: checkpoint as soon as the target acknowledged.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        Self {
            batch_rows: 10_000,
            batch_bytes: 8 * 1024 * 1024,
            max_buffer_bytes: 32 * 1024 * 1024,
            batch_wait: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(10),
        }
    }
}
