//! What a task could not replicate, recorded in the task so that an
//! incomplete replica is never silent (shown by the API's `get` and `list`):
//! lost source history (`history_gaps`: ranges of a channel that retention
//! removed before the task read them, with the source collections that use
//! the channel), skipped messages (`skipped_messages`: types not replicated,
//! undecodable ones) and the error that stopped it (`last_error`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{catalog::Catalog, Leadership};
use crate::{
    source::reader::LostRange,
    store::{now_ms, StoreError},
    task::{HistoryGap, SkippedMessages, TaskFailure, TaskId, TaskRecord, TaskState},
};

/// How many times a record update is tried when it races another change.
const ATTEMPTS: usize = 5;

/// Records every range that `lost` reports into task `id`'s record, until
/// `cancel` fires or every reader is gone.
pub(super) async fn record_lost_history(
    id: TaskId,
    catalog: Catalog,
    leadership: Leadership,
    mut lost: mpsc::Receiver<LostRange>,
    cancel: CancellationToken,
) {
    loop {
        let range = tokio::select! {
            () = cancel.cancelled() => return,
            r = lost.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let collections = match catalog.source_collections_on(&range.channel).await {
            Ok(c) => c,
            Err(e) => {
                warn!(channel = %range.channel, error = %e, "cannot list the source collections of a channel with lost history");
                Vec::new()
            }
        };
        error!(channel = %range.channel, first_lost = range.first, last_lost = range.last,
            collections = ?collections,
            "source history lost before it was read: these collections may be incomplete on the target");
        let gap = HistoryGap {
            channel: range.channel,
            first_lost: range.first,
            last_lost: range.last,
            detected_at_ms: now_ms(),
            collections,
        };
        if let Err(e) = save(&id, &leadership, gap).await {
            warn!(error = %e, "lost history not recorded in the task (the log and milvus_cdc_source_gaps_total have it)");
        }
    }
}

/// Skipped source messages noted by the pipelines, waiting to be recorded
/// in the task (batched: at most one record update per checkpoint save).
#[derive(Clone, Default)]
pub struct SkipLog {
    pending: Arc<Mutex<BTreeMap<(String, String), SkippedMessages>>>,
}

impl SkipLog {
    /// Notes one skipped message.
    pub fn note(&self, channel: &str, sequence: u64, kind: String, reason: String) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = pending
            .entry((channel.to_string(), kind.clone()))
            .or_insert_with(|| SkippedMessages {
                channel: channel.to_string(),
                kind,
                first_sequence: sequence,
                last_sequence: sequence,
                count: 0,
                reason: String::new(),
            });
        e.first_sequence = e.first_sequence.min(sequence);
        e.last_sequence = e.last_sequence.max(sequence);
        e.count += 1;
        e.reason = reason;
    }

    fn take(&self) -> Vec<SkippedMessages> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_values()
        .collect()
    }
}

/// Records what `log` noted since the last call into the stored task.
pub(super) async fn save_skipped(
    id: &TaskId,
    leadership: &Leadership,
    log: &SkipLog,
) -> Result<(), StoreError> {
    let noted = log.take();
    if noted.is_empty() {
        return Ok(());
    }
    update_record(id, leadership, |record| {
        let mut changed = false;
        for s in &noted {
            changed |= record.add_skipped(s);
        }
        changed
    })
    .await
}

/// Adds `gap` to the stored task.
async fn save(id: &TaskId, leadership: &Leadership, gap: HistoryGap) -> Result<(), StoreError> {
    update_record(id, leadership, |record| record.add_history_gap(gap.clone())).await
}

/// Pauses the stored task with `failure` as its `last_error`.
pub(super) async fn pause_with_error(
    id: &TaskId,
    leadership: &Leadership,
    failure: TaskFailure,
) -> Result<(), StoreError> {
    update_record(id, leadership, |record| {
        record.state = TaskState::Paused;
        record.last_error = Some(failure.clone());
        true
    })
    .await
}

/// Changes the stored task with `change` (false: nothing to write), fenced,
/// compare-and-swap, retried on a concurrent change.
async fn update_record(
    id: &TaskId,
    leadership: &Leadership,
    change: impl Fn(&mut TaskRecord) -> bool,
) -> Result<(), StoreError> {
    for _ in 0..ATTEMPTS {
        let stored = leadership.store.get_task(id).await?;
        let mut record = stored.value;
        if !change(&mut record) {
            return Ok(());
        }
        match leadership.store.update_task(&record, stored.revision).await {
            Err(StoreError::Conflict(_)) => {}
            r => return r,
        }
    }
    Err(StoreError::Conflict(id.clone()))
}
