//! Lost source history: ranges of a channel that retention removed before
//! a task read them are recorded in the task (`history_gaps`, shown by the
//! API's `get` and `list`), with the source collections that use the
//! channel, so an incomplete replica is never silent.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{catalog::Catalog, Leadership};
use crate::{
    source::reader::LostRange,
    store::{now_ms, StoreError},
    task::{HistoryGap, TaskFailure, TaskId, TaskRecord, TaskState},
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
