//! Calls to one side of the comparison, with errors that say which side and what.

use std::collections::BTreeMap;
use tracing::warn;

use super::{Side, VerifyError};
use crate::{
    milvus::{MilvusCall, MilvusClient, MilvusError},
    proto::{
        common::{self, ConsistencyLevel, KeyValuePair, LoadState},
        milvus as pb,
        schema::{field_data::Field, scalar_field::Data as Scalar, CollectionSchema, FieldData},
    },
};

/// Calls to one side, with errors that say which side and what.
#[derive(Clone, Copy)]
pub(super) struct Api<'a> {
    pub(super) m: &'a MilvusClient,
    pub(super) side: Side,
}

/// A collection's metadata on one side.
#[derive(Debug, Clone, Default)]
pub(super) struct CollectionMeta {
    pub(super) desc: pb::DescribeCollectionResponse,
    pub(super) partitions: Vec<String>,
    pub(super) indexes: Vec<pb::IndexDescription>,
    pub(super) load: i32,
    /// Per-partition load state (only for loaded collections without a
    /// partition key).
    pub(super) partition_loads: BTreeMap<String, i32>,
}

impl CollectionMeta {
    pub(super) fn schema(&self) -> CollectionSchema {
        self.desc.schema.clone().unwrap_or_default()
    }

    /// Whether the collection has a partition-key field.
    pub(super) fn has_partition_key(&self) -> bool {
        has_partition_key(&self.desc)
    }
}

/// Whether a described collection has a partition-key field.
fn has_partition_key(desc: &pb::DescribeCollectionResponse) -> bool {
    desc.schema
        .as_ref()
        .is_some_and(|s| s.fields.iter().any(|f| f.is_partition_key))
}

