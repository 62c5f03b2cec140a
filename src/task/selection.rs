//! Which collections a task replicates: the `collection_infos` names
//! (`*`, `name`, `db.name`, `db.*`), parsed and matched, and the overlap rule
//! between two tasks writing to one target.

use super::params::{bad, CollectionInfo, ParamError};

/// Longest accepted collection name (Milvus's limit).
const MAX_COLLECTION_NAME_LEN: usize = 255;
/// Longest accepted database name (Milvus's limit).
const MAX_DATABASE_NAME_LEN: usize = 64;

/// One entry of `collection_infos`, parsed: what a task replicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: every collection of every database.
    All,
    /// `db.*`: every collection of one database.
    Database(String),
    /// `name` (default database) or `db.name`: one collection.
    Collection {
        /// Database (`default` for the default one).
        db: String,
        /// Collection name.
        name: String,
    },
}

impl Pattern {
    /// Whether collection `db.name` (`""` = default database) is selected.
    pub fn matches(&self, db: &str, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Database(d) => d == normal_db(db),
            Pattern::Collection { db: d, name: n } => d == normal_db(db) && n == name,
        }
    }

    /// Whether some collection is selected by both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::All, _) | (_, Pattern::All) => true,
            (Pattern::Database(a), Pattern::Database(b)) => a == b,
            (Pattern::Database(d), Pattern::Collection { db, .. })
            | (Pattern::Collection { db, .. }, Pattern::Database(d)) => d == db,
            (a @ Pattern::Collection { .. }, b @ Pattern::Collection { .. }) => a == b,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Database(d) => write!(f, "{d}.*"),
            Pattern::Collection { db, name } => write!(f, "{db}.{name}"),
        }
    }
}

/// The database name as Milvus means it (`""` is `default`).
pub fn normal_db(db: &str) -> &str {
    if db.is_empty() {
        "default"
    } else {
        db
    }
}

/// What a task replicates, parsed from its `collection_infos`: `*`, or
/// collection names (`name` in the default database, `db.name`) and whole
/// databases (`db.*`), as the official milvus-cdc 2.x spells them.
///
/// ```
/// use milvus_cdc::task::{selection::Selection, CollectionInfo};
/// let info = |n: &str| CollectionInfo { name: n.into(), positions: Default::default() };
/// let s = Selection::parse(&[info("books"), info("shop.*")]).unwrap();
/// assert!(s.matches("", "books") && s.matches("shop", "orders"));
/// assert!(!s.matches("shop2", "books"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(Vec<Pattern>);

impl Selection {
    /// Every collection (`*`).
    pub fn all() -> Self {
        Self(vec![Pattern::All])
    }

    /// No collection at all (never valid in a request).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Parses and checks `collection_infos`: not empty, valid names, `*`
    /// alone, no entry twice or already covered by a `db.*`.
    pub fn parse(infos: &[CollectionInfo]) -> Result<Self, ParamError> {
        if infos.is_empty() {
            return bad(
                "collection_infos must not be empty; use [{\"name\": \"*\"}] for every collection",
            );
        }
        let mut out: Vec<Pattern> = Vec::with_capacity(infos.len());
        for (i, info) in infos.iter().enumerate() {
            let p = parse_pattern(&info.name)
                .map_err(|e| ParamError(format!("collection_infos[{i}].name: {e}")))?;
            if let Some(prev) = out.iter().find(|q| q.overlaps(&p)) {
                let msg = if *prev == p {
                    format!("collection_infos[{i}].name: {p} is given twice")
                } else if matches!(p, Pattern::All) || matches!(prev, Pattern::All) {
                    "collection_infos: \"*\" selects every collection and cannot be combined \
                     with other names"
                        .to_string()
                } else {
                    format!("collection_infos[{i}].name: {p} overlaps {prev}, given before")
                };
                return bad(msg);
            }
            out.push(p);
        }
        Ok(Self(out))
    }

    /// The patterns, in the order given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.0
    }

    /// True for `*`.
    pub fn is_all(&self) -> bool {
        self.0.contains(&Pattern::All)
    }

    /// Whether collection `db.name` (`""` = default database) is selected.
    pub fn matches(&self, db: &str, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(db, name))
    }

    /// Whether the whole database `db` is selected (`*` or `db.*`): only
    /// then are its creation and drop replicated.
    pub fn covers_database(&self, db: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::All => true,
            Pattern::Database(d) => d == normal_db(db),
            Pattern::Collection { .. } => false,
        })
    }

    /// A pattern of each selection that select a common collection, if any.
    pub fn overlap<'a>(&'a self, other: &'a Selection) -> Option<(&'a Pattern, &'a Pattern)> {
        self.0
            .iter()
            .find_map(|a| other.0.iter().find(|b| a.overlaps(b)).map(|b| (a, b)))
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn parse_pattern(raw: &str) -> Result<Pattern, String> {
    if raw == "*" {
        return Ok(Pattern::All);
    }
    if raw.is_empty() {
        return Err("must not be empty (a collection name, db.name, db.* or *)".into());
    }
    let (db, name) = match raw.split_once('.') {
        Some((db, name)) => (db, name),
        None => ("default", raw),
    };
    check_name(db, "database", MAX_DATABASE_NAME_LEN).map_err(|e| format!("{raw:?}: {e}"))?;
    if name == "*" {
        return Ok(Pattern::Database(db.to_string()));
    }
    check_name(name, "collection", MAX_COLLECTION_NAME_LEN).map_err(|e| format!("{raw:?}: {e}"))?;
    Ok(Pattern::Collection {
        db: db.to_string(),
        name: name.to_string(),
    })
}

