//! Rows: the key walk of one collection (or of each of its partitions, see
//! [`RowPlan`]) on both sides, the [`Sampler`] of rows whose values are
//! compared, and the comparison of those values.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use futures::{stream, StreamExt, TryStreamExt};
use serde_json::Value;

use super::{
    api::{scope_of, Api},
    both,
    keys::{duplicates, in_chunks, in_expr, Key, KeyCursor, KeyDiff, KEY_BATCH},
    partitions::{in_partition, partition_names, split_samples, RowPlan},
    unexpected, zip_maps, Verifier, VerifyError,
};
use crate::{
    proto::schema::{CollectionSchema, DataType, FieldData},
    source::inspect::column_values,
};

/// Most sampled rows fetched per `pk in [...]` query (a strongly
/// consistent query costs about 0.4 s on Milvus 2.3 whatever its size).
const SAMPLE_BATCH: usize = 1024;
/// The `limit` of each such query: Milvus's largest, room for 16 rows per
/// key of a batch (a key inserted several times without upsert).
const SAMPLE_LIMIT: usize = KEY_BATCH;
/// Longest `pk in [...]` expression, in bytes (long varchar keys).
const MAX_EXPR_BYTES: usize = 1 << 20;
/// Rows with differing values reported one by one per collection.
const ROW_DIFFS_SHOWN: usize = 10;
/// Most sampled keys with differing values whose rows on the source are
/// counted (to tell a key inserted twice on the source from a difference).
const DUPLICATE_CHECKS: usize = 1000;
/// `count(*)` queries of [`DUPLICATE_CHECKS`] sent at once.
const COUNTS_AT_ONCE: usize = 16;
/// Longest value shown in a difference, in characters.
const VALUE_SHOWN: usize = 80;
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Verifier<'_> {
    pub(super) async fn rows(
        &mut self,
        db: &str,
        c: &str,
        schema: &CollectionSchema,
        plan: RowPlan,
    ) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let Some(pk) = schema.fields.iter().find(|f| f.is_primary_key) else {
            self.note(&scope, "no primary key: rows not compared");
            return Ok(());
        };
        match DataType::try_from(pk.data_type) {
            Ok(DataType::Int64) => self.rows_typed::<i64>(db, c, &pk.name, plan).await,
            Ok(DataType::VarChar) => self.rows_typed::<String>(db, c, &pk.name, plan).await,
            _ => {
                self.note(&scope, "unsupported primary key type: rows not compared");
                Ok(())
            }
        }
    }

    /// Compares the whole collection in one walk, or each partition on its
    /// own (see [`RowPlan`]).
    async fn rows_typed<K: Key>(
        &mut self,
        db: &str,
        c: &str,
        pk: &str,
        plan: RowPlan,
    ) -> Result<(), VerifyError> {
        let (src, tgt) = (self.src, self.tgt);
        match plan {
            RowPlan::Whole => {
                let counts = tokio::try_join!(src.count(db, c, &[]), tgt.count(db, c, &[]))?;
                self.walk::<K>(db, c, pk, None, counts, self.opts.sample)
                    .await
            }
            RowPlan::PerPartition { compared, notes } => {
                let scope = scope_of(db, c);
                for n in notes {
                    self.note(&scope, n);
                }
                let mut counts = Vec::with_capacity(compared.len());
                for p in &compared {
                    let part = std::slice::from_ref(p);
                    counts.push(tokio::try_join!(
                        src.count(db, c, part),
                        tgt.count(db, c, part)
                    )?);
                }
                let rows: Vec<u64> = counts.iter().map(|(s, t)| *s.max(t)).collect();
                let samples = split_samples(self.opts.sample, &rows);
                for ((p, counts), sample) in compared.iter().zip(counts).zip(samples) {
                    if counts == (0, 0) {
                        continue;
                    }
                    self.walk::<K>(db, c, pk, Some(p), counts, sample).await?;
                }
                Ok(())
            }
        }
    }

    /// Walks both key sets of `part` (None: the whole collection) in order,
    /// reports missing and extra keys and duplicates, then compares the
    /// values of `sample` rows. `counts` are `count(*)` on each side.
    async fn walk<K: Key>(
        &mut self,
        db: &str,
        c: &str,
        pk: &str,
        part: Option<&String>,
        (s_count, t_count): (u64, u64),
        sample: usize,
    ) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let label = |what: String| in_partition(part, what);
        let progress_scope = match part {
            Some(p) => format!("{scope} partition {p}"),
            None => scope.clone(),
        };
        let (src, tgt) = (self.src, self.tgt);
        let names = partition_names(part);
        let mut s_cur = KeyCursor::<K>::new(src, db, c, names, pk, s_count);
        let mut t_cur = KeyCursor::<K>::new(tgt, db, c, names, pk, t_count);
        let mut s_buf = VecDeque::new();
        let mut t_buf = VecDeque::new();
        let mut diff = KeyDiff::default();
        let mut sampler = Sampler::new(s_count.max(t_count), sample);
        loop {
            let need_s = s_buf.is_empty() && !s_cur.done;
            let need_t = t_buf.is_empty() && !t_cur.done;
            let (s_new, t_new) = tokio::try_join!(s_cur.next_if(need_s), t_cur.next_if(need_t))?;
            s_buf.extend(s_new);
            t_buf.extend(t_new);
            let common = diff.merge(&mut s_buf, &mut t_buf, s_cur.done, t_cur.done);
            sampler.offer(common);
            self.progress
                .tick(&progress_scope, diff.source_keys(), s_count.max(t_count));
            if s_cur.done && t_cur.done && s_buf.is_empty() && t_buf.is_empty() {
                break;
            }
        }
        for cur in [&s_cur, &t_cur] {
            if cur.fell_back {
                let side = cur.api.side;
                self.note(
                    &scope,
                    label(format!(
                        "{side} returned keys out of order; batches were re-read by range"
                    )),
                );
            }
        }
        for (cur, count, keys) in [
            (&s_cur, s_count, diff.source_keys()),
            (&t_cur, t_count, diff.target_keys()),
        ] {
            if count != keys && cur.ended_early().await? {
                return Err(unexpected(
                    cur.api.side,
                    &scope,
                    label(format!("query returned fewer keys than count(*) {count} ({keys}) before the last key")),
                ));
            }
        }
        self.report.rows_compared += diff.union();
        for what in diff.describe() {
            self.differ(&scope, label(what));
        }
        let (differences, notes) =
            duplicates(s_count, diff.source_keys(), t_count, diff.target_keys());
        for what in differences {
            self.differ(&scope, label(what));
        }
        for what in notes {
            self.note(&scope, label(what));
        }
        self.compare_samples(db, c, pk, part, sampler.keys).await
    }

    async fn compare_samples<K: Key>(
        &mut self,
        db: &str,
        c: &str,
        pk: &str,
        part: Option<&String>,
        keys: Vec<K>,
    ) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let names = partition_names(part);
        let mut differing = Vec::new();
        for chunk in in_chunks(&keys, SAMPLE_BATCH, MAX_EXPR_BYTES) {
            let (s, t) = tokio::try_join!(
                rows_of(self.src, db, c, names, pk, chunk),
                rows_of(self.tgt, db, c, names, pk, chunk),
            )?;
            differing.extend(row_diffs(chunk, &s, &t));
        }
        let source_rows = self
            .source_rows_of_differing(db, c, pk, names, &differing)
            .await?;
        let (differing, notes) = split_source_duplicates(differing, &source_rows);
        for what in notes {
            self.note(&scope, in_partition(part, what));
        }
        let total = differing.len();
        for what in differing.into_iter().take(ROW_DIFFS_SHOWN) {
            self.differ(&scope, in_partition(part, what));
        }
        if total > ROW_DIFFS_SHOWN {
            self.differ(
                &scope,
                in_partition(
                    part,
                    format!(
                        "values differ in {total} of {} sampled rows ({} more not shown)",
                        keys.len(),
                        total - ROW_DIFFS_SHOWN
                    ),
                ),
            );
        }
        Ok(())
    }
}

