//! The replication engine: for each `Running` task, one ordered pipeline per
//! source channel (every DML channel and the replicate channel), in parallel,
//! from the task's checkpoints; checkpoints saved after the target
//! acknowledged, every `replicate.checkpoint_interval` and when the task stops.
//!
//! The engine implements [`TaskWorkers`], so the task service starts and
//! stops it; the HTTP layer never touches it directly.
//!
//! - `run`: one run of a task (readers, pipelines, checkpoints, lag, rewinds);
//! - [`pipeline`]: the per-channel apply loop;
//! - [`batch`]: insert batching;
//! - [`catalog`]: source collection id → target collection;
//! - [`progress`]: applied and durable positions, the DDL watermark and lag;
//! - `durable`: periodic target flushes that make applied positions durable;
//! - `history`: source history lost to retention, recorded in the task;
//! - [`reconcile`]: aliases and empty partitions, which the stream lacks.

pub mod apply;
pub mod batch;
pub mod catalog;
pub mod pipeline;
pub mod progress;
pub mod reconcile;
pub mod reduce;
pub mod window;

mod durable;
#[cfg(test)]
mod exactness_tests;
pub mod history;
mod run;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, Instrument as _};

use crate::{
    config::{ReplicateConfig, SourceConfig},
    ha::{LeaderWork, LeaseGuard, Term},
    metrics::Metrics,
    source::{
        mq::MessageQueue,
        reader::{ReadError, ReadErrors},
    },
    store::TaskStore,
    task::{service::TaskWorkers, TaskId, TaskRecord},
};

use self::run::run_task;
pub use self::run::Failure;

/// Events buffered between a channel's reader and its pipeline.
const CHANNEL_BUFFER: usize = 256;

/// Runs the workers of every started task.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    source: SourceConfig,
    replicate: ReplicateConfig,
    mq: Arc<dyn MessageQueue>,
    leadership: Mutex<Leadership>,
    metrics: Metrics,
    tasks: Mutex<HashMap<TaskId, Running>>,
    /// Source partitions dropped under the tasks run in this process.
    dropped: pipeline::DroppedPartitions,
    /// The replica's probe of the source's queue: while it fails, every
    /// channel's lag keeps rising.
    source_health: tokio::sync::watch::Receiver<crate::source::health::SourceHealth>,
}

/// The leadership tasks run under: the fenced store for checkpoints, the
/// guard checked before every target write, and the token fired when either
/// refuses (the replica is no longer leader).
#[derive(Clone)]
pub struct Leadership {
    /// The term (leader key create revision; 0 without election).
    pub term: i64,
    /// Store whose writes are fenced on this term.
    pub store: TaskStore,
    /// Local lease check.
    pub guard: LeaseGuard,
    /// Fired on a fencing refusal.
    pub deposed: CancellationToken,
    /// When tasks started under this leadership replay, once, from the
    /// checkpoints they started from (None: never). See [`Run::Replay`].
    pub replay_at: Option<tokio::time::Instant>,
}

impl Leadership {
    /// Records a refused write and tells the election.
    pub fn refuse(&self, metrics: &Metrics, what: &str) {
        metrics.fencing_refusals.inc();
        error!(
            what,
            "write refused: this replica is no longer the leader (fencing)"
        );
        self.deposed.cancel();
    }
}

