//! Upserts in the stream. Milvus 2.3.5 writes an upsert to a channel as an
//! insert of the new rows *followed by* a delete of the same keys with the
//! same timestamp; on the source the delete only removes older rows
//! (timestamp < its own). On the target every write gets a new, later
//! timestamp, so applying that delete as-is would remove the rows just
//! upserted. [`RecentInserts`] remembers the keys inserted since the channel's
//! last delete, so a delete skips keys re-inserted at or after its timestamp.

use std::collections::{HashSet, VecDeque};

use crate::{
    proto::{
        msg::InsertRequest,
        schema::{field_data::Field, scalar_field::Data as Scalar, FieldData},
    },
    target::writer::PrimaryKeys,
};

/// Most insert messages and rows remembered; older inserts are forgotten
/// first. An upsert's inserts immediately precede its deletes on a channel,
/// so a short window suffices; it also bounds what a restart replays (the
/// checkpoint stays before the oldest remembered insert).
const MAX_MESSAGES: usize = 16;
const MAX_ROWS: usize = 200_000;

struct RecentInsert {
    sequence: u64,
    collection_id: i64,
    /// Int64 and VarChar columns (primary-key candidates).
    columns: Vec<FieldData>,
    /// Row timestamps.
    timestamps: Vec<u64>,
    rows: usize,
}

/// Keys inserted on one channel since its last delete.
#[derive(Default)]
pub struct RecentInserts {
    msgs: VecDeque<RecentInsert>,
    rows: usize,
}

impl RecentInserts {
    /// Remembers the keys of `msg`, read at `sequence`.
    pub fn record(&mut self, sequence: u64, msg: &InsertRequest) {
        let columns: Vec<FieldData> = msg
            .fields_data
            .iter()
            .filter(|f| {
                matches!(
                    &f.field,
                    Some(Field::Scalars(s))
                        if matches!(s.data, Some(Scalar::LongData(_)) | Some(Scalar::StringData(_)))
                )
            })
            .cloned()
            .collect();
        let rows = usize::try_from(msg.num_rows).unwrap_or(usize::MAX);
        self.rows += rows;
        self.msgs.push_back(RecentInsert {
            sequence,
            collection_id: msg.collection_id,
            columns,
            timestamps: msg.timestamps.clone(),
            rows,
        });
        while (self.rows > MAX_ROWS || self.msgs.len() > MAX_MESSAGES) && self.msgs.len() > 1 {
            if let Some(old) = self.msgs.pop_front() {
                self.rows -= old.rows;
            }
        }
    }

    /// Sequence of the oldest remembered insert.
    pub fn oldest_sequence(&self) -> Option<u64> {
        self.msgs.front().map(|m| m.sequence)
    }

    /// Forgets the inserts into `collection_id` (after a delete into it was
    /// applied).
    pub fn clear(&mut self, collection_id: i64) {
        self.msgs.retain(|m| m.collection_id != collection_id);
        self.rows = self.msgs.iter().map(|m| m.rows).sum();
    }

    /// `keys` without those re-inserted into `collection_id` at or after
    /// their delete timestamp (`delete_ts[i]`, or `default_ts`).
    pub fn filter(
        &self,
        collection_id: i64,
        pk_field: &str,
        keys: PrimaryKeys,
        delete_ts: &[u64],
        default_ts: u64,
    ) -> PrimaryKeys {
        let ts_of = |i: usize| delete_ts.get(i).copied().unwrap_or(default_ts);
        match keys {
            PrimaryKeys::Int(v) => {
                let newer: HashSet<i64> = self.newer_int(collection_id, pk_field, &v, &ts_of);
                PrimaryKeys::Int(v.into_iter().filter(|k| !newer.contains(k)).collect())
            }
            PrimaryKeys::Str(v) => {
                let newer: HashSet<String> = self.newer_str(collection_id, pk_field, &v, &ts_of);
                PrimaryKeys::Str(v.into_iter().filter(|k| !newer.contains(k)).collect())
            }
        }
    }

