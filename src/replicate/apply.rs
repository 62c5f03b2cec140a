//! Applying a released window through a [`Sink`]: runs of inserts and
//! deletes are reduced to their net writes ([`super::reduce`]); any other
//! change (a collection or partition created or dropped) keeps its place in
//! the timestamp order and splits the runs around it.

use std::{collections::HashMap, future::Future};

use super::{
    batch::InsertBatch,
    reduce::{reduce, Change, DeleteStep, Limits, RowKey},
};
use crate::source::event::{Event, EventKind};

/// Where a DML channel's changes go. A sink owns its retries: each method
/// returns once the write is done (or skipped), and false only when the
/// pipeline must stop (cancelled, or no longer leading).
pub trait Sink {
    /// How a source collection's rows are keyed (`Some(None)` if the
    /// collection is gone or unknown; None: stop).
    fn row_key(&self, collection_id: i64) -> impl Future<Output = Option<Option<RowKey>>> + Send;
    /// Deletes keys in a scope.
    fn delete(&self, step: &DeleteStep) -> impl Future<Output = bool> + Send;
    /// Writes rows (replacing the keys' versions in the batch's partition).
    fn upsert(&self, batch: &InsertBatch) -> impl Future<Output = bool> + Send;
    /// Applies any other change (DDL, or counts what is not replicated).
    fn apply(&self, event: Event) -> impl Future<Output = bool> + Send;
}

/// What applying a window did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows the window's inserts carried.
    pub rows_in: u64,
    /// Rows written after reduction.
    pub rows_written: u64,
    /// Keys deleted (per scope).
    pub keys_deleted: u64,
}

/// Applies `events` (one or more windows, in timestamp order); None if the
/// sink stopped.
pub async fn apply_window<S: Sink>(
    sink: &S,
    events: Vec<Event>,
    limits: Limits,
) -> Option<Applied> {
    let mut total = Applied::default();
    let mut run: Vec<Change> = Vec::new();
    for ev in events {
        match ev.kind {
            EventKind::Insert(m) => run.push(Change::Insert(m)),
            EventKind::Delete(m) => run.push(Change::Delete(m)),
            EventKind::TimeTick => {}
            EventKind::Unsupported { .. } | EventKind::Undecodable(_) => {
                // Nothing to order against: counted where it stands.
                if !sink.apply(ev).await {
                    return None;
                }
            }
            _ => {
                apply_run(sink, std::mem::take(&mut run), limits, &mut total).await?;
                if !sink.apply(ev).await {
                    return None;
                }
            }
        }
    }
    apply_run(sink, run, limits, &mut total).await?;
    Some(total)
}

async fn apply_run<S: Sink>(
    sink: &S,
    run: Vec<Change>,
    limits: Limits,
    total: &mut Applied,
) -> Option<()> {
    if run.is_empty() {
        return Some(());
    }
    let mut row_keys: HashMap<i64, Option<RowKey>> = HashMap::new();
    for c in &run {
        let id = c.collection_id();
        if let std::collections::hash_map::Entry::Vacant(e) = row_keys.entry(id) {
            e.insert(sink.row_key(id).await?);
        }
    }
    let plan = reduce(run, |id| row_keys.get(&id).cloned().flatten(), limits);
    total.rows_in += plan.rows_in;
    for d in &plan.deletes {
        if !sink.delete(d).await {
            return None;
        }
        total.keys_deleted += d.keys.len() as u64;
    }
    for b in &plan.upserts {
        if !sink.upsert(b).await {
            return None;
        }
        total.rows_written += b.rows;
    }
    Some(())
}
