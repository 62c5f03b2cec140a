//! Databases, collections and partitions: created only when missing,
//! dropped only when present (and, for a collection, only the one created
//! from the same source collection).

use super::{
    kv, status_failed, target_schema, Applied, CollectionSpec, MilvusSink, SOURCE_ID_PROPERTY,
};
use crate::{
    milvus::MilvusError,
    proto::{common::KeyValuePair, milvus as pb},
};

impl MilvusSink {
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
            .send(pb::CreateDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await?;
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
        self.target
            .call(pb::DropDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await?;
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
        // The schema of a CreateCollection read from the stream carries the
        // name the collection had then; Milvus requires the collection's
        // name (its name on the source now, after a rename) in it.
        let schema = crate::proto::schema::CollectionSchema {
            name: spec.name.clone(),
            ..target_schema(&spec.schema)
        };
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
            .send(pb::CreateCollectionRequest {
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
            .await?;
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
            .send(pb::DropCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await?;
        if status_failed(Some(&st)).is_some() && self.describe(db, name).await?.is_none() {
            return Ok(());
        }
        self.check("DropCollection", Some(&st))
    }

    /// Renames target collection `db.old` to `new_db.new` (a source
    /// collection was renamed: Milvus 2.3.5 does not put renames in its
    /// streams). Done if `new_db.new` already exists and `db.old` does not
    /// (a repeat).
    pub async fn rename_collection(
        &self,
        db: &str,
        old: &str,
        new_db: &str,
        new: &str,
    ) -> Result<Applied, MilvusError> {
        let st = self
            .target
            .send(pb::RenameCollectionRequest {
                db_name: db.to_string(),
                old_name: old.to_string(),
                new_name: new.to_string(),
                new_db_name: if new_db == db {
                    String::new()
                } else {
                    new_db.to_string()
                },
                ..Default::default()
            })
            .await?;
        if status_failed(Some(&st)).is_some()
            && self.describe(db, old).await?.is_none()
            && self.describe(new_db, new).await?.is_some()
        {
            return Ok(Applied::AlreadyThere);
        }
        self.check("RenameCollection", Some(&st))?;
        Ok(Applied::Done)
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
        self.target
            .call(pb::CreatePartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await?;
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
            .send(pb::ReleasePartitionsRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_names: vec![partition.to_string()],
                ..Default::default()
            })
            .await;
        self.target
            .call(pb::DropPartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(Applied::Done)
    }
}

impl MilvusSink {
    /// The target's collections created by milvus-cdc: `(database, name,
    /// source collection id)`, from their marker property.
    pub async fn replicas(&self) -> Result<Vec<(String, String, i64)>, MilvusError> {
        let mut out = Vec::new();
        for db in self.target.list_databases().await? {
            for (_, name) in self.target.show_collections(&db).await? {
                if let Some(c) = self.describe(&db, &name).await? {
                    if let Some(id) = c.source_id {
                        out.push((db.clone(), name, id));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sets on `db.name` each of the source's `properties` (for example
    /// `collection.ttl.seconds`) that the target lacks or has with another
    /// value: property changes are not in Milvus 2.3.5's streams. The
    /// source-id marker is never touched, and 2.3.5 cannot remove a
    /// property. Returns how many were set (0 if the collection is gone).
    pub async fn sync_properties(
        &self,
        db: &str,
        name: &str,
        properties: &[KeyValuePair],
    ) -> Result<usize, MilvusError> {
        let Some(resp) = self.target.describe_collection(db, name).await? else {
            return Ok(0);
        };
        let differ: Vec<KeyValuePair> = properties
            .iter()
            .filter(|p| p.key != SOURCE_ID_PROPERTY)
            .filter(|p| {
                !resp
                    .properties
                    .iter()
                    .any(|t| t.key == p.key && t.value == p.value)
            })
            .cloned()
            .collect();
        if differ.is_empty() {
            return Ok(0);
        }
        self.target
            .call(pb::AlterCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                properties: differ.clone(),
                ..Default::default()
            })
            .await?;
        Ok(differ.len())
    }

    /// Turns the replica `db.name` into a collection of its own cluster
    /// (promote): its marker is emptied, since Milvus 2.3.5's
    /// AlterCollection sets properties but cannot remove one; an empty
    /// marker means "not a replica" everywhere it is read.
    pub async fn unmark_collection(&self, db: &str, name: &str) -> Result<(), MilvusError> {
        self.target
            .call(pb::AlterCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                properties: vec![kv(SOURCE_ID_PROPERTY, "")],
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}
