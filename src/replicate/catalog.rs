//! The per-task collection catalog: what each source collection id is on the
//! target. Learned from CreateCollection events and, for collections created
//! before the replayed part of the stream, from the source's public API
//! (`DescribeCollection` by id), so inserts into any live collection find or
//! create their target collection, and rows of dropped collections are
//! skipped instead of landing in a newer collection with the same name.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::Mutex;

use crate::{
    proto::milvus as pb,
    source::event::CreateCollection,
    target::{
        writer::{Applied, CollectionSpec, TargetCollection, TargetWriter},
        MilvusTarget, TargetError,
    },
};

/// A source collection as the target sees it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Exists on the target.
    Live {
        /// Database.
        db: String,
        /// Collection name.
        name: String,
        /// Target metadata.
        meta: Arc<TargetCollection>,
    },
    /// Dropped on the source: its rows are skipped.
    Dropped,
}

/// Shared by the pipelines of one task.
#[derive(Clone)]
pub struct Catalog {
    entries: Arc<Mutex<HashMap<i64, Entry>>>,
    source: MilvusTarget,
    writer: TargetWriter,
}

impl Catalog {
    /// A catalog that asks `source` about unknown collections and creates
    /// them through `writer`.
    pub fn new(source: MilvusTarget, writer: TargetWriter) -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
            source,
            writer,
        }
    }

    /// Records what `id` is now (after a DDL change).
    pub async fn set(&self, id: i64, entry: Entry) {
        self.entries.lock().await.insert(id, entry);
    }

    /// What is already known of `id`, without asking anyone.
    pub async fn resolve_known(&self, id: i64) -> Option<Entry> {
        self.entries.lock().await.get(&id).cloned()
    }

    /// The source's description of collection `id`, or None if it no longer
    /// exists there.
    async fn describe_source(
        &self,
        id: i64,
    ) -> Result<Option<pb::DescribeCollectionResponse>, TargetError> {
        let resp = self
            .source
            .client()
            .describe_collection(pb::DescribeCollectionRequest {
                collection_id: id,
                ..Default::default()
            })
            .await
            .map_err(|s| self.source.status_error(s))?
            .into_inner();
        match self
            .source
            .check("DescribeCollection", resp.status.as_ref())
        {
            Ok(()) => Ok(Some(resp)),
            Err(TargetError::Rejected { reason, .. })
                if reason.contains("not found") || reason.contains("not exist") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The spec to create the collection of a CreateCollection event: the
    /// message's schema and channels, plus properties, consistency level and
    /// database from the source API when the collection still exists there.
    pub async fn spec_for(&self, ev: &CreateCollection) -> Result<CollectionSpec, TargetError> {
        let source = self.describe_source(ev.request.collection_id).await?;
        let (db, properties, consistency_level, shards) = match &source {
            Some(d) => (
                d.db_name.clone(),
                d.properties.clone(),
                d.consistency_level,
                d.shards_num,
            ),
            None => (ev.request.db_name.clone(), Vec::new(), 0, 0),
        };
        let shards = if shards > 0 {
            shards
        } else {
            i32::try_from(ev.request.virtual_channel_names.len()).unwrap_or(1)
        };
        Ok(CollectionSpec {
            db: if db.is_empty() {
                ev.request.db_name.clone()
            } else {
                db
            },
            name: ev.name().to_string(),
            source_id: ev.request.collection_id,
            schema: ev.schema.clone(),
            shards_num: shards,
            properties,
            consistency_level,
            num_partitions: i64::try_from(ev.request.partition_i_ds.len()).unwrap_or(0),
        })
    }

    /// Creates the collection on the target (idempotently) and records it.
    pub async fn create(&self, spec: &CollectionSpec) -> Result<Applied, TargetError> {
        let applied = self.writer.create_collection(spec).await?;
        if let Some(meta) = self.writer.describe(&spec.db, &spec.name).await? {
            self.set(
                spec.source_id,
                Entry::Live {
                    db: spec.db.clone(),
                    name: spec.name.clone(),
                    meta: Arc::new(meta),
                },
            )
            .await;
        }
        Ok(applied)
    }

    /// The target collection for rows of source collection `id` named
    /// `db.name` in the message, creating it from the source's description if
    /// the target lacks it. `Dropped` if the source no longer has it.
    pub async fn resolve(&self, id: i64, db: &str, name: &str) -> Result<Entry, TargetError> {
        if let Some(e) = self.entries.lock().await.get(&id) {
            return Ok(e.clone());
        }
        if let Some(meta) = self.writer.describe(db, name).await? {
            if meta.source_id == Some(id) || meta.source_id.is_none() {
                let entry = Entry::Live {
                    db: db.to_string(),
                    name: name.to_string(),
                    meta: Arc::new(meta),
                };
                self.set(id, entry.clone()).await;
                return Ok(entry);
            }
        }
        let Some(desc) = self.describe_source(id).await? else {
            self.set(id, Entry::Dropped).await;
            return Ok(Entry::Dropped);
        };
        let spec = CollectionSpec {
            db: if desc.db_name.is_empty() {
                db.to_string()
            } else {
                desc.db_name.clone()
            },
            name: desc.collection_name.clone(),
            source_id: id,
            schema: desc.schema.clone().unwrap_or_default(),
            shards_num: desc.shards_num,
            properties: desc.properties.clone(),
            consistency_level: desc.consistency_level,
            num_partitions: desc.num_partitions,
        };
        tracing::info!(collection = %spec.name, source_id = id, "creating target collection from the source's description");
        self.create(&spec).await?;
        Ok(self
            .entries
            .lock()
            .await
            .get(&id)
            .cloned()
            .unwrap_or(Entry::Dropped))
    }
}
