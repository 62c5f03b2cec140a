//! Metadata that Milvus 2.3.5 does not put in its message streams: renames
//! ([`Catalog::follow_renames`]), alias changes, property changes (e.g. a
//! TTL set after creation) and the creation of (still empty) partitions. A
//! task's reconciler periodically compares, for every collection it
//! replicates, the source's aliases, properties and partitions (public API:
//! DescribeCollection, ShowPartitions) with the target's and applies the
//! difference. Partition drops are left to
//! the stream (DropPartition is in it), so a lagging task never drops early.
//!
//! Its target writes are fenced like the pipeline's: none is sent once the
//! lease guard refuses, and each carries the guard's write deadline (see
//! [`LeaseGuard::write_deadline`]), so that a deposed leader's reconciler
//! cannot write after its successor's takeover replay.

use std::{collections::BTreeSet, future::Future};

use tracing::{debug, info, warn};

use super::catalog::Catalog;
use crate::{ha::LeaseGuard, milvus::MilvusError, proto::milvus as pb, sink::MilvusSink};

/// Runs one target write inside the lease's write deadline; None (the write
/// is not started) when this replica may no longer act as leader.
async fn fenced<T>(
    guard: &LeaseGuard,
    write: impl Future<Output = Result<T, MilvusError>>,
) -> Option<Result<T, MilvusError>> {
    if !guard.is_valid() {
        return None;
    }
    Some(match guard.write_deadline() {
        Some(deadline) => crate::milvus::with_deadline(deadline, write).await,
        // A guard that never expires (no election): no lease to outlive.
        None => write.await,
    })
}

/// One pass over every live collection; returns the number of changes made.
/// The pass ends early, without an error, when `guard` stops allowing writes.
pub async fn reconcile_once(
    catalog: &Catalog,
    writer: &MilvusSink,
    guard: &LeaseGuard,
) -> Result<usize, MilvusError> {
    let mut changes = 0;
    let not_leader = |changes: usize| {
        debug!(changes, "metadata reconciliation stopped: no longer leader");
        Ok(changes)
    };
    // The collections this run has not met since its checkpoints, so that
    // the pass below covers them too (resolving writes nothing new).
    let Some(adopted) = fenced(guard, catalog.adopt_replicas()).await else {
        return not_leader(changes);
    };
    adopted?;
    // Renames first (not in the stream either), so that the rest compares
    // each collection under its current name.
    let Some(renamed) = fenced(guard, catalog.follow_renames()).await else {
        return not_leader(changes);
    };
    changes += renamed?;
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
            let write = writer.create_alias(pb::CreateAliasRequest {
                base: None,
                db_name: live.db.clone(),
                collection_name: live.name.clone(),
                alias: alias.clone(),
            });
            let Some(done) = fenced(guard, write).await else {
                return not_leader(changes);
            };
            done?;
            changes += 1;
        }
        for alias in have.difference(&want) {
            info!(collection = %live.name, alias = %alias, "dropping alias the source no longer has");
            let write = writer.drop_alias(pb::DropAliasRequest {
                base: None,
                db_name: live.db.clone(),
                alias: alias.clone(),
            });
            let Some(done) = fenced(guard, write).await else {
                return not_leader(changes);
            };
            done?;
            changes += 1;
        }
        let sync = writer.sync_properties(&live.db, &live.name, &source.properties);
        let Some(done) = fenced(guard, sync).await else {
            return not_leader(changes);
        };
        match done {
            Ok(0) => {}
            Ok(n) => {
                info!(collection = %live.name, properties = n, "collection properties set from the source");
                changes += n;
            }
            // E.g. a property that 2.3.5 only alters on a released
            // collection: the other collections are still reconciled.
            Err(e) => {
                warn!(collection = %live.name, error = %e, "collection properties could not be set from the source; retried next pass")
            }
        }
        for partition in catalog.source_partitions(&live.db, &live.name).await? {
            let Some(done) = fenced(guard, catalog.ensure_partition_of(&live, &partition)).await
            else {
                return not_leader(changes);
            };
            done?;
        }
    }
    debug!(changes, "metadata reconciled");
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn no_write_starts_once_the_lease_guard_refuses() {
        let started = Arc::new(AtomicBool::new(false));
        let write = |started: Arc<AtomicBool>| async move {
            started.store(true, Ordering::SeqCst);
            Ok::<_, MilvusError>(7)
        };
        // A guard that never expires: the write runs, unbounded.
        let always = LeaseGuard::always_valid();
        let r = fenced(&always, write(started.clone())).await;
        assert_eq!(r.map(Result::ok), Some(Some(7)));
        assert!(started.swap(false, Ordering::SeqCst));
        // An expired guard: the write is never started.
        let expired = LeaseGuard::always_valid();
        expired.expire_now();
        assert!(expired.write_deadline().is_some());
        assert!(fenced(&expired, write(started.clone())).await.is_none());
        assert!(!started.load(Ordering::SeqCst), "a deposed leader wrote");
    }
}
