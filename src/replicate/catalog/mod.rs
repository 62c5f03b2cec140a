//! The per-task collection catalog: what each source collection id is on the
//! target.
//!
//! Milvus 2.3.5's DML messages name neither the database (always empty) nor,
//! for CreateCollection, the collection; and partition creation is not in the
//! stream at all. So the catalog resolves a source collection id through the
//! source's public API (ListDatabases + ShowCollections give id → database and
//! name, DescribeCollection and ShowPartitions the rest), creates what the
//! target lacks, and remembers it. Rows of collections that the source no
//! longer has are skipped: the stream also holds their drop, so the final
//! state is the same, and they can never land in a newer collection that
//! reuses the name (target collections carry the source id as a property).
//!
//! The catalog also decides which collections the task replicates: those its
//! [`Selection`] names, except replicas (collections that carry
//! [`SOURCE_ID_PROPERTY`] on the source: another task created them, and
//! replicating them onward would send them back where they came from when
//! two tasks run in opposite directions). The decision is made once per
//! source collection id and kept ([`Entry::Excluded`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock};
use tracing::info;

use crate::{
    milvus::{MilvusClient, MilvusError},
    proto::milvus as pb,
    sink::{Applied, CollectionSpec, MilvusSink, TargetCollection, SOURCE_ID_PROPERTY},
    source::event::{CreateCollection, EventKind},
    task::selection::Selection,
};

/// A source collection that exists on the target.
#[derive(Debug)]
pub struct LiveCollection {
    /// Database ("" or "default" = default).
    pub db: String,
    /// Collection name.
    pub name: String,
    /// Target metadata.
    pub meta: TargetCollection,
    /// Partitions known to exist on the target.
    partitions: Mutex<HashSet<String>>,
    /// Whether row writes may still use this name. Row writes hold it
    /// shared ([`Catalog::writable`]); replacing or renaming the collection
    /// holds it exclusively, so no write of this collection lands in a
    /// successor, or under a name that is gone.
    gate: Arc<RwLock<Gate>>,
}

/// Whether row writes may still go to a [`LiveCollection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Writes go here.
    Open,
    /// A newer source collection took the name on the target: this
    /// collection's remaining rows are skipped (its drop is in the stream).
    Replaced,
    /// Renamed on the target: the catalog holds it under its new name.
    Moved,
}

impl LiveCollection {
    fn new(db: String, name: String, meta: TargetCollection) -> Self {
        Self {
            db,
            name,
            meta,
            partitions: Mutex::new(HashSet::new()),
            gate: Arc::new(RwLock::new(Gate::Open)),
        }
    }
}

/// A source collection's target, ready for a row write.
pub enum Writable {
    /// Write to this collection while holding the guard (a rename or a
    /// replacement waits for it).
    Live(Arc<LiveCollection>, WriteGuard),
    /// Gone from the source: skip the rows.
    Dropped,
    /// A newer source collection took its name on the target: skip the rows.
    Replaced,
    /// Not replicated by this task.
    Excluded,
}

/// Held while a row write to a [`LiveCollection`] is in flight.
pub struct WriteGuard(#[allow(dead_code)] OwnedRwLockReadGuard<Gate>);

/// A source collection as the target sees it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Exists on the target.
    Live(Arc<LiveCollection>),
    /// Gone from the source: its rows are skipped.
    Dropped,
    /// Not replicated by this task (not selected, or a replica itself):
    /// its changes are ignored, not counted as skipped.
    Excluded,
}

/// Whether a source collection with these properties is a replica made by
/// milvus-cdc (an empty marker, left by `promote` where a property cannot
/// be removed, means it is owned).
pub fn is_replica(properties: &[crate::proto::common::KeyValuePair]) -> bool {
    properties
        .iter()
        .any(|p| p.key == SOURCE_ID_PROPERTY && !p.value.trim().is_empty())
}

