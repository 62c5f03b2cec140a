//! Reduction of a run of inserts and deletes, in timestamp order, to the
//! writes that leave the target as Milvus shows the source afterwards.
//!
//! Milvus's semantics, per collection and primary key:
//! - an insert adds a version of the key in its partition; the newest
//!   version in a partition is what queries return;
//! - a delete at `T` removes the versions older than `T`, in its partition
//!   (or in all of them when it names none);
//! - an upsert is an insert and a delete with the same `T`: its delete spares
//!   its own rows (the window puts the delete first).
//!
//! In a collection with a partition key, the target routes rows to its
//! partitions itself and deletes in all of them: there a key has one newest
//! version in the whole collection, whichever physical partition the
//! source's stream names (Milvus 2.3.5 was seen to route an upsert and a
//! later insert of the same key and partition-key value to two of them).
//!
//! The target stamps writes with its own clock, so the net effect is
//! written as deletes first (every key whose older versions some delete
//! removed, in the delete's scope) and then upserts of the surviving newest
//! version of each key and partition. A key written ten times is written
//! once; applying the same writes twice changes nothing.

use std::collections::{BTreeMap, HashMap};

use crate::{
    proto::{
        msg::{DeleteRequest, InsertRequest},
        schema::{
            field_data::Field, scalar_field::Data as Scalar, vector_field::Data as Vector,
            FieldData,
        },
    },
    replicate::batch::InsertBatch,
    sink::PrimaryKeys,
};

/// A row change of a DML channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Rows inserted (or an upsert's new rows).
    Insert(Box<InsertRequest>),
    /// Keys deleted (or an upsert's delete).
    Delete(Box<DeleteRequest>),
}

impl Change {
    /// Source collection id.
    pub fn collection_id(&self) -> i64 {
        match self {
            Change::Insert(m) => m.collection_id,
            Change::Delete(m) => m.collection_id,
        }
    }
}

/// How a collection's rows are keyed, for the reduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    /// The primary key field.
    pub pk_field: String,
    /// Whether a partition key routes the rows (the target routes them
    /// itself): a key then has one newest version in the whole collection.
    pub partition_key: bool,
}

impl RowKey {
    /// Where a row of partition `partition` keeps its newest version.
    fn slot<'a>(&self, partition: &'a str) -> &'a str {
        if self.partition_key {
            ""
        } else {
            partition
        }
    }
}

/// A primary key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pk {
    /// Int64 key.
    Int(i64),
    /// VarChar key.
    Str(String),
}

/// Which partitions a delete covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every partition of the collection.
    All,
    /// One partition, by name.
    Partition(String),
}

/// Keys to delete in one collection and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteStep {
    /// Source collection id.
    pub collection_id: i64,
    /// Where the older versions are removed.
    pub scope: Scope,
    /// The source partition's id for a [`Scope::Partition`] (a partition
    /// dropped and re-created under its name gets a new id), else 0.
    pub partition_id: i64,
    /// The keys.
    pub keys: PrimaryKeys,
}

/// The writes of a reduced run: every delete, then every upsert.
#[derive(Debug, Default)]
pub struct Plan {
    /// Deletes, to be written before the upserts.
    pub deletes: Vec<DeleteStep>,
    /// Surviving rows, batched by collection and partition.
    pub upserts: Vec<InsertBatch>,
    /// Rows the run's inserts carried (before reduction).
    pub rows_in: u64,
}

/// Batch limits of the upserts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in one upsert.
    pub rows: u64,
    /// Most bytes in one upsert (approximate).
    pub bytes: usize,
}

/// An insert's row keys, and the slot their newest versions are kept under
/// (see [`RowKey::slot`]).
type Keyed = (Vec<Pk>, String);

#[derive(Default)]
struct KeyState {
    /// A delete covered every partition.
    cleared_all: bool,
    /// Partitions a partition-scoped delete covered: name and source id.
    cleared: BTreeMap<String, i64>,
    /// Newest version of the run per partition: (insert index, row).
    newest: HashMap<String, (usize, usize)>,
}

