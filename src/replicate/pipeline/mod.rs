//! One channel's pipeline. A DML channel's changes are held until a time
//! tick closes their window ([`super::window`]), then applied in the
//! source's timestamp order, reduced to their net effect
//! ([`super::reduce`]), through the target sink ([`TargetSink`]), which
//! retries every write until it succeeds. The replicate channel's changes
//! are applied one by one in stream order. Progress is recorded only after
//! the target acknowledged, at window boundaries.

use std::{sync::Arc, time::Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument as _};

use super::{
    apply::{apply_window, Sink},
    batch::InsertBatch,
    catalog::{Catalog, Entry, Writable},
    progress::TaskProgress,
    reduce::{DeleteStep, Limits, RowKey, Scope},
    window::{Cut, Windows},
};
use crate::{
    config::ReplicateConfig,
    metrics::{ChannelLabels, Metrics},
    sink::{Applied, MilvusSink, TargetCollectionRef},
    source::budget::event_bytes,
    source::event::{Event, EventKind},
};

mod dropped;

pub use dropped::DroppedPartitions;
mod events;
mod retry;

/// Everything a pipeline needs.
pub struct Pipeline {
    /// Channel name.
    pub channel: Arc<str>,
    /// Whether this is a DML channel (else the replicate channel).
    pub dml: bool,
    /// Target writer.
    pub writer: MilvusSink,
    /// Collection catalog of the task.
    pub catalog: Catalog,
    /// Shared progress of the task.
    pub progress: TaskProgress,
    /// Metrics and this channel's labels.
    pub metrics: Metrics,
    /// Labels.
    pub labels: ChannelLabels,
    /// Batching limits.
    pub cfg: ReplicateConfig,
    /// Where this run starts on the channel (its checkpoint): changes at or
    /// before its timestamp were applied by an earlier run.
    pub start: Cut,
    /// Checked before every target write.
    pub leadership: super::Leadership,
    /// Fired when a write succeeds after the target was unreachable: the
    /// task replays from its durable checkpoints (the target may have lost
    /// unflushed rows while it was away).
    pub rewind: CancellationToken,
    /// Where a write the target refuses for good is reported: the task
    /// stops, and the error is shown in get/list.
    pub failed: super::Failure,
    /// Where skipped messages are noted (recorded in the task).
    pub skipped: super::history::SkipLog,
    /// The byte budget of this channel's queue: an event's bytes are given
    /// back as it is taken out.
    pub budget: crate::source::budget::ByteBudget,
    /// The source queue, asked whether a silent channel's stream has more.
    pub mq: std::sync::Arc<dyn crate::source::mq::MessageQueue>,
    /// Source partitions whose drop a channel of the task has reached.
    pub dropped: DroppedPartitions,
    /// The task's id, for its records in the store.
    pub task: crate::task::TaskId,
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Rows an event carries (inserted rows, deleted keys).
fn rows_of(ev: &Event) -> u64 {
    match &ev.kind {
        EventKind::Insert(m) => m.num_rows,
        EventKind::Delete(m) => u64::try_from(m.num_rows).unwrap_or(0),
        _ => 0,
    }
}

/// A DML channel that has received nothing (not even a time tick) for this
/// long, while its stream has nothing more either, releases what it holds:
/// no tick will come for it.
const SILENT_RELEASE: std::time::Duration = std::time::Duration::from_secs(5);

impl Pipeline {
    /// Applies events from `rx` until `cancel` fires or the reader stops.
    pub async fn run(self, rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let span = tracing::info_span!("pipeline", task_id = %self.labels.task_id, channel = %self.channel, term = self.leadership.term);
        if self.dml {
            self.run_windows(rx, cancel).instrument(span).await;
        } else {
            self.run_ordered(rx, cancel).instrument(span).await;
        }
    }