/// Whether the task replicates source collection `db.name` with these
/// properties: selected, and not a replica unless `replicas` allows them.
pub fn replicates(
    selection: &Selection,
    replicas: bool,
    db: &str,
    name: &str,
    properties: &[crate::proto::common::KeyValuePair],
) -> bool {
    selection.matches(db, name) && (replicas || !is_replica(properties))
}

/// Shared by the pipelines of one task.
#[derive(Clone)]
pub struct Catalog {
    entries: Arc<Mutex<HashMap<i64, Entry>>>,
    /// Source collection id → (database, name), refreshed on a miss.
    locations: Arc<Mutex<HashMap<i64, (String, String)>>>,
    source: MilvusClient,
    writer: MilvusSink,
    /// Serializes creating, replacing and registering target collections.
    creating: Arc<Mutex<()>>,
    /// Whether this run has taken up the replicas earlier runs made.
    adopted: Arc<std::sync::atomic::AtomicBool>,
    /// The collections the task replicates.
    selection: Arc<Selection>,
    /// Replicate replicas too (off: the loop guard).
    replicas: bool,
    /// Source collections by the name they were created under (DML
    /// CreateCollection messages), for changes that name an earlier holder.
    created: Arc<std::sync::Mutex<created::Creations>>,
}

impl Catalog {
    /// A catalog that asks `source` about collections and creates them
    /// through `writer`.
    pub fn new(source: MilvusClient, writer: MilvusSink) -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
            locations: Arc::new(Mutex::new(HashMap::new())),
            source,
            writer,
            creating: Arc::new(Mutex::new(())),
            adopted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            selection: Arc::new(Selection::all()),
            replicas: false,
            created: Arc::new(std::sync::Mutex::new(created::Creations::default())),
        }
    }

    /// The same catalog replicating only `selection` (default: `*`).
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = Arc::new(selection);
        self
    }

    /// Whether source collection `db.name` is one this task replicates: an
    /// RPC to the source only when the loop guard needs its properties (and
    /// never for one whose id is already decided). True when the source no
    /// longer has it (the change is applied as before; its drop follows).
    pub async fn selects_collection(&self, db: &str, name: &str) -> Result<bool, MilvusError> {
        if !self.selection.matches(db, name) {
            return Ok(false);
        }
        if self.replicas {
            return Ok(true);
        }
        let cached = {
            let locations = self.locations.lock().await;
            let entries = self.entries.lock().await;
            locations
                .iter()
                .filter(|(_, (d, n))| {
                    crate::task::selection::normal_db(d) == crate::task::selection::normal_db(db)
                        && n == name
                })
                .find_map(|(id, _)| entries.get(id).cloned())
        };
        match cached {
            Some(Entry::Excluded) => return Ok(false),
            Some(Entry::Live(_)) => return Ok(true),
            _ => {}
        }
        let Some(desc) = self.describe_source(db, name).await? else {
            return Ok(true);
        };
        if is_replica(&desc.properties) {
            self.entries
                .lock()
                .await
                .insert(desc.collection_id, Entry::Excluded);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether a non-row change applies to this task: one of a selected
    /// collection, of a wholly selected database, or of no collection.
    /// Changes of a collection by id (create, drop, partitions) are decided
    /// when applied ([`Catalog::resolve`], [`Catalog::create_from_event`]).
    pub async fn selects(&self, kind: &EventKind) -> Result<bool, MilvusError> {
        if self.selection.is_all() && self.replicas {
            return Ok(true);
        }
        let (db, name) = match kind {
            EventKind::CreateDatabase(r) => return Ok(self.selection.covers_database(&r.db_name)),
            EventKind::DropDatabase(r) => return Ok(self.selection.covers_database(&r.db_name)),
            EventKind::CreateIndex(r) => (&r.db_name, &r.collection_name),
            EventKind::DropIndex(r) => (&r.db_name, &r.collection_name),
            EventKind::LoadCollection(r) => (&r.db_name, &r.collection_name),
            EventKind::ReleaseCollection(r) => (&r.db_name, &r.collection_name),
            EventKind::LoadPartitions(r) => (&r.db_name, &r.collection_name),
            EventKind::ReleasePartitions(r) => (&r.db_name, &r.collection_name),
            EventKind::CreateAlias(r) => (&r.db_name, &r.collection_name),
            EventKind::AlterAlias(r) => (&r.db_name, &r.collection_name),
            // DropAlias names no collection; a Flush is filtered name by
            // name (`Catalog::flush_names`); changes by collection id are
            // decided when applied.
            _ => return Ok(true),
        };
        self.selects_collection(db, name).await
    }

    /// The collections of a Flush that this task replicates.
    pub async fn flush_names(
        &self,
        db: &str,
        names: &[String],
    ) -> Result<Vec<String>, MilvusError> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if self.selects_collection(db, n).await? {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// Decides (once per id) whether the source collection `id` at
    /// `db.name`, described by `desc`, is replicated; records `Excluded`
    /// if not.
    async fn exclude_unless_selected(
        &self,
        id: i64,
        db: &str,
        name: &str,
        desc: Option<&pb::DescribeCollectionResponse>,
    ) -> bool {
        let props = desc.map(|d| d.properties.as_slice()).unwrap_or_default();
        if replicates(&self.selection, self.replicas, db, name, props) {
            return false;
        }
        info!(collection = %name, db = %db, source_id = id, "not replicated by this task (not selected, or a replica made by milvus-cdc)");
        self.entries.lock().await.insert(id, Entry::Excluded);
        true
    }

    /// Records that `id` was dropped.
    pub async fn set_dropped(&self, id: i64) {
        self.entries.lock().await.insert(id, Entry::Dropped);
    }

    /// What is already known of `id`, without asking anyone.
    pub async fn known(&self, id: i64) -> Option<Entry> {
        self.entries.lock().await.get(&id).cloned()
    }

    /// Where the source has collection `id` now: (database, name), or None
    /// if it no longer exists.
    async fn source_location(&self, id: i64) -> Result<Option<(String, String)>, MilvusError> {
        if let Some(l) = self.locations.lock().await.get(&id) {
            return Ok(Some(l.clone()));
        }
        Ok(self.refresh_locations().await?.remove(&id))
    }

    /// Source collections (`database.name`) whose shards use physical
    /// channel `channel` now.
    pub async fn source_collections_on(&self, channel: &str) -> Result<Vec<String>, MilvusError> {
        let mut out = Vec::new();
        for db in self.source.list_databases().await? {
            for (_, name) in self.source.show_collections(&db).await? {
                if let Some(d) = self.source.describe_collection(&db, &name).await? {
                    if d.physical_channel_names.iter().any(|c| c == channel) {
                        out.push(format!("{db}.{name}"));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every collection known to exist on the target.
    pub async fn live_collections(&self) -> Vec<Arc<LiveCollection>> {
        self.entries
            .lock()
            .await
            .values()
            .filter_map(|e| match e {
                Entry::Live(l) => Some(l.clone()),
                Entry::Dropped | Entry::Excluded => None,
            })
            .collect()
    }

    /// Takes up, once per run, the replicas that earlier runs of the task
    /// made for source collections this run has not met yet: a run resumes
    /// from checkpoints, and a collection with no change since then would
    /// otherwise stay unknown, so the reconciler would never follow its
    /// renames, aliases or properties (after a failover, a resume, or the
    /// takeover replay). Only source collections the task selects and that
    /// have a replica on the target (under any name) are resolved; nothing
    /// is created. Returns how many were taken up.
    pub async fn adopt_replicas(&self) -> Result<usize, MilvusError> {
        use std::sync::atomic::Ordering;
        if self.adopted.load(Ordering::Acquire) {
            return Ok(0);
        }
        let replicas = self.writer.replicas_by_source_id().await?;
        let mut adopted = 0;
        for (id, (db, name)) in self.refresh_locations().await? {
            if !replicas.contains_key(&id)
                || !self.selection.matches(&db, &name)
                || self.known(id).await.is_some()
            {
                continue;
            }
            if matches!(self.resolve(id).await?, Entry::Live(_)) {
                adopted += 1;
            }
        }
        self.adopted.store(true, Ordering::Release);
        if adopted > 0 {
            info!(
                collections = adopted,
                "took up the replicas of collections with no change since the checkpoints"
            );
        }
        Ok(adopted)
    }

    /// The source's description of `db.name`, or None if it does not exist.
    pub async fn describe_source(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Option<pb::DescribeCollectionResponse>, MilvusError> {
        self.source.describe_collection(db, name).await
    }

    /// The source's partition names of `db.name` (empty if it is gone).
    pub async fn source_partitions(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Vec<String>, MilvusError> {
        Ok(self
            .source
            .show_partitions(db, name)
            .await?
            .unwrap_or_default())
    }

    /// Applies a CreateCollection event: creates the collection on the target
    /// unless the source no longer has it (its drop follows in the stream).
    pub async fn create_from_event(&self, ev: &CreateCollection) -> Result<Applied, MilvusError> {
        let id = ev.request.collection_id;
        let Some((db, name)) = self.source_location(id).await? else {
            self.set_dropped(id).await;
            return Ok(Applied::Skipped(format!(
                "collection {} no longer exists on the source",
                ev.name()
            )));
        };
        if let Some(Entry::Excluded) = self.known(id).await {
            return Ok(Applied::Excluded);
        }
        let desc = self.describe_source(&db, &name).await?;
        if self
            .exclude_unless_selected(id, &db, &name, desc.as_ref())
            .await
        {
            return Ok(Applied::Excluded);
        }
        let spec = CollectionSpec {
            db: db.clone(),
            name: name.clone(),
            source_id: id,
            schema: ev.schema.clone(),
            shards_num: desc
                .as_ref()
                .map_or(0, |d| d.shards_num)
                .max(i32::try_from(ev.request.virtual_channel_names.len()).unwrap_or(1)),
            properties: desc
                .as_ref()
                .map(|d| d.properties.clone())
                .unwrap_or_default(),
            consistency_level: desc.as_ref().map_or(0, |d| d.consistency_level),
            num_partitions: desc.as_ref().map_or(0, |d| d.num_partitions),
        };
        let _creating = self.creating.lock().await;
        self.create(&spec).await
    }

    /// Creates (or replaces) the target collection of `spec` and registers
    /// it. The caller holds `creating`.
    async fn create(&self, spec: &CollectionSpec) -> Result<Applied, MilvusError> {
        // A same-named target collection of another source collection is
        // replaced: that one was dropped on the source (the name is free
        // there), so pipelines still holding its rows must skip them, and
        // its writes in flight finish first.
        if !self.same_named(spec).await.is_empty() {
            // Unless it was renamed on the source (the name is free there
            // because it moved): then it moves on the target too.
            self.renames_locked().await?;
        }
        for (old_id, old) in self.same_named(spec).await {
            *old.gate.write().await = Gate::Replaced;
            self.set_dropped(old_id).await;
        }
        if let Some(old) = self.writer.describe(&spec.db, &spec.name).await? {
            if let Some(older) = old.source_id.filter(|o| *o < spec.source_id) {
                if self.move_if_renamed(older, &spec.db, &spec.name).await? {
                    return self.create_registered(spec).await;
                }
            }
            if let Some(holder) = old.source_id.filter(|h| *h != spec.source_id) {
                if self.swapped_with(spec, holder).await? {
                    return match self.known(spec.source_id).await {
                        Some(Entry::Live(_)) => Ok(Applied::AlreadyThere),
                        _ => self.create_registered(spec).await,
                    };
                }
            }
            match old.source_id {
                // Milvus allocates collection ids in increasing order: the
                // target already holds a later collection of this name, so
                // this one was dropped on the source (its drop follows).
                Some(newer) if newer > spec.source_id => {
                    self.set_dropped(spec.source_id).await;
                    return Ok(Applied::Skipped(format!(
                        "a newer source collection ({newer}) holds the name {} on the target",
                        spec.name
                    )));
                }
                Some(older) if older != spec.source_id => self.set_dropped(older).await,
                _ => {}
            }
        }
        self.create_registered(spec).await
    }

    /// Live collections of older source collections registered under the
    /// name that `spec` is about to take.
    async fn same_named(&self, spec: &CollectionSpec) -> Vec<(i64, Arc<LiveCollection>)> {
        self.entries
            .lock()
            .await
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(l)
                    if *id < spec.source_id && l.db == spec.db && l.name == spec.name =>
                {
                    Some((*id, l.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Creates the target collection of `spec` (the name is free or ours)
    /// and registers it with the source's partitions.
    async fn create_registered(&self, spec: &CollectionSpec) -> Result<Applied, MilvusError> {
        let applied = self.writer.create_collection(spec).await?;
        if let Some(meta) = self.writer.describe(&spec.db, &spec.name).await? {
            let live = LiveCollection::new(spec.db.clone(), spec.name.clone(), meta);
            self.entries
                .lock()
                .await
                .insert(spec.source_id, Entry::Live(Arc::new(live)));
            // Partitions are not in the stream: create the source's now.
            for p in self.source_partitions(&spec.db, &spec.name).await? {
                if !p.starts_with("_default") {
                    self.ensure_partition(spec.source_id, &p).await?;
                }
            }
        }
        Ok(applied)
    }

    /// The target collection for rows of source collection `id`, creating it
    /// from the source's description if the target lacks it; `Dropped` if the
    /// source no longer has it.
    pub async fn resolve(&self, id: i64) -> Result<Entry, MilvusError> {
        if let Some(e) = self.known(id).await {
            return Ok(e);
        }
        let _creating = self.creating.lock().await;
        if let Some(e) = self.known(id).await {
            return Ok(e);
        }
        let Some((db, name)) = self.source_location(id).await? else {
            self.set_dropped(id).await;
            return Ok(Entry::Dropped);
        };
        if !self.selection.matches(&db, &name) {
            self.exclude_unless_selected(id, &db, &name, None).await;
            return Ok(Entry::Excluded);
        }
        let Some(desc) = self.describe_source(&db, &name).await? else {
            self.set_dropped(id).await;
            return Ok(Entry::Dropped);
        };
        if self
            .exclude_unless_selected(id, &db, &name, Some(&desc))
            .await
        {
            return Ok(Entry::Excluded);
        }
        let on_target = match self.writer.describe(&db, &name).await? {
            // Renamed on the source while no run of this task was looking:
            // the target still has it under an earlier name.
            None => self.adopt_renamed(id, &db, &name).await?,
            found => found,
        };
        if let Some(meta) = on_target {
            if meta.source_id == Some(id) || meta.source_id.is_none() {
                let live = Arc::new(LiveCollection::new(db, name, meta));
                self.entries
                    .lock()
                    .await
                    .insert(id, Entry::Live(live.clone()));
                return Ok(Entry::Live(live));
            }
        }
        let spec = CollectionSpec {
            db: db.clone(),
            name: name.clone(),
            source_id: id,
            schema: desc.schema.clone().unwrap_or_default(),
            shards_num: desc.shards_num,
            properties: desc.properties.clone(),
            consistency_level: desc.consistency_level,
            num_partitions: desc.num_partitions,
        };
        info!(collection = %name, db = %db, source_id = id, "creating target collection from the source's description");
        self.create(&spec).await?;
        Ok(self.known(id).await.unwrap_or(Entry::Dropped))
    }

    /// The target collection of `id` for a row write, with its write gate
    /// held (see [`Writable`]); follows a rename made meanwhile.
    pub async fn writable(&self, id: i64) -> Result<Writable, MilvusError> {
        loop {
            let live = match self.resolve(id).await? {
                Entry::Live(live) => live,
                Entry::Dropped => return Ok(Writable::Dropped),
                Entry::Excluded => return Ok(Writable::Excluded),
            };
            let guard = live.gate.clone().read_owned().await;
            match *guard {
                Gate::Open => return Ok(Writable::Live(live, WriteGuard(guard))),
                Gate::Replaced => return Ok(Writable::Replaced),
                // Registered under its new name before the gate was set.
                Gate::Moved => {}
            }
        }
    }

    /// Makes sure the target collection of source collection `id` has
    /// `partition` (creation of partitions is not in Milvus 2.3.5's stream).
    pub async fn ensure_partition(&self, id: i64, partition: &str) -> Result<(), MilvusError> {
        let Some(Entry::Live(live)) = self.known(id).await else {
            return Ok(());
        };
        self.ensure_partition_of(&live, partition).await
    }

    /// [`ensure_partition`](Self::ensure_partition) for a known collection.
    pub async fn ensure_partition_of(
        &self,
        live: &LiveCollection,
        partition: &str,
    ) -> Result<(), MilvusError> {
        if partition.is_empty() || partition == "_default" || live.meta.has_partition_key {
            return Ok(());
        }
        if live.partitions.lock().await.contains(partition) {
            return Ok(());
        }
        self.writer
            .create_partition(&live.db, &live.name, partition)
            .await?;
        live.partitions.lock().await.insert(partition.to_string());
        Ok(())
    }

    /// Forgets that `partition` exists (after it was dropped).
    pub async fn forget_partition(&self, id: i64, partition: &str) {
        if let Some(Entry::Live(live)) = self.known(id).await {
            live.partitions.lock().await.remove(partition);
        }
    }
}

mod alias;
mod created;
mod rename;

pub use created::Holder;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto::common::KeyValuePair, task::CollectionInfo};

    fn kv(k: &str, v: &str) -> KeyValuePair {
        KeyValuePair {
            key: k.into(),
            value: v.into(),
        }
    }

    fn sel(names: &[&str]) -> Selection {
        let infos: Vec<CollectionInfo> = names
            .iter()
            .map(|n| CollectionInfo {
                name: (*n).into(),
                positions: Default::default(),
            })
            .collect();
        Selection::parse(&infos).unwrap()
    }

    #[test]
    fn replicas_are_not_replicated_onward() {
        let owned = [kv("collection.ttl.seconds", "60")];
        let replica = [kv(SOURCE_ID_PROPERTY, "4455"), kv("x", "y")];
        // promote leaves an empty marker where it cannot remove it
        let promoted = [kv(SOURCE_ID_PROPERTY, "")];
        assert!(!is_replica(&owned) && is_replica(&replica) && !is_replica(&promoted));
        let all = Selection::all();
        assert!(replicates(&all, false, "", "c", &owned));
        assert!(!replicates(&all, false, "", "c", &replica));
        assert!(replicates(&all, false, "", "c", &promoted));
        // the override replicates replicas too
        assert!(replicates(&all, true, "", "c", &replica));
    }

    #[test]
    fn only_selected_collections_are_replicated() {
        let s = sel(&["c", "shop.*"]);
        assert!(replicates(&s, false, "", "c", &[]));
        assert!(replicates(&s, false, "default", "c", &[]));
        assert!(!replicates(&s, false, "", "d", &[]));
        assert!(replicates(&s, false, "shop", "d", &[]));
        assert!(!replicates(
            &s,
            false,
            "shop",
            "d",
            &[kv(SOURCE_ID_PROPERTY, "1")]
        ));
        assert!(!replicates(&Selection::none(), true, "", "c", &[]));
    }
}
