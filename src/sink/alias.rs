//! Aliases: created, moved or dropped to match the source.

use super::{status_failed, Applied, MilvusSink};
use crate::{milvus::MilvusError, proto::milvus as pb};

impl MilvusSink {
    /// Aliases of a target collection (empty if it does not exist).
    pub async fn aliases(&self, db: &str, name: &str) -> Result<Vec<String>, MilvusError> {
        Ok(self
            .target
            .describe_collection(db, name)
            .await?
            .map(|d| d.aliases)
            .unwrap_or_default())
    }

    /// Creates an alias, or moves it if it exists.
    pub async fn create_alias(&self, req: pb::CreateAliasRequest) -> Result<Applied, MilvusError> {
        let st = self
            .target
            .send(pb::CreateAliasRequest {
                base: None,
                ..req.clone()
            })
            .await?;
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
            .send(pb::DropAliasRequest { base: None, ..req })
            .await?;
        if status_failed(Some(&st)).is_some() {
            return Ok(Applied::AlreadyThere);
        }
        Ok(Applied::Done)
    }

    /// Points an alias at another collection.
    pub async fn alter_alias(&self, req: pb::AlterAliasRequest) -> Result<Applied, MilvusError> {
        self.target
            .call(pb::AlterAliasRequest { base: None, ..req })
            .await?;
        Ok(Applied::Done)
    }
}