    /// The replicate channel: each change in stream order, once the DML
    /// channels have applied everything before it.
    async fn run_ordered(&self, mut rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                ev = rx.recv() => ev,
            };
            let Some(ev) = next else { return };
            self.budget.give_back(event_bytes(&ev));
            self.progress.received(
                &self.channel,
                rx.is_empty(),
                ev.position.sequence,
                ev.timestamp,
            );
            if !self
                .apply(ev.position, ev.timestamp, ev.kind, &cancel)
                .await
            {
                return;
            }
        }
    }

    /// A DML channel: changes held until a time tick closes their window,
    /// then applied in timestamp order, reduced to their net effect. While a
    /// backlog is queued, consecutive windows are applied together (up to the
    /// batch limits); progress is recorded at window boundaries only.
    async fn run_windows(&self, mut rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let mut windows = Windows::new(self.start);
        let mut ready: Vec<Event> = Vec::new();
        let mut ready_bytes = 0usize;
        let mut ready_rows = 0u64;
        let mut reached: Option<Cut> = None;
        // When the first tick of the windows in `ready` was read.
        let mut closed_at = Instant::now();
        let mut last_received = tokio::time::Instant::now();
        let mut last_sequence = self.start.resume_after;
        loop {
            let silent = (windows.held() > 0).then_some(last_received + SILENT_RELEASE);
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                ev = rx.recv() => ev,
                () = sleep_until_opt(silent) => {
                    last_received = tokio::time::Instant::now();
                    if !self.stream_drained(last_sequence).await {
                        // The reader is behind or stuck (its own checks
                        // reopen it): releasing now would apply these
                        // before older changes still on their way.
                        warn!(held = windows.held(), last_sequence, "no message for {SILENT_RELEASE:?}, but the stream has more (or did not answer): still waiting for the time tick");
                        continue;
                    }
                    warn!(held = windows.held(), "no time tick for {SILENT_RELEASE:?} and nothing more in the stream: applying the held changes in timestamp order");
                    let rel = windows.release_all();
                    ready.extend(rel.events);
                    if reached.is_none() {
                        closed_at = Instant::now();
                    }
                    if !self.apply_released(std::mem::take(&mut ready), rel.cut, closed_at, &cancel).await {
                        return;
                    }
                    ready_bytes = 0;
                    ready_rows = 0;
                    reached = None;
                    continue;
                }
            };
            let Some(ev) = next else { return };
            self.budget.give_back(event_bytes(&ev));
            last_received = tokio::time::Instant::now();
            last_sequence = last_sequence.max(ev.position.sequence);
            self.progress.received(
                &self.channel,
                rx.is_empty(),
                ev.position.sequence,
                ev.timestamp,
            );
            if let Some(rel) = windows.push(ev) {
                ready_bytes += rel.events.iter().map(event_bytes).sum::<usize>();
                ready_rows += rel.events.iter().map(rows_of).sum::<u64>();
                ready.extend(rel.events);
                if reached.is_none() {
                    closed_at = Instant::now();
                }
                reached = Some(rel.cut);
            }
            let Some(cut) = reached else { continue };
            let full =
                ready_rows >= self.cfg.batch_rows as u64 || ready_bytes >= self.cfg.batch_bytes;
            if full || rx.is_empty() {
                if !self
                    .apply_released(std::mem::take(&mut ready), cut, closed_at, &cancel)
                    .await
                {
                    return;
                }
                ready_bytes = 0;
                ready_rows = 0;
                reached = None;
            }
        }
    }

    /// Whether the channel's stream holds nothing after `last_sequence`
    /// (false when the queue does not answer in time).
    async fn stream_drained(&self, last_sequence: u64) -> bool {
        let info = tokio::time::timeout(SILENT_RELEASE, self.mq.info(&self.channel)).await;
        matches!(info, Ok(Ok(i)) if i.last_sequence <= last_sequence)
    }

    /// Applies released windows (the first closed at `closed_at`) and
    /// records the cut they reach; false if stopped first.
    async fn apply_released(
        &self,
        events: Vec<Event>,
        cut: Cut,
        closed_at: Instant,
        cancel: &CancellationToken,
    ) -> bool {
        if !events.is_empty() {
            let started = Instant::now();
            let messages = events.len();
            let sink = TargetSink {
                pipeline: self,
                cancel,
            };
            let limits = Limits {
                rows: self.cfg.batch_rows as u64,
                bytes: self.cfg.batch_bytes,
            };
            let Some(done) = apply_window(&sink, events, limits).await else {
                return false;
            };
            self.metrics
                .window_delay
                .get_or_create(&self.task_labels())
                .observe(closed_at.elapsed().as_secs_f64());
            if done.rows_in > 0 {
                self.metrics
                    .reduced_rows
                    .get_or_create(&self.task_labels())
                    .inc_by(done.rows_in.saturating_sub(done.rows_written));
            }
            debug!(
                messages,
                rows_in = done.rows_in,
                rows_written = done.rows_written,
                keys_deleted = done.keys_deleted,
                through_ts = cut.through_ts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "window applied"
            );
        }
        self.progress
            .applied(&self.channel, cut.resume_after, cut.through_ts);
        true
    }

    /// Writes a batch of rows; false if stopped first.
    async fn write_rows(&self, batch: &InsertBatch, cancel: &CancellationToken) -> bool {
        let rows = batch.rows;
        let started = Instant::now();
        let result = self
            .retry(cancel, "insert", || async move {
                // Checked on every attempt: another channel may drop the
                // partition (and a newer one take its name) meanwhile.
                if self
                    .dropped
                    .is_dropped(&self.labels.task_id, batch.partition_id)
                {
                    return Ok(Applied::Skipped(format!(
                        "partition {} of {} was dropped on the source",
                        batch.partition, batch.collection
                    )));
                }
                let (live, _gate) = match self.catalog.writable(batch.collection_id).await? {
                    Writable::Live(live, gate) => (live, gate),
                    Writable::Excluded => return Ok(Applied::Excluded),
                    Writable::Dropped => {
                        return Ok(Applied::Skipped(format!(
                            "collection {} was dropped on the source",
                            batch.collection
                        )))
                    }
                    Writable::Replaced => {
                        return Ok(Applied::Skipped(format!(
                            "collection {} was replaced by a newer one",
                            batch.collection
                        )))
                    }
                };
                self.catalog
                    .ensure_partition_of(&live, &batch.partition)
                    .await?;
                self.still_leading()?;
                let target = TargetCollectionRef {
                    name: &live.name,
                    meta: &live.meta,
                };
                self.writer
                    .upsert(
                        &live.db,
                        &target,
                        &batch.partition,
                        batch.columns.clone(),
                        u32::try_from(batch.rows).unwrap_or(u32::MAX),
                    )
                    .await
            })
            .await;
        let Some(applied) = result else { return false };
        self.observe_write(
            "insert",
            started,
            &applied,
            rows,
            batch.bytes as u64,
            batch.messages,
        );
        true
    }

    /// Deletes keys in a scope; false if stopped first.
    async fn write_delete(&self, step: &DeleteStep, cancel: &CancellationToken) -> bool {
        let started = Instant::now();
        let partition = match &step.scope {
            Scope::All => "",
            Scope::Partition(p) => p.as_str(),
        };
        let result = self
            .retry(cancel, "delete", || async move {
                if self
                    .dropped
                    .is_dropped(&self.labels.task_id, step.partition_id)
                {
                    return Ok(Applied::Skipped(format!(
                        "partition {partition} was dropped on the source"
                    )));
                }
                let (live, _gate) = match self.catalog.writable(step.collection_id).await? {
                    Writable::Live(live, gate) => (live, gate),
                    Writable::Dropped => return Ok(Applied::Skipped("collection dropped".into())),
                    Writable::Replaced => {
                        return Ok(Applied::Skipped(
                            "collection was replaced by a newer one".into(),
                        ))
                    }
                    Writable::Excluded => return Ok(Applied::Excluded),
                };
                // A partition that no insert has created on the target yet
                // (the first change of a run is an upsert into it, say).
                self.catalog.ensure_partition_of(&live, partition).await?;
                self.still_leading()?;
                let target = TargetCollectionRef {
                    name: &live.name,
                    meta: &live.meta,
                };
                self.writer
                    .delete(&live.db, &target, partition, &step.keys)
                    .await
            })
            .await;
        let Some(applied) = result else { return false };
        self.observe_write("delete", started, &applied, step.keys.len() as u64, 0, 1);
        true
    }

    /// Records a finished row write: its latency and what it applied.
    fn observe_write(
        &self,
        kind: &str,
        started: Instant,
        applied: &Applied,
        rows: u64,
        bytes: u64,
        messages: u64,
    ) {
        self.metrics
            .apply_latency
            .get_or_create(&self.task_labels())
            .observe(started.elapsed().as_secs_f64());
        self.count_applied(kind, applied, rows, bytes, messages);
    }

    /// How a source collection's rows are keyed (None inside: gone).
    async fn row_key_of(&self, id: i64, cancel: &CancellationToken) -> Option<Option<RowKey>> {
        let entry = self
            .retry(cancel, "resolve collection", || self.catalog.resolve(id))
            .await?;
        Some(match entry {
            Entry::Live(live) => Some(RowKey {
                pk_field: live.meta.pk_field.clone(),
                partition_key: live.meta.has_partition_key,
            }),
            Entry::Dropped | Entry::Excluded => None,
        })
    }

    fn task_labels(&self) -> crate::metrics::TaskLabels {
        crate::metrics::TaskLabels {
            task_id: self.labels.task_id.clone(),
        }
    }

    fn count_applied(&self, kind: &str, applied: &Applied, rows: u64, bytes: u64, messages: u64) {
        let l = self.labels.with_kind(kind);
        match applied {
            Applied::Done | Applied::AlreadyThere => {
                self.metrics
                    .applied_messages
                    .get_or_create(&l)
                    .inc_by(messages);
                if rows > 0 {
                    self.metrics.applied_rows.get_or_create(&l).inc_by(rows);
                }
                if bytes > 0 {
                    self.metrics
                        .applied_bytes
                        .get_or_create(&self.labels)
                        .inc_by(bytes);
                }
            }
            Applied::Excluded => debug!(kind, "not replicated by this task"),
            Applied::Skipped(reason) => {
                debug!(kind, reason = %reason, "skipped");
                self.metrics
                    .skipped_messages
                    .get_or_create(&l)
                    .inc_by(messages);
            }
        }
    }
}

/// The target side of a DML pipeline: the [`Sink`] that the windows are
/// applied through. Every write is retried until it succeeds, and checked
/// against the lease right before it is sent.
struct TargetSink<'a> {
    pipeline: &'a Pipeline,
    cancel: &'a CancellationToken,
}

impl Sink for TargetSink<'_> {
    fn row_key(
        &self,
        collection_id: i64,
    ) -> impl std::future::Future<Output = Option<Option<RowKey>>> + Send {
        self.pipeline.row_key_of(collection_id, self.cancel)
    }

    fn delete(&self, step: &DeleteStep) -> impl std::future::Future<Output = bool> + Send {
        self.pipeline.write_delete(step, self.cancel)
    }

    fn upsert(&self, batch: &InsertBatch) -> impl std::future::Future<Output = bool> + Send {
        self.pipeline.write_rows(batch, self.cancel)
    }

    fn apply(&self, event: Event) -> impl std::future::Future<Output = bool> + Send {
        self.pipeline
            .apply_unrecorded(event.position, event.timestamp, event.kind, self.cancel)
    }
}