/// Reduces `changes` (in timestamp order, deletes first at equal
/// timestamps) to their net writes. `row_key` tells how each collection's
/// rows are keyed; rows of a collection it does not know are written as
/// they are, unreduced.
pub fn reduce(
    changes: Vec<Change>,
    row_key: impl Fn(i64) -> Option<RowKey>,
    limits: Limits,
) -> Plan {
    let mut keys: HashMap<(i64, Pk), KeyState> = HashMap::new();
    let mut inserts: Vec<(InsertRequest, Option<Keyed>)> = Vec::new();
    let mut rows_in = 0;
    for change in changes {
        match change {
            Change::Insert(m) => {
                rows_in += m.num_rows;
                let key = row_key(m.collection_id);
                let pks = key
                    .as_ref()
                    .and_then(|k| insert_keys(&m, &k.pk_field))
                    .filter(|p| p.len() as u64 == m.num_rows);
                let idx = inserts.len();
                let slot = key.as_ref().map_or("", |k| k.slot(&m.partition_name));
                if let Some(pks) = &pks {
                    for (row, pk) in pks.iter().enumerate() {
                        keys.entry((m.collection_id, pk.clone()))
                            .or_default()
                            .newest
                            .insert(slot.to_string(), (idx, row));
                    }
                }
                let slot = slot.to_string();
                inserts.push((*m, pks.map(|p| (p, slot))));
            }
            Change::Delete(m) => {
                // The target deletes in every partition of a collection
                // with a partition key, whatever partition the source named.
                let scope = if row_key(m.collection_id).is_some_and(|k| k.partition_key) {
                    Scope::All
                } else {
                    delete_scope(&m)
                };
                for pk in delete_keys(&m) {
                    let st = keys.entry((m.collection_id, pk)).or_default();
                    match &scope {
                        Scope::All => {
                            st.cleared_all = true;
                            st.cleared.clear();
                            st.newest.clear();
                        }
                        Scope::Partition(p) => {
                            st.newest.remove(p);
                            if !st.cleared_all {
                                st.cleared.insert(p.clone(), m.partition_id);
                            }
                        }
                    }
                }
            }
        }
    }
    Plan {
        deletes: delete_steps(&keys),
        upserts: upsert_batches(inserts, &keys, limits),
        rows_in,
    }
}

/// A delete with a partition id covers that partition; -1 (or no name)
/// covers them all.
fn delete_scope(m: &DeleteRequest) -> Scope {
    if m.partition_id > 0 && !m.partition_name.is_empty() {
        Scope::Partition(m.partition_name.clone())
    } else {
        Scope::All
    }
}

fn delete_keys(m: &DeleteRequest) -> Vec<Pk> {
    match PrimaryKeys::from_ids(m.primary_keys.as_ref(), &m.int64_primary_keys) {
        PrimaryKeys::Int(v) => v.into_iter().map(Pk::Int).collect(),
        PrimaryKeys::Str(v) => v.into_iter().map(Pk::Str).collect(),
    }
}

/// The primary key of each row of an insert, or None if the column is
/// missing or of another type.
fn insert_keys(m: &InsertRequest, pk_field: &str) -> Option<Vec<Pk>> {
    let col = m.fields_data.iter().find(|f| f.field_name == pk_field)?;
    match &col.field {
        Some(Field::Scalars(s)) => match &s.data {
            Some(Scalar::LongData(l)) => Some(l.data.iter().copied().map(Pk::Int).collect()),
            Some(Scalar::StringData(v)) => Some(v.data.iter().cloned().map(Pk::Str).collect()),
            _ => None,
        },
        _ => None,
    }
}

