//! Primary keys: the [`Key`] trait, expressions over keys, the
//! [`KeyCursor`] that walks one side's keys in order and the [`KeyDiff`]
//! that merges two such walks.

use std::{
    collections::VecDeque,
    fmt::{self, Write as _},
    future::Future,
};

use super::{
    api::{scope_of, Api},
    unexpected, VerifyError,
};
use crate::proto::schema::{field_data::Field, scalar_field::Data as Scalar, FieldData};

/// Largest `limit` Milvus 2.3 accepts in a query (`offset + limit <= 16384`);
/// every read of keys or rows carries it (see [`Api::query`]).
pub(super) const KEY_BATCH: usize = 16_384;
/// Example keys shown for missing or extra primary keys.
pub(super) const EXAMPLES: usize = 10;

/// A primary key type: `i64` or `String`, ordered as Milvus orders them
/// (numbers; strings byte-wise).
pub(super) trait Key: Ord + Clone + Default + Send + Sync + fmt::Debug + 'static {
    /// The key as an expression literal.
    fn literal(&self) -> String;
    /// The keys in a query result column.
    fn column(f: &FieldData) -> Option<Vec<Self>>;
    /// `pk > self`.
    fn gt_expr(&self, pk: &str) -> String {
        format!("{pk} > {}", self.literal())
    }
    /// `pk < self`; None when no key is smaller.
    fn lt_expr(&self, pk: &str) -> Option<String> {
        Some(format!("{pk} < {}", self.literal()))
    }
    /// The key as shown in reports.
    fn show(&self) -> String {
        self.literal()
    }
}

impl Key for i64 {
    fn literal(&self) -> String {
        self.to_string()
    }
    fn column(f: &FieldData) -> Option<Vec<Self>> {
        match &f.field {
            Some(Field::Scalars(s)) => match &s.data {
                Some(Scalar::LongData(d)) => Some(d.data.clone()),
                _ => None,
            },
            _ => None,
        }
    }
    fn gt_expr(&self, pk: &str) -> String {
        // `-9223372036854775808` does not parse (the literal overflows before
        // negation), so `> MIN` is written as `>= MIN + 1`.
        match self.checked_add(1) {
            Some(next) if *self == i64::MIN => format!("{pk} >= {next}"),
            _ => format!("{pk} > {self}"),
        }
    }
    fn lt_expr(&self, pk: &str) -> Option<String> {
        // `pk < MIN` selects nothing (and its literal would not parse).
        (*self != i64::MIN).then(|| format!("{pk} < {self}"))
    }
}

impl Key for String {
    fn literal(&self) -> String {
        quote_str(self)
    }
    fn column(f: &FieldData) -> Option<Vec<Self>> {
        match &f.field {
            Some(Field::Scalars(s)) => match &s.data {
                Some(Scalar::StringData(d)) => Some(d.data.clone()),
                _ => None,
            },
            _ => None,
        }
    }
    fn lt_expr(&self, pk: &str) -> Option<String> {
        (!self.is_empty()).then(|| format!("{pk} < {}", self.literal()))
    }
}

/// A Milvus expression string literal: double quotes, with `"` and `\`
/// escaped and control characters as escapes (Milvus unquotes with Go's
/// rules; other characters, including non-ASCII, pass as they are).
pub(super) fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Control characters are all below U+10000.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `pk in [k1, k2, ...]`.
pub(super) fn in_expr<K: Key>(pk: &str, keys: &[K]) -> String {
    let list: Vec<String> = keys.iter().map(Key::literal).collect();
    format!("{pk} in [{}]", list.join(", "))
}