/// Milvus's rule for database and collection names: a letter or `_`, then
/// letters, digits and `_`.
fn check_name(s: &str, what: &str, max: usize) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err(format!("the {what} name is empty")),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(format!(
                "the {what} name must start with a letter or _ (expected name, db.name, db.* or *)"
            ))
        }
        Some(_) => {}
    }
    if chars.any(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(format!(
            "the {what} name may only hold letters, digits and _ (expected name, db.name, db.* or *)"
        ));
    }
    if s.len() > max {
        return Err(format!("the {what} name is longer than {max} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infos(names: &[&str]) -> Vec<CollectionInfo> {
        names
            .iter()
            .map(|n| CollectionInfo {
                name: (*n).into(),
                positions: Default::default(),
            })
            .collect()
    }

    fn sel(names: &[&str]) -> Selection {
        Selection::parse(&infos(names)).unwrap()
    }

    #[test]
    fn selection_matching() {
        let all = sel(&["*"]);
        assert!(all.is_all() && all.matches("", "x") && all.matches("db", "y"));
        assert!(all.covers_database("any"));
        let s = sel(&["books", "shop.orders", "logs.*"]);
        assert!(!s.is_all());
        assert!(s.matches("", "books") && s.matches("default", "books"));
        assert!(!s.matches("shop", "books"));
        assert!(s.matches("shop", "orders") && !s.matches("", "orders"));
        assert!(s.matches("logs", "anything") && !s.matches("logs2", "anything"));
        assert!(s.covers_database("logs") && !s.covers_database("shop"));
        assert!(!s.covers_database("") && !s.covers_database("default"));
        assert!(sel(&["default.*"]).covers_database(""));
        assert_eq!(s.to_string(), "default.books, shop.orders, logs.*");
        // explicit default database is the same collection
        assert_eq!(sel(&["default.books"]), sel(&["books"]));
    }

    #[test]
    fn selection_rejects_bad_names() {
        for bad in [
            vec![],
            vec![""],
            vec!["a b"],
            vec!["1abc"],
            vec!["a-b"],
            vec!["db."],
            vec![".c"],
            vec!["a.b.c"],
            vec!["*.c"],
            vec!["db.c*"],
            vec!["**"],
            vec!["*", "c"],
            vec!["c", "*"],
            vec!["*", "*"],
            vec!["c", "c"],
            vec!["c", "default.c"],
            vec!["db.*", "db.c"],
            vec!["db.c", "db.*"],
        ] {
            let r = Selection::parse(&infos(&bad));
            assert!(r.is_err(), "{bad:?} accepted");
            let msg = r.unwrap_err().0;
            assert!(msg.contains("collection_infos"), "{bad:?}: {msg}");
        }
        let long = "c".repeat(256);
        assert!(Selection::parse(&infos(&[&long])).is_err());
        assert!(Selection::parse(&infos(&[&"c".repeat(255)])).is_ok());
        let msg = Selection::parse(&infos(&["*", "c"])).unwrap_err().0;
        assert!(msg.contains("cannot be combined"), "{msg}");
        let msg = Selection::parse(&infos(&["c", "c"])).unwrap_err().0;
        assert!(msg.contains("twice"), "{msg}");
        assert!(Selection::parse(&infos(&["_a1", "db_2._x", "d.*", "e.*"])).is_ok());
    }

    #[test]
    fn selection_overlap_rules() {
        let overlapping = [
            (vec!["*"], vec!["*"]),
            (vec!["*"], vec!["c"]),
            (vec!["db.*"], vec!["*"]),
            (vec!["c"], vec!["default.c"]),
            (vec!["db.*"], vec!["x", "db.c"]),
            (vec!["db.*"], vec!["db.*"]),
            (vec!["a", "b"], vec!["c", "b"]),
        ];
        for (a, b) in overlapping {
            assert!(sel(&a).overlap(&sel(&b)).is_some(), "{a:?} {b:?}");
            assert!(sel(&b).overlap(&sel(&a)).is_some(), "{b:?} {a:?}");
        }
        let disjoint = [
            (vec!["a"], vec!["b"]),
            (vec!["db.a"], vec!["a"]),
            (vec!["db.*"], vec!["db2.*", "a"]),
            (vec!["db.*"], vec!["c"]),
        ];
        for (a, b) in disjoint {
            assert!(sel(&a).overlap(&sel(&b)).is_none(), "{a:?} {b:?}");
            assert!(sel(&b).overlap(&sel(&a)).is_none(), "{b:?} {a:?}");
        }
        let (a, b) = (sel(&["q", "db.*"]), sel(&["db.c"]));
        let (x, y) = a.overlap(&b).unwrap();
        assert_eq!(
            (x.to_string(), y.to_string()),
            ("db.*".into(), "db.c".into())
        );
    }
}
