//! Metadata that Milvus 2.3.5 does not put in its message streams: alias
//! changes and the creation of (still empty) partitions. A task's reconciler
//! periodically compares, for every collection it replicates, the source's
//! aliases and partitions (public API: DescribeCollection, ShowPartitions)
//! with the target's and applies the difference. Partition drops are left to
//! the stream (DropPartition is in it), so a lagging task never drops early.

use std::collections::BTreeSet;

use tracing::{debug, info};

use super::catalog::Catalog;
use crate::{milvus::MilvusError, proto::milvus as pb, sink::MilvusSink};

/// One pass over every live collection; returns the number of changes made.
pub async fn reconcile_once(catalog: &Catalog, writer: &MilvusSink) -> Result<usize, MilvusError> {
    let mut changes = 0;
    for live in catalog.live_collections().await {
        let Some(source) = catalog.describe_source(&live.db, &live.name).await? else {
            continue; // dropped on the source: the stream will drop it here
        };
        if source.collection_id != 0
            && live
                .meta
                .source_id
                .is_some_and(|id| id != source.collection_id)
        {
            continue; // the name now belongs to a newer source collection
        }
        let want: BTreeSet<String> = source.aliases.iter().cloned().collect();
        let have: BTreeSet<String> = writer
            .aliases(&live.db, &live.name)
            .await?
            .into_iter()
            .collect();
        for alias in want.difference(&have) {
            info!(collection = %live.name, alias = %alias, "creating alias from the source");
            writer
                .create_alias(pb::CreateAliasRequest {
                    base: None,
                    db_name: live.db.clone(),
                    collection_name: live.name.clone(),
                    alias: alias.clone(),
                })
                .await?;
            changes += 1;
        }
        for alias in have.difference(&want) {
            info!(collection = %live.name, alias = %alias, "dropping alias the source no longer has");
            writer
                .drop_alias(pb::DropAliasRequest {
                    base: None,
                    db_name: live.db.clone(),
                    alias: alias.clone(),
                })
                .await?;
            changes += 1;
        }
        for partition in catalog.source_partitions(&live.db, &live.name).await? {
            catalog.ensure_partition_of(&live, &partition).await?;
        }
    }
    debug!(changes, "metadata reconciled");
    Ok(changes)
}