/// `keys` cut into runs of at most `max_keys` keys whose literals take at
/// most about `max_bytes` (a single longer key still gets a run of its own).
pub(super) fn in_chunks<K: Key>(keys: &[K], max_keys: usize, max_bytes: usize) -> Vec<&[K]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, k) in keys.iter().enumerate() {
        let len = k.literal().len() + 2;
        if i > start && (i - start >= max_keys || bytes + len > max_bytes) {
            out.push(&keys[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < keys.len() {
        out.push(&keys[start..]);
    }
    out
}

/// The expression selecting keys after `last` (everything when None).
pub(super) fn after_expr<K: Key>(pk: &str, last: Option<&K>) -> String {
    last.map(|k| k.gt_expr(pk)).unwrap_or_default()
}

/// The upper end of a [`Window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upper<K> {
    /// `pk <= k`.
    Through(K),
    /// `pk < k`.
    Below(K),
}

/// The keys above `lo` (all when None) up to `hi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Window<K> {
    pub(super) lo: Option<K>,
    pub(super) hi: Upper<K>,
}

impl<K: Key> Window<K> {
    /// The keys in `(last, max]`.
    pub(super) fn through(last: Option<K>, max: K) -> Self {
        Self {
            lo: last,
            hi: Upper::Through(max),
        }
    }

    /// The expression selecting the window; None when it holds no key.
    pub(super) fn expr(&self, pk: &str) -> Option<String> {
        let upper = match &self.hi {
            Upper::Through(k) => format!("{pk} <= {}", k.literal()),
            Upper::Below(k) => k.lt_expr(pk)?,
        };
        Some(match &self.lo {
            Some(k) => format!("{} && {upper}", k.gt_expr(pk)),
            None => upper,
        })
    }

    /// Whether `k` lies in the window.
    #[cfg(test)]
    fn contains(&self, k: &K) -> bool {
        self.lo.as_ref().is_none_or(|lo| k > lo)
            && match &self.hi {
                Upper::Through(hi) => k <= hi,
                Upper::Below(hi) => k < hi,
            }
    }

    /// The window without `mid` (one of its keys): the keys below `mid`
    /// and those above it. Both hold fewer rows than the window, whatever
    /// the keys are, since neither holds `mid`'s.
    fn split(self, mid: &K) -> (Self, Self) {
        let below = Self {
            lo: self.lo.clone(),
            hi: Upper::Below(mid.clone()),
        };
        (below, self.above(mid))
    }

    /// The part of the window above `k` (one of its keys).
    fn above(self, k: &K) -> Self {
        Self {
            lo: Some(k.clone()),
            hi: self.hi,
        }
    }

    /// Whether the bounds leave no key (`lo` at or above the upper end).
    fn is_empty(&self) -> bool {
        match (&self.lo, &self.hi) {
            (Some(lo), Upper::Through(hi) | Upper::Below(hi)) => lo >= hi,
            (None, _) => false,
        }
    }
}

/// Every key of `window`, read with `read(window)` (at most `limit` rows
/// per read). A read that comes back full may have been cut, so its window
/// is split at the median of the keys it returned and each part is read
/// again, until no read is full. A read that is not full can still lack
/// the window's largest keys (Milvus 2.3.5 counts a duplicated key's extra
/// rows towards the limit), so the window above its largest key is read
/// next, until a read finds nothing. Keys read are kept (they exist).
/// Returns the keys ascending, without repeats.
pub(super) async fn read_window<K, F, Fut>(
    window: Window<K>,
    limit: usize,
    mut read: F,
) -> Result<Vec<K>, VerifyError>
where
    K: Key,
    F: FnMut(Window<K>) -> Fut,
    Fut: Future<Output = Result<Vec<K>, VerifyError>>,
{
    let mut out = Vec::new();
    let mut todo = vec![window];
    while let Some(w) = todo.pop() {
        if w.is_empty() {
            continue;
        }
        let mut keys = read(w.clone()).await?;
        let full = keys.len() >= limit;
        keys.sort();
        keys.dedup();
        if full {
            if let Some(mid) = keys.get(keys.len() / 2) {
                let (below, above) = w.split(mid);
                todo.push(above);
                todo.push(below);
            }
        } else if let Some(max) = keys.last() {
            todo.push(w.above(max));
        }
        out.extend(keys);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub(super) fn strictly_increasing<K: Ord>(keys: &[K]) -> bool {
    keys.windows(2).all(|w| w[0] < w[1])
}

/// Reads one side's primary keys in ascending order, a batch at a time,
/// with `pk > last` and the largest `limit` Milvus allows.
pub(super) struct KeyCursor<'a, K> {
    pub(super) api: Api<'a>,
    db: &'a str,
    collection: &'a str,
    /// The partitions read (empty: the whole collection).
    partitions: &'a [String],
    pk: &'a str,
    /// `count(*)` of the side before the walk: with as many keys read, a
    /// short batch ends the walk without one more read.
    rows: u64,
    /// Keys returned so far.
    seen: u64,
    last: Option<K>,
    /// No keys after `last`.
    pub(super) done: bool,
    /// A batch came back unordered and was re-read by range.
    pub(super) fell_back: bool,
}

impl<'a, K: Key> KeyCursor<'a, K> {
    pub(super) fn new(
        api: Api<'a>,
        db: &'a str,
        collection: &'a str,
        partitions: &'a [String],
        pk: &'a str,
        rows: u64,
    ) -> Self {
        Self {
            api,
            db,
            collection,
            partitions,
            pk,
            rows,
            seen: 0,
            last: None,
            done: false,
            fell_back: false,
        }
    }

    /// The next batch when `wanted`, else nothing.
    pub(super) async fn next_if(&mut self, wanted: bool) -> Result<Vec<K>, VerifyError> {
        if wanted {
            self.next().await
        } else {
            Ok(Vec::new())
        }
    }

    /// The next batch of keys, ascending. Milvus 2.3 answers a query with a
    /// limit with the smallest matching keys in ascending order, but, when
    /// keys are duplicated, with fewer than `limit` keys even if more exist
    /// (it counts a key's extra rows towards the limit, then drops them):
    /// so a short batch ends the walk only once as many keys as `count(*)`
    /// rows were read, else an empty one does. If a batch is not ascending,
    /// that cannot be trusted, and every key up to the batch's largest one
    /// is read again by range ([`read_window`]).
    async fn next(&mut self) -> Result<Vec<K>, VerifyError> {
        let expr = after_expr(self.pk, self.last.as_ref());
        let mut keys = self.fetch(&expr, KEY_BATCH).await?;
        let seen = self
            .seen
            .saturating_add(u64::try_from(keys.len()).unwrap_or(u64::MAX));
        if keys.is_empty() || (keys.len() < KEY_BATCH && seen >= self.rows) {
            self.done = true;
        }
        if !strictly_increasing(&keys) {
            self.fell_back = true;
            keys.sort();
            keys.dedup();
            if let Some(max) = keys.last().cloned() {
                let window = Window::through(self.last.clone(), max);
                let this = &*self;
                let read = |w: Window<K>| async move {
                    match w.expr(this.pk) {
                        Some(expr) => this.fetch(&expr, KEY_BATCH).await,
                        None => Ok(Vec::new()),
                    }
                };
                // Kept with the batch, so the cursor moves on even if rows
                // vanish meanwhile.
                keys.extend(read_window(window, KEY_BATCH, read).await?);
                keys.sort();
                keys.dedup();
            }
        }
        if let Some(k) = keys.last() {
            self.last = Some(k.clone());
        }
        self.seen = self
            .seen
            .saturating_add(u64::try_from(keys.len()).unwrap_or(u64::MAX));
        Ok(keys)
    }

    /// Whether keys exist after the last one returned: a check that the
    /// walk did not end early, for when `count(*)` disagrees with it.
    pub(super) async fn ended_early(&self) -> Result<bool, VerifyError> {
        let expr = after_expr(self.pk, self.last.as_ref());
        Ok(!self.fetch(&expr, 1).await?.is_empty())
    }

    async fn fetch(&self, expr: &str, limit: usize) -> Result<Vec<K>, VerifyError> {
        let cols = self
            .api
            .query(
                self.db,
                self.collection,
                self.partitions,
                expr,
                &[self.pk],
                limit,
            )
            .await?;
        let scope = scope_of(self.db, self.collection);
        let col = cols.iter().find(|f| f.field_name == self.pk);
        match col {
            None if cols.is_empty() => Ok(Vec::new()),
            None => Err(unexpected(
                self.api.side,
                &scope,
                format!("query result has no column {}", self.pk),
            )),
            Some(f) => K::column(f).ok_or_else(|| {
                unexpected(
                    self.api.side,
                    &scope,
                    format!("primary key column {} has an unexpected type", self.pk),
                )
            }),
        }
    }
}

/// The comparison of two ascending key streams.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct KeyDiff<K> {
    common: u64,
    missing: u64,
    extra: u64,
    missing_examples: Vec<K>,
    extra_examples: Vec<K>,
}

impl<K: Key> KeyDiff<K> {
    /// Consumes the buffered keys as far as both streams allow (a side that
    /// is not `done` and has an empty buffer must be refilled first). Returns
    /// the keys both sides have.
    pub(super) fn merge(
        &mut self,
        s: &mut VecDeque<K>,
        t: &mut VecDeque<K>,
        s_done: bool,
        t_done: bool,
    ) -> Vec<K> {
        let mut common = Vec::new();
        loop {
            match (s.front(), t.front()) {
                (Some(a), Some(b)) => match a.cmp(b) {
                    std::cmp::Ordering::Less => self.only_source(s.pop_front()),
                    std::cmp::Ordering::Greater => self.only_target(t.pop_front()),
                    std::cmp::Ordering::Equal => {
                        t.pop_front();
                        if let Some(k) = s.pop_front() {
                            self.common += 1;
                            common.push(k);
                        }
                    }
                },
                (Some(_), None) if t_done => self.only_source(s.pop_front()),
                (None, Some(_)) if s_done => self.only_target(t.pop_front()),
                _ => return common,
            }
        }
    }

    fn only_source(&mut self, k: Option<K>) {
        if let Some(k) = k {
            self.missing += 1;
            if self.missing_examples.len() < EXAMPLES {
                self.missing_examples.push(k);
            }
        }
    }

    fn only_target(&mut self, k: Option<K>) {
        if let Some(k) = k {
            self.extra += 1;
            if self.extra_examples.len() < EXAMPLES {
                self.extra_examples.push(k);
            }
        }
    }

    pub(super) fn source_keys(&self) -> u64 {
        self.common + self.missing
    }

    pub(super) fn target_keys(&self) -> u64 {
        self.common + self.extra
    }

    pub(super) fn union(&self) -> u64 {
        self.common + self.missing + self.extra
    }

    /// The differences: keys missing on the target, extra keys on it.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        let examples = |v: &[K]| v.iter().map(Key::show).collect::<Vec<_>>().join(", ");
        if self.missing > 0 {
            out.push(format!(
                "{} primary keys missing on the target (source {}, target {}), e.g. {}",
                self.missing,
                self.source_keys(),
                self.target_keys(),
                examples(&self.missing_examples)
            ));
        }
        if self.extra > 0 {
            out.push(format!(
                "{} primary keys only on the target (source {}, target {}), e.g. {}",
                self.extra,
                self.source_keys(),
                self.target_keys(),
                examples(&self.extra_examples)
            ));
        }
        out
    }
}