impl Verifier<'_> {
    /// `count(*)` on the source of each key of `diffs` whose values differ
    /// (at most [`DUPLICATE_CHECKS`] keys), in `names` (empty: all
    /// partitions); one query for all of them when none is duplicated.
    async fn source_rows_of_differing<K: Key>(
        &self,
        db: &str,
        c: &str,
        pk: &str,
        names: &[String],
        diffs: &[RowDiff<K>],
    ) -> Result<BTreeMap<K, u64>, VerifyError> {
        let keys: Vec<K> = diffs
            .iter()
            .filter(|d| d.values)
            .take(DUPLICATE_CHECKS)
            .map(|d| d.key.clone())
            .collect();
        let mut out = BTreeMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let all = self
            .src
            .count_where(db, c, names, &in_expr(pk, &keys))
            .await?;
        if all == u64::try_from(keys.len()).unwrap_or(u64::MAX) {
            return Ok(keys.into_iter().map(|k| (k, 1)).collect());
        }
        // One count per key, several at once: each waits for the source's
        // strong consistency more than it works.
        let src = self.src;
        let counts: Vec<(K, u64)> = stream::iter(keys)
            .map(|k| async move {
                let n = src
                    .count_where(db, c, names, &in_expr(pk, std::slice::from_ref(&k)))
                    .await?;
                Ok::<_, VerifyError>((k, n))
            })
            .buffered(COUNTS_AT_ONCE)
            .try_collect()
            .await?;
        out.extend(counts);
        Ok(out)
    }
}

