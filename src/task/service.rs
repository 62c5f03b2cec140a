//! The task service: what `create`, `list`, `get`, `pause`, `resume` and
//! `delete` do, independent of HTTP. It validates input, checks the target,
//! writes the [`TaskStore`] and tells the workers what changed.

use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::info;

use super::{
    params::ParamError, selection::Selection, Action, CollectionInfo, MilvusConnectParam, TaskId,
    TaskRecord, TaskState, Transition,
};
use crate::{
    config::SourceConfig,
    metrics::Metrics,
    milvus::{MilvusClient, MilvusError},
    sink::MilvusSink,
    source::{
        position::{self, SourcePosition},
        reader::ReadError,
    },
    store::{now_ms, Checkpoint, Checkpoints, StoreError, TaskStore},
};

/// Why a task operation failed; [`ServiceError::status`] is its HTTP code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// The target Milvus given at create time cannot be used.
    #[error("target {0}")]
    Target(#[from] MilvusError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another task already replicates some of the selected collections to
    /// the same target.
    #[error("{0}")]
    Overlap(String),
}

impl From<ParamError> for ServiceError {
    fn from(e: ParamError) -> Self {
        ServiceError::BadRequest(e.0)
    }
}

impl ServiceError {
    /// The HTTP status code that reports this error.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::BadRequest(_) | ServiceError::Target(_) => 400,
            ServiceError::Overlap(_) => 409,
            ServiceError::Store(StoreError::NotFound(_)) => 404,
            ServiceError::Store(StoreError::Conflict(_)) => 409,
            ServiceError::Store(StoreError::LimitReached(_)) => 409,
            ServiceError::Store(StoreError::Unavailable(_) | StoreError::Fenced) => 503,
            ServiceError::Store(StoreError::Corrupt { .. }) => 500,
        }
    }
}

/// Receives task changes to start or stop replication workers. The engine
/// implements it; without one (tests of the API alone) nothing runs.
pub trait TaskWorkers: Send + Sync {
    /// The task is `Running` now (resumed, or found running): start its
    /// workers.
    fn start(&self, task: &TaskRecord);
    /// The task was just created by this leader (a fenced write of this
    /// term): no earlier leader ever ran it, so its workers need no
    /// takeover replay. Starts them like [`TaskWorkers::start`] otherwise.
    fn start_created(&self, task: &TaskRecord) {
        self.start(task);
    }
    /// The task is paused or deleted: stop its workers after a final
    /// checkpoint. Resolves once they have stopped.
    fn stop(&self, id: &TaskId) -> futures::future::BoxFuture<'static, ()>;
    /// The task's channels that its readers cannot open right now.
    fn read_errors(&self, _id: &TaskId) -> Vec<ReadError> {
        Vec::new()
    }
}

/// Workers that do nothing.
pub struct NoWorkers;

impl TaskWorkers for NoWorkers {
    fn start(&self, _task: &TaskRecord) {}
    fn stop(&self, _id: &TaskId) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The `create` request's data, already parsed.
#[derive(Debug, Clone)]
pub struct CreateTask {
    /// Target connection.
    pub milvus_connect_param: MilvusConnectParam,
    /// What to replicate.
    pub collection_infos: Vec<CollectionInfo>,
}

/// What `promote` did to a task's target.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The task that fed the promoted collections (now paused).
    pub task_id: TaskId,
    /// Its target, where the collections are now owned.
    pub target: String,
    /// The collections promoted, as `database.name`.
    pub promoted: Vec<String>,
    /// How far the task had replicated its source: `(channel, base64
    /// MsgPosition, source timestamp)`, by channel.
    pub positions: Vec<(String, String, u64)>,
    /// The source Milvus of this agent (the reverse task's target).
    pub source_uri: String,
}

/// Longest a promote may spend on the target.
const PROMOTE_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Task operations. Writes are serialized inside one process; across
/// processes, only the leader calls them (fencing guards the rest).
#[derive(Clone)]
pub struct TaskService {
    store: TaskStore,
    max_tasks: usize,
    metrics: Metrics,
    workers: Arc<dyn TaskWorkers>,
    write_lock: Arc<Mutex<()>>,
    source: Arc<SourceConfig>,
}

impl TaskService {
    /// A service over `store`.
    pub fn new(
        store: TaskStore,
        max_tasks: usize,
        metrics: Metrics,
        workers: Arc<dyn TaskWorkers>,
    ) -> Self {
        Self {
            store,
            max_tasks,
            metrics,
            workers,
            write_lock: Arc::new(Mutex::new(())),
            source: Arc::new(SourceConfig::default()),
        }
    }