struct Running {
    cancel: CancellationToken,
    /// Set before `cancel` when the stop must be quick (shutdown, lost
    /// leadership): no final flush, the checkpoint stays at the last
    /// flushed position and the next leader replays a little more.
    quick: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    /// Channels its readers cannot open right now.
    read_errors: ReadErrors,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    /// An engine reading `mq` (whose health `source_health` reports) and
    /// saving checkpoints in `store`.
    pub fn new(
        source: SourceConfig,
        replicate: ReplicateConfig,
        mq: Arc<dyn MessageQueue>,
        source_health: tokio::sync::watch::Receiver<crate::source::health::SourceHealth>,
        store: TaskStore,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                replicate,
                mq,
                leadership: Mutex::new(Leadership {
                    term: 0,
                    store,
                    guard: LeaseGuard::always_valid(),
                    deposed: CancellationToken::new(),
                    replay_at: None,
                }),
                metrics,
                tasks: Mutex::new(HashMap::new()),
                dropped: pipeline::DroppedPartitions::default(),
                source_health,
            }),
        }
    }

    /// Runs tasks started from now on under this leadership. Tasks started
    /// within `takeover_replay` replay their first window once when it has
    /// passed: a deposed leader that was paused inside a target write may
    /// have completed that write after this leader's (a write cannot be
    /// fenced on the target), and the replay puts the newer data back.
    pub fn set_leadership(
        &self,
        term: i64,
        store: TaskStore,
        guard: LeaseGuard,
        deposed: CancellationToken,
        takeover_replay: Option<Duration>,
    ) {
        *lock(&self.inner.leadership) = Leadership {
            term,
            store,
            guard,
            deposed,
            replay_at: takeover_replay.map(|d| tokio::time::Instant::now() + d),
        };
    }

    /// After stepping down: a guard that refuses every write, so nothing
    /// started by mistake can write.
    pub fn clear_leadership(&self) {
        let mut l = lock(&self.inner.leadership);
        let guard = LeaseGuard::always_valid();
        guard.expire_now();
        l.guard = guard;
    }

    /// Ids of the tasks running here.
    pub fn running(&self) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = lock(&self.inner.tasks).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Stops every task (final checkpoints first).
    pub async fn stop_all(&self) {
        let all: Vec<(TaskId, Running)> = lock(&self.inner.tasks).drain().collect();
        for (_, r) in &all {
            r.quick.store(true, Ordering::SeqCst);
            r.cancel.cancel();
        }
        for (id, r) in all {
            if r.handle.await.is_err() {
                error!(task_id = %id, "task worker panicked");
            }
        }
    }
}

impl LeaderWork for Engine {
    fn begin_term(&self, term: Term) {
        self.set_leadership(
            term.revision,
            term.store,
            term.guard,
            term.deposed,
            term.takeover_replay,
        );
    }

    fn start(&self, task: &TaskRecord) {
        TaskWorkers::start(self, task);
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(Engine::stop_all(self))
    }

    fn end_term(&self) {
        self.clear_leadership();
    }
}

impl Engine {
    /// Starts `task`'s workers unless they run; `takeover_replay`: whether
    /// the run replays once when this leadership's grace period ends.
    fn spawn_task(&self, task: &TaskRecord, takeover_replay: bool) {
        let mut tasks = lock(&self.inner.tasks);
        if tasks
            .get(&task.task_id)
            .is_some_and(|r| !r.handle.is_finished())
        {
            return;
        }
        let cancel = CancellationToken::new();
        let quick = Arc::new(AtomicBool::new(false));
        let read_errors = ReadErrors::default();
        let term = lock(&self.inner.leadership).term;
        let span = tracing::info_span!(parent: None, "task", task_id = %task.task_id, term);
        let handle = tokio::spawn(
            run_task(
                self.inner.clone(),
                task.clone(),
                cancel.clone(),
                quick.clone(),
                read_errors.clone(),
                takeover_replay,
            )
            .instrument(span),
        );
        tasks.insert(
            task.task_id.clone(),
            Running {
                cancel,
                quick,
                handle,
                read_errors,
            },
        );
    }
}

impl TaskWorkers for Engine {
    fn start(&self, task: &TaskRecord) {
        self.spawn_task(task, true);
    }

    fn start_created(&self, task: &TaskRecord) {
        self.spawn_task(task, false);
    }

    fn read_errors(&self, id: &TaskId) -> Vec<ReadError> {
        lock(&self.inner.tasks)
            .get(id)
            .map(|r| r.read_errors.current())
            .unwrap_or_default()
    }

    fn stop(&self, id: &TaskId) -> BoxFuture<'static, ()> {
        let running = lock(&self.inner.tasks).remove(id);
        let id = id.clone();
        Box::pin(async move {
            if let Some(r) = running {
                r.cancel.cancel();
                if r.handle.await.is_err() {
                    error!(task_id = %id, "task worker panicked");
                }
            }
        })
    }
}
