//! Indexes and load state: an index is created only when missing and
//! dropped only when present; loads and releases are skipped when their
//! collection is gone.

use super::{replayed_load_refusal, status_failed, Applied, MilvusSink};
use crate::{
    milvus::{MilvusCall, MilvusError},
    proto::{common, milvus as pb},
};

/// Whether a change of load state loads or releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Load,
    Release,
}

impl MilvusSink {
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
        self.target
            .call(pb::CreateIndexRequest { base: None, ..req })
            .await?;
        Ok(Applied::Done)
    }

    async fn index_names(
        &self,
        db: &str,
        collection: &str,
    ) -> Result<Vec<(String, String)>, MilvusError> {
        let resp = self
            .target
            .send(pb::DescribeIndexRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await?;
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
        let st = self.target.send(req.clone()).await?;
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
            self.target.call(req).await?;
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
        let (db, name) = (req.db_name.clone(), req.collection_name.clone());
        let req = pb::LoadCollectionRequest {
            base: None,
            resource_groups: Vec::new(),
            ..req
        };
        self.change_load(&db, &name, Load::Load, req).await
    }

    /// Releases a collection.
    pub async fn release_collection(
        &self,
        req: pb::ReleaseCollectionRequest,
    ) -> Result<Applied, MilvusError> {
        let (db, name) = (req.db_name.clone(), req.collection_name.clone());
        let req = pb::ReleaseCollectionRequest { base: None, ..req };
        self.change_load(&db, &name, Load::Release, req).await
    }

    /// Loads partitions.
    pub async fn load_partitions(
        &self,
        req: pb::LoadPartitionsRequest,
    ) -> Result<Applied, MilvusError> {
        let (db, name) = (req.db_name.clone(), req.collection_name.clone());
        let req = pb::LoadPartitionsRequest {
            base: None,
            resource_groups: Vec::new(),
            ..req
        };
        self.change_load(&db, &name, Load::Load, req).await
    }

    /// Releases partitions.
    pub async fn release_partitions(
        &self,
        req: pb::ReleasePartitionsRequest,
    ) -> Result<Applied, MilvusError> {
        let (db, name) = (req.db_name.clone(), req.collection_name.clone());
        let req = pb::ReleasePartitionsRequest { base: None, ..req };
        self.change_load(&db, &name, Load::Release, req).await
    }

    /// The part every load and release shares: nothing is sent when the
    /// collection `db.name` is gone (a load no longer applies, a release is
    /// done already), and a load refused during a replay because the target
    /// is further on is not an error (see [`replayed_load_refusal`]).
    async fn change_load<R>(
        &self,
        db: &str,
        name: &str,
        load: Load,
        req: R,
    ) -> Result<Applied, MilvusError>
    where
        R: MilvusCall<Response = common::Status>,
    {
        if self.describe(db, name).await?.is_none() {
            return Ok(match load {
                Load::Load => Applied::Skipped(format!("collection {name} is gone")),
                Load::Release => Applied::AlreadyThere,
            });
        }
        let st = self.target.send(req).await?;
        if load == Load::Load {
            if let Some(skip) = replayed_load_refusal(&st) {
                return Ok(skip);
            }
        }
        self.check(R::NAME, Some(&st))?;
        Ok(Applied::Done)
    }
}
