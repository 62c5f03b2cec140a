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
//!
//! Layout: this file holds [`MilvusSink`], what it knows of a collection and
//! the look-ups every change starts with; `ddl` databases, collections and
//! partitions; `dml` upserts and deletes; `index` indexes and load state;
//! `alias` aliases; `flush` flushes and the record of unflushed writes.

mod alias;
mod ddl;
mod dml;
mod flush;
mod index;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

pub use self::dml::PrimaryKeys;
use crate::milvus::{is_system_field, MilvusClient, MilvusError};
use crate::proto::{
    common::{self, KeyValuePair},
    milvus as pb,
    schema::{self, CollectionSchema, DataType},
};

/// Target collection property holding the source collection id.
pub const SOURCE_ID_PROPERTY: &str = "milvus-cdc.source-collection-id";

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The change is now on the target.
    Done,
    /// Nothing to do: the target already had the change (replay).
    AlreadyThere,
    /// The change no longer applies (its collection is gone); it was skipped.
    Skipped(String),
    /// The change belongs to a collection the task does not replicate (not
    /// selected, or a replica): ignored, neither applied nor skipped.
    Excluded,
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
            .send(pb::HasCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await?;
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

    /// Every target collection that is a replica, in any database: its
    /// source collection id (from its property) and its (database, name).
    pub async fn replicas_by_source_id(
        &self,
    ) -> Result<HashMap<i64, (String, String)>, MilvusError> {
        let mut found = HashMap::new();
        for db in self.target.list_databases().await? {
            for (_, name) in self.target.show_collections(&db).await? {
                if let Some(id) = self.describe(&db, &name).await?.and_then(|c| c.source_id) {
                    found.insert(id, (db.clone(), name));
                }
            }
        }
        Ok(found)
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
}

/// A target collection by name with what the writer knows of it.
#[derive(Debug, Clone, Copy)]
pub struct TargetCollectionRef<'a> {
    /// Collection name.
    pub name: &'a str,
    /// Its metadata.
    pub meta: &'a TargetCollection,
}

/// A load refused because the target is already further on in the stream;
/// only possible when replaying history, and the later changes in the
/// stream bring the target to the source's state:
/// - the target collection has no index: a later change dropped it (the
///   source had the index when it loaded); skipped;
/// - the target collection is loaded already, with another set of indexes:
///   a later change created an index on the loaded collection, which Milvus
///   2.3.5 allows, while it refuses to load a loaded collection whose indexes
///   changed ("can't change the index for loaded collection"). The source
///   loaded it before that index existed, so the load is on the target
///   already. Found by `tests/e2e/test_random_workload.py`: the takeover
///   replay of a task stopped it for good on such a load.
fn replayed_load_refusal(st: &common::Status) -> Option<Applied> {
    let (_, reason) = status_failed(Some(st))?;
    let r = reason.to_ascii_lowercase();
    if r.contains("can't change the index for loaded") {
        return Some(Applied::AlreadyThere);
    }
    (r.contains("index")
        && (r.contains("not found") || r.contains("not exist") || r.contains("no index")))
    .then(|| Applied::Skipped(format!("load without an index on the target: {reason}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::FieldSchema;

    fn refused(code: i32, reason: &str) -> common::Status {
        common::Status {
            code,
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn replayed_load_of_a_collection_loaded_before_a_later_index_is_already_there() {
        // Milvus 2.3.5's answer to a LoadCollection replayed after a later
        // CreateIndex on the loaded collection was applied.
        let st = refused(
            1100,
            "can't change the index for loaded collection: invalid parameter\
             [expected=map[109:470865843041222989]][actual=map[101:470865843041223084 \
             109:470865843041222989]]",
        );
        assert_eq!(replayed_load_refusal(&st), Some(Applied::AlreadyThere));
    }

    #[test]
    fn replayed_load_without_index_is_skipped_and_other_refusals_stay_errors() {
        let st = refused(700, "index not found[collection=c]");
        assert!(matches!(
            replayed_load_refusal(&st),
            Some(Applied::Skipped(_))
        ));
        let st = refused(
            1100,
            "can't change the replica number for loaded collection",
        );
        assert_eq!(replayed_load_refusal(&st), None);
        assert_eq!(replayed_load_refusal(&refused(0, "")), None);
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
