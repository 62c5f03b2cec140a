//! CDC tasks: identifiers, the stored record, and the state machine that the
//! HTTP API and the replication engine drive.
//!
//! ```
//! use milvus_cdc::task::{Action, TaskState, Transition};
//! assert_eq!(TaskState::Running.apply(Action::Pause), Transition::To(TaskState::Paused));
//! assert_eq!(TaskState::Paused.apply(Action::Pause), Transition::Unchanged);
//! ```

pub mod params;
pub mod selection;
pub mod service;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use params::{CollectionInfo, MilvusConnectParam};

/// A task identifier: 32 lowercase hexadecimal characters, like the official
/// server's (a UUID without dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

/// A string that is not a valid [`TaskId`].
#[derive(Debug, thiserror::Error)]
#[error("task_id must be 32 hexadecimal characters")]
pub struct InvalidTaskId;

impl TaskId {
    /// A fresh random identifier.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = InvalidTaskId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(InvalidTaskId)
        }
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of a task, named as in the official API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Created but not yet started (only seen transiently).
    Initial,
    /// Workers replicate while this replica leads.
    Running,
    /// Workers are stopped; the checkpoint is kept.
    Paused,
}

impl TaskState {
    /// Every state, for metrics.
    pub const ALL: [TaskState; 3] = [TaskState::Initial, TaskState::Running, TaskState::Paused];