    /// The same service for the source `cfg` describes (its queue type and
    /// channels, to read and write positions).
    pub fn with_source(mut self, cfg: &SourceConfig) -> Self {
        self.source = Arc::new(cfg.clone());
        self
    }

    /// The start checkpoints that `create`'s positions ask for, by
    /// physical channel.
    fn start_checkpoints(&self, infos: &[CollectionInfo]) -> Result<Checkpoints, ServiceError> {
        let mut known = self.source.dml_channels();
        known.push(self.source.replicate_channel());
        let mut out = Checkpoints::new();
        for (key, b64) in infos.iter().flat_map(|i| &i.positions) {
            let channel = position::physical_channel(key);
            if !known.iter().any(|k| k == channel) {
                return Err(ServiceError::BadRequest(format!(
                    "collection_infos.positions: {key:?} is not a channel of the source (expected \
                     {}_<n> for n < {} or {}, or a virtual channel of them)",
                    format_args!("{}-rootcoord-dml", self.source.channel_prefix),
                    self.source.dml_channel_num,
                    self.source.replicate_channel()
                )));
            }
            let SourcePosition {
                sequence,
                timestamp,
            } = position::decode(self.source.mq_type, b64).map_err(|e| {
                ServiceError::BadRequest(format!("collection_infos.positions[{key:?}]: {e}"))
            })?;
            let cp = Checkpoint {
                sequence,
                timestamp,
                written_at_ms: now_ms(),
            };
            if let Some(other) = out.get(channel) {
                if (other.sequence, other.timestamp) != (sequence, timestamp) {
                    return Err(ServiceError::BadRequest(format!(
                        "collection_infos.positions: two different positions for channel {channel}"
                    )));
                }
            }
            out.insert(channel.to_string(), cp);
        }
        Ok(out)
    }

    /// A task's checkpoints in Milvus's encoding: `(channel, base64
    /// MsgPosition, source timestamp)`, by channel.
    pub async fn positions(&self, id: &TaskId) -> Result<Vec<(String, String, u64)>, ServiceError> {
        self.store.get_task(id).await?;
        let cps = self.store.load_checkpoints(id).await?;
        Ok(cps
            .into_iter()
            .map(|(channel, cp)| {
                let b64 = position::encode(
                    self.source.mq_type,
                    &channel,
                    SourcePosition {
                        sequence: cp.sequence,
                        timestamp: cp.timestamp,
                    },
                );
                (channel, b64, cp.timestamp)
            })
            .collect())
    }

    /// The same service writing through another store (e.g. a fenced one).
    pub fn with_store(&self, store: TaskStore) -> Self {
        Self {
            store,
            ..self.clone()
        }
    }

