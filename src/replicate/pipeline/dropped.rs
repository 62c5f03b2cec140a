//! Source partitions dropped while a task runs, shared by the task's DML
//! pipelines.
//!
//! Milvus 2.3.5 sends a `DropPartition` to every DML channel of the
//! collection, and each channel's pipeline runs at its own pace. The target
//! knows a partition only by its name, so without this registry a channel
//! that lags behind would (1) write rows of the dropped partition into a
//! partition re-created under the same name by a channel that is ahead, and
//! (2) apply its own copy of the drop to that new partition, deleting its
//! newer rows. Source partition ids are never reused, so the registry keys
//! on them: the first channel to reach a drop claims it and drops the
//! target's partition; later copies of the same drop wait until that is
//! done and then do nothing (so that no channel writes the re-created
//! partition's rows before the old one is gone), and rows
//! and deletes of a dropped partition id are skipped (the drop removes them
//! on the source anyway).
//!
//! The engine keeps one registry for its whole life: replays within the
//! process (a rewind, a task restarted by a new term) see the drops already
//! applied. Each applied drop is also recorded in the task store
//! (`R/dropped/<task>/<collection>/<partition>`, written by the claiming
//! channel once the target's partition is gone), and every run of a task
//! first loads its records into the registry as done ([`DroppedPartitions::restore`]),
//! so that after a failover or a restart a channel whose checkpoint is
//! still before such a drop skips the old partition's rows and its copy of
//! the drop instead of writing into, then dropping, the partition re-created
//! under the name.
//!
//! Residual window: the record is written after the target's drop, so an
//! agent that dies between the two (or whose record write is never
//! answered) leaves no record, and the next run applies that drop again by
//! name. That is the lesser evil: recording first would let a crash before
//! the drop skip it for good (the old partition and its rows would stay on
//! the target). Records of a task go with the task; those of a collection
//! go when its drop is applied (a replay then finds the collection dropped
//! on the source and skips its rows and drops anyway).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// Where the drop of one source partition stands for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// This channel applies it (the first to reach it, or its own retry).
    Mine,
    /// Another channel is applying it: wait, then go on.
    Pending,
    /// Applied by another channel: nothing to do.
    Done,
}

/// (task id, source partition id) -> (the channel applying the drop, done).
type Claims = HashMap<(String, i64), (String, bool)>;

/// The drops of source partitions that the engine's tasks have reached,
/// shared by every pipeline (cheap to clone).
#[derive(Clone, Default)]
pub struct DroppedPartitions(Arc<Mutex<Claims>>);

impl DroppedPartitions {
    fn claims(&self) -> MutexGuard<'_, Claims> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims the drop of source partition `partition_id` for `channel`: the
    /// first channel to reach it gets [`Claim::Mine`] until it has applied
    /// it, every copy after that (its own replays too) [`Claim::Done`]. A
    /// drop without an id (zero or less) is always [`Claim::Mine`].
    pub(super) fn claim(&self, task_id: &str, partition_id: i64, channel: &str) -> Claim {
        if partition_id <= 0 {
            return Claim::Mine;
        }
        let mut claims = self.claims();
        let (owner, done) = claims
            .entry((task_id.to_string(), partition_id))
            .or_insert_with(|| (channel.to_string(), false));
        if *done {
            // Even for the channel that applied it: a replay of the drop (a
            // rewind, the takeover replay) must not drop the partition that
            // has taken the name since.
            Claim::Done
        } else if owner == channel {
            Claim::Mine
        } else {
            Claim::Pending
        }
    }

    /// Marks the drops an earlier run (another process) recorded as done:
    /// copies and replays of them do nothing, and rows of those partitions
    /// are skipped. A claim in progress in this process is completed too
    /// (its record says the target's partition is gone).
    pub(crate) fn restore(&self, task_id: &str, partition_ids: impl IntoIterator<Item = i64>) {
        let mut claims = self.claims();
        for id in partition_ids.into_iter().filter(|id| *id > 0) {
            claims
                .entry((task_id.to_string(), id))
                .or_insert_with(|| (String::new(), true))
                .1 = true;
        }
    }