/// The rows of `keys` on one side, by key. Every read carries a limit
/// ([`Api::query`]), and Milvus 2.3.5 counts a duplicated key's extra rows
/// towards it before it drops them, so an answer can lack keys that exist:
/// the keys an answer lacks are read again, as long as a read finds some.
async fn rows_of<K: Key>(
    api: Api<'_>,
    db: &str,
    c: &str,
    names: &[String],
    pk: &str,
    keys: &[K],
) -> Result<BTreeMap<K, BTreeMap<String, Value>>, VerifyError> {
    let scope = scope_of(db, c);
    let mut out = BTreeMap::new();
    let mut wanted = keys.to_vec();
    while !wanted.is_empty() {
        let cols = api
            .query(db, c, names, &in_expr(pk, &wanted), &["*"], SAMPLE_LIMIT)
            .await?;
        let rows = rows_by_key::<K>(&cols, pk).map_err(|m| unexpected(api.side, &scope, m))?;
        let before = wanted.len();
        wanted.retain(|k| !rows.contains_key(k));
        out.extend(rows);
        if wanted.len() == before {
            break;
        }
    }
    Ok(out)
}

/// Picks about `wanted` keys spread evenly over a stream of about
/// `expected` keys.
pub(super) struct Sampler<K> {
    stride: u64,
    seen: u64,
    wanted: usize,
    keys: Vec<K>,
}

impl<K> Sampler<K> {
    fn new(expected: u64, wanted: usize) -> Self {
        let w = u64::try_from(wanted).unwrap_or(u64::MAX).max(1);
        Self {
            stride: (expected / w).max(1),
            seen: 0,
            wanted,
            keys: Vec::new(),
        }
    }

    fn offer(&mut self, keys: Vec<K>) {
        for k in keys {
            if self.keys.len() < self.wanted && self.seen % self.stride == 0 {
                self.keys.push(k);
            }
            self.seen += 1;
        }
    }
}

/// A query result as `key -> column -> value`. The dynamic field's keys
/// become columns of their own, as pymilvus shows them.
pub(super) fn rows_by_key<K: Key>(
    cols: &[FieldData],
    pk: &str,
) -> Result<BTreeMap<K, BTreeMap<String, Value>>, String> {
    let Some(pk_col) = cols.iter().find(|f| f.field_name == pk) else {
        return if cols.is_empty() {
            Ok(BTreeMap::new())
        } else {
            Err(format!("query result has no column {pk}"))
        };
    };
    let keys = K::column(pk_col).ok_or_else(|| format!("column {pk} has an unexpected type"))?;
    let mut rows: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(); keys.len()];
    for col in cols {
        let Value::Array(values) = column_values(col) else {
            continue;
        };
        if values.len() != keys.len() {
            return Err(format!(
                "column {} has {} values for {} keys",
                col.field_name,
                values.len(),
                keys.len()
            ));
        }
        for (row, v) in rows.iter_mut().zip(values) {
            add_cell(row, col, v);
        }
    }
    Ok(keys.into_iter().zip(rows).collect())
}