fn delete_steps(keys: &HashMap<(i64, Pk), KeyState>) -> Vec<DeleteStep> {
    let mut groups: BTreeMap<(i64, Scope, i64), Vec<&Pk>> = BTreeMap::new();
    for ((coll, pk), st) in keys {
        if st.cleared_all {
            groups.entry((*coll, Scope::All, 0)).or_default().push(pk);
        } else {
            for (p, id) in &st.cleared {
                groups
                    .entry((*coll, Scope::Partition(p.clone()), *id))
                    .or_default()
                    .push(pk);
            }
        }
    }
    groups
        .into_iter()
        .map(|((collection_id, scope, partition_id), mut pks)| {
            pks.sort();
            DeleteStep {
                collection_id,
                scope,
                partition_id,
                keys: to_primary_keys(&pks),
            }
        })
        .collect()
}

fn to_primary_keys(pks: &[&Pk]) -> PrimaryKeys {
    // One collection has one key type.
    if pks.iter().all(|p| matches!(p, Pk::Int(_))) {
        PrimaryKeys::Int(
            pks.iter()
                .filter_map(|p| match p {
                    Pk::Int(i) => Some(*i),
                    Pk::Str(_) => None,
                })
                .collect(),
        )
    } else {
        PrimaryKeys::Str(
            pks.iter()
                .filter_map(|p| match p {
                    Pk::Str(s) => Some(s.clone()),
                    Pk::Int(_) => None,
                })
                .collect(),
        )
    }
}

fn upsert_batches(
    inserts: Vec<(InsertRequest, Option<Keyed>)>,
    keys: &HashMap<(i64, Pk), KeyState>,
    limits: Limits,
) -> Vec<InsertBatch> {
    let mut done: Vec<InsertBatch> = Vec::new();
    let mut open: Vec<InsertBatch> = Vec::new();
    for (idx, (mut m, pks)) in inserts.into_iter().enumerate() {
        let total = m.num_rows;
        if total == 0 {
            continue;
        }
        let bytes = prost::Message::encoded_len(&m);
        if let Some((pks, slot)) = pks {
            let keep: Vec<bool> = pks
                .iter()
                .enumerate()
                .map(|(row, pk)| {
                    keys.get(&(m.collection_id, pk.clone()))
                        .and_then(|st| st.newest.get(&slot))
                        == Some(&(idx, row))
                })
                .collect();
            let kept = keep.iter().filter(|k| **k).count() as u64;
            if kept == 0 {
                continue;
            }
            if kept < total {
                let Some(fields) = filter_rows(&m.fields_data, &keep) else {
                    // A column this agent cannot slice: write every row.
                    push_batch(&mut open, &mut done, m, bytes, limits);
                    continue;
                };
                m.fields_data = fields;
                m.num_rows = kept;
            }
        }
        let bytes = usize::try_from(bytes as u128 * u128::from(m.num_rows) / u128::from(total))
            .unwrap_or(usize::MAX);
        push_batch(&mut open, &mut done, m, bytes, limits);
    }
    done.extend(open);
    done
}

fn push_batch(
    open: &mut Vec<InsertBatch>,
    done: &mut Vec<InsertBatch>,
    m: InsertRequest,
    bytes: usize,
    limits: Limits,
) {
    match open.iter_mut().position(|b| b.accepts(&m)) {
        Some(i) => {
            open[i].push(m, bytes);
            if open[i].rows >= limits.rows || open[i].bytes >= limits.bytes {
                done.push(open.swap_remove(i));
            }
        }
        None => {
            let b = InsertBatch::new(m, bytes);
            if b.rows >= limits.rows || b.bytes >= limits.bytes {
                done.push(b);
            } else {
                open.push(b);
            }
        }
    }
}

/// The columns with only the rows where `keep` is true; None if a column's
/// length does not divide into the rows (nothing is dropped then).
pub fn filter_rows(fields: &[FieldData], keep: &[bool]) -> Option<Vec<FieldData>> {
    fields.iter().map(|f| filter_field(f, keep)).collect()
}

