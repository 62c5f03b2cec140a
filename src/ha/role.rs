//! What this replica currently is, as the election publishes it.

use crate::task::service::TaskService;

/// What this replica currently is.
#[derive(Clone)]
pub enum Role {
    /// It leads: `/cdc` is served here through this service.
    Leader {
        /// Fenced task service.
        service: Box<TaskService>,
        /// Create revision of the leader key (the fencing token).
        term: i64,
        /// etcd lease id (0 without election).
        lease: i64,
        /// When this replica became leader, ms since the Unix epoch.
        since_ms: u64,
    },
    /// Another replica leads at this URL.
    Follower {
        /// Advertised URL of the leader.
        leader_url: String,
    },
    /// No leader is known yet.
    Unknown,
}

impl Role {
    /// `leader`, `follower` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Leader { .. } => "leader",
            Role::Follower { .. } => "follower",
            Role::Unknown => "unknown",
        }
    }
}