pub(super) fn add_cell(row: &mut BTreeMap<String, Value>, col: &FieldData, v: Value) {
    match v {
        Value::Object(m) if col.is_dynamic => {
            for (k, v) in m {
                row.insert(format!("{}[{k}]", col.field_name), v);
            }
        }
        v => {
            row.insert(col.field_name.clone(), v);
        }
    }
}

/// The lines of [`row_diffs`] alone (what the tests compare).
#[cfg(test)]
fn compare_rows<K: Key>(
    keys: &[K],
    s: &BTreeMap<K, BTreeMap<String, Value>>,
    t: &BTreeMap<K, BTreeMap<String, Value>>,
) -> Vec<String> {
    row_diffs(keys, s, t).into_iter().map(|d| d.what).collect()
}

/// A sampled key whose row differs between the two sides.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RowDiff<K> {
    /// The key.
    pub(super) key: K,
    /// Both sides have the key, with other values (not one side missing it).
    pub(super) values: bool,
    /// The line reported.
    pub(super) what: String,
}

/// One entry per sampled key whose row differs: the key, whether both
/// sides have it (with other values), and the line reported.
fn row_diffs<K: Key>(
    keys: &[K],
    s: &BTreeMap<K, BTreeMap<String, Value>>,
    t: &BTreeMap<K, BTreeMap<String, Value>>,
) -> Vec<RowDiff<K>> {
    let mut out = Vec::new();
    for k in keys {
        let (sr, tr) = match (s.get(k), t.get(k)) {
            (Some(a), Some(b)) => (a, b),
            // Deleted or written during the run; keys were compared already.
            (a, b) => {
                out.push(RowDiff {
                    key: k.clone(),
                    values: false,
                    what: both(
                        &format!("row {}", k.show()),
                        if a.is_some() { "present" } else { "missing" },
                        if b.is_some() { "present" } else { "missing" },
                    ),
                });
                continue;
            }
        };
        let fields: Vec<String> = zip_maps(sr, tr)
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(f, a, b)| both(f, value_shown(a), value_shown(b)))
            .collect();
        if !fields.is_empty() {
            out.push(RowDiff {
                key: k.clone(),
                values: true,
                what: format!("row {}: {}", k.show(), fields.join("; ")),
            });
        }
    }
    out
}

/// Splits differing rows into differences and notes: a key the source
/// holds more than once (`source_rows[key]`, its `count(*)`; inserted again
/// without upsert) has no single value to compare, as a query returns any
/// of its rows while the target holds the latest (docs/replication.md,
/// "Duplicate keys"). Its values are not compared (a note); a key missing
/// on one side stays a difference. Returns (differences, notes).
pub(super) fn split_source_duplicates<K: Key>(
    diffs: Vec<RowDiff<K>>,
    source_rows: &BTreeMap<K, u64>,
) -> (Vec<String>, Vec<String>) {
    let mut differences = Vec::new();
    let mut notes = Vec::new();
    for d in diffs {
        match source_rows.get(&d.key) {
            Some(&n) if d.values && n > 1 => notes.push(format!(
                "row {}: the source holds {n} rows of this key (inserted again without \
                 upsert) and a query returns any of them; the target holds the latest: \
                 values not compared",
                d.key.show()
            )),
            _ => differences.push(d.what),
        }
    }
    (differences, notes)
}

pub(super) fn value_shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), short)
}

/// `v` as JSON, cut to [`VALUE_SHOWN`] characters.
pub(super) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= VALUE_SHOWN {
        return s;
    }
    let mut cut: String = s.chars().take(VALUE_SHOWN).collect();
    cut.push('…');
    cut
}