    /// Validates `req`, checks that the target answers and accepts the
    /// credentials, then stores the task as `Running` and starts it.
    pub async fn create(&self, req: CreateTask) -> Result<TaskId, ServiceError> {
        let selection = check_collection_infos(&req.collection_infos)?;
        let start = self.start_checkpoints(&req.collection_infos)?;
        let addr = req.milvus_connect_param.validate()?;
        let target = MilvusClient::connect(&addr).await?;
        // A target that accepts connections but never answers must not hang
        // the request; a busy one gets three times the connect timeout.
        let probe_limit = addr.connect_timeout * 3;
        match tokio::time::timeout(probe_limit, target.probe()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                return Err(ServiceError::Target(MilvusError::Unreachable {
                    url: addr.url.clone(),
                    message: format!(
                        "no answer to ShowCollections within {}s",
                        probe_limit.as_secs()
                    ),
                    status: None,
                }))
            }
        }
        let _guard = self.write_lock.lock().await;
        // Two tasks writing the same target collection would fight over it
        // (and their drops and re-creations would undo each other).
        let existing = self.records().await?;
        if let Some((other, mine, theirs)) = overlapping_task(&addr.url, &selection, &existing) {
            return Err(ServiceError::Overlap(format!(
                "collection_infos: {mine} overlaps {theirs} of task {} (state {}), which \
                 replicates to the same target {}; select disjoint collections or delete that task",
                other.task_id, other.state, addr.url
            )));
        }
        let record = TaskRecord {
            task_id: TaskId::generate(),
            milvus_connect_param: req.milvus_connect_param,
            collection_infos: req.collection_infos,
            state: TaskState::Running,
            created_at_ms: now_ms(),
            history_gaps: Vec::new(),
            last_error: None,
            skipped_messages: Vec::new(),
        };
        self.store
            .create_task(&record, self.max_tasks, &start)
            .await?;
        info!(task_id = %record.task_id, target = %addr.url, "task created");
        self.workers.start_created(&record);
        self.refresh_metrics().await;
        Ok(record.task_id)
    }

    /// Every stored task record (without its store version).
    async fn records(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self
            .store
            .load_tasks()
            .await?
            .into_iter()
            .map(|t| t.value)
            .collect())
    }

    /// Every task.
    pub async fn list(&self) -> Result<Vec<TaskRecord>, ServiceError> {
        let tasks = self.records().await?;
        self.metrics.set_task_states(tasks.iter().map(|t| t.state));
        Ok(tasks)
    }

    /// One task.
    pub async fn get(&self, id: &TaskId) -> Result<TaskRecord, ServiceError> {
        Ok(self.store.get_task(id).await?.value)
    }

    /// The channels of task `id` that cannot be read right now (live state
    /// of this leader's workers, not stored).
    pub fn read_errors(&self, id: &TaskId) -> Vec<ReadError> {
        self.workers.read_errors(id)
    }

    /// Pauses or resumes a task. Repeating an action is accepted and changes
    /// nothing.
    pub async fn change_state(&self, id: &TaskId, action: Action) -> Result<(), ServiceError> {
        let _guard = self.write_lock.lock().await;
        let current = self.store.get_task(id).await?;
        let new_state = match current.value.state.apply(action) {
            Transition::Unchanged => {
                // A Running task without workers here (they stopped on an
                // error, or a start was lost) gets them back on resume.
                if current.value.state == TaskState::Running {
                    self.workers.start(&current.value);
                }
                return Ok(());
            }
            Transition::To(s) => s,
        };
        // The stored state changes first (compare-and-set on the revision
        // read): if that fails, nothing else changed, and the workers keep
        // running as the store says. Pausing workers then stop after their
        // final checkpoint.
        let mut record = current.value;
        record.state = new_state;
        if new_state == TaskState::Running {
            // Resumed after the cause was fixed.
            record.last_error = None;
        }
        self.store.update_task(&record, current.revision).await?;
        info!(task_id = %id, state = %new_state, "task state changed");
        match new_state {
            TaskState::Running => self.workers.start(&record),
            _ => self.workers.stop(id).await,
        }
        self.refresh_metrics().await;
        Ok(())
    }

    /// Fail-over of task `id`'s replicas to its target: pauses the task
    /// (final checkpoint), turns every replica of its selection on the
    /// target into an owned collection (the marker emptied, so a reverse
    /// task replicates it) and returns the source positions reached.
    /// Repeating it is harmless.
    pub async fn promote(&self, id: &TaskId) -> Result<Promotion, ServiceError> {
        let task = self.get(id).await?;
        let selection = Selection::parse(&task.collection_infos)?;
        self.change_state(id, Action::Pause).await?;
        let addr = task.milvus_connect_param.validate()?;
        let unmark = async {
            let sink = MilvusSink::new(MilvusClient::connect(&addr).await?);
            let mut promoted = Vec::new();
            for (db, name, source_id) in sink.replicas().await? {
                if selection.matches(&db, &name) {
                    sink.unmark_collection(&db, &name).await?;
                    info!(task_id = %id, db = %db, collection = %name, source_id, "replica promoted to an owned collection");
                    promoted.push(format!("{db}.{name}"));
                }
            }
            Ok::<_, MilvusError>(promoted)
        };
        let promoted = match tokio::time::timeout(PROMOTE_LIMIT, unmark).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ServiceError::Target(MilvusError::Unreachable {
                    url: addr.url.clone(),
                    message: format!("promote did not finish within {}s", PROMOTE_LIMIT.as_secs()),
                    status: None,
                }))
            }
        };
        Ok(Promotion {
            task_id: id.clone(),
            target: addr.url,
            promoted,
            positions: self.positions(id).await?,
            source_uri: self.source.milvus_uri.clone(),
        })
    }

    /// Removes a task with its checkpoints, then stops its workers (which
    /// can no longer write a checkpoint of it).
    pub async fn delete(&self, id: &TaskId) -> Result<(), ServiceError> {
        let _guard = self.write_lock.lock().await;
        self.store.delete_task(id).await?;
        self.workers.stop(id).await;
        info!(task_id = %id, "task deleted");
        self.refresh_metrics().await;
        Ok(())
    }

    async fn refresh_metrics(&self) {
        if let Ok(tasks) = self.store.load_tasks().await {
            self.metrics
                .set_task_states(tasks.iter().map(|t| t.value.state));
        }
    }
}