impl<'a> Api<'a> {
    fn call_error(
        &self,
        scope: &str,
        call: &'static str,
    ) -> impl Fn(MilvusError) -> VerifyError + 'a {
        let (side, scope) = (self.side, scope.to_string());
        move |source| VerifyError::Call {
            side,
            scope: scope.clone(),
            call,
            source,
        }
    }

    /// Sends `req`; a failed call or a Milvus error status is an error
    /// naming this side, `scope` and the call.
    async fn call<R: MilvusCall>(&self, scope: &str, req: R) -> Result<R::Response, VerifyError> {
        self.m
            .call(req)
            .await
            .map_err(self.call_error(scope, R::NAME))
    }

    pub(super) async fn databases(&self) -> Result<Vec<String>, VerifyError> {
        let r = self
            .call("databases", pb::ListDatabasesRequest::default())
            .await?;
        Ok(r.db_names)
    }

    pub(super) async fn collections(&self, db: &str) -> Result<Vec<String>, VerifyError> {
        let r = self
            .call(
                db,
                pb::ShowCollectionsRequest {
                    db_name: db.to_string(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.collection_names)
    }

    pub(super) async fn meta(&self, db: &str, c: &str) -> Result<CollectionMeta, VerifyError> {
        let scope = scope_of(db, c);
        let desc = self.describe(db, c, &scope).await?;
        let partitions = self.partitions(db, c, &scope).await?;
        let indexes = self.indexes(db, c, &scope).await?;
        let load = self.load_state(db, c, &scope, &[]).await?;
        let has_partition_key = has_partition_key(&desc);
        let mut partition_loads = BTreeMap::new();
        if is_loaded_or_loading(load) && !has_partition_key && partitions.len() > 1 {
            for p in &partitions {
                let state = self
                    .load_state(db, c, &scope, std::slice::from_ref(p))
                    .await?;
                partition_loads.insert(p.clone(), state);
            }
        }
        Ok(CollectionMeta {
            desc,
            partitions,
            indexes,
            load,
            partition_loads,
        })
    }

    async fn describe(
        &self,
        db: &str,
        c: &str,
        scope: &str,
    ) -> Result<pb::DescribeCollectionResponse, VerifyError> {
        let r = self
            .call(
                scope,
                pb::DescribeCollectionRequest {
                    db_name: db.to_string(),
                    collection_name: c.to_string(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(r)
    }

    async fn partitions(&self, db: &str, c: &str, scope: &str) -> Result<Vec<String>, VerifyError> {
        let r = self
            .call(
                scope,
                pb::ShowPartitionsRequest {
                    db_name: db.to_string(),
                    collection_name: c.to_string(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.partition_names)
    }

    /// Every index of the collection; none when Milvus says "index not found".
    async fn indexes(
        &self,
        db: &str,
        c: &str,
        scope: &str,
    ) -> Result<Vec<pb::IndexDescription>, VerifyError> {
        let req = pb::DescribeIndexRequest {
            db_name: db.to_string(),
            collection_name: c.to_string(),
            ..Default::default()
        };
        match self.m.call(req).await {
            Ok(r) => Ok(r.index_descriptions),
            // A Milvus status (not a failed call) saying "no index".
            Err(MilvusError::Rejected {
                code,
                reason,
                status: None,
                ..
            }) if is_index_not_found(code, &reason) => Ok(Vec::new()),
            Err(e) => Err(self.call_error(scope, pb::DescribeIndexRequest::NAME)(e)),
        }
    }

    /// The load state of the collection, or of `partitions`. Milvus 2.3.5
    /// can refuse GetLoadState after a kill -9 restart when its partition
    /// list and its load records disagree ("partition not found" for a
    /// partition dropped around the crash) while queries work: then whether
    /// a `count(*)` answers decides (loaded, or not loaded).
    async fn load_state(
        &self,
        db: &str,
        c: &str,
        scope: &str,
        partitions: &[String],
    ) -> Result<i32, VerifyError> {
        let req = pb::GetLoadStateRequest {
            db_name: db.to_string(),
            collection_name: c.to_string(),
            partition_names: partitions.to_vec(),
            ..Default::default()
        };
        match self.m.call(req).await {
            Ok(r) => Ok(r.state),
            // A Milvus status (the server answered), not a failed call.
            Err(MilvusError::Rejected {
                reason,
                status: None,
                ..
            }) => {
                let answers = self.count(db, c, partitions).await.is_ok();
                warn!(side = %self.side, scope, ?partitions, reason, answers, "GetLoadState refused: whether a count(*) query answers tells the load state");
                Ok(if answers {
                    LoadState::Loaded as i32
                } else {
                    LoadState::NotLoad as i32
                })
            }
            Err(e) => Err(self.call_error(scope, pb::GetLoadStateRequest::NAME)(e)),
        }
    }

    /// A strongly consistent query over `partitions` (empty: the whole
    /// collection) returning at most `limit` rows. Every read carries a
    /// limit: Milvus 2.3.5 answers a query without one incompletely when
    /// the collection holds a key more than once (rows of *other* keys go
    /// missing; docs/replication.md, "Duplicate keys"), so a caller that
    /// needs every match re-reads smaller ranges while an answer is full.
    pub(super) async fn query(
        &self,
        db: &str,
        c: &str,
        partitions: &[String],
        expr: &str,
        output_fields: &[&str],
        limit: usize,
    ) -> Result<Vec<FieldData>, VerifyError> {
        let limit = KeyValuePair {
            key: "limit".into(),
            value: limit.to_string(),
        };
        self.query_params(db, c, partitions, expr, output_fields, vec![limit])
            .await
    }

    /// A strongly consistent query with the given `query_params`; only
    /// [`Api::query`] (with a limit) and `count(*)` (which Milvus refuses
    /// with a limit) use it.
    async fn query_params(
        &self,
        db: &str,
        c: &str,
        partitions: &[String],
        expr: &str,
        output_fields: &[&str],
        query_params: Vec<KeyValuePair>,
    ) -> Result<Vec<FieldData>, VerifyError> {
        let scope = scope_of(db, c);
        let r = self
            .call(
                &scope,
                pb::QueryRequest {
                    db_name: db.to_string(),
                    collection_name: c.to_string(),
                    partition_names: partitions.to_vec(),
                    expr: expr.to_string(),
                    output_fields: output_fields.iter().map(|s| s.to_string()).collect(),
                    query_params,
                    // Strong with guarantee_timestamp 0: the proxy uses "now".
                    consistency_level: ConsistencyLevel::Strong as i32,
                    use_default_consistency: false,
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.fields_data)
    }

    /// `count(*)` of `partitions` (empty: the whole collection); duplicated
    /// keys count twice.
    pub(super) async fn count(
        &self,
        db: &str,
        c: &str,
        partitions: &[String],
    ) -> Result<u64, VerifyError> {
        self.count_where(db, c, partitions, "").await
    }

    /// `count(*)` of the rows matching `expr` ("" = all) in `partitions`
    /// (empty: the whole collection); duplicated keys count twice.
    pub(super) async fn count_where(
        &self,
        db: &str,
        c: &str,
        partitions: &[String],
        expr: &str,
    ) -> Result<u64, VerifyError> {
        let cols = self
            .query_params(db, c, partitions, expr, &["count(*)"], Vec::new())
            .await?;
        let n = cols
            .iter()
            .find(|f| f.field_name == "count(*)")
            .and_then(|f| match &f.field {
                Some(Field::Scalars(s)) => match &s.data {
                    Some(Scalar::LongData(d)) => d.data.first().copied(),
                    _ => None,
                },
                _ => None,
            });
        n.and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| VerifyError::Unexpected {
                side: self.side,
                scope: scope_of(db, c),
                message: "count(*) query returned no count".into(),
            })
    }
}

/// Milvus 2.3's answer to DescribeIndex on a collection without index:
/// code 700 (`IndexNotFound`) or legacy code 25 (`IndexNotExist`).
pub(super) fn is_index_not_found(code: i32, reason: &str) -> bool {
    code == 700
        || code == common::ErrorCode::IndexNotExist as i32
        || reason.contains("index not found")
        || reason.contains("index not exist")
}

pub(super) fn is_loaded_or_loading(state: i32) -> bool {
    state == LoadState::Loaded as i32 || state == LoadState::Loading as i32
}

/// `db.collection`.
pub(super) fn scope_of(db: &str, c: &str) -> String {
    format!("{db}.{c}")
}