    /// The state's name as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Initial => "Initial",
            TaskState::Running => "Running",
            TaskState::Paused => "Paused",
        }
    }

    /// What `action` does to a task in this state. Pausing a paused task and
    /// resuming a running one are accepted and change nothing, so a client
    /// may safely retry after a timeout.
    pub fn apply(self, action: Action) -> Transition {
        match (self, action) {
            (TaskState::Paused, Action::Pause) | (TaskState::Running, Action::Resume) => {
                Transition::Unchanged
            }
            (_, Action::Pause) => Transition::To(TaskState::Paused),
            (_, Action::Resume) => Transition::To(TaskState::Running),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change requested through the API (delete is handled apart: it
/// removes the task whatever its state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the workers after a checkpoint.
    Pause,
    /// Start the workers from the last checkpoint.
    Resume,
}

/// Result of [`TaskState::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The task moves to this state.
    To(TaskState),
    /// The task already is where the action would take it.
    Unchanged,
}

/// A task as stored in etcd. Secrets inside `milvus_connect_param` are
/// stored, but [`TaskRecord::public_view`] is what the API shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Identifier.
    pub task_id: TaskId,
    /// How to reach the target Milvus.
    pub milvus_connect_param: MilvusConnectParam,
    /// What to replicate (`[{"name": "*"}]`).
    pub collection_infos: Vec<CollectionInfo>,
    /// Lifecycle state.
    pub state: TaskState,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Source history this task could not read (removed by the stream's
    /// retention before it was read): the target may lack those changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history_gaps: Vec<HistoryGap>,
    /// Why the task stopped on its own (a write the target refuses for
    /// good); cleared by `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<TaskFailure>,
    /// Source messages this task could not apply (a type it does not
    /// replicate, or undecodable): the target may differ by their effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_messages: Vec<SkippedMessages>,
}

/// Source messages of one channel and kind that were skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMessages {
    /// The source channel.
    pub channel: String,
    /// `unsupported <msg type>` or `undecodable`.
    pub kind: String,
    /// Sequence of the first one skipped.
    pub first_sequence: u64,
    /// Sequence of the last one skipped.
    pub last_sequence: u64,
    /// How many (each message counted once, also across replays).
    pub count: u64,
    /// The last reason given (the decode error, for undecodable ones).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// An error that stopped a task (it was paused; fix the cause, then resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// What failed, with the target's answer.
    pub message: String,
    /// The source channel whose change could not be applied.
    pub channel: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Messages of a source channel that were gone before the task read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryGap {
    /// The source channel (stream).
    pub channel: String,
    /// First lost sequence.
    pub first_lost: u64,
    /// Last lost sequence.
    pub last_lost: u64,
    /// When it was found, milliseconds since the Unix epoch.
    pub detected_at_ms: u64,
    /// Source collections (`database.name`) that use this channel when the
    /// gap was found: their data on the target may be incomplete.
    pub collections: Vec<String>,
}

impl TaskRecord {
    /// The task as the API returns it: the official field names, no secrets;
    /// `history_gaps` only when the task has lost source history.
    pub fn public_view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "task_id": self.task_id,
            "milvus_connect_param": self.milvus_connect_param.redacted(),
            "collection_infos": self.collection_infos,
            "state": self.state,
        });
        if !self.history_gaps.is_empty() {
            v["history_gaps"] = serde_json::json!(self.history_gaps);
        }
        if let Some(e) = &self.last_error {
            v["last_error"] = serde_json::json!(e);
        }
        if !self.skipped_messages.is_empty() {
            v["skipped_messages"] = serde_json::json!(self.skipped_messages);
        }
        v
    }

    /// Adds skipped messages to the record: counts only messages after the
    /// last one already recorded for that channel and kind (a replay reads
    /// them again). False if nothing changed.
    pub fn add_skipped(&mut self, s: &SkippedMessages) -> bool {
        match self
            .skipped_messages
            .iter_mut()
            .find(|k| k.channel == s.channel && k.kind == s.kind)
        {
            Some(known) if s.last_sequence <= known.last_sequence => false,
            Some(known) => {
                let new = s.count.min(s.last_sequence - known.last_sequence);
                known.count += new.max(1);
                known.last_sequence = s.last_sequence;
                known.reason.clone_from(&s.reason);
                true
            }
            None => {
                self.skipped_messages.push(s.clone());
                true
            }
        }
    }

    /// Records `gap`, merged with a known one of the same channel that it
    /// overlaps or touches. False if it was already fully known.
    pub fn add_history_gap(&mut self, gap: HistoryGap) -> bool {
        if let Some(known) = self.history_gaps.iter_mut().find(|g| {
            g.channel == gap.channel
                && gap.first_lost <= g.last_lost.saturating_add(1)
                && g.first_lost <= gap.last_lost.saturating_add(1)
        }) {
            if known.first_lost <= gap.first_lost && gap.last_lost <= known.last_lost {
                return false;
            }
            known.first_lost = known.first_lost.min(gap.first_lost);
            known.last_lost = known.last_lost.max(gap.last_lost);
            for c in gap.collections {
                if !known.collections.contains(&c) {
                    known.collections.push(c);
                }
            }
            return true;
        }
        self.history_gaps.push(gap);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_messages_are_counted_once_across_replays() {
        let mut rec: TaskRecord = serde_json::from_value(serde_json::json!({
            "task_id": TaskId::generate(), "milvus_connect_param": {"uri": "http://h:1"},
            "collection_infos": [{"name": "*"}], "state": "Running", "created_at_ms": 1}))
        .unwrap();
        let s = |first, last, count| SkippedMessages {
            channel: "c".into(),
            kind: "undecodable".into(),
            first_sequence: first,
            last_sequence: last,
            count,
            reason: "bad".into(),
        };
        assert!(rec.add_skipped(&s(5, 9, 2)));
        assert!(
            !rec.add_skipped(&s(5, 9, 2)),
            "a replay of the same messages"
        );
        assert!(rec.add_skipped(&s(5, 12, 3)));
        assert_eq!(rec.skipped_messages[0].count, 5);
        assert_eq!(rec.skipped_messages[0].last_sequence, 12);
        assert!(rec.public_view()["skipped_messages"].is_array());
    }

    #[test]
    fn task_id_shape() {
        let id = TaskId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(TaskId::try_from(id.to_string()).is_ok());
        assert!(TaskId::try_from("abc".to_string()).is_err());
        assert!(TaskId::try_from("g".repeat(32)).is_err());
        let upper = TaskId::try_from("ABCDEF0123456789ABCDEF0123456789".to_string()).unwrap();
        assert_eq!(upper.as_str(), "abcdef0123456789abcdef0123456789");
    }

    #[test]
    fn transitions() {
        use Action::*;
        use TaskState::*;
        assert_eq!(Running.apply(Pause), Transition::To(Paused));
        assert_eq!(Paused.apply(Resume), Transition::To(Running));
        assert_eq!(Paused.apply(Pause), Transition::Unchanged);
        assert_eq!(Running.apply(Resume), Transition::Unchanged);
        assert_eq!(Initial.apply(Resume), Transition::To(Running));
        assert_eq!(Initial.apply(Pause), Transition::To(Paused));
    }

    #[test]
    fn public_view_hides_secrets() {
        let rec = TaskRecord {
            task_id: TaskId::generate(),
            milvus_connect_param: MilvusConnectParam {
                uri: Some("http://localhost:19530".into()),
                token: Some("root:Milvus".into()),
                password: Some("pw".into()),
                username: Some("root".into()),
                connect_timeout: Some(10),
                ..Default::default()
            },
            collection_infos: vec![CollectionInfo {
                name: "*".into(),
                positions: Default::default(),
            }],
            state: TaskState::Running,
            created_at_ms: 1,
            history_gaps: Vec::new(),
            last_error: None,
            skipped_messages: Vec::new(),
        };
        let text = rec.public_view().to_string();
        assert!(!text.contains("Milvus\""), "{text}");
        assert!(!text.contains("\"pw\""), "{text}");
        assert!(!text.contains("token"), "{text}");
        assert!(!text.contains("password"), "{text}");
        assert!(text.contains("\"state\":\"Running\""), "{text}");
        assert!(text.contains("\"connect_timeout\":10"), "{text}");
    }

    #[test]
    fn history_gaps_merge_and_show() {
        let mut rec: TaskRecord = serde_json::from_value(serde_json::json!({
            "task_id": TaskId::generate(),
            "milvus_connect_param": {"uri": "http://t:19530"},
            "collection_infos": [{"name": "*"}],
            "state": "Running",
            "created_at_ms": 1
        }))
        .expect("records stored before gaps existed still load");
        assert!(rec.public_view().get("history_gaps").is_none());
        let gap = |first, last, c: &str| HistoryGap {
            channel: "dml_0".into(),
            first_lost: first,
            last_lost: last,
            detected_at_ms: 5,
            collections: vec![c.into()],
        };
        assert!(rec.add_history_gap(gap(1, 9, "default.a")));
        assert!(
            !rec.add_history_gap(gap(2, 5, "default.a")),
            "already known"
        );
        assert!(
            rec.add_history_gap(gap(10, 20, "default.b")),
            "touching: merged"
        );
        assert_eq!(rec.history_gaps.len(), 1);
        assert_eq!(
            (
                rec.history_gaps[0].first_lost,
                rec.history_gaps[0].last_lost
            ),
            (1, 20)
        );
        assert_eq!(rec.history_gaps[0].collections, ["default.a", "default.b"]);
        assert!(rec.add_history_gap(gap(30, 31, "default.a")));
        assert_eq!(rec.history_gaps.len(), 2);
        let view = rec.public_view();
        assert_eq!(view["history_gaps"][0]["channel"], "dml_0");
    }
}