fn filter_field(f: &FieldData, keep: &[bool]) -> Option<FieldData> {
    use crate::proto::schema::{
        BoolArray, BytesArray, DoubleArray, FloatArray, IntArray, JsonArray, LongArray,
        ScalarField, StringArray, VectorField,
    };
    let field = match &f.field {
        Some(Field::Scalars(s)) => Field::Scalars(ScalarField {
            data: Some(match &s.data {
                Some(Scalar::BoolData(a)) => Scalar::BoolData(BoolArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::IntData(a)) => Scalar::IntData(IntArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::LongData(a)) => Scalar::LongData(LongArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::FloatData(a)) => Scalar::FloatData(FloatArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::DoubleData(a)) => Scalar::DoubleData(DoubleArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::StringData(a)) => Scalar::StringData(StringArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::BytesData(a)) => Scalar::BytesData(BytesArray {
                    data: pick(&a.data, keep)?,
                }),
                Some(Scalar::ArrayData(a)) => {
                    let mut out = a.clone();
                    out.data = pick(&a.data, keep)?;
                    Scalar::ArrayData(out)
                }
                Some(Scalar::JsonData(a)) => Scalar::JsonData(JsonArray {
                    data: pick(&a.data, keep)?,
                }),
                None => return Some(f.clone()),
            }),
        }),
        Some(Field::Vectors(v)) => Field::Vectors(VectorField {
            dim: v.dim,
            data: Some(match &v.data {
                Some(Vector::FloatVector(a)) => Vector::FloatVector(FloatArray {
                    data: pick_strided(&a.data, keep)?,
                }),
                Some(Vector::BinaryVector(b)) => Vector::BinaryVector(pick_strided(b, keep)?),
                Some(Vector::Float16Vector(b)) => Vector::Float16Vector(pick_strided(b, keep)?),
                Some(Vector::Bfloat16Vector(b)) => Vector::Bfloat16Vector(pick_strided(b, keep)?),
                None => return Some(f.clone()),
            }),
        }),
        None => return Some(f.clone()),
    };
    Some(FieldData {
        r#type: f.r#type,
        field_name: f.field_name.clone(),
        field: Some(field),
        field_id: f.field_id,
        is_dynamic: f.is_dynamic,
    })
}

/// The kept elements of a one-value-per-row column.
fn pick<T: Clone>(data: &[T], keep: &[bool]) -> Option<Vec<T>> {
    (data.len() == keep.len()).then(|| {
        data.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(v, _)| v.clone())
            .collect()
    })
}

