//! Durable positions: a position is checkpointed only once the rows applied
//! up to it are *flushed* on the target.
//!
//! Milvus 2.3.5 acknowledges a write once it is in its own log, and a
//! `kill -9` of a standalone target was seen to lose acknowledged rows that
//! were not flushed yet (see docs/reliability.md). So every
//! `replicate.flush_interval` the task snapshots its applied positions,
//! flushes the target collections written since the last flush, and only
//! then marks the snapshot durable; checkpoints record durable positions.
//! After a target outage the task replays from them (every write is
//! idempotent), which restores whatever the target lost.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::progress::TaskProgress;
use crate::sink::MilvusSink;

/// Longest wait for one collection's flush to be persisted.
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// Longest time a stopping task spends on its final flush.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Flushes the target and advances a task's durable positions.
#[derive(Clone)]
pub(super) struct Durability {
    /// The task's sink (knows which collections were written).
    writer: MilvusSink,
    /// The task's progress.
    progress: TaskProgress,
    /// `replicate.flush_interval`; zero: applied positions are durable.
    interval: Duration,
    /// Counts failed flushes.
    errors: Counter,
    /// When durable positions last caught up with a snapshot.
    last_ok: Arc<Mutex<Instant>>,
}

impl Durability {
    /// A durability tracker for one run of a task.
    pub(crate) fn new(
        writer: MilvusSink,
        progress: TaskProgress,
        interval: Duration,
        errors: Counter,
    ) -> Self {
        Self {
            writer,
            progress,
            interval,
            errors,
            last_ok: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Flushes every `interval` until `cancel` fires (nothing to do when the
    /// interval is zero). A flush in progress is abandoned on `cancel`, so a
    /// hand-over never waits for it: nothing is marked durable then, and the
    /// collections not flushed stay marked.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = self.flush_once(FLUSH_WAIT) => {}
            }
        }
    }

    /// One cycle: snapshot, flush, mark durable. False if the flush failed.
    async fn flush_once(&self, wait: Duration) -> bool {
        let snapshot = self.progress.applied_snapshot();
        match self.writer.flush_written(wait).await {
            Ok(collections) => {
                self.progress.mark_durable(&snapshot);
                *self.lock() = Instant::now();
                if collections > 0 {
                    debug!(collections, "target flushed; positions durable");
                }
                true
            }
            Err(e) => {
                self.errors.inc();
                warn!(error = %e, "target flush failed; checkpoints wait for the next one");
                false
            }
        }
    }

    /// With a zero interval, applied positions are durable at once.
    pub(crate) fn without_flushes(&self) {
        if self.interval.is_zero() {
            self.progress
                .mark_durable(&self.progress.applied_snapshot());
            *self.lock() = Instant::now();
        }
    }

    /// Before a task's final checkpoint: flush what is applied (bounded).
    pub(crate) async fn final_flush(&self) {
        if self.interval.is_zero() {
            self.without_flushes();
        } else {
            let done = tokio::time::timeout(FINAL_FLUSH_WAIT, self.flush_once(FINAL_FLUSH_WAIT))
                .await
                .unwrap_or(false);
            if !done {
                warn!("final flush did not complete; the checkpoint stays at the last flushed position");
            }
        }
    }

    /// Seconds since durable positions last caught up with the applied
    /// ones (grows while flushes fail).
    pub(crate) fn age(&self) -> Duration {
        self.lock().elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
