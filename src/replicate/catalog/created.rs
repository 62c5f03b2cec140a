//! Which source collection held a name when a replicate-channel change was
//! made. Index and load changes name their collection only, and Milvus
//! 2.3.5 writes no rename to its streams; but each collection's creation,
//! with the name it was created under, is on its DML channels. When the
//! source's collection of a name was created after a change (the name was
//! reused, or taken by a swap), the change belongs to the collection last
//! created under that name before it: it goes to that collection's replica
//! (under its name on the target now), or nowhere if the source dropped it.
//! Without such a creation in what this run read (it started from later
//! checkpoints), the change is tried on the name as before.

use std::collections::HashMap;

use super::{Catalog, Entry};
use crate::{milvus::MilvusError, task::selection::normal_db};

/// Source collections by the name they were created under, in creation
/// order.
#[derive(Debug, Default)]
pub(super) struct Creations {
    by_name: HashMap<String, Vec<(u64, i64)>>,
}

impl Creations {
    /// Notes that collection `id` was created under `name` at `ts` (each
    /// shard's channel carries a copy: noted once).
    pub(super) fn record(&mut self, name: &str, id: i64, ts: u64) {
        let created = self.by_name.entry(name.to_string()).or_default();
        if created.iter().any(|(_, known)| *known == id) {
            return;
        }
        let at = created.partition_point(|(t, _)| *t <= ts);
        created.insert(at, (ts, id));
    }

    /// The collection last created under `name` at or before `ts`.
    pub(super) fn latest_at(&self, name: &str, ts: u64) -> Option<i64> {
        self.by_name
            .get(name)?
            .iter()
            .rev()
            .find(|(t, _)| *t <= ts)
            .map(|(_, id)| *id)
    }
}

/// Where a change goes that was made to a name before the source's
/// collection of that name now was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// To this target collection `(database, name)`: the replica of the
    /// collection that held the name then.
    Live(String, String),
    /// Nowhere: the collection that held the name then is dropped.
    Dropped,
    /// Nowhere: that collection is not replicated by this task.
    Excluded,
    /// Not known (no creation under that name in what this run read, or
    /// the one found lives in another database now).
    Unknown,
}

impl Catalog {
    /// Notes a DML CreateCollection: source collection `id` was created
    /// under `name` at `ts` (see [`Catalog::holder_at`]).
    pub fn note_created(&self, name: &str, id: i64, ts: u64) {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(name, id, ts);
    }

    /// Where a change made at `ts` to `db.name` goes, when the source's
    /// collection of that name now (`current`) was created after `ts`, or
    /// the source has none (`current` None).
    pub async fn holder_at(
        &self,
        db: &str,
        name: &str,
        ts: u64,
        current: Option<i64>,
    ) -> Result<Holder, MilvusError> {
        let found = self
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .latest_at(name, ts);
        let Some(id) = found.filter(|id| Some(*id) != current) else {
            return Ok(Holder::Unknown);
        };
        Ok(match self.resolve(id).await? {
            Entry::Live(live) if normal_db(&live.db) == normal_db(db) => {
                Holder::Live(live.db.clone(), live.name.clone())
            }
            Entry::Live(_) => Holder::Unknown,
            Entry::Dropped => Holder::Dropped,
            Entry::Excluded => Holder::Excluded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_collection_created_under_a_name_before_a_change_holds_it() {
        let mut c = Creations::default();
        c.record("docs", 1, 100);
        c.record("docs", 3, 300);
        // A copy from the collection's other shard changes nothing.
        c.record("docs", 1, 100);
        c.record("other", 2, 200);
        assert_eq!(c.latest_at("docs", 99), None);
        assert_eq!(c.latest_at("docs", 100), Some(1));
        assert_eq!(c.latest_at("docs", 299), Some(1));
        assert_eq!(c.latest_at("docs", 300), Some(3));
        assert_eq!(c.latest_at("missing", 300), None);
    }

    #[test]
    fn creations_read_out_of_order_are_kept_in_time_order() {
        // Two channels' copies reach the catalog in any order.
        let mut c = Creations::default();
        c.record("docs", 3, 300);
        c.record("docs", 1, 100);
        assert_eq!(c.latest_at("docs", 200), Some(1));
        assert_eq!(c.latest_at("docs", 400), Some(3));
    }
}
