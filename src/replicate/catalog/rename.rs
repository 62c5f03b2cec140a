//! Renamed collections. Milvus 2.3.5 puts no rename in its streams: after
//! `rename_collection` the source's later messages simply carry the new
//! name under the same collection id. The catalog follows the source's
//! id → (database, name) map instead, and renames the target collection
//! (which carries the source id) to match:
//! - on every reconciler pass ([`Catalog::follow_renames`]);
//! - before a new collection takes a name that an older one still holds
//!   on the target (the "swap" pattern: rename `live` to `old`, create a new
//!   `live`): the older one moves instead of being replaced;
//! - when a run resolves a collection whose current name the target lacks,
//!   and the target has it under an earlier name.
//!
//! A rename waits for the collection's row writes in flight and holds new
//! ones back (the write gate), so no row is sent to a name that is gone.

use std::{collections::HashMap, sync::Arc};

use tracing::{info, warn};

use super::{Catalog, Entry, Gate, LiveCollection};
use crate::sink::CollectionSpec;
use crate::{milvus::MilvusError, task::selection::normal_db};

/// Where a live collection should move.
struct Move {
    id: i64,
    live: Arc<LiveCollection>,
    db: String,
    name: String,
}

impl Catalog {
    /// Renames on the target every collection that the source has renamed
    /// since it was registered; returns how many moved.
    pub async fn follow_renames(&self) -> Result<usize, MilvusError> {
        let _creating = self.creating.lock().await;
        self.renames_locked().await
    }

