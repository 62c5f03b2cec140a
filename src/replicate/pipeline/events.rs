//! The replicate channel's changes (DDL, indexes, load state, flushes) and
//! other non-row events: applied one by one in stream order, each after the
//! DML channels have applied everything older.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{dropped::Claim, Pipeline};
use crate::{
    backoff::retry_delays,
    milvus::MilvusError,
    replicate::catalog::{Entry, Holder},
    sink::Applied,
    source::event::{EventKind, Position},
    store::{now_ms, DroppedPartition, StoreError},
};

/// How long a DML channel waits for another channel to finish dropping a
/// partition that both carry.
const DROP_WAIT: Duration = Duration::from_secs(60);

/// How long a replicate-channel change waits for DML channels that make no
/// progress (stuck on a write the target keeps refusing, say).
const DML_STALL: Duration = Duration::from_secs(60);

impl Pipeline {
    /// Applies one non-insert event and records it; false if cancelled first.
    pub(super) async fn apply(
        &self,
        pos: Position,
        ts: u64,
        kind: EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        let sequence = pos.sequence;
        if !self.apply_unrecorded(pos, ts, kind, cancel).await {
            return false;
        }
        self.progress.applied(&self.channel, sequence, ts);
        true
    }

    /// Applies one non-insert event without recording progress; false if
    /// cancelled first.
    pub(super) async fn apply_unrecorded(
        &self,
        pos: Position,
        ts: u64,
        kind: EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        let name = kind.name();
        match &kind {
            EventKind::TimeTick => return true,
            EventKind::Unsupported { msg_type } => {
                debug!(sequence = pos.sequence, msg_type, "not replicated");
                let type_name = crate::proto::common::MsgType::try_from(*msg_type)
                    .map_or_else(|_| msg_type.to_string(), |t| t.as_str_name().to_string());
                self.skipped.note(
                    &self.channel,
                    pos.sequence,
                    format!("unsupported {type_name}"),
                    String::new(),
                );
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                return true;
            }
            EventKind::Undecodable(e) => {
                warn!(sequence = pos.sequence, error = %e, "undecodable message skipped");
                self.skipped
                    .note(&self.channel, pos.sequence, "undecodable".into(), e.clone());
                self.metrics
                    .skipped_messages
                    .get_or_create(&self.labels.with_kind(name))
                    .inc();
                return true;
            }
            EventKind::CreateCollection(c) => {
                self.catalog
                    .note_created(c.name(), c.request.collection_id, ts);
            }
            _ => {}
        }
        if !self.dml && !self.wait_for_dml(ts, cancel).await {
            return false;
        }
        // Made through an alias: applied to the target collection of the
        // aliased source collection, not by the alias (`catalog/alias.rs`).
        let mut kind = kind;
        let dealiased = match kind.client_named() {
            Some((db, client_name)) => match self.catalog.dealias(db, client_name).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(sequence = pos.sequence, event = name, collection = client_name, error = %e, "could not ask the source whether the collection name is an alias; applying the change by that name");
                    None
                }
            },
            None => None,
        };
        if let Some((db, real)) = dealiased {
            kind.redirect(db, real);
        }
        // Changes of collections the task does not replicate are ignored
        // (before waiting for such a collection to appear on the target).
        match self
            .retry(cancel, "select", || self.catalog.selects(&kind))
            .await
        {
            None => return false,
            Some(false) => {
                debug!(
                    sequence = pos.sequence,
                    event = name,
                    "not replicated by this task"
                );
                return true;
            }
            Some(true) => {}
        }
        if let Some((db, name_now)) = kind.client_named() {
            let (db, name_now) = (db.to_string(), name_now.to_string());
            // An index or a load waits for its collection; a drop of an
            // index or a release has nothing to wait for.
            let decision = if kind.collection_scoped().is_some() {
                self.wait_for_collection(&db, &name_now, ts, cancel).await
            } else {
                Some(match self.name_now(&db, &name_now, ts).await {
                    NameAt::Wait => NameAt::Apply,
                    decided => decided,
                })
            };
            match decision {
                None => return false,
                Some(decision @ (NameAt::Skip(_) | NameAt::Gone)) => {
                    // Made to an earlier collection of this name: the one
                    // last created under it before the change, if this run
                    // read that creation (`catalog/created.rs`).
                    let current = match decision {
                        NameAt::Skip(current) => Some(current),
                        _ => None,
                    };
                    let holder = self
                        .retry(cancel, "holder", || {
                            self.catalog.holder_at(&db, &name_now, ts, current)
                        })
                        .await;
                    match holder {
                        None => return false,
                        Some(Holder::Dropped) => {
                            let skipped = Applied::Skipped(format!(
                                "made to an earlier collection named {name_now}, dropped on the source since"
                            ));
                            self.count_applied(name, &skipped, 0, 0, 1);
                            return true;
                        }
                        Some(Holder::Excluded) => {
                            self.count_applied(name, &Applied::Excluded, 0, 0, 1);
                            return true;
                        }
                        // Renamed since, and the name is free now: to its
                        // replica, under the name it has now (tried once
                        // below: a collection renamed into the name after
                        // it, and away again, may have held it then).
                        Some(Holder::Live(to_db, to_name)) if decision == NameAt::Gone => {
                            info!(sequence = pos.sequence, event = name, collection = %name_now, db = %db, now = %to_name, "change made to the collection that held the name then: applied to its replica");
                            kind.redirect(to_db, to_name);
                        }
                        // Dropped, as far as is known: the write skips it.
                        Some(_) if decision == NameAt::Gone => {
                            return self.apply_retried(pos, name, &kind, cancel).await;
                        }
                        // Renamed since while a later collection took the
                        // name (a swap of two names, or a name reused), or
                        // not known: tried once on the name, as below.
                        Some(Holder::Live(..) | Holder::Unknown) => {}
                    }
                    // One dropped since (its namesake must not get it), or
                    // one renamed since, whose replica the name may still
                    // lead to during a replay (the swap of two names).
                    // Tried once: a refusal means the former (an index for
                    // another vector type is refused with a plain error
                    // status, not as an invalid argument), and the change
                    // is skipped instead of stopping the task.
                    match self.apply_once(&kind).await {
                        Ok(applied) => {
                            self.count_applied(name, &applied, 0, 0, 1);
                            return true;
                        }
                        Err(e) if e.is_refusal() => {
                            let skipped = Applied::Skipped(format!(
                                "made to an earlier collection named {name_now}, and refused by the target's collection it names now: {e}"
                            ));
                            self.count_applied(name, &skipped, 0, 0, 1);
                            return true;
                        }
                        // Transient: retried like any write below.
                        Err(_) => {}
                    }
                }
                Some(_) => {}
            }
        }
        self.apply_retried(pos, name, &kind, cancel).await
    }

    /// Applies `kind` (retried while the failure is transient) and counts
    /// it; false if cancelled first.
    async fn apply_retried(
        &self,
        pos: Position,
        name: &'static str,
        kind: &EventKind,
        cancel: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
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
    /// that e.g. an index is created after its collection. It waits as long
    /// as they move on (a long backlog behind a new task takes its time),
    /// and applies the change anyway after [`DML_STALL`] without progress.
    pub(super) async fn wait_for_dml(&self, ts: u64, cancel: &CancellationToken) -> bool {
        let mut watch = Stall::new(self.progress.dml_watermark(), Instant::now());
        loop {
            let watermark = self.progress.dml_watermark();
            if watermark >= ts {
                break;
            }
            if watch.stalled(watermark, Instant::now(), DML_STALL) {
                warn!(
                    "DML channels made no progress towards this change's time for {DML_STALL:?}; applying it anyway"
                );
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// A replicate-channel change (time `ts`) of a collection that the
    /// source has (created before `ts`, so the same collection, not a later
    /// one with the same name) but the target does not have yet waits (up
    /// to 60 s) for a DML channel to create it: "gone" must mean gone on the
    /// source, or e.g. an index replayed by a new leader before the
    /// collection would be lost. A change older than the source's collection
    /// of that name is skipped (see [`name_at`]). None: cancelled.
    pub(super) async fn wait_for_collection(
        &self,
        db: &str,
        name: &str,
        ts: u64,
        cancel: &CancellationToken,
    ) -> Option<NameAt> {
        let started = Instant::now();
        loop {
            let decision = self.name_now(db, name, ts).await;
            if decision != NameAt::Wait {
                return Some(decision);
            }
            // Perhaps renamed on the source since the target got it.
            self.retry(cancel, "rename", || self.catalog.follow_renames())
                .await?;
            if started.elapsed() > Duration::from_secs(60) {
                warn!(
                    db,
                    collection = name,
                    "collection exists on the source but not on the target after 60s; applying anyway"
                );
                return Some(NameAt::Apply);
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// [`name_at`] for a change made at `ts` to `db.name`, from the target's
    /// and the source's collections of that name now (`Apply` when either
    /// does not answer: the write itself retries).
    async fn name_now(&self, db: &str, name: &str, ts: u64) -> NameAt {
        let on_target = self.writer.describe(db, name).await;
        let source = self.catalog.describe_source(db, name).await;
        match (&on_target, &source) {
            (Err(_), _) | (_, Err(_)) => NameAt::Apply,
            (Ok(t), Ok(c)) => name_at(
                t.is_some(),
                c.as_ref().map(|c| (c.created_timestamp, c.collection_id)),
                ts,
            ),
        }
    }

    /// Checked right before each write is sent (after any look-ups that may
    /// have taken time), so a replica that lost its lease meanwhile sends
    /// nothing.
    pub(super) fn still_leading(&self) -> Result<(), MilvusError> {
        if self.leadership.guard.is_valid() {
            Ok(())
        } else {
            Err(MilvusError::Fenced)
        }
    }

    /// Records in the task store that the target's copy of source partition
    /// `partition_id` is dropped, so that later runs (another process after
    /// a failover or a restart) treat replays of the drop as done. Retried
    /// until stored: the other channels wait on this drop meanwhile. A
    /// deleted task needs no record.
    async fn record_drop(
        &self,
        collection_id: i64,
        partition_id: i64,
        partition_name: &str,
    ) -> Result<(), MilvusError> {
        let record = DroppedPartition {
            collection_id,
            partition_id,
            partition_name: partition_name.to_string(),
            channel: self.channel.to_string(),
            recorded_at_ms: now_ms(),
        };
        let mut delays = retry_delays();
        loop {
            match self
                .leadership
                .store
                .save_dropped_partition(&self.task, &record)
                .await
            {
                Ok(()) => return Ok(()),
                Err(StoreError::NotFound(_)) => return Ok(()),
                Err(StoreError::Fenced) => {
                    self.leadership
                        .refuse(&self.metrics, "record dropped partition");
                    return Err(MilvusError::Fenced);
                }
                Err(e) => {
                    self.count_error("checkpoint");
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    warn!(partition = partition_name, partition_id, error = %e, retry_in = ?delay, "the drop of the partition was applied but not recorded yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Forgets the task's dropped-partition records of a collection whose
    /// drop was applied (its replays resolve it as dropped on the source).
    /// Best effort: a record left behind only takes a little space until
    /// the task is deleted.
    async fn forget_drops(&self, collection_id: i64) -> Result<(), MilvusError> {
        match self
            .leadership
            .store
            .forget_dropped_partitions(&self.task, collection_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced) => {
                self.leadership
                    .refuse(&self.metrics, "forget dropped partitions");
                Err(MilvusError::Fenced)
            }
            Err(e) => {
                self.count_error("checkpoint");
                warn!(collection_id, error = %e, "the dropped-partition records of the dropped collection stay in the store until the task is deleted");
                Ok(())
            }
        }
    }

    pub(super) async fn apply_once(&self, kind: &EventKind) -> Result<Applied, MilvusError> {
        self.still_leading()?;
        let w = &self.writer;
        match kind {
            EventKind::CreateCollection(c) => self.catalog.create_from_event(c).await,
            EventKind::DropCollection(d) => {
                let location = match self.catalog.known(d.collection_id).await {
                    Some(Entry::Excluded) => return Ok(Applied::Excluded),
                    Some(Entry::Live(live)) => Some((live.db.clone(), live.name.clone())),
                    _ => w.find_by_source_id(d.collection_id).await?,
                };
                let r = match location {
                    Some((db, name)) => w.drop_collection(&db, &name, d.collection_id).await?,
                    None => Applied::AlreadyThere,
                };
                self.catalog.set_dropped(d.collection_id).await;
                self.forget_drops(d.collection_id).await?;
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
                Entry::Excluded => Ok(Applied::Excluded),
            },
            EventKind::DropPartition(p) => match self.catalog.resolve(p.collection_id).await? {
                Entry::Live(live) => {
                    // Each DML channel of the collection carries the drop:
                    // the first to reach it applies it; the others wait for
                    // that, so that a lagging channel's copy cannot drop a
                    // partition re-created under the name.
                    let task = self.labels.task_id.as_str();
                    let started = Instant::now();
                    loop {
                        match self.dropped.claim(task, p.partition_id, &self.channel) {
                            Claim::Mine => break,
                            Claim::Done => return Ok(Applied::AlreadyThere),
                            Claim::Pending if started.elapsed() > DROP_WAIT => {
                                warn!(partition = %p.partition_name, "another channel did not finish dropping this partition within {DROP_WAIT:?}; going on");
                                return Ok(Applied::AlreadyThere);
                            }
                            Claim::Pending => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    let r = w
                        .drop_partition(&live.db, &live.name, &p.partition_name)
                        .await?;
                    self.catalog
                        .forget_partition(p.collection_id, &p.partition_name)
                        .await;
                    if p.partition_id > 0 {
                        self.record_drop(p.collection_id, p.partition_id, &p.partition_name)
                            .await?;
                    }
                    self.dropped.finish(task, p.partition_id);
                    Ok(r)
                }
                Entry::Dropped => Ok(Applied::Skipped("collection dropped".into())),
                Entry::Excluded => Ok(Applied::Excluded),
            },
            EventKind::CreateDatabase(r) => w.ensure_database(&r.db_name).await,
            EventKind::DropDatabase(r) => w.drop_database(&r.db_name).await,
            EventKind::CreateIndex(r) => w.create_index(r.clone()).await,
            EventKind::DropIndex(r) => w.drop_index(r.clone()).await,
            EventKind::LoadCollection(r) => w.load_collection(r.clone()).await,
            EventKind::ReleaseCollection(r) => w.release_collection(r.clone()).await,
            EventKind::LoadPartitions(r) => w.load_partitions(r.clone()).await,
            EventKind::ReleasePartitions(r) => w.release_partitions(r.clone()).await,
            EventKind::Flush(r) => {
                let mut r = r.clone();
                r.collection_names = self
                    .catalog
                    .flush_names(&r.db_name, &r.collection_names)
                    .await?;
                if r.collection_names.is_empty() {
                    return Ok(Applied::Excluded);
                }
                w.flush(r).await
            }
            EventKind::CreateAlias(r) => w.create_alias(r.clone()).await,
            EventKind::DropAlias(r) => w.drop_alias(r.clone()).await,
            EventKind::AlterAlias(r) => w.alter_alias(r.clone()).await,
            // Row changes go through the windows (`run_windows`).
            EventKind::Insert(_)
            | EventKind::Delete(_)
            | EventKind::TimeTick
            | EventKind::Unsupported { .. }
            | EventKind::Undecodable(_) => Ok(Applied::AlreadyThere),
        }
    }
}

/// Watches a value that should keep moving (the DML watermark): stalled
/// once it has not changed for a while.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stall {
    value: u64,
    since: Instant,
}

impl Stall {
    /// Starts watching `value` at `now`.
    pub(super) fn new(value: u64, now: Instant) -> Self {
        Self { value, since: now }
    }

    /// Whether `value` (seen at `now`) has stayed the same for longer than
    /// `limit`; a change restarts the clock.
    pub(super) fn stalled(&mut self, value: u64, now: Instant, limit: Duration) -> bool {
        if value != self.value {
            *self = Self::new(value, now);
            return false;
        }
        now.duration_since(self.since) > limit
    }
}

/// What a replicate-channel change (index, load) of the collection named
/// `name` at time `ts` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameAt {
    /// Apply it to the target's collection of that name (or let the write
    /// skip it when there is none).
    Apply,
    /// The source's collection of that name existed at `ts` and the target
    /// has none yet: wait for a DML channel to create it.
    Wait,
    /// The source's collection of that name was created after `ts`: the
    /// change was made to an earlier collection of that name, dropped or
    /// renamed since. It goes to the collection last created under the
    /// name before `ts` ([`Catalog::holder_at`](crate::replicate::catalog::Catalog::holder_at)).
    /// Without one, it is tried once on the target's collection of the
    /// name and skipped if refused: applied to the later collection, it
    /// would give it an index of another collection (refused for good when
    /// the vector types differ) or an early load, but during a replay the
    /// name may still lead to a renamed collection's replica (see
    /// [`MilvusError::is_refusal`]). Carries the id of the source's
    /// collection of that name now.
    Skip(i64),
    /// Neither the source nor the target has a collection of that name
    /// now: renamed since (the change goes to the collection last created
    /// under the name before `ts`, if known) or dropped (the write skips
    /// it).
    Gone,
}

/// Decides [`NameAt`] from whether the target has a collection named
/// `name` and when the source's collection of that name (if any) was
/// created, with its id (`source` is `(created, id)`). Found by
/// `tests/e2e/test_random_workload.py`: a collection dropped and re-created
/// under its name with a binary instead of a float vector stopped the task
/// on the earlier collection's replayed index.
pub(super) fn name_at(on_target: bool, source: Option<(u64, i64)>, ts: u64) -> NameAt {
    match (on_target, source) {
        (_, Some((created, id))) if created > ts => NameAt::Skip(id),
        (false, Some(_)) => NameAt::Wait,
        (false, None) => NameAt::Gone,
        // Present on the target (the replica of a collection renamed on
        // the source, perhaps, before the target follows).
        (true, _) => NameAt::Apply,
    }
}

#[cfg(test)]
mod name_at_tests {
    use super::*;

    #[test]
    fn a_watermark_that_moves_never_stalls() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let mut w = Stall::new(10, t0);
        assert!(!w.stalled(10, t0 + Duration::from_secs(59), limit));
        // A long backlog: it keeps moving, for minutes.
        for i in 1..10 {
            assert!(!w.stalled(10 + i, t0 + Duration::from_secs(50 * i), limit));
        }
        assert!(!w.stalled(19, t0 + Duration::from_secs(450 + 60), limit));
        assert!(w.stalled(19, t0 + Duration::from_secs(450 + 61), limit));
    }

    #[test]
    fn a_change_older_than_the_sources_collection_of_its_name_is_skipped() {
        // Index of generation 0 (ts 10); the name now holds generation 1,
        // created at 20, which the target has.
        assert_eq!(name_at(true, Some((20, 7)), 10), NameAt::Skip(7));
        assert_eq!(name_at(false, Some((20, 7)), 10), NameAt::Skip(7));
    }

    #[test]
    fn a_change_of_the_current_collection_applies_or_waits_for_it() {
        assert_eq!(name_at(true, Some((10, 7)), 10), NameAt::Apply);
        assert_eq!(name_at(true, Some((5, 7)), 10), NameAt::Apply);
        assert_eq!(name_at(false, Some((5, 7)), 10), NameAt::Wait);
        assert_eq!(name_at(true, None, 10), NameAt::Apply);
        assert_eq!(name_at(false, None, 10), NameAt::Gone);
    }
}