/// The kept rows of a column of fixed-width rows (vectors).
fn pick_strided<T: Clone>(data: &[T], keep: &[bool]) -> Option<Vec<T>> {
    if keep.is_empty() || data.len() % keep.len() != 0 {
        return None;
    }
    let stride = data.len() / keep.len();
    if stride == 0 {
        return Some(Vec::new());
    }
    Some(
        data.chunks(stride)
            .zip(keep)
            .filter(|(_, k)| **k)
            .flat_map(|(row, _)| row.iter().cloned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::{IDs, LongArray};

    fn delete(partition: &str, partition_id: i64, keys: &[i64]) -> Change {
        Change::Delete(Box::new(DeleteRequest {
            collection_id: 1,
            partition_name: partition.into(),
            partition_id,
            primary_keys: Some(IDs {
                id_field: Some(crate::proto::schema::i_ds::IdField::IntId(LongArray {
                    data: keys.to_vec(),
                })),
            }),
            num_rows: keys.len() as i64,
            ..Default::default()
        }))
    }

    /// Rows `(key, value)` inserted into `partition` of collection 1.
    fn insert(partition: &str, rows: &[(i64, i64)]) -> Change {
        let col = |name: &str, data: Vec<i64>| FieldData {
            field_name: name.into(),
            field: Some(Field::Scalars(crate::proto::schema::ScalarField {
                data: Some(Scalar::LongData(LongArray { data })),
            })),
            ..Default::default()
        };
        Change::Insert(Box::new(InsertRequest {
            collection_id: 1,
            partition_name: partition.into(),
            num_rows: rows.len() as u64,
            fields_data: vec![
                col("id", rows.iter().map(|r| r.0).collect()),
                col("v", rows.iter().map(|r| r.1).collect()),
            ],
            ..Default::default()
        }))
    }

    /// `(partition, key, value)` of every upserted row.
    fn upserted(plan: &Plan) -> Vec<(String, i64, i64)> {
        let longs = |b: &InsertBatch, name: &str| -> Vec<i64> {
            b.columns
                .iter()
                .find(|f| f.field_name == name)
                .and_then(|f| match &f.field {
                    Some(Field::Scalars(s)) => match &s.data {
                        Some(Scalar::LongData(l)) => Some(l.data.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .unwrap()
        };
        let mut out: Vec<(String, i64, i64)> = plan
            .upserts
            .iter()
            .flat_map(|b| {
                longs(b, "id")
                    .into_iter()
                    .zip(longs(b, "v"))
                    .map(|(k, v)| (b.partition.clone(), k, v))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    fn keyed(partition_key: bool) -> impl Fn(i64) -> Option<RowKey> {
        move |_| {
            Some(RowKey {
                pk_field: "id".into(),
                partition_key,
            })
        }
    }

    const LIMITS: Limits = Limits {
        rows: 1000,
        bytes: 1 << 20,
    };

    #[test]
    fn a_partition_key_collection_keeps_one_newest_row_per_key() {
        // Milvus 2.3.5 routed an upsert and a later insert of the same key
        // (same partition-key value) to two physical partitions; the target
        // routes rows itself, so only the newest may be written.
        let changes = || {
            vec![
                delete("_default_2", 12, &[7]),
                insert("_default_2", &[(7, 1), (8, 1)]),
                insert("_default_1", &[(7, 2)]),
            ]
        };
        let plan = reduce(changes(), keyed(true), LIMITS);
        assert_eq!(
            upserted(&plan),
            vec![("_default_1".into(), 7, 2), ("_default_2".into(), 8, 1)]
        );
        let steps: Vec<Scope> = plan.deletes.iter().map(|d| d.scope.clone()).collect();
        assert_eq!(
            steps,
            vec![Scope::All],
            "the target deletes in every partition"
        );
        // Without a partition key, each partition keeps its own newest row.
        let plan = reduce(changes(), keyed(false), LIMITS);
        assert_eq!(
            upserted(&plan),
            vec![
                ("_default_1".into(), 7, 2),
                ("_default_2".into(), 7, 1),
                ("_default_2".into(), 8, 1)
            ]
        );
    }

    #[test]
    fn a_partition_scoped_delete_in_a_partition_key_collection_removes_the_key() {
        let changes = vec![
            insert("_default_1", &[(7, 1)]),
            delete("_default_2", 12, &[7]),
        ];
        let plan = reduce(changes, keyed(true), LIMITS);
        assert!(upserted(&plan).is_empty());
        assert_eq!(plan.deletes.len(), 1);
        assert_eq!(plan.deletes[0].scope, Scope::All);
    }

    #[test]
    fn a_partition_delete_keeps_the_source_partition_id() {
        let limits = Limits {
            rows: 1000,
            bytes: 1 << 20,
        };
        let plan = reduce(
            vec![delete("pc", 77, &[1, 2]), delete("", -1, &[3])],
            |_| {
                Some(RowKey {
                    pk_field: "id".into(),
                    partition_key: false,
                })
            },
            limits,
        );
        let steps: Vec<(Scope, i64, usize)> = plan
            .deletes
            .iter()
            .map(|d| (d.scope.clone(), d.partition_id, d.keys.len()))
            .collect();
        assert_eq!(
            steps,
            vec![(Scope::All, 0, 1), (Scope::Partition("pc".into()), 77, 2)],
            "the id lets a write skip a partition dropped meanwhile"
        );
    }
}
