//! One channel's pipeline: events in channel order from the reader, inserts
//! batched, each change applied to the target with retries, progress
//! recorded only after the target acknowledged.

use std::{sync::Arc, time::Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use super::{
    batch::InsertBatch,
    catalog::{Catalog, Entry},
    progress::TaskProgress,
};
use crate::{
    config::ReplicateConfig,
    metrics::{ChannelLabels, Metrics},
    source::event::{Event, EventKind, Position},
    target::{
        writer::{retry_delays, Applied, PrimaryKeys, TargetCollectionRef, TargetWriter},
        TargetError,
    },
};

/// Everything a pipeline needs.
pub struct Pipeline {
    /// Channel name.
    pub channel: Arc<str>,
    /// Whether this is a DML channel (else the replicate channel).
    pub dml: bool,
    /// Target writer.
    pub writer: TargetWriter,
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
    /// Checked before every target write.
    pub leadership: super::Leadership,
    /// Keys inserted since the last delete (upsert detection).
    pub recent: std::sync::Mutex<super::upsert::RecentInserts>,
}

/// A batch waiting to be written, with the position it completes.
struct Pending {
    batch: InsertBatch,
    last: Position,
    last_ts: u64,
    deadline: tokio::time::Instant,
}

impl Pipeline {
    /// Applies events from `rx` until `cancel` fires or the reader stops.
    pub async fn run(self, mut rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let span = tracing::info_span!("pipeline", task_id = %self.labels.task_id, channel = %self.channel, term = self.leadership.term);
        async move {
            let mut pending: Option<Pending> = None;
            loop {
                let next = match &pending {
                    Some(p) => {
                        let deadline = p.deadline;
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            ev = rx.recv() => ev,
                            () = tokio::time::sleep_until(deadline) => {
                                if let Some(p) = pending.take() {
                                    if !self.flush(p, &cancel).await { return; }
                                }
                                continue;
                            }
                        }
                    }
                    None => tokio::select! {
                        () = cancel.cancelled() => return,
                        ev = rx.recv() => ev,
                    },
                };
                let Some(ev) = next else { return };
                self.progress.received(&self.channel, rx.is_empty());
                let Event {
                    position,
                    timestamp,
                    kind,
                } = ev;
                match kind {
                    EventKind::Insert(msg) => {
                        self.recent().record(position.sequence, &msg);
                        let bytes = prost::Message::encoded_len(msg.as_ref());
                        match &mut pending {
                            Some(p) if p.batch.accepts(&msg) => {
                                p.batch.push(*msg, bytes);
                                p.last = position;
                                p.last_ts = timestamp;
                            }
                            _ => {
                                if let Some(p) = pending.take() {
                                    if !self.flush(p, &cancel).await {
                                        return;
                                    }
                                }
                                pending = Some(Pending {
                                    batch: InsertBatch::new(*msg, bytes),
                                    last: position,
                                    last_ts: timestamp,
                                    deadline: tokio::time::Instant::now() + self.cfg.batch_wait,
                                });
                            }
                        }
                        let full = pending.as_ref().is_some_and(|p| {
                            p.batch.rows >= self.cfg.batch_rows as u64
                                || p.batch.bytes >= self.cfg.batch_bytes
                        });
                        // Flush when full, or when nothing else is queued and
                        // waiting would only add latency.
                        if full || rx.is_empty() && self.cfg.batch_wait.is_zero() {
                            if let Some(p) = pending.take() {
                                if !self.flush(p, &cancel).await {
                                    return;
                                }
                            }
                        }
                    }
                    kind => {
                        if let Some(p) = pending.take() {
                            if !self.flush(p, &cancel).await {
                                return;
                            }
                        }
                        if !self.apply(position, timestamp, kind, &cancel).await {
                            return;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Writes a batch; false if cancelled first.
    async fn flush(&self, p: Pending, cancel: &CancellationToken) -> bool {
        let rows = p.batch.rows;
        let started = Instant::now();
        let batch = &p.batch;
        let result = self
            .retry(cancel, "insert", || async move {
                match self.catalog.resolve(batch.collection_id).await? {
                    Entry::Dropped => Ok(Applied::Skipped(format!(
                        "collection {} was dropped on the source",
                        batch.collection
                    ))),
                    Entry::Live(live) => {
                        self.catalog
                            .ensure_partition(batch.collection_id, &batch.partition)
                            .await?;
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
                    }
                }
            })
            .await;
        let Some(applied) = result else { return false };
        self.metrics
            .apply_latency
            .get_or_create(&self.task_labels())
            .observe(started.elapsed().as_secs_f64());
        debug!(rows, sequence = p.last.sequence, "batch applied");
        self.count_applied(
            "insert",
            &applied,
            rows,
            p.batch.bytes as u64,
            p.batch.messages,
        );
        self.mark_applied(p.last.sequence, p.last_ts);
        true
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
            Applied::Skipped(reason) => {
                debug!(kind, reason = %reason, "skipped");
                self.metrics
                    .skipped_messages
                    .get_or_create(&l)
                    .inc_by(messages);
            }
        }
    }

    /// Applies one non-insert event; false if cancelled first.
    async fn apply(
        &self,
        pos: Position,
        ts: u64,
        kind: EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        let name = kind.name();
        match &kind {
            EventKind::TimeTick => {
                self.mark_applied(pos.sequence, ts);
                return true;
            }
            EventKind::Unsupported { msg_type } => {
                debug!(sequence = pos.sequence, msg_type, "not replicated");
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                self.mark_applied(pos.sequence, ts);
                return true;
            }
            EventKind::Undecodable(e) => {
                warn!(sequence = pos.sequence, error = %e, "undecodable message skipped");
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                self.mark_applied(pos.sequence, ts);
                return true;
            }
            _ => {}
        }
        if !self.dml && !self.wait_for_dml(ts, cancel).await {
            return false;
        }
        let started = Instant::now();
        let kind = &kind;
        let result = self.retry(cancel, name, || self.apply_once(kind)).await;
        let Some(applied) = result else { return false };
        if matches!(applied, Applied::Done) {
            info!(sequence = pos.sequence, event = name, "applied");
        }
        self.metrics
            .apply_latency
            .get_or_create(&self.task_labels())
            .observe(started.elapsed().as_secs_f64());
        let rows = match kind {
            EventKind::Delete(d) => u64::try_from(d.num_rows).unwrap_or(0),
            _ => 0,
        };
        self.count_applied(name, &applied, rows, 0, 1);
        if let EventKind::Delete(d) = kind {
            self.recent().clear(d.collection_id);
        }
        self.mark_applied(pos.sequence, ts);
        true
    }

    /// A replicate-channel change (index, load, flush, database...) waits
    /// until every busy DML channel has applied everything before it, so
    /// that e.g. an index is created after its collection.
    async fn wait_for_dml(&self, ts: u64, cancel: &CancellationToken) -> bool {
        let started = Instant::now();
        while self.progress.dml_watermark() < ts {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                warn!(
                    "DML channels did not reach this change's time within 60s; applying it anyway"
                );
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// Records progress up to `sequence`. The checkpointable position stays
    /// before the oldest insert still remembered for upsert detection, so a
    /// restart never resumes between an upsert's insert and its delete.
    fn mark_applied(&self, sequence: u64, ts: u64) {
        let resume = self
            .recent()
            .oldest_sequence()
            .map_or(sequence, |o| sequence.min(o.saturating_sub(1)));
        self.progress.applied(&self.channel, resume, ts);
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, super::upsert::RecentInserts> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn apply_once(&self, kind: &EventKind) -> Result<Applied, TargetError> {
        let w = &self.writer;
        match kind {
            EventKind::CreateCollection(c) => self.catalog.create_from_event(c).await,
            EventKind::DropCollection(d) => {
                let location = match self.catalog.known(d.collection_id).await {
                    Some(Entry::Live(live)) => Some((live.db.clone(), live.name.clone())),
                    _ => w.find_by_source_id(d.collection_id).await?,
                };
                let r = match location {
                    Some((db, name)) => w.drop_collection(&db, &name, d.collection_id).await?,
                    None => Applied::AlreadyThere,
                };
                self.catalog.set_dropped(d.collection_id).await;
                Ok(r)
            }
            EventKind::CreatePartition(p) => match self.catalog.resolve(p.collection_id).await? {
                Entry::Live(_) => {
                    self.catalog
                        .ensure_partition(p.collection_id, &p.partition_name)
                        .await?;
                    Ok(Applied::Done)
                }
                Entry::Dropped => Ok(Applied::Skipped("collection dropped".into())),
            },
            EventKind::DropPartition(p) => match self.catalog.resolve(p.collection_id).await? {
                Entry::Live(live) => {
                    let r = w
                        .drop_partition(&live.db, &live.name, &p.partition_name)
                        .await?;
                    self.catalog
                        .forget_partition(p.collection_id, &p.partition_name)
                        .await;
                    Ok(r)
                }
                Entry::Dropped => Ok(Applied::Skipped("collection dropped".into())),
            },
            EventKind::Delete(d) => {
                let keys = PrimaryKeys::from_ids(d.primary_keys.as_ref(), &d.int64_primary_keys);
                if keys.is_empty() {
                    return Ok(Applied::Skipped("delete without keys".into()));
                }
                match self.catalog.resolve(d.collection_id).await? {
                    Entry::Live(live) => {
                        let keys = self.recent().filter(
                            d.collection_id,
                            &live.meta.pk_field,
                            keys,
                            &d.timestamps,
                            d.base.as_ref().map_or(0, |b| b.timestamp),
                        );
                        if keys.is_empty() {
                            return Ok(Applied::Skipped(
                                "the delete half of an upsert: its rows were re-inserted".into(),
                            ));
                        }
                        let target = TargetCollectionRef {
                            name: &live.name,
                            meta: &live.meta,
                        };
                        w.delete(&live.db, &target, &d.partition_name, &keys).await
                    }
                    Entry::Dropped => Ok(Applied::Skipped("collection dropped".into())),
                }
            }
            EventKind::CreateDatabase(r) => w.ensure_database(&r.db_name).await,
            EventKind::DropDatabase(r) => w.drop_database(&r.db_name).await,
            EventKind::CreateIndex(r) => w.create_index(r.clone()).await,
            EventKind::DropIndex(r) => w.drop_index(r.clone()).await,
            EventKind::LoadCollection(r) => w.load_collection(r.clone()).await,
            EventKind::ReleaseCollection(r) => w.release_collection(r.clone()).await,
            EventKind::LoadPartitions(r) => w.load_partitions(r.clone()).await,
            EventKind::ReleasePartitions(r) => w.release_partitions(r.clone()).await,
            EventKind::Flush(r) => w.flush(r.clone()).await,
            EventKind::CreateAlias(r) => w.create_alias(r.clone()).await,
            EventKind::DropAlias(r) => w.drop_alias(r.clone()).await,
            EventKind::AlterAlias(r) => w.alter_alias(r.clone()).await,
            EventKind::Insert(_)
            | EventKind::TimeTick
            | EventKind::Unsupported { .. }
            | EventKind::Undecodable(_) => Ok(Applied::AlreadyThere),
        }
    }

    /// Runs `op` until it succeeds, with backoff; None if cancelled first.
    /// Every failure is counted and logged: nothing is skipped on error, so
    /// nothing is lost, and the lag shows that the channel is stuck.
    async fn retry<F, Fut>(&self, cancel: &CancellationToken, what: &str, op: F) -> Option<Applied>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Applied, TargetError>>,
    {
        let mut delays = retry_delays();
        let mut attempt = 0u32;
        loop {
            if !self.leadership.guard.is_valid() {
                self.leadership.refuse(&self.metrics, what);
                return None;
            }
            let r = tokio::select! {
                () = cancel.cancelled() => return None,
                r = op() => r,
            };
            match r {
                Ok(a) => {
                    if attempt > 0 {
                        info!(what, attempt, "write succeeded after retries");
                    }
                    return Some(a);
                }
                Err(e) => {
                    attempt += 1;
                    let kind = match &e {
                        TargetError::Unreachable { .. } => "target_unreachable",
                        TargetError::Unauthenticated { .. } => "target_auth",
                        TargetError::Rejected { .. } => "target_rejected",
                    };
                    self.metrics
                        .apply_errors
                        .get_or_create(&crate::metrics::ErrorLabels {
                            task_id: self.labels.task_id.clone(),
                            kind: kind.into(),
                        })
                        .inc();
                    let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
                    warn!(what, attempt, error = %e, retry_in = ?delay, "write failed, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
