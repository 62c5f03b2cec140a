//! Flushes: of the collections a flush message names, and of every
//! collection written since its last flush (before a checkpoint).

use std::time::Duration;

use super::{Applied, MilvusSink};
use crate::{milvus::MilvusError, proto::milvus as pb};

impl MilvusSink {
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
        self.target
            .call(pb::FlushRequest {
                base: None,
                db_name: req.db_name,
                collection_names: names,
            })
            .await?;
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
            .send(pb::FlushRequest {
                base: None,
                db_name: db.to_string(),
                collection_names: vec![name.to_string()],
            })
            .await?;
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
                .send(pb::GetFlushStateRequest {
                    segment_i_ds: segment_ids.clone(),
                    flush_ts,
                    db_name: db.to_string(),
                    collection_name: name.to_string(),
                })
                .await?;
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
}
