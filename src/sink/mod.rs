//! The sink: applies replicated changes to the target Milvus so that
//! applying any change twice leaves the target as applying it once.
//!
//! How each change is made idempotent:
//! - rows are written with `Upsert`, keyed by the source's primary key (target
//!   collections are created with `auto_id = false`, so keys are preserved);
//!   deletes are by primary key;
//! - DDL checks the target's state first: a collection, partition, index,
//!   database or alias that exists already is not created again, one that is
//!   gone is not dropped again;
//! - every target collection carries the source collection's id in the
//!   property [`SOURCE_ID_PROPERTY`], so a replayed drop of an older
//!   collection never drops a newer one that reuses its name.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::Status;

use crate::milvus::{is_system_field, MilvusClient, MilvusError};
use crate::proto::{
    common::{self, KeyValuePair},
    milvus as pb,
    schema::{self, CollectionSchema, DataType, FieldData},
};

/// Target collection property holding the source collection id.
pub const SOURCE_ID_PROPERTY: &str = "milvus-cdc.source-collection-id";

/// Largest number of primary keys in one delete expression.
const DELETE_CHUNK: usize = 5_000;

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The change is now on the target.
    Done,
    /// Nothing to do: the target already had the change (replay).
    AlreadyThere,
    /// The change no longer applies (its collection is gone); it was skipped.
    Skipped(String),
}

/// What the writer knows of a target collection.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCollection {
    /// Source collection id recorded on the target (None if not created by us).
    pub source_id: Option<i64>,
    /// Primary key field name.
    pub pk_field: String,
    /// Primary key type.
    pub pk_type: DataType,
    /// Whether a partition key routes rows (partition names must not be given).
    pub has_partition_key: bool,
    /// The target's schema.
    pub schema: CollectionSchema,
}

/// A collection to create on the target, as the source has it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSpec {
    /// Database name ("" = default).
    pub db: String,
    /// Collection name.
    pub name: String,
    /// Source collection id.
    pub source_id: i64,
    /// The source schema (system fields are removed here).
    pub schema: CollectionSchema,
    /// Number of shards.
    pub shards_num: i32,
    /// Collection properties (TTL, ...).
    pub properties: Vec<KeyValuePair>,
    /// Default consistency level.
    pub consistency_level: i32,
    /// Partitions of a partition-key collection.
    pub num_partitions: i64,
}

/// The schema to create on the target: user fields only, primary key without
/// auto-id (source keys are written), dynamic field left to Milvus.
#[allow(deprecated)] // `CollectionSchema::auto_id` is deprecated but must be false.
pub fn target_schema(source: &CollectionSchema) -> CollectionSchema {
    let fields = source
        .fields
        .iter()
        .filter(|f| !is_system_field(f) && !f.is_dynamic)
        .map(|f| schema::FieldSchema {
            field_id: 0,
            auto_id: false,
            state: 0,
            ..f.clone()
        })
        .collect();
    CollectionSchema {
        name: source.name.clone(),
        description: source.description.clone(),
        auto_id: false,
        fields,
        enable_dynamic_field: source.enable_dynamic_field,
    }
}