    /// [`follow_renames`](Self::follow_renames), the caller holding
    /// `creating`.
    pub(super) async fn renames_locked(&self) -> Result<usize, MilvusError> {
        let fresh = self.refresh_locations().await?;
        let pending: Vec<Move> = self
            .entries
            .lock()
            .await
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(live) => {
                    let (db, name) = fresh.get(id)?;
                    (!same_place(&live.db, &live.name, db, name)).then(|| Move {
                        id: *id,
                        live: live.clone(),
                        db: db.clone(),
                        name: name.clone(),
                    })
                }
                Entry::Dropped | Entry::Excluded => None,
            })
            .collect();
        // A task that selects collections by name replicates the names it
        // selects: one renamed out of the selection stops here (as it would
        // after a restart), and its target collection stays as it was.
        let mut moved = 0;
        let mut kept = Vec::with_capacity(pending.len());
        for m in pending {
            if self.selection.matches(&m.db, &m.name) {
                kept.push(m);
            } else {
                let mut gate = m.live.gate.write().await;
                self.entries.lock().await.insert(m.id, Entry::Excluded);
                *gate = Gate::Moved;
                info!(source_id = m.id, collection = %m.live.name, new_name = %m.name, "renamed on the source to a name this task does not select: no longer replicated");
            }
        }
        let mut pending = kept;
        // Each pass moves every collection whose new name is free; names
        // swapped among collections (a cycle) park one under a temporary
        // name. Bounded: every pass moves one at least, or stops.
        for _ in 0..=2 * pending.len() {
            if pending.is_empty() {
                break;
            }
            let mut blocked = Vec::new();
            let before = pending.len();
            for m in pending {
                if self.writer.describe(&m.db, &m.name).await?.is_some() {
                    blocked.push(m);
                } else {
                    self.move_live(m.id, &m.live, &m.db, &m.name).await?;
                    moved += 1;
                }
            }
            if blocked.len() == before {
                let Some(pos) = blocked.iter().position(|m| {
                    blocked
                        .iter()
                        .any(|o| same_place(&o.live.db, &o.live.name, &m.db, &m.name))
                }) else {
                    for m in &blocked {
                        warn!(collection = %m.live.name, db = %m.live.db, new_name = %m.name, new_db = %m.db, "renamed on the source, but the target already has a collection with the new name that this task did not create from it; left under its old name");
                    }
                    break;
                };
                let m = blocked.swap_remove(pos);
                let parked = format!("{}_cdc_renaming_{}", m.live.name, m.id);
                let live = self.move_live(m.id, &m.live, &m.live.db, &parked).await?;
                blocked.push(Move { live, ..m });
            }
            pending = blocked;
        }
        Ok(moved)
    }

    /// If source collection `id`, which holds `db.name` on the target, now
    /// has another name on the source, renames it there on the target (if
    /// that name is free) and returns true. The caller holds `creating`.
    pub(super) async fn move_if_renamed(
        &self,
        id: i64,
        db: &str,
        name: &str,
    ) -> Result<bool, MilvusError> {
        let fresh = self.refresh_locations().await?;
        let Some((new_db, new_name)) = fresh.get(&id) else {
            return Ok(false); // dropped on the source
        };
        if same_place(db, name, new_db, new_name)
            || self.writer.describe(new_db, new_name).await?.is_some()
        {
            return Ok(false);
        }
        if let Some(Entry::Live(live)) = self.known(id).await {
            if same_place(&live.db, &live.name, db, name) {
                self.move_live(id, &live, new_db, new_name).await?;
                return Ok(true);
            }
        }
        self.rename_target(id, db, name, new_db, new_name).await?;
        Ok(true)
    }

    /// When the target's `spec.name` is held by `holder`, another source
    /// collection: if the source still has `spec`'s collection under that
    /// name and `holder` under another one, the two were renamed (e.g.
    /// swapped) on the source, not dropped, and this run had not met them
    /// yet (it resumed from checkpoints, or replays the history). Registers both replicas where the
    /// target has them and follows the renames; true if `spec`'s collection
    /// now has its name on the target (registered) or the name is free.
    /// The caller holds `creating`.
    pub(super) async fn swapped_with(
        &self,
        spec: &CollectionSpec,
        holder: i64,
    ) -> Result<bool, MilvusError> {
        let fresh = self.refresh_locations().await?;
        let ours_here = fresh
            .get(&spec.source_id)
            .is_some_and(|(d, n)| same_place(d, n, &spec.db, &spec.name));
        let holder_moved = fresh
            .get(&holder)
            .is_some_and(|(d, n)| !same_place(d, n, &spec.db, &spec.name));
        if !(ours_here && holder_moved) {
            return Ok(false);
        }
        self.register_found(holder, &spec.db, &spec.name).await?;
        if let Some((db, name)) = self.writer.find_by_source_id(spec.source_id).await? {
            self.register_found(spec.source_id, &db, &name).await?;
        }
        self.renames_locked().await?;
        Ok(match self.writer.describe(&spec.db, &spec.name).await? {
            None => true,
            Some(t) => t.source_id == Some(spec.source_id),
        })
    }

    /// Registers target collection `db.name` as the live replica of source
    /// collection `id`, unless the run knows `id` already.
    async fn register_found(&self, id: i64, db: &str, name: &str) -> Result<(), MilvusError> {
        if self.known(id).await.is_some() {
            return Ok(());
        }
        if let Some(meta) = self.writer.describe(db, name).await? {
            let live = Arc::new(LiveCollection::new(db.to_string(), name.to_string(), meta));
            self.entries.lock().await.insert(id, Entry::Live(live));
        }
        Ok(())
    }

    /// The target collection of source collection `id`, found under an
    /// earlier name and renamed to `db.name` (its name on the source now);
    /// None if the target has no collection of `id`.
    pub(super) async fn adopt_renamed(
        &self,
        id: i64,
        db: &str,
        name: &str,
    ) -> Result<Option<crate::sink::TargetCollection>, MilvusError> {
        let Some((old_db, old_name)) = self.writer.find_by_source_id(id).await? else {
            return Ok(None);
        };
        if same_place(&old_db, &old_name, db, name) {
            return self.writer.describe(db, name).await;
        }
        self.rename_target(id, &old_db, &old_name, db, name).await?;
        self.writer.describe(db, name).await
    }

    /// Renames a registered collection on the target once its writes in
    /// flight are done, and registers it under the new name.
    async fn move_live(
        &self,
        id: i64,
        live: &Arc<LiveCollection>,
        db: &str,
        name: &str,
    ) -> Result<Arc<LiveCollection>, MilvusError> {
        let mut gate = live.gate.write().await;
        self.rename_target(id, &live.db, &live.name, db, name)
            .await?;
        let moved = Arc::new(LiveCollection::new(
            db.to_string(),
            name.to_string(),
            live.meta.clone(),
        ));
        moved
            .partitions
            .lock()
            .await
            .clone_from(&*live.partitions.lock().await);
        self.entries
            .lock()
            .await
            .insert(id, Entry::Live(moved.clone()));
        *gate = Gate::Moved;
        Ok(moved)
    }

    /// Renames target collection `db.name` (the replica of source collection
    /// `id`) to `new_db.new_name`, and logs it.
    async fn rename_target(
        &self,
        id: i64,
        db: &str,
        name: &str,
        new_db: &str,
        new_name: &str,
    ) -> Result<(), MilvusError> {
        self.writer
            .rename_collection(db, name, new_db, new_name)
            .await?;
        info!(
            source_id = id,
            db,
            collection = name,
            new_db,
            new_name,
            "renamed on the target, as on the source"
        );
        Ok(())
    }

    /// The source's id → (database, name) map, listed now.
    pub(super) async fn refresh_locations(
        &self,
    ) -> Result<HashMap<i64, (String, String)>, MilvusError> {
        let mut found = HashMap::new();
        for db in self.source.list_databases().await? {
            for (cid, name) in self.source.show_collections(&db).await? {
                found.insert(cid, (db.clone(), name));
            }
        }
        self.locations.lock().await.clone_from(&found);
        Ok(found)
    }
}

/// Whether two (database, name) pairs name the same collection ("" is the
/// default database).
fn same_place(db_a: &str, name_a: &str, db_b: &str, name_b: &str) -> bool {
    name_a == name_b && normal_db(db_a) == normal_db(db_b)
}
