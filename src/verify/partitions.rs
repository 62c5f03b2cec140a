//! Which rows are compared together: the whole collection, or each
//! partition on its own.
//!
//! Milvus 2.3.5 lets one primary key live in several partitions of a
//! collection (insert does not check keys across partitions; a delete
//! naming a partition removes the key there only). A query over the whole
//! collection reduces its result by primary key, so it shows one of those
//! rows and hides the others, while `count(*)` counts them all. A
//! collection with several partitions is therefore compared partition by
//! partition (queries with `partition_names`): key sets and row values per
//! partition name. A partition-key collection keeps the whole-collection
//! walk, as Milvus refuses `partition_names` there.

use super::api::CollectionMeta;
use crate::proto::common::LoadState;

/// How the rows of one collection are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RowPlan {
    /// One walk over the whole collection (one partition, or a partition
    /// key): the fast path.
    Whole,
    /// One walk per partition.
    PerPartition {
        /// Partitions present and loaded on both sides, in name order.
        compared: Vec<String>,
        /// Partitions left out, and why (not differences: missing
        /// partitions and load states are compared with the metadata).
        notes: Vec<String>,
    },
}

/// Chooses the [`RowPlan`] for a collection loaded on both sides.
pub(super) fn plan(s: &CollectionMeta, t: &CollectionMeta) -> RowPlan {
    if s.has_partition_key()
        || t.has_partition_key()
        || s.partitions.len().max(t.partitions.len()) <= 1
    {
        return RowPlan::Whole;
    }
    let mut names: Vec<&String> = s.partitions.iter().chain(&t.partitions).collect();
    names.sort();
    names.dedup();
    let mut compared = Vec::new();
    let mut notes = Vec::new();
    for p in names {
        let (in_s, in_t) = (s.partitions.contains(p), t.partitions.contains(p));
        if !(in_s && in_t) {
            let side = if in_s { "target" } else { "source" };
            notes.push(format!(
                "partition {p}: missing on the {side}, rows not compared"
            ));
        } else if !(partition_loaded(s, p) && partition_loaded(t, p)) {
            notes.push(format!(
                "partition {p}: not loaded on both sides, rows not compared"
            ));
        } else {
            compared.push(p.clone());
        }
    }
    RowPlan::PerPartition { compared, notes }
}

/// Whether partition `p` of a loaded collection can be queried: its own
/// load state when known (several partitions), else the collection's.
fn partition_loaded(m: &CollectionMeta, p: &str) -> bool {
    let loaded = LoadState::Loaded as i32;
    match m.partition_loads.get(p) {
        Some(state) => *state == loaded,
        None => m.partition_loads.is_empty() && m.load == loaded,
    }
}

/// Splits a budget of `sample` rows over partitions holding `rows` rows
/// each, in proportion, rounded up (so every non-empty partition gets at
/// least one row when `sample > 0`; the sum may exceed `sample` by fewer
/// than the number of partitions).
pub(super) fn split_samples(sample: usize, rows: &[u64]) -> Vec<usize> {
    let total: u128 = rows.iter().map(|&r| u128::from(r)).sum();
    let sample = sample as u128;
    rows.iter()
        .map(|&r| {
            if total == 0 {
                return 0;
            }
            let share = (sample * u128::from(r)).div_ceil(total);
            usize::try_from(share).unwrap_or(usize::MAX)
        })
        .collect()
}

/// The partitions a query reads: `part` alone, or the whole collection.
pub(super) fn partition_names(part: Option<&String>) -> &[String] {
    part.map_or(&[], std::slice::from_ref)
}