fn kv(key: &str, value: &str) -> KeyValuePair {
    KeyValuePair {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// Applies changes to one target Milvus.
#[derive(Clone)]
pub struct MilvusSink {
    target: MilvusClient,
    /// Collections written since their last flush: `(database, name)` →
    /// write generation (a flush forgets an entry only if no write came
    /// after the flush started).
    unflushed: Arc<Mutex<Unflushed>>,
}

/// Collections with writes not flushed yet.
#[derive(Default)]
struct Unflushed {
    generation: u64,
    written: BTreeMap<(String, String), u64>,
}

/// A Milvus status that is not success, kept for classification.
fn status_failed(st: Option<&common::Status>) -> Option<(i32, String)> {
    let st = st?;
    #[allow(deprecated)]
    let legacy = st.error_code;
    if legacy == 0 && st.code == 0 {
        None
    } else {
        Some((
            if st.code != 0 { st.code } else { legacy },
            st.reason.clone(),
        ))
    }
}

impl MilvusSink {
    /// A writer over `target`.
    pub fn new(target: MilvusClient) -> Self {
        Self {
            target,
            unflushed: Arc::default(),
        }
    }

    /// Records that `db.name` is about to get rows that are not flushed yet
    /// (before the request is sent, so every acknowledged write is known).
    fn touch(&self, db: &str, name: &str) {
        let mut u = self.unflushed();
        u.generation += 1;
        let generation = u.generation;
        u.written
            .insert((db.to_string(), name.to_string()), generation);
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, Unflushed> {
        self.unflushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection.
    pub fn target(&self) -> &MilvusClient {
        &self.target
    }

    fn grpc(&self, s: Status) -> MilvusError {
        self.target.status_error(s)
    }

    fn check(&self, what: &'static str, st: Option<&common::Status>) -> Result<(), MilvusError> {
        self.target.check(what, st)
    }

    /// The target's view of a collection, or None if it does not exist.
    pub async fn describe(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Option<TargetCollection>, MilvusError> {
        let has = self
            .target
            .client()
            .has_collection(pb::HasCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if let Some((_, reason)) = status_failed(has.status.as_ref()) {
            if reason.contains("database") && reason.contains("not") {
                return Ok(None);
            }
            self.check("HasCollection", has.status.as_ref())?;
        }
        if !has.value {
            return Ok(None);
        }
        // None: dropped between HasCollection and DescribeCollection.
        let Some(resp) = self.target.describe_collection(db, name).await? else {
            return Ok(None);
        };
        let schema = resp.schema.unwrap_or_default();
        let pk = schema.fields.iter().find(|f| f.is_primary_key);
        Ok(Some(TargetCollection {
            source_id: resp
                .properties
                .iter()
                .find(|p| p.key == SOURCE_ID_PROPERTY)
                .and_then(|p| p.value.parse().ok()),
            pk_field: pk.map(|f| f.name.clone()).unwrap_or_default(),
            pk_type: pk
                .and_then(|f| DataType::try_from(f.data_type).ok())
                .unwrap_or(DataType::Int64),
            has_partition_key: schema.fields.iter().any(|f| f.is_partition_key),
            schema,
        }))
    }

    /// Finds the target collection created for source collection
    /// `source_id` (by its property), in any database.
    pub async fn find_by_source_id(
        &self,
        source_id: i64,
    ) -> Result<Option<(String, String)>, MilvusError> {
        for db in self.target.list_databases().await? {
            for (_, name) in self.target.show_collections(&db).await? {
                if let Some(c) = self.describe(&db, &name).await? {
                    if c.source_id == Some(source_id) {
                        return Ok(Some((db, name)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Aliases of a target collection (empty if it does not exist).
    pub async fn aliases(&self, db: &str, name: &str) -> Result<Vec<String>, MilvusError> {
        Ok(self
            .target
            .describe_collection(db, name)
            .await?
            .map(|d| d.aliases)
            .unwrap_or_default())
    }

    /// Creates the database if it does not exist ("" and "default" always exist).
    pub async fn ensure_database(&self, db: &str) -> Result<Applied, MilvusError> {
        if db.is_empty() || db == "default" {
            return Ok(Applied::AlreadyThere);
        }
        if self.target.list_databases().await?.iter().any(|d| d == db) {
            return Ok(Applied::AlreadyThere);
        }
        let st = self
            .target
            .client()
            .create_database(pb::CreateDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_some()
            && self.target.list_databases().await?.iter().any(|d| d == db)
        {
            return Ok(Applied::AlreadyThere);
        }
        self.check("CreateDatabase", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Drops a database if it exists.
    pub async fn drop_database(&self, db: &str) -> Result<Applied, MilvusError> {
        if db.is_empty() || db == "default" {
            return Ok(Applied::Skipped(
                "the default database is never dropped".into(),
            ));
        }
        if !self.target.list_databases().await?.iter().any(|d| d == db) {
            return Ok(Applied::AlreadyThere);
        }
        let st = self
            .target
            .client()
            .drop_database(pb::DropDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("DropDatabase", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Creates the collection unless the target has it already (with the same
    /// source id). A same-named collection from an older source collection is
    /// dropped first: the source dropped it before reusing the name.
    pub async fn create_collection(&self, spec: &CollectionSpec) -> Result<Applied, MilvusError> {
        self.ensure_database(&spec.db).await?;
        if let Some(existing) = self.describe(&spec.db, &spec.name).await? {
            if existing.source_id == Some(spec.source_id) || existing.source_id.is_none() {
                return Ok(Applied::AlreadyThere);
            }
            self.drop_collection_raw(&spec.db, &spec.name).await?;
        }
        let schema = target_schema(&spec.schema);
        let mut properties: Vec<KeyValuePair> = spec
            .properties
            .iter()
            .filter(|p| p.key != SOURCE_ID_PROPERTY)
            .cloned()
            .collect();
        properties.push(kv(SOURCE_ID_PROPERTY, &spec.source_id.to_string()));
        let has_partition_key = schema.fields.iter().any(|f| f.is_partition_key);
        let st = self
            .target
            .client()
            .create_collection(pb::CreateCollectionRequest {
                db_name: spec.db.clone(),
                collection_name: spec.name.clone(),
                schema: prost::Message::encode_to_vec(&schema),
                shards_num: spec.shards_num.max(1),
                consistency_level: spec.consistency_level,
                properties,
                num_partitions: if has_partition_key {
                    spec.num_partitions
                } else {
                    0
                },
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_some() {
            // Another pipeline of the same task may have created it meanwhile.
            if let Some(now) = self.describe(&spec.db, &spec.name).await? {
                if now.source_id == Some(spec.source_id) {
                    return Ok(Applied::AlreadyThere);
                }
            }
        }
        self.check("CreateCollection", Some(&st))?;
        Ok(Applied::Done)
    }

    async fn drop_collection_raw(&self, db: &str, name: &str) -> Result<(), MilvusError> {
        let st = self
            .target
            .client()
            .drop_collection(pb::DropCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_some() && self.describe(db, name).await?.is_none() {
            return Ok(());
        }
        self.check("DropCollection", Some(&st))
    }

    /// Drops the collection if the target's one is the source collection
    /// `source_id` (a newer collection with the same name is left alone).
    pub async fn drop_collection(
        &self,
        db: &str,
        name: &str,
        source_id: i64,
    ) -> Result<Applied, MilvusError> {
        match self.describe(db, name).await? {
            None => Ok(Applied::AlreadyThere),
            Some(c) if c.source_id.is_some_and(|id| id != source_id) => Ok(Applied::Skipped(
                format!("target collection {name} belongs to a newer source collection"),
            )),
            Some(_) => {
                self.drop_collection_raw(db, name).await?;
                Ok(Applied::Done)
            }
        }
    }

    async fn partitions(
        &self,
        db: &str,
        collection: &str,
    ) -> Result<Option<Vec<String>>, MilvusError> {
        match self.target.show_partitions(db, collection).await {
            // Whatever the error code, a collection that is gone has none.
            Err(MilvusError::Rejected { .. }) if self.describe(db, collection).await?.is_none() => {
                Ok(None)
            }
            other => other,
        }
    }

    /// Creates a partition unless it exists.
    pub async fn create_partition(
        &self,
        db: &str,
        collection: &str,
        partition: &str,
    ) -> Result<Applied, MilvusError> {
        match self.partitions(db, collection).await? {
            None => return Ok(Applied::Skipped(format!("collection {collection} is gone"))),
            Some(p) if p.iter().any(|n| n == partition) => return Ok(Applied::AlreadyThere),
            Some(_) => {}
        }
        let st = self
            .target
            .client()
            .create_partition(pb::CreatePartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("CreatePartition", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Drops a partition if it exists (releasing it first, as Milvus requires).
    pub async fn drop_partition(
        &self,
        db: &str,
        collection: &str,
        partition: &str,
    ) -> Result<Applied, MilvusError> {
        match self.partitions(db, collection).await? {
            Some(p) if p.iter().any(|n| n == partition) => {}
            _ => return Ok(Applied::AlreadyThere),
        }
        let _ = self
            .target
            .client()
            .release_partitions(pb::ReleasePartitionsRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_names: vec![partition.to_string()],
                ..Default::default()
            })
            .await;
        let st = self
            .target
            .client()
            .drop_partition(pb::DropPartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("DropPartition", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Upserts rows (the columns of one or more source inserts).
    pub async fn upsert(
        &self,
        db: &str,
        collection: &TargetCollectionRef<'_>,
        partition: &str,
        fields_data: Vec<FieldData>,
        num_rows: u32,
    ) -> Result<Applied, MilvusError> {
        let partition_name = if collection.meta.has_partition_key || partition == "_default" {
            String::new()
        } else {
            partition.to_string()
        };
        self.touch(db, collection.name);
        let resp = self
            .target
            .client()
            .upsert(pb::UpsertRequest {
                db_name: db.to_string(),
                collection_name: collection.name.to_string(),
                partition_name,
                fields_data,
                num_rows,
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("Upsert", resp.status.as_ref())?;
        Ok(Applied::Done)
    }

    /// Deletes rows by primary key, in `partition` ("" = every partition;
    /// always every partition when a partition key routes the rows).
    pub async fn delete(
        &self,
        db: &str,
        collection: &TargetCollectionRef<'_>,
        partition: &str,
        keys: &PrimaryKeys,
    ) -> Result<Applied, MilvusError> {
        let partition_name = if collection.meta.has_partition_key {
            String::new()
        } else {
            partition.to_string()
        };
        self.touch(db, collection.name);
        for expr in keys.exprs(&collection.meta.pk_field, DELETE_CHUNK) {
            let resp = self
                .target
                .client()
                .delete(pb::DeleteRequest {
                    db_name: db.to_string(),
                    collection_name: collection.name.to_string(),
                    partition_name: partition_name.clone(),
                    expr,
                    ..Default::default()
                })
                .await
                .map_err(|s| self.grpc(s))?
                .into_inner();
            self.check("Delete", resp.status.as_ref())?;
        }
        Ok(Applied::Done)
    }

    /// Creates an index unless one with the same name exists on the field.
    pub async fn create_index(&self, req: pb::CreateIndexRequest) -> Result<Applied, MilvusError> {
        if self
            .describe(&req.db_name, &req.collection_name)
            .await?
            .is_none()
        {
            return Ok(Applied::Skipped(format!(
                "collection {} is gone",
                req.collection_name
            )));
        }
        if self
            .index_names(&req.db_name, &req.collection_name)
            .await?
            .iter()
            .any(|(name, field)| {
                *field == req.field_name && (req.index_name.is_empty() || *name == req.index_name)
            })
        {
            return Ok(Applied::AlreadyThere);
        }
        let st = self
            .target
            .client()
            .create_index(pb::CreateIndexRequest { base: None, ..req })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("CreateIndex", Some(&st))?;
        Ok(Applied::Done)
    }

    async fn index_names(
        &self,
        db: &str,
        collection: &str,
    ) -> Result<Vec<(String, String)>, MilvusError> {
        let resp = self
            .target
            .client()
            .describe_index(pb::DescribeIndexRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        // "index not found" is the answer for a collection without indexes.
        if status_failed(resp.status.as_ref()).is_some() {
            return Ok(Vec::new());
        }
        Ok(resp
            .index_descriptions
            .into_iter()
            .map(|d| (d.index_name, d.field_name))
            .collect())
    }

    /// Drops an index if it exists (releasing the collection is the user's
    /// job on the source, and arrives as its own event).
    pub async fn drop_index(&self, req: pb::DropIndexRequest) -> Result<Applied, MilvusError> {
        let exists = self
            .index_names(&req.db_name, &req.collection_name)
            .await?
            .iter()
            .any(|(name, field)| {
                (req.index_name.is_empty() || *name == req.index_name)
                    && (req.field_name.is_empty() || *field == req.field_name)
            });
        if !exists {
            return Ok(Applied::AlreadyThere);
        }
        let req = pb::DropIndexRequest { base: None, ..req };
        let st = self
            .target
            .client()
            .drop_index(req.clone())
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_some_and(|(_, reason)| reason.contains("loaded")) {
            // Replaying history onto a target that is already further on
            // (loaded later): release first, as the source did; the load
            // that follows in the stream loads it again.
            self.release_collection(pb::ReleaseCollectionRequest {
                base: None,
                db_name: req.db_name.clone(),
                collection_name: req.collection_name.clone(),
            })
            .await?;
            let st = self
                .target
                .client()
                .drop_index(req)
                .await
                .map_err(|s| self.grpc(s))?
                .into_inner();
            self.check("DropIndex", Some(&st))?;
            return Ok(Applied::Done);
        }
        self.check("DropIndex", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Loads a collection (Milvus treats a repeated load as a no-op).
    pub async fn load_collection(
        &self,
        req: pb::LoadCollectionRequest,
    ) -> Result<Applied, MilvusError> {
        if self
            .describe(&req.db_name, &req.collection_name)
            .await?
            .is_none()
        {
            return Ok(Applied::Skipped(format!(
                "collection {} is gone",
                req.collection_name
            )));
        }
        let st = self
            .target
            .client()
            .load_collection(pb::LoadCollectionRequest {
                base: None,
                resource_groups: Vec::new(),
                ..req
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if let Some(skip) = replay_without_index(&st) {
            return Ok(skip);
        }
        self.check("LoadCollection", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Releases a collection.
    pub async fn release_collection(
        &self,
        req: pb::ReleaseCollectionRequest,
    ) -> Result<Applied, MilvusError> {
        if self
            .describe(&req.db_name, &req.collection_name)
            .await?
            .is_none()
        {
            return Ok(Applied::AlreadyThere);
        }
        let st = self
            .target
            .client()
            .release_collection(pb::ReleaseCollectionRequest { base: None, ..req })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("ReleaseCollection", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Loads partitions.
    pub async fn load_partitions(
        &self,
        req: pb::LoadPartitionsRequest,
    ) -> Result<Applied, MilvusError> {
        if self
            .describe(&req.db_name, &req.collection_name)
            .await?
            .is_none()
        {
            return Ok(Applied::Skipped(format!(
                "collection {} is gone",
                req.collection_name
            )));
        }
        let st = self
            .target
            .client()
            .load_partitions(pb::LoadPartitionsRequest {
                base: None,
                resource_groups: Vec::new(),
                ..req
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if let Some(skip) = replay_without_index(&st) {
            return Ok(skip);
        }
        self.check("LoadPartitions", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Releases partitions.
    pub async fn release_partitions(
        &self,
        req: pb::ReleasePartitionsRequest,
    ) -> Result<Applied, MilvusError> {
        if self
            .describe(&req.db_name, &req.collection_name)
            .await?
            .is_none()
        {
            return Ok(Applied::AlreadyThere);
        }
        let st = self
            .target
            .client()
            .release_partitions(pb::ReleasePartitionsRequest { base: None, ..req })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("ReleasePartitions", Some(&st))?;
        Ok(Applied::Done)
    }

    /// Flushes the collections that still exist.
    pub async fn flush(&self, req: pb::FlushRequest) -> Result<Applied, MilvusError> {
        let mut names = Vec::new();
        for c in &req.collection_names {
            if self.describe(&req.db_name, c).await?.is_some() {
                names.push(c.clone());
            }
        }
        if names.is_empty() {
            return Ok(Applied::Skipped("no flushed collection exists".into()));
        }
        let resp = self
            .target
            .client()
            .flush(pb::FlushRequest {
                base: None,
                db_name: req.db_name,
                collection_names: names,
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("Flush", resp.status.as_ref())?;
        Ok(Applied::Done)
    }

    /// Flushes every collection written since its last flush and waits, up
    /// to `wait` per collection, until the flush is persisted
    /// (`GetFlushState`, as pymilvus' `Collection.flush` does). Rows a
    /// killed Milvus 2.3.5 can lose are unflushed ("growing") ones:
    /// positions applied before this returns `Ok` are safe to checkpoint.
    /// On error the collections not flushed stay marked for the next call.
    pub async fn flush_written(&self, wait: Duration) -> Result<usize, MilvusError> {
        let pending: Vec<((String, String), u64)> = self
            .unflushed()
            .written
            .iter()
            .map(|(k, g)| (k.clone(), *g))
            .collect();
        for ((db, name), generation) in &pending {
            self.flush_one(db, name, wait).await?;
            let mut u = self.unflushed();
            let key = (db.clone(), name.clone());
            if u.written.get(&key) == Some(generation) {
                u.written.remove(&key);
            }
        }
        Ok(pending.len())
    }

    /// Flushes one collection and waits for it; a collection that is gone
    /// has nothing to lose.
    async fn flush_one(&self, db: &str, name: &str, wait: Duration) -> Result<(), MilvusError> {
        let resp = self
            .target
            .client()
            .flush(pb::FlushRequest {
                base: None,
                db_name: db.to_string(),
                collection_names: vec![name.to_string()],
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if self.target.collection_gone("Flush", resp.status.as_ref())? {
            return Ok(());
        }
        let segment_ids = resp
            .coll_seg_i_ds
            .get(name)
            .map(|l| l.data.clone())
            .unwrap_or_default();
        let flush_ts = resp.coll_flush_ts.get(name).copied().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = self
                .target
                .client()
                .get_flush_state(pb::GetFlushStateRequest {
                    segment_i_ds: segment_ids.clone(),
                    flush_ts,
                    db_name: db.to_string(),
                    collection_name: name.to_string(),
                })
                .await
                .map_err(|s| self.grpc(s))?
                .into_inner();
            if self
                .target
                .collection_gone("GetFlushState", state.status.as_ref())?
            {
                return Ok(());
            }
            if state.flushed {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MilvusError::Unreachable {
                    url: self.target.url().to_string(),
                    message: format!("flush of {db}.{name} not persisted within {wait:?}"),
                    status: None,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Creates an alias, or moves it if it exists.
    pub async fn create_alias(&self, req: pb::CreateAliasRequest) -> Result<Applied, MilvusError> {
        let st = self
            .target
            .client()
            .create_alias(pb::CreateAliasRequest {
                base: None,
                ..req.clone()
            })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_none() {
            return Ok(Applied::Done);
        }
        self.alter_alias(pb::AlterAliasRequest {
            base: None,
            db_name: req.db_name,
            collection_name: req.collection_name,
            alias: req.alias,
        })
        .await
    }

    /// Drops an alias (a missing alias is fine).
    pub async fn drop_alias(&self, req: pb::DropAliasRequest) -> Result<Applied, MilvusError> {
        let st = self
            .target
            .client()
            .drop_alias(pb::DropAliasRequest { base: None, ..req })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        if status_failed(Some(&st)).is_some() {
            return Ok(Applied::AlreadyThere);
        }
        Ok(Applied::Done)
    }

    /// Points an alias at another collection.
    pub async fn alter_alias(&self, req: pb::AlterAliasRequest) -> Result<Applied, MilvusError> {
        let st = self
            .target
            .client()
            .alter_alias(pb::AlterAliasRequest { base: None, ..req })
            .await
            .map_err(|s| self.grpc(s))?
            .into_inner();
        self.check("AlterAlias", Some(&st))?;
        Ok(Applied::Done)
    }
}

/// A target collection by name with what the writer knows of it.
#[derive(Debug, Clone, Copy)]
pub struct TargetCollectionRef<'a> {
    /// Collection name.
    pub name: &'a str,
    /// Its metadata.
    pub meta: &'a TargetCollection,
}

/// Primary keys of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryKeys {
    /// Int64 keys.
    Int(Vec<i64>),
    /// VarChar keys.
    Str(Vec<String>),
}

impl PrimaryKeys {
    /// Keys of a source delete message.
    pub fn from_ids(ids: Option<&schema::IDs>, legacy: &[i64]) -> Self {
        match ids.and_then(|i| i.id_field.as_ref()) {
            Some(schema::i_ds::IdField::IntId(l)) => PrimaryKeys::Int(l.data.clone()),
            Some(schema::i_ds::IdField::StrId(s)) => PrimaryKeys::Str(s.data.clone()),
            None => PrimaryKeys::Int(legacy.to_vec()),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            PrimaryKeys::Int(v) => v.len(),
            PrimaryKeys::Str(v) => v.len(),
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `pk in [...]` expressions of at most `chunk` keys each.
    pub fn exprs(&self, pk_field: &str, chunk: usize) -> Vec<String> {
        match self {
            PrimaryKeys::Int(v) => v
                .chunks(chunk.max(1))
                .map(|c| {
                    let list: Vec<String> = c.iter().map(i64::to_string).collect();
                    format!("{pk_field} in [{}]", list.join(","))
                })
                .collect(),
            PrimaryKeys::Str(v) => v
                .chunks(chunk.max(1))
                .map(|c| {
                    let list: Vec<String> = c.iter().map(|s| quote(s)).collect();
                    format!("{pk_field} in [{}]", list.join(","))
                })
                .collect(),
        }
    }
}

/// A load refused because the target collection has no index: only
/// possible when replaying history onto a target whose index was dropped by
/// a later change (the source had the index when it loaded). The later
/// changes in the stream bring the target to the source's state.
fn replay_without_index(st: &common::Status) -> Option<Applied> {
    let (_, reason) = status_failed(Some(st))?;
    let r = reason.to_ascii_lowercase();
    (r.contains("index")
        && (r.contains("not found") || r.contains("not exist") || r.contains("no index")))
    .then(|| Applied::Skipped(format!("load without an index on the target: {reason}")))
}

/// A Milvus expression string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::FieldSchema;

    #[test]
    fn delete_exprs() {
        let k = PrimaryKeys::Int(vec![1, 2, 3]);
        assert_eq!(k.exprs("id", 2), vec!["id in [1,2]", "id in [3]"]);
        let k = PrimaryKeys::Str(vec!["a\"b".into(), "c\\".into()]);
        assert_eq!(k.exprs("pk", 10), vec![r#"pk in ["a\"b","c\\"]"#]);
    }

    #[test]
    fn target_schema_drops_system_and_auto_id() {
        let src = CollectionSchema {
            name: "c".into(),
            enable_dynamic_field: true,
            fields: vec![
                FieldSchema {
                    field_id: 0,
                    name: "RowID".into(),
                    ..Default::default()
                },
                FieldSchema {
                    field_id: 1,
                    name: "Timestamp".into(),
                    ..Default::default()
                },
                FieldSchema {
                    field_id: 100,
                    name: "id".into(),
                    is_primary_key: true,
                    auto_id: true,
                    data_type: DataType::Int64 as i32,
                    ..Default::default()
                },
                FieldSchema {
                    field_id: 101,
                    name: "$meta".into(),
                    is_dynamic: true,
                    ..Default::default()
                },
                FieldSchema {
                    field_id: 102,
                    name: "v".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let t = target_schema(&src);
        let names: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "v"]);
        assert!(!t.fields[0].auto_id);
        assert!(t.enable_dynamic_field);
    }
}