/// What to try before repairing duplicate keys on a target that restarted:
/// a Milvus 2.3.5 target killed and restarted under writes served older
/// versions that its storage had deleted until the collection was loaded
/// again (docs/reliability.md, "Target fault").
pub(super) const RESTARTED_TARGET_HINT: &str = "if the target Milvus restarted, release and load \
     the target collection and verify again: a restarted Milvus 2.3.5 was seen to serve row \
     versions its storage had deleted";

/// Compares `count(*)` with the number of distinct keys on each side.
/// Milvus counts a key written twice without upsert twice (and on 2.3.5 an
/// upsert into another partition than the one holding the key leaves both
/// rows), on the source as on the target, faithfully replicated. So only a target with *more* surplus rows
/// than the source is a difference (duplicates the replication made); any
/// other surplus is a note; such a difference comes with a note on what to
/// try first when the target restarted (see [`RESTARTED_TARGET_HINT`]).
/// Returns (differences, notes).
pub(super) fn duplicates(
    s_count: u64,
    s_keys: u64,
    t_count: u64,
    t_keys: u64,
) -> (Vec<String>, Vec<String>) {
    let s_extra = s_count.saturating_sub(s_keys);
    let t_extra = t_count.saturating_sub(t_keys);
    let line = |side: &str, count: u64, keys: u64| {
        format!("count(*) {count} but {keys} distinct primary keys on the {side}")
    };
    let mut differences = Vec::new();
    let mut notes = Vec::new();
    if t_extra > s_extra {
        differences.push(format!(
            "duplicate primary keys on the target: {}, source {}",
            line("target", t_count, t_keys),
            line("source", s_count, s_keys)
        ));
        notes.push(RESTARTED_TARGET_HINT.to_string());
    } else {
        if s_extra > 0 {
            notes.push(line("source", s_count, s_keys));
        }
        if t_extra > 0 {
            notes.push(line("target", t_count, t_keys));
        }
    }
    (differences, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds batches as a cursor would and merges to the end.
    fn diff_batches(s: Vec<Vec<i64>>, t: Vec<Vec<i64>>) -> (KeyDiff<i64>, Vec<i64>) {
        let (mut s_batches, mut t_batches) = (VecDeque::from(s), VecDeque::from(t));
        let (mut sb, mut tb) = (VecDeque::new(), VecDeque::new());
        let mut diff = KeyDiff::default();
        let mut common = Vec::new();
        loop {
            if sb.is_empty() {
                sb.extend(s_batches.pop_front().unwrap_or_default());
            }
            if tb.is_empty() {
                tb.extend(t_batches.pop_front().unwrap_or_default());
            }
            let (s_done, t_done) = (s_batches.is_empty(), t_batches.is_empty());
            common.extend(diff.merge(&mut sb, &mut tb, s_done, t_done));
            if s_done && t_done && sb.is_empty() && tb.is_empty() {
                return (diff, common);
            }
        }
    }

    #[test]
    fn key_diff_equal_sets_across_uneven_batches() {
        let (d, common) = diff_batches(
            vec![vec![1, 2, 3], vec![4, 5], vec![6]],
            vec![vec![1], vec![2, 3, 4, 5, 6]],
        );
        assert_eq!(common, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!((d.missing, d.extra, d.common), (0, 0, 6));
        assert!(d.describe().is_empty());
    }

    #[test]
    fn key_diff_missing_and_extra() {
        let (d, common) = diff_batches(
            vec![vec![1, 2, 5], vec![7, 9]],
            vec![vec![2, 3], vec![9, 10, 11]],
        );
        assert_eq!(common, vec![2, 9]);
        assert_eq!(d.missing_examples, vec![1, 5, 7]);
        assert_eq!(d.extra_examples, vec![3, 10, 11]);
        assert_eq!((d.source_keys(), d.target_keys(), d.union()), (5, 5, 8));
        let lines = d.describe();
        assert_eq!(
            lines[0],
            "3 primary keys missing on the target (source 5, target 5), e.g. 1, 5, 7"
        );
        assert!(lines[1].starts_with("3 primary keys only on the target"));
    }

    #[test]
    fn key_diff_one_side_empty_and_examples_capped() {
        let (d, _) = diff_batches(vec![(0..25).collect()], vec![vec![]]);
        assert_eq!(d.missing, 25);
        assert_eq!(d.missing_examples.len(), EXAMPLES);
        let (d, _) = diff_batches(vec![vec![]], vec![vec![]]);
        assert_eq!(d, KeyDiff::default());
    }

    #[test]
    fn key_diff_waits_for_an_unfinished_side() {
        let mut d = KeyDiff::<i64>::default();
        let mut s = VecDeque::from(vec![1, 2, 3]);
        let mut t = VecDeque::from(vec![1]);
        let common = d.merge(&mut s, &mut t, true, false);
        assert_eq!(common, vec![1]);
        // 2 and 3 may still come from the target: nothing decided.
        assert_eq!(s, VecDeque::from(vec![2, 3]));
        assert_eq!((d.missing, d.extra), (0, 0));
    }

    #[test]
    fn string_keys_merge_bytewise() {
        let mut d = KeyDiff::<String>::default();
        let mut s: VecDeque<String> = ["", "Z", "a", "é"].map(String::from).into();
        let mut t: VecDeque<String> = ["", "a", "é"].map(String::from).into();
        let common = d.merge(&mut s, &mut t, true, true);
        assert_eq!(common.len(), 3);
        assert_eq!(d.missing_examples, vec!["Z".to_string()]);
        assert_eq!(d.describe()[0].rsplit("e.g. ").next(), Some("\"Z\""));
    }

    #[test]
    fn duplicate_counts() {
        assert_eq!(duplicates(10, 10, 10, 10), (vec![], vec![]));
        let (d, n) = duplicates(11, 10, 10, 10);
        assert!(d.is_empty());
        assert_eq!(
            n,
            vec!["count(*) 11 but 10 distinct primary keys on the source".to_string()]
        );
        let (d, _) = duplicates(11, 10, 11, 10);
        assert!(
            d.is_empty(),
            "the same surplus on both sides is not a difference"
        );
        let (d, n) = duplicates(10, 10, 12, 10);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("duplicate primary keys on the target"));
        assert_eq!(n, vec![RESTARTED_TARGET_HINT.to_string()]);
        assert!(n[0].contains("release and load"));
    }

    #[test]
    fn string_literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(quote_str("abc"), r#""abc""#);
        assert_eq!(quote_str(r#"a"b"#), r#""a\"b""#);
        assert_eq!(quote_str(r"a\b"), r#""a\\b""#);
        assert_eq!(quote_str("a\\\"b"), r#""a\\\"b""#);
        assert_eq!(quote_str("a'b"), r#""a'b""#);
        assert_eq!(quote_str("a\nb\r\t"), r#""a\nb\r\t""#);
        assert_eq!(quote_str("a\u{1}b"), r#""a\u0001b""#);
        assert_eq!(quote_str("é"), "\"é\"");
        assert_eq!(quote_str(""), r#""""#);
    }

    #[test]
    fn expressions() {
        assert_eq!(after_expr::<i64>("id", None), "");
        assert_eq!(after_expr("id", Some(&42i64)), "id > 42");
        assert_eq!(after_expr("id", Some(&-7i64)), "id > -7");
        assert_eq!(
            after_expr("id", Some(&i64::MIN)),
            "id >= -9223372036854775807"
        );
        assert_eq!(after_expr("pk", Some(&"a\"".to_string())), r#"pk > "a\"""#);
        let w = |lo: Option<i64>, hi| Window { lo, hi }.expr("id");
        assert_eq!(
            Window::through(Some(1i64), 9).expr("id").as_deref(),
            Some("id > 1 && id <= 9")
        );
        assert_eq!(w(None, Upper::Through(9)).as_deref(), Some("id <= 9"));
        assert_eq!(
            w(Some(1), Upper::Below(-9)).as_deref(),
            Some("id > 1 && id < -9")
        );
        assert_eq!(w(None, Upper::Below(i64::MIN)), None);
        let s = Window {
            lo: None,
            hi: Upper::Below(String::new()),
        };
        assert_eq!(s.expr("pk"), None);
        assert_eq!(in_expr("id", &[1i64, 2, 3]), "id in [1, 2, 3]");
        assert_eq!(
            in_expr("pk", &["a".to_string(), "b\\".to_string()]),
            r#"pk in ["a", "b\\"]"#
        );
        assert!(strictly_increasing(&[1, 2, 5]));
        assert!(!strictly_increasing(&[1, 2, 2]));
        assert!(!strictly_increasing(&[3, 1]));
    }

    /// A fake side holding `rows` (a key more than once when duplicated)
    /// that answers a read of a window the way a cut answer looks: at most
    /// `limit` rows, in no order, the cut ones anywhere in the window.
    fn fake_read(
        rows: &[i64],
        limit: usize,
        reads: &std::cell::RefCell<Vec<Window<i64>>>,
        w: Window<i64>,
    ) -> Vec<i64> {
        reads.borrow_mut().push(w.clone());
        let mut hits: Vec<i64> = rows.iter().copied().filter(|k| w.contains(k)).collect();
        // Every other row first, largest first: a cut answer keeps rows from
        // all over the window, not a prefix.
        hits.sort_by_key(|k| (k % 2, std::cmp::Reverse(*k)));
        hits.truncate(limit);
        hits
    }

    fn in_window(rows: &[i64], w: &Window<i64>) -> usize {
        rows.iter().filter(|k| w.contains(k)).count()
    }

    #[test]
    fn read_window_splits_full_reads_until_none_is_cut() {
        // 0..100 plus duplicates: 10..20 twice, 50 forty times.
        let mut rows: Vec<i64> = (0..100).collect();
        rows.extend(10..20);
        rows.extend(std::iter::repeat_n(50, 40));
        let limit = 16;
        let reads = std::cell::RefCell::new(Vec::new());
        let window = Window::through(Some(-1), 99);
        let read = |w: Window<i64>| {
            let got = fake_read(&rows, limit, &reads, w);
            async move { Ok::<_, VerifyError>(got) }
        };
        let keys = futures::executor::block_on(read_window(window, limit, read));
        assert_eq!(keys.ok(), Some((0..100).collect::<Vec<i64>>()));
        // Full reads were split, and every key was finally read by a read
        // that was not full (so not cut), or was the point of a split.
        let reads = reads.into_inner();
        let full: Vec<&Window<i64>> = reads
            .iter()
            .filter(|w| in_window(&rows, w) >= limit)
            .collect();
        assert!(!full.is_empty() && reads.len() > full.len(), "{reads:?}");
        for k in 0..100 {
            let whole = reads
                .iter()
                .any(|w| w.contains(&k) && in_window(&rows, w) < limit);
            let mid = reads.iter().any(|w| w.lo == Some(k));
            assert!(whole || mid, "key {k} only in cut reads: {reads:?}");
        }
        // A read that is never full is read once.
        let reads = std::cell::RefCell::new(Vec::new());
        let small: Vec<i64> = (0..10).collect();
        let read = |w: Window<i64>| {
            let got = fake_read(&small, limit, &reads, w);
            async move { Ok::<_, VerifyError>(got) }
        };
        let keys = futures::executor::block_on(read_window(Window::through(None, 9), limit, read));
        assert_eq!(keys.ok(), Some((0..10).collect::<Vec<i64>>()));
        assert_eq!(reads.into_inner().len(), 1);
    }

    #[test]
    fn read_window_reads_on_after_a_short_answer_that_lacks_keys() {
        // Milvus 2.3.5 with a limit: the smallest `limit` rows, a key's
        // extra rows among them, then without repeats (fewer keys than the
        // limit although more exist).
        let mut rows: Vec<i64> = (0..40).collect();
        rows.extend((0..10).flat_map(|k| [k, k]));
        let limit = 16;
        let reads = std::cell::RefCell::new(0);
        let read = |w: Window<i64>| {
            *reads.borrow_mut() += 1;
            let mut hits: Vec<i64> = rows.iter().copied().filter(|k| w.contains(k)).collect();
            hits.sort();
            hits.truncate(limit);
            hits.dedup();
            async move { Ok::<_, VerifyError>(hits) }
        };
        let keys = futures::executor::block_on(read_window(Window::through(None, 39), limit, read));
        assert_eq!(keys.ok(), Some((0..40).collect::<Vec<i64>>()));
        assert!(reads.into_inner() > 2);
    }

    #[test]
    fn in_chunks_bound_keys_and_bytes() {
        let keys: Vec<i64> = (0..10).collect();
        let sizes = |c: Vec<&[i64]>| c.iter().map(|x| x.len()).collect::<Vec<_>>();
        assert_eq!(sizes(in_chunks(&keys, 4, 1000)), vec![4, 4, 2]);
        // Each literal is 1 byte + 2 of separator: 3 bytes.
        assert_eq!(sizes(in_chunks(&keys, 100, 7)), vec![2, 2, 2, 2, 2]);
        assert_eq!(sizes(in_chunks(&keys, 100, 1)), vec![1; 10]);
        assert!(in_chunks::<i64>(&[], 4, 10).is_empty());
        let long = vec!["x".repeat(50), "y".to_string()];
        assert_eq!(in_chunks(&long, 10, 20).len(), 2);
    }
}
