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
    /// Fired when a write succeeds after the target was unreachable: the
    /// task replays from its durable checkpoints (the target may have lost
    /// unflushed rows while it was away).
    pub rewind: CancellationToken,
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A batch waiting to be written, with the position it completes.
struct Pending {
    batch: InsertBatch,
    last: Position,
    last_ts: u64,
    deadline: tokio::time::Instant,
}

impl Pending {
    fn new(batch: InsertBatch, last: Position, last_ts: u64, wait: std::time::Duration) -> Self {
        Self {
            batch,
            last,
            last_ts,
            deadline: tokio::time::Instant::now() + wait,
        }
    }
}

/// Rows not yet written: consecutive plain inserts, and an upsert's rows
/// held until its delete.
#[derive(Default)]
struct Batches {
    normal: Option<Pending>,
    held: Vec<Pending>,
}

impl Pipeline {
    /// Applies events from `rx` until `cancel` fires or the reader stops.
    ///
    /// Upserts: Milvus 2.3.5 writes an upsert as inserts of the new rows (with
    /// no message timestamp; one per partition) followed by a delete of the
    /// same keys with the same timestamp, which on the source removes only
    /// the *older* versions, in any partition. The target gives every write a
    /// new timestamp, so the pipeline holds an upsert's rows until its delete
    /// arrives, applies the delete first and then the rows: the target ends
    /// with exactly the new versions. Nothing is checkpointed in between.
    pub async fn run(self, mut rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let span = tracing::info_span!("pipeline", task_id = %self.labels.task_id, channel = %self.channel, term = self.leadership.term);
        async move {
            let mut b = Batches::default();
            loop {
                // An upsert's rows wait for its delete, not for a deadline.
                let deadline = b.normal.as_ref().map(|p| p.deadline);
                let next = tokio::select! {
                    () = cancel.cancelled() => return,
                    ev = rx.recv() => ev,
                    () = sleep_until_opt(deadline) => {
                        if !self.flush_normal(&mut b, &cancel).await { return; }
                        continue;
                    }
                };
                let Some(ev) = next else { return };
                self.progress.received(
                    &self.channel,
                    rx.is_empty(),
                    ev.position.sequence,
                    ev.timestamp,
                );
                if !self.handle(ev, &mut b, rx.is_empty(), &cancel).await {
                    return;
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn flush_normal(&self, b: &mut Batches, cancel: &CancellationToken) -> bool {
        match b.normal.take() {
            Some(p) => self.flush(p, cancel).await,
            None => true,
        }
    }

    /// Writes every held batch (upsert rows); false if cancelled first.
    async fn flush_held(&self, b: &mut Batches, cancel: &CancellationToken) -> bool {
        for p in std::mem::take(&mut b.held) {
            if !self.flush(p, cancel).await {
                return false;
            }
        }
        true
    }

    /// Handles one event; false if cancelled first.
    async fn handle(
        &self,
        ev: Event,
        b: &mut Batches,
        queue_empty: bool,
        cancel: &CancellationToken,
    ) -> bool {
        let Event {
            position,
            timestamp,
            kind,
        } = ev;
        match kind {
            EventKind::Insert(msg) if msg.base.as_ref().is_none_or(|b| b.timestamp == 0) => {
                // An upsert's rows: held until its delete.
                let bytes = prost::Message::encoded_len(msg.as_ref());
                if !self.flush_normal(b, cancel).await {
                    return false;
                }
                match b.held.iter_mut().find(|p| p.batch.accepts(&msg)) {
                    Some(p) => {
                        p.batch.push(*msg, bytes);
                        p.last = position;
                        p.last_ts = timestamp;
                    }
                    None => {
                        let mut batch = InsertBatch::new(*msg, bytes);
                        batch.upsert = true;
                        b.held.push(Pending::new(
                            batch,
                            position,
                            timestamp,
                            self.cfg.batch_wait,
                        ));
                    }
                }
                true
            }
            EventKind::Insert(msg) => {
                let bytes = prost::Message::encoded_len(msg.as_ref());
                if !b.held.is_empty() && !self.flush_held(b, cancel).await {
                    return false;
                }
                match &mut b.normal {
                    Some(p) if p.batch.accepts(&msg) => {
                        p.batch.push(*msg, bytes);
                        p.last = position;
                        p.last_ts = timestamp;
                    }
                    _ => {
                        if !self.flush_normal(b, cancel).await {
                            return false;
                        }
                        let batch = InsertBatch::new(*msg, bytes);
                        b.normal = Some(Pending::new(
                            batch,
                            position,
                            timestamp,
                            self.cfg.batch_wait,
                        ));
                    }
                }
                let full = b.normal.as_ref().is_some_and(|p| {
                    p.batch.rows >= self.cfg.batch_rows as u64
                        || p.batch.bytes >= self.cfg.batch_bytes
                });
                // Flush when full, or when nothing else is queued and waiting
                // would only add latency.
                if full || queue_empty && self.cfg.batch_wait.is_zero() {
                    return self.flush_normal(b, cancel).await;
                }
                true
            }
            EventKind::Delete(d)
                if b.held
                    .iter()
                    .any(|p| p.batch.collection_id == d.collection_id) =>
            {
                // The delete half of an upsert: delete every older version
                // first, then write the new rows, then record both.
                if !self.flush_normal(b, cancel).await {
                    return false;
                }
                if !self
                    .apply_unrecorded(&position, timestamp, EventKind::Delete(d), cancel)
                    .await
                {
                    return false;
                }
                if !self.flush_held(b, cancel).await {
                    return false;
                }
                self.progress
                    .applied(&self.channel, position.sequence, timestamp);
                true
            }
            // Recording a tick would checkpoint past held rows.
            EventKind::TimeTick if !b.held.is_empty() => true,
            kind => {
                if !self.flush_normal(b, cancel).await || !self.flush_held(b, cancel).await {
                    return false;
                }
                self.apply(position, timestamp, kind, cancel).await
            }
        }
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
                        let Some(_gate) = live.write_gate().await else {
                            return Ok(Applied::Skipped(format!(
                                "collection {} was replaced by a newer one",
                                batch.collection
                            )));
                        };
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
        self.progress
            .applied(&self.channel, p.last.sequence, p.last_ts);
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

    /// Applies one non-insert event and records it; false if cancelled first.
    async fn apply(
        &self,
        pos: Position,
        ts: u64,
        kind: EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        if !self.apply_unrecorded(&pos, ts, kind, cancel).await {
            return false;
        }
        self.progress.applied(&self.channel, pos.sequence, ts);
        true
    }

    /// Applies one non-insert event without recording progress; false if
    /// cancelled first.
    async fn apply_unrecorded(
        &self,
        pos: &Position,
        ts: u64,
        kind: EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        let name = kind.name();
        match &kind {
            EventKind::TimeTick => return true,
            EventKind::Unsupported { msg_type } => {
                debug!(sequence = pos.sequence, msg_type, "not replicated");
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                return true;
            }
            EventKind::Undecodable(e) => {
                warn!(sequence = pos.sequence, error = %e, "undecodable message skipped");
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                return true;
            }
            _ => {}
        }
        if !self.dml && !self.wait_for_dml(ts, cancel).await {
            return false;
        }
        if let Some((db, name)) = kind.collection_scoped() {
            if !self.wait_for_collection(db, name, ts, cancel).await {
                return false;
            }
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

    /// A replicate-channel change (time `ts`) of a collection that the
    /// source has (created before `ts`, so the same collection, not a later
    /// one with the same name) but the target does not have yet waits (up
    /// to 60 s) for a DML channel to create it: "gone" must mean gone on the
    /// source, or e.g. an index replayed by a new leader before the
    /// collection would be lost.
    async fn wait_for_collection(
        &self,
        db: &str,
        name: &str,
        ts: u64,
        cancel: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        loop {
            let on_target = self.writer.describe(db, name).await;
            if !matches!(on_target, Ok(None)) {
                return true; // present, or an error the write itself will retry
            }
            match self.catalog.describe_source(db, name).await {
                Ok(Some(c)) if c.created_timestamp <= ts => {}
                // Gone on the source too (or replaced): the write skips it.
                _ => return true,
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                warn!(
                    db,
                    collection = name,
                    "collection exists on the source but not on the target after 60s; applying anyway"
                );
                return true;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    }

    /// Checked right before each write is sent (after any look-ups that may
    /// have taken time), so a replica that lost its lease meanwhile sends
    /// nothing.
    fn still_leading(&self) -> Result<(), TargetError> {
        if self.leadership.guard.is_valid() {
            Ok(())
        } else {
            Err(TargetError::Fenced)
        }
    }

    async fn apply_once(&self, kind: &EventKind) -> Result<Applied, TargetError> {
        self.still_leading()?;
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
                        let target = TargetCollectionRef {
                            name: &live.name,
                            meta: &live.meta,
                        };
                        let Some(_gate) = live.write_gate().await else {
                            return Ok(Applied::Skipped(
                                "collection was replaced by a newer one".into(),
                            ));
                        };
                        self.still_leading()?;
                        // Partition id -1: the delete applies to every partition.
                        let partition = if d.partition_id > 0 {
                            d.partition_name.as_str()
                        } else {
                            ""
                        };
                        w.delete(&live.db, &target, partition, &keys).await
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
        let mut unreachable = false;
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
                    if unreachable {
                        self.rewind.cancel();
                    }
                    return Some(a);
                }
                Err(e) => {
                    attempt += 1;
                    unreachable |= matches!(e, TargetError::Unreachable { .. });
                    let kind = match &e {
                        TargetError::Unreachable { .. } => "target_unreachable",
                        TargetError::Unauthenticated { .. } => "target_auth",
                        TargetError::Rejected { .. } => "target_rejected",
                        TargetError::Fenced => "fenced",
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