/// A difference or note about `part`: `partition P: what` (unchanged for
/// the whole collection).
pub(super) fn in_partition(part: Option<&String>, what: impl Into<String>) -> String {
    match part {
        Some(p) => format!("partition {p}: {}", what.into()),
        None => what.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    use super::*;
    use crate::{
        proto::{
            milvus as pb,
            schema::{CollectionSchema, FieldSchema},
        },
        verify::keys::KeyDiff,
    };

    const LOADED: i32 = LoadState::Loaded as i32;
    const NOT_LOAD: i32 = LoadState::NotLoad as i32;

    fn meta(parts: &[(&str, i32)], partition_key: bool) -> CollectionMeta {
        let fields = vec![FieldSchema {
            name: "k".into(),
            is_partition_key: partition_key,
            ..Default::default()
        }];
        let partition_loads: BTreeMap<String, i32> = if parts.len() > 1 && !partition_key {
            parts.iter().map(|(p, l)| (p.to_string(), *l)).collect()
        } else {
            BTreeMap::new()
        };
        CollectionMeta {
            desc: pb::DescribeCollectionResponse {
                schema: Some(CollectionSchema {
                    fields,
                    ..Default::default()
                }),
                ..Default::default()
            },
            partitions: parts.iter().map(|(p, _)| p.to_string()).collect(),
            load: LOADED,
            partition_loads,
            ..Default::default()
        }
    }

    #[test]
    fn one_partition_or_a_partition_key_keeps_the_whole_collection_walk() {
        let one = meta(&[("_default", LOADED)], false);
        assert_eq!(plan(&one, &one), RowPlan::Whole);
        let keyed = meta(&[("_default_0", LOADED), ("_default_1", LOADED)], true);
        assert_eq!(plan(&keyed, &keyed), RowPlan::Whole);
    }

    #[test]
    fn several_partitions_are_compared_one_by_one() {
        let s = meta(
            &[
                ("_default", LOADED),
                ("p1", LOADED),
                ("p2", LOADED),
                ("p3", LOADED),
            ],
            false,
        );
        let t = meta(
            &[
                ("_default", LOADED),
                ("p1", NOT_LOAD),
                ("p2", LOADED),
                ("p4", LOADED),
            ],
            false,
        );
        assert_eq!(
            plan(&s, &t),
            RowPlan::PerPartition {
                compared: vec!["_default".into(), "p2".into()],
                notes: vec![
                    "partition p1: not loaded on both sides, rows not compared".into(),
                    "partition p3: missing on the target, rows not compared".into(),
                    "partition p4: missing on the source, rows not compared".into(),
                ],
            }
        );
        // A target that lost every partition but `_default` is still
        // compared partition by partition.
        let t = meta(&[("_default", LOADED)], false);
        let RowPlan::PerPartition { compared, notes } = plan(&s, &t) else {
            panic!("expected a per-partition plan");
        };
        assert_eq!(compared, vec!["_default".to_string()]);
        assert_eq!(notes.len(), 3);
    }

    #[test]
    fn samples_are_split_in_proportion() {
        assert_eq!(split_samples(100, &[0, 50, 150]), vec![0, 25, 75]);
        assert_eq!(split_samples(100, &[1, 2, 3]), vec![17, 34, 50]);
        assert_eq!(split_samples(10, &[1, 1_000_000]), vec![1, 10]);
        assert_eq!(split_samples(0, &[5, 5]), vec![0, 0]);
        assert_eq!(split_samples(100, &[0, 0]), vec![0, 0]);
        assert_eq!(
            split_samples(usize::MAX, &[u64::MAX, u64::MAX]).len(),
            2,
            "no overflow"
        );
    }

    #[test]
    fn labels_name_the_partition() {
        let p2 = "p2".to_string();
        assert_eq!(in_partition(Some(&p2), "x"), "partition p2: x");
        assert_eq!(in_partition(None, "x"), "x");
        assert_eq!(partition_names(Some(&p2)), &["p2".to_string()]);
        assert!(partition_names(None).is_empty());
    }

    /// Merges two per-partition key sets the way the walk does, one
    /// [`KeyDiff`] per partition; returns the labelled differences.
    fn compare_per_partition(
        s: &BTreeMap<&str, BTreeSet<i64>>,
        t: &BTreeMap<&str, BTreeSet<i64>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (p, sk) in s {
            let p = p.to_string();
            let mut diff = KeyDiff::default();
            let mut sq: VecDeque<i64> = sk.iter().copied().collect();
            let mut tq: VecDeque<i64> = t.get(p.as_str()).into_iter().flatten().copied().collect();
            diff.merge(&mut sq, &mut tq, true, true);
            out.extend(
                diff.describe()
                    .into_iter()
                    .map(|d| in_partition(Some(&p), d)),
            );
        }
        out
    }

    #[test]
    fn a_key_deleted_from_one_partition_only_is_found_there() {
        // Keys 1..=5 in both partitions; 2 deleted from p2 on the target.
        let all: BTreeSet<i64> = (1..=5).collect();
        let s = BTreeMap::from([("p1", all.clone()), ("p2", all.clone())]);
        let mut t = s.clone();
        if let Some(p2) = t.get_mut("p2") {
            p2.remove(&2);
        }
        // The union over partitions, what a whole-collection walk sees,
        // hides it.
        let union = |m: &BTreeMap<&str, BTreeSet<i64>>| {
            m.values().flatten().copied().collect::<BTreeSet<i64>>()
        };
        assert_eq!(union(&s), union(&t));
        assert_eq!(
            compare_per_partition(&s, &t),
            vec!["partition p2: 1 primary keys missing on the target (source 5, target 4), e.g. 2"]
        );
        assert!(compare_per_partition(&s, &s).is_empty());
    }
}