/// A progress line on stderr, at most once per [`PROGRESS_EVERY`].
pub(super) struct Progress {
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            last: None,
        }
    }

    fn tick(&mut self, scope: &str, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => self.last = Some(now),
            Some(t) if now.duration_since(t) >= PROGRESS_EVERY => {
                self.last = Some(now);
                eprintln!("verify: {scope} {done}/{total} keys");
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::{
        field_data::Field, scalar_field::Data as Scalar, ScalarField, StringArray,
    };
    use serde_json::json;

    #[test]
    fn sampler_spreads_evenly() {
        let mut s = Sampler::new(1000, 10);
        s.offer((0..600).collect());
        s.offer((600..1000).collect());
        assert_eq!(s.keys, (0..10).map(|i| i * 100).collect::<Vec<i64>>());
        let mut s = Sampler::new(5, 100);
        s.offer(vec![1, 2, 3, 4, 5]);
        assert_eq!(s.keys.len(), 5);
        let mut s = Sampler::new(5, 0);
        s.offer(vec![1, 2]);
        assert!(s.keys.is_empty());
    }

    fn strings(name: &str, v: &[&str], dynamic: bool) -> FieldData {
        FieldData {
            field_name: name.into(),
            is_dynamic: dynamic,
            field: Some(Field::Scalars(ScalarField {
                data: Some(Scalar::StringData(StringArray {
                    data: v.iter().map(|s| s.to_string()).collect(),
                })),
            })),
            ..Default::default()
        }
    }

    fn json_col(name: &str, v: &[&str]) -> FieldData {
        FieldData {
            field_name: name.into(),
            is_dynamic: true,
            field: Some(Field::Scalars(ScalarField {
                data: Some(Scalar::JsonData(crate::proto::schema::JsonArray {
                    data: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
                })),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn rows_compare_per_key_regardless_of_order() {
        let s = rows_by_key::<String>(
            &[
                strings("pk", &["a", "b"], false),
                strings("s", &["x", "y"], false),
                json_col("$meta", &[r#"{"k":1,"j":2}"#, r#"{"k":2}"#]),
            ],
            "pk",
        )
        .unwrap_or_default();
        let t = rows_by_key::<String>(
            &[
                json_col("$meta", &[r#"{"k":2}"#, r#"{"j":2,"k":1}"#]),
                strings("s", &["y", "x"], false),
                strings("pk", &["b", "a"], false),
            ],
            "pk",
        )
        .unwrap_or_default();
        assert_eq!(s.len(), 2);
        let keys = ["a".to_string(), "b".to_string()];
        assert!(compare_rows(&keys, &s, &t).is_empty());
        let t2 = rows_by_key::<String>(
            &[
                strings("pk", &["a"], false),
                strings("s", &["z"], false),
                json_col("$meta", &[r#"{"k":1}"#]),
            ],
            "pk",
        )
        .unwrap_or_default();
        assert_eq!(
            compare_rows(&keys, &s, &t2),
            vec![
                r#"row "a": $meta[j] (source 2, target absent); s (source "x", target "z")"#
                    .to_string(),
                r#"row "b" (source present, target missing)"#.to_string(),
            ]
        );
    }

    #[test]
    fn a_key_the_source_holds_twice_is_a_note_not_a_difference() {
        let s = rows_by_key::<String>(
            &[
                strings("pk", &["a", "b", "c"], false),
                strings("s", &["x", "y", "z"], false),
            ],
            "pk",
        )
        .unwrap_or_default();
        let t = rows_by_key::<String>(
            &[
                strings("pk", &["a", "b"], false),
                strings("s", &["new", "other"], false),
            ],
            "pk",
        )
        .unwrap_or_default();
        let keys = ["a".to_string(), "b".to_string(), "c".to_string()];
        let diffs = row_diffs(&keys, &s, &t);
        assert_eq!(diffs.iter().filter(|d| d.values).count(), 2);
        // "a" inserted twice on the source (its query showed the older row),
        // "b" once: only "b" and the missing "c" are differences.
        let counts: BTreeMap<String, u64> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        let (differences, notes) = split_source_duplicates(diffs, &counts);
        assert_eq!(
            differences,
            vec![
                r#"row "b": s (source "y", target "other")"#.to_string(),
                r#"row "c" (source present, target missing)"#.to_string(),
            ]
        );
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with(r#"row "a": the source holds 2 rows"#),
            "{notes:?}"
        );
    }

    #[test]
    fn rows_by_key_rejects_ragged_columns() {
        let r = rows_by_key::<String>(
            &[
                strings("pk", &["a", "b"], false),
                strings("s", &["x"], false),
            ],
            "pk",
        );
        assert!(r.is_err());
    }

    #[test]
    fn short_values_are_cut() {
        let long = json!((0..100).collect::<Vec<_>>());
        let s = short(&long);
        assert_eq!(s.chars().count(), VALUE_SHOWN + 1);
        assert!(s.ends_with('…'));
        assert_eq!(short(&json!("x")), "\"x\"");
    }
}