/// Checks `collection_infos` (see [`Selection::parse`]).
fn check_collection_infos(infos: &[CollectionInfo]) -> Result<Selection, ServiceError> {
    Ok(Selection::parse(infos)?)
}

/// The first existing task that replicates a collection of `selection` to
/// the same target (`url`), with the patterns that overlap. Tasks whose
/// stored parameters no longer parse are ignored.
fn overlapping_task<'a>(
    url: &str,
    selection: &Selection,
    tasks: &'a [TaskRecord],
) -> Option<(&'a TaskRecord, String, String)> {
    tasks.iter().find_map(|t| {
        let other_url = t.milvus_connect_param.validate().ok()?.url;
        if !same_target(&other_url, url) {
            return None;
        }
        let other = Selection::parse(&t.collection_infos).ok()?;
        selection
            .overlap(&other)
            .map(|(mine, theirs)| (t, mine.to_string(), theirs.to_string()))
    })
}

/// Whether two validated target urls name the same Milvus.
fn same_target(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        u.trim_end_matches('/')
            .to_ascii_lowercase()
            .replace("://localhost:", "://127.0.0.1:")
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_infos_rules() {
        let info = |n: &str| CollectionInfo {
            name: n.into(),
            positions: Default::default(),
        };
        assert!(check_collection_infos(&[info("*")]).is_ok());
        assert!(check_collection_infos(&[info("c"), info("db.*")]).is_ok());
        for bad in [vec![], vec![info("*"), info("*")], vec![info("a b")]] {
            let e = check_collection_infos(&bad).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
        }
    }

    fn task(uri: &str, names: &[&str]) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::generate(),
            milvus_connect_param: MilvusConnectParam {
                uri: Some(uri.into()),
                ..Default::default()
            },
            collection_infos: names
                .iter()
                .map(|n| CollectionInfo {
                    name: (*n).into(),
                    positions: Default::default(),
                })
                .collect(),
            state: TaskState::Paused,
            created_at_ms: 1,
            history_gaps: Vec::new(),
            last_error: None,
            skipped_messages: Vec::new(),
        }
    }

    #[test]
    fn overlapping_tasks_to_the_same_target_are_found() {
        let sel =
            |names: &[&str]| Selection::parse(&task("http://x:1", names).collection_infos).unwrap();
        let tasks = vec![
            task("http://b:19530", &["*"]),
            task("http://a:19530", &["c1", "shop.*"]),
        ];
        let url = |u: &str| {
            MilvusConnectParam {
                uri: Some(u.into()),
                ..Default::default()
            }
            .validate()
            .unwrap()
            .url
        };
        // disjoint names on a: fine; anything on another target: fine
        assert!(overlapping_task(&url("http://a:19530"), &sel(&["c2", "db.*"]), &tasks).is_none());
        assert!(overlapping_task(&url("http://c:19530"), &sel(&["*"]), &tasks).is_none());
        let (t, mine, theirs) =
            overlapping_task(&url("http://a:19530"), &sel(&["x", "shop.orders"]), &tasks).unwrap();
        assert_eq!(t.task_id, tasks[1].task_id);
        assert_eq!((mine.as_str(), theirs.as_str()), ("shop.orders", "shop.*"));
        let (t, _, theirs) =
            overlapping_task(&url("http://B:19530/"), &sel(&["c1"]), &tasks).unwrap();
        assert_eq!((&t.task_id, theirs.as_str()), (&tasks[0].task_id, "*"));
        assert!(same_target("http://localhost:1", "http://127.0.0.1:1"));
        assert_eq!(ServiceError::Overlap("x".into()).status(), 409);
    }

    #[test]
    fn status_codes() {
        let id = TaskId::generate();
        assert_eq!(ServiceError::BadRequest("x".into()).status(), 400);
        assert_eq!(
            ServiceError::Store(StoreError::NotFound(id.clone())).status(),
            404
        );
        assert_eq!(
            ServiceError::Store(StoreError::LimitReached(1)).status(),
            409
        );
        assert_eq!(
            ServiceError::Store(StoreError::Unavailable(
                crate::store::EtcdFailure::NoAnswer {
                    what: "x".into(),
                    limit: std::time::Duration::ZERO
                }
            ))
            .status(),
            503
        );
        assert_eq!(ServiceError::Store(StoreError::Fenced).status(), 503);
    }
}