    fn column<'a>(m: &'a RecentInsert, pk_field: &str) -> Option<&'a Scalar> {
        m.columns
            .iter()
            .find(|c| c.field_name == pk_field)
            .and_then(|c| match &c.field {
                Some(Field::Scalars(s)) => s.data.as_ref(),
                _ => None,
            })
    }

    fn newer_int(
        &self,
        collection_id: i64,
        pk_field: &str,
        keys: &[i64],
        ts_of: &dyn Fn(usize) -> u64,
    ) -> HashSet<i64> {
        let mut inserted: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
        for m in self
            .msgs
            .iter()
            .filter(|m| m.collection_id == collection_id)
        {
            if let Some(Scalar::LongData(l)) = Self::column(m, pk_field) {
                for (i, k) in l.data.iter().enumerate() {
                    let ts = m.timestamps.get(i).copied().unwrap_or(u64::MAX);
                    let e = inserted.entry(*k).or_insert(ts);
                    *e = (*e).max(ts);
                }
            }
        }
        keys.iter()
            .enumerate()
            .filter(|(i, k)| inserted.get(k).is_some_and(|ts| *ts >= ts_of(*i)))
            .map(|(_, k)| *k)
            .collect()
    }

    fn newer_str(
        &self,
        collection_id: i64,
        pk_field: &str,
        keys: &[String],
        ts_of: &dyn Fn(usize) -> u64,
    ) -> HashSet<String> {
        let mut inserted: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for m in self
            .msgs
            .iter()
            .filter(|m| m.collection_id == collection_id)
        {
            if let Some(Scalar::StringData(s)) = Self::column(m, pk_field) {
                for (i, k) in s.data.iter().enumerate() {
                    let ts = m.timestamps.get(i).copied().unwrap_or(u64::MAX);
                    let e = inserted.entry(k.as_str()).or_insert(ts);
                    *e = (*e).max(ts);
                }
            }
        }
        keys.iter()
            .enumerate()
            .filter(|(i, k)| inserted.get(k.as_str()).is_some_and(|ts| *ts >= ts_of(*i)))
            .map(|(_, k)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::{LongArray, ScalarField, StringArray};

    fn ins(coll: i64, pks: &[i64], ts: u64) -> InsertRequest {
        InsertRequest {
            collection_id: coll,
            num_rows: pks.len() as u64,
            timestamps: vec![ts; pks.len()],
            fields_data: vec![FieldData {
                field_name: "id".into(),
                field: Some(Field::Scalars(ScalarField {
                    data: Some(Scalar::LongData(LongArray { data: pks.to_vec() })),
                })),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn upsert_delete_spares_the_new_rows() {
        let mut r = RecentInserts::default();
        r.record(1, &ins(1, &[5, 6], 100));
        // The upsert's delete: same keys, same timestamp.
        let left = r.filter(
            1,
            "id",
            PrimaryKeys::Int(vec![5, 6, 7]),
            &[100, 100, 100],
            100,
        );
        assert_eq!(left, PrimaryKeys::Int(vec![7]));
    }

    #[test]
    fn a_later_delete_still_deletes() {
        let mut r = RecentInserts::default();
        r.record(1, &ins(1, &[5], 100));
        let left = r.filter(1, "id", PrimaryKeys::Int(vec![5]), &[150], 150);
        assert_eq!(left, PrimaryKeys::Int(vec![5]));
        // Other collections are unaffected.
        let left = r.filter(2, "id", PrimaryKeys::Int(vec![5]), &[100], 100);
        assert_eq!(left, PrimaryKeys::Int(vec![5]));
    }

    #[test]
    fn varchar_keys() {
        let mut r = RecentInserts::default();
        let mut m = ins(1, &[], 9);
        m.num_rows = 2;
        m.timestamps = vec![9, 9];
        m.fields_data = vec![FieldData {
            field_name: "k".into(),
            field: Some(Field::Scalars(ScalarField {
                data: Some(Scalar::StringData(StringArray {
                    data: vec!["a".into(), "b".into()],
                })),
            })),
            ..Default::default()
        }];
        r.record(1, &m);
        let left = r.filter(
            1,
            "k",
            PrimaryKeys::Str(vec!["a".into(), "c".into()]),
            &[9, 9],
            9,
        );
        assert_eq!(left, PrimaryKeys::Str(vec!["c".into()]));
        r.clear(1);
        let left = r.filter(1, "k", PrimaryKeys::Str(vec!["a".into()]), &[9], 9);
        assert_eq!(left, PrimaryKeys::Str(vec!["a".into()]));
    }
}