    /// Records that the target's partition is dropped (by the claiming
    /// channel).
    pub(super) fn finish(&self, task_id: &str, partition_id: i64) {
        if let Some((_, done)) = self.claims().get_mut(&(task_id.to_string(), partition_id)) {
            *done = true;
        }
    }

    /// Whether the task has dropped (or is dropping) source partition
    /// `partition_id`: its rows and deletes are not written any more. Ids
    /// of zero or less (no partition, or every partition) are never dropped.
    pub(super) fn is_dropped(&self, task_id: &str, partition_id: i64) -> bool {
        partition_id > 0
            && self
                .claims()
                .contains_key(&(task_id.to_string(), partition_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_channel_claims_a_drop_and_its_retries_keep_it() {
        let d = DroppedPartitions::default();
        let task = "t-dropped-claim";
        assert!(!d.is_dropped(task, 4401));
        assert_eq!(d.claim(task, 4401, "dml_0"), Claim::Mine);
        assert!(
            d.is_dropped(task, 4401),
            "rows of the partition are skipped from now on"
        );
        assert_eq!(
            d.claim(task, 4401, "dml_0"),
            Claim::Mine,
            "a retry of the same channel"
        );
        assert_eq!(
            d.claim(task, 4401, "dml_1"),
            Claim::Pending,
            "the other channel waits until the target's partition is gone"
        );
        d.finish(task, 4401);
        assert_eq!(
            d.claim(task, 4401, "dml_1"),
            Claim::Done,
            "then its copy is a no-op"
        );
        assert_eq!(
            d.claim(task, 4401, "dml_0"),
            Claim::Done,
            "and so is a replay of the drop on the channel that applied it"
        );
        // A partition re-created under the same name has another id.
        assert!(!d.is_dropped(task, 4402));
        assert_eq!(d.claim(task, 4402, "dml_1"), Claim::Mine);
    }

    #[test]
    fn drops_recorded_by_an_earlier_run_are_done_for_every_channel() {
        let d = DroppedPartitions::default();
        let task = "t-dropped-restore";
        // What a new process finds in the store: the drop of 4601 applied.
        d.restore(task, [4601, 0, -1]);
        assert!(
            d.is_dropped(task, 4601),
            "a lagging channel's replayed rows of the old partition are skipped"
        );
        assert_eq!(
            d.claim(task, 4601, "dml_1"),
            Claim::Done,
            "its replayed drop does not drop the re-created partition"
        );
        assert_eq!(d.claim(task, 4601, "dml_0"), Claim::Done);
        assert!(
            !d.is_dropped(task, 0),
            "ids without a partition are ignored"
        );
        assert!(!d.is_dropped(task, -1));
        assert!(!d.is_dropped("t-dropped-other", 4601), "another task's");
        assert!(!d.is_dropped(task, 4602), "the re-created partition's id");
        // A claim still pending in this process, whose record a run loads
        // (restarted after the drop was applied and recorded): done.
        assert_eq!(d.claim(task, 4603, "dml_0"), Claim::Mine);
        d.restore(task, [4601, 4603]);
        assert_eq!(d.claim(task, 4603, "dml_0"), Claim::Done);
        assert_eq!(d.claim(task, 4603, "dml_1"), Claim::Done);
    }

    #[test]
    fn tasks_and_whole_collection_scopes_are_apart() {
        let d = DroppedPartitions::default();
        assert_eq!(d.claim("t-dropped-a", 4501, "dml_0"), Claim::Mine);
        assert!(!d.is_dropped("t-dropped-b", 4501), "another task's drop");
        assert_eq!(d.claim("t-dropped-b", 4501, "dml_1"), Claim::Mine);
        assert!(
            !d.is_dropped("t-dropped-a", -1),
            "a delete in every partition"
        );
        assert!(!d.is_dropped("t-dropped-a", 0));
        // A drop message without an id is applied by every channel.
        assert_eq!(d.claim("t-dropped-a", 0, "dml_0"), Claim::Mine);
        assert_eq!(d.claim("t-dropped-a", 0, "dml_1"), Claim::Mine);
        assert!(!d.is_dropped("t-dropped-a", 0));
    }
}
