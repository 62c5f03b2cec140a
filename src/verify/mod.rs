//! `milvus-cdc verify`: compares a source and a target Milvus and reports
//! every difference, to prove after a failover drill (or in an end-to-end
//! test) that the target is an exact replica.
//!
//! What is compared, per database and collection present on both sides:
//! user fields (type, key flags, type parameters, ...), dynamic-field flag,
//! shards, consistency level, properties, partitions, indexes, load state,
//! aliases; and, when the collection is loaded on both sides, the full set of
//! primary keys, `count(*)`, and the values of `sample` rows spread over the
//! key range; for a collection with several partitions (and no partition
//! key) all of that partition by partition, as one key may live in several
//! partitions with different values. The replica's documented deviations are not differences: the
//! [`SOURCE_ID_PROPERTY`] property, and `auto_id` being off on the target
//! (reported as a note).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use milvus_cdc::{task::MilvusConnectParam, milvus::MilvusClient, verify};
//! let addr = |uri: &str| MilvusConnectParam { uri: Some(uri.into()), ..Default::default() }.validate();
//! let source = MilvusClient::connect(&addr("http://127.0.0.1:19530")?).await?;
//! let target = MilvusClient::connect(&addr("http://127.0.0.1:19540")?).await?;
//! let report = verify::verify(&source, &target, &verify::VerifyOptions::default()).await?;
//! assert!(report.differences.is_empty(), "{:?}", report.differences);
//! # Ok(()) }
//! ```
//!
//! Run it while nothing writes to either side: rows written during the run
//! show up as differences.
//!
//! Layout: this file holds the command line, options, report and the walk
//! over databases and collections; `api` the calls to one side, `meta` the
//! metadata comparison, `keys` the ordered walk and merge of primary keys,
//! `partitions` the choice between one walk per collection and one per
//! partition, `rows` the key walks and the comparison of sampled rows.

mod api;
mod keys;
mod meta;
mod partitions;
mod rows;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Display},
    io::IsTerminal as _,
    process::ExitCode,
};

use serde::Serialize;

use self::{
    api::{scope_of, Api},
    meta::compare_meta,
    rows::Progress,
};
use crate::{
    milvus::{MilvusClient, MilvusError},
    proto::common::LoadState,
    task::MilvusConnectParam,
};

/// `milvus-cdc verify`: compare a source and a target Milvus.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Source Milvus URI.
    #[arg(long, value_name = "URI", default_value = "http://127.0.0.1:19530")]
    pub source: String,
    /// Token (`user:password` or API key) for the source.
    #[arg(long, env = "MILVUS_CDC_SOURCE_TOKEN", hide_env_values = true)]
    pub source_token: Option<String>,
    /// Target Milvus URI, e.g. http://127.0.0.1:19540.
    #[arg(long, value_name = "URI")]
    pub target: String,
    /// Token (`user:password` or API key) for the target.
    #[arg(long, env = "MILVUS_CDC_TARGET_TOKEN", hide_env_values = true)]
    pub target_token: Option<String>,
    /// Rows per collection whose values are compared field by field
    /// (spread evenly over the primary keys, and over the partitions in
    /// proportion to their rows; 0 compares keys only).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub sample: usize,
    /// Database to compare (repeatable); default: every database.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,
    /// Collection to compare (repeatable, in any compared database);
    /// default: every collection.
    #[arg(long = "collection", value_name = "NAME")]
    pub collections: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds allowed to connect to each Milvus.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
}

/// What [`verify`] compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Databases to compare; empty means every database of either side.
    pub databases: Vec<String>,
    /// Collections to compare; empty means every collection.
    pub collections: Vec<String>,
    /// Rows per collection whose values are compared (0: keys only).
    pub sample: usize,
    /// Print a progress line on stderr at most once a second.
    pub progress: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            databases: Vec::new(),
            collections: Vec::new(),
            sample: 100,
            progress: false,
        }
    }
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Collections present on both sides and compared.
    pub collections: usize,
    /// Distinct primary keys compared (seen on either side); for a
    /// collection compared partition by partition, the sum over its
    /// partitions (a key in two partitions counts twice).
    pub rows_compared: u64,
    /// Every difference found; empty means the target is an exact replica.
    pub differences: Vec<Difference>,
    /// Expected deviations and things not compared (not differences).
    pub notes: Vec<String>,
}

/// One difference between source and target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Where: `databases`, `db` or `db.collection`.
    pub scope: String,
    /// What differs, usually ending in `(source X, target Y)`.
    pub what: String,
}

impl Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scope, self.what)
    }
}

/// Which Milvus a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source Milvus.
    Source,
    /// The target Milvus.
    Target,
}

impl Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Why the comparison could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A command-line address or token is invalid.
    #[error("--{side}: {message}")]
    Address {
        /// Which side.
        side: Side,
        /// What is wrong.
        message: String,
    },
    /// A Milvus could not be reached.
    #[error("cannot connect to the {side}: {source}")]
    Connect {
        /// Which side.
        side: Side,
        /// The connection error.
        source: MilvusError,
    },
    /// A call failed.
    #[error("{side} {scope}: {call} failed: {source}")]
    Call {
        /// Which side.
        side: Side,
        /// Database or collection concerned.
        scope: String,
        /// The Milvus call.
        call: &'static str,
        /// The error.
        source: MilvusError,
    },
    /// A Milvus answered something this tool cannot interpret.
    #[error("{side} {scope}: {message}")]
    Unexpected {
        /// Which side.
        side: Side,
        /// Database or collection concerned.
        scope: String,
        /// What was unexpected.
        message: String,
    },
}

/// Runs `milvus-cdc verify`: prints the differences (or the JSON report) on
/// stdout. Exit code 0 when there is none, 1 when there are differences, 2
/// when the comparison could not run (message on stderr).
pub async fn run(args: &VerifyArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(report) => {
            if args.json {
                print_json(&report)
            } else {
                print_text(&report)
            }
        }
        Err(e) => {
            eprintln!("milvus-cdc verify: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: &VerifyArgs) -> Result<Report, VerifyError> {
    let (source, target) = tokio::try_join!(
        connect(
            Side::Source,
            &args.source,
            &args.source_token,
            args.connect_timeout
        ),
        connect(
            Side::Target,
            &args.target,
            &args.target_token,
            args.connect_timeout
        ),
    )?;
    let opts = VerifyOptions {
        databases: args.databases.clone(),
        collections: args.collections.clone(),
        sample: args.sample,
        progress: std::io::stderr().is_terminal(),
    };
    verify(&source, &target, &opts).await
}

/// Connects to one side given on the command line.
async fn connect(
    side: Side,
    uri: &str,
    token: &Option<String>,
    timeout: u64,
) -> Result<MilvusClient, VerifyError> {
    let param = MilvusConnectParam {
        uri: Some(uri.to_string()),
        token: token.clone(),
        connect_timeout: Some(timeout),
        ..Default::default()
    };
    let addr = param.validate().map_err(|e| VerifyError::Address {
        side,
        message: e.to_string(),
    })?;
    let m = MilvusClient::connect(&addr)
        .await
        .map_err(|source| VerifyError::Connect { side, source })?;
    // Fail early, with a clear message, on refused credentials.
    m.probe()
        .await
        .map_err(|source| VerifyError::Connect { side, source })?;
    Ok(m)
}

fn exit_code(report: &Report) -> ExitCode {
    if report.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_json(report: &Report) -> ExitCode {
    match serde_json::to_string_pretty(report) {
        Ok(s) => {
            println!("{s}");
            exit_code(report)
        }
        Err(e) => {
            eprintln!("milvus-cdc verify: cannot encode the report: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_text(report: &Report) -> ExitCode {
    for d in &report.differences {
        println!("{d}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    let verdict = match report.differences.len() {
        0 => "no differences".to_string(),
        1 => "1 difference".to_string(),
        n => format!("{n} differences"),
    };
    println!(
        "verify: {} collections, {} rows compared, {verdict}",
        report.collections, report.rows_compared
    );
    exit_code(report)
}

/// Compares `source` with `target` and reports every difference.
pub async fn verify(
    source: &MilvusClient,
    target: &MilvusClient,
    opts: &VerifyOptions,
) -> Result<Report, VerifyError> {
    let mut v = Verifier {
        src: Api {
            m: source,
            side: Side::Source,
        },
        tgt: Api {
            m: target,
            side: Side::Target,
        },
        opts,
        report: Report::default(),
        progress: Progress::new(opts.progress),
    };
    for db in v.databases().await? {
        v.database(&db).await?;
    }
    Ok(v.report)
}

// ------------------------------------------------------------------ the comparison

struct Verifier<'a> {
    src: Api<'a>,
    tgt: Api<'a>,
    opts: &'a VerifyOptions,
    report: Report,
    progress: Progress,
}

impl Verifier<'_> {
    fn differ(&mut self, scope: &str, what: String) {
        self.report.differences.push(Difference {
            scope: scope.to_string(),
            what,
        });
    }

    fn note(&mut self, scope: &str, what: impl Display) {
        self.report.notes.push(format!("{scope}: {what}"));
    }

    /// The databases present on both sides, among those asked for; the
    /// others are reported.
    async fn databases(&mut self) -> Result<Vec<String>, VerifyError> {
        let (s, t) = tokio::try_join!(self.src.databases(), self.tgt.databases())?;
        let (s, t): (BTreeSet<String>, BTreeSet<String>) =
            (s.into_iter().collect(), t.into_iter().collect());
        let wanted: BTreeSet<String> = if self.opts.databases.is_empty() {
            s.union(&t).cloned().collect()
        } else {
            self.opts.databases.iter().cloned().collect()
        };
        let mut both = Vec::new();
        for db in wanted {
            match (s.contains(&db), t.contains(&db)) {
                (true, true) => both.push(db),
                (false, false) => self.note(&db, "database exists on neither side"),
                (in_s, _) => {
                    let what = presence("database", in_s);
                    self.differ(&db, what);
                }
            }
        }
        Ok(both)
    }

    async fn database(&mut self, db: &str) -> Result<(), VerifyError> {
        let (s, t) = tokio::try_join!(self.src.collections(db), self.tgt.collections(db))?;
        let wanted =
            |c: &String| self.opts.collections.is_empty() || self.opts.collections.contains(c);
        let (s, t): (BTreeSet<String>, BTreeSet<String>) = (
            s.into_iter().filter(wanted).collect(),
            t.into_iter().filter(wanted).collect(),
        );
        for c in s.symmetric_difference(&t) {
            let what = presence("collection", s.contains(c));
            self.differ(&scope_of(db, c), what);
        }
        for c in s.intersection(&t) {
            self.collection(db, c).await?;
        }
        Ok(())
    }

    async fn collection(&mut self, db: &str, c: &str) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let (s, t) = tokio::try_join!(self.src.meta(db, c), self.tgt.meta(db, c))?;
        self.report.collections += 1;
        let mut diffs = Vec::new();
        let mut notes = Vec::new();
        compare_meta(&s, &t, &mut diffs, &mut notes);
        for what in diffs {
            self.differ(&scope, what);
        }
        for n in notes {
            self.note(&scope, n);
        }
        let loaded = LoadState::Loaded as i32;
        if s.load != loaded || t.load != loaded {
            self.note(&scope, "not loaded: rows not compared");
            return Ok(());
        }
        let plan = partitions::plan(&s, &t);
        self.rows(db, c, &s.schema(), plan).await
    }
}

fn unexpected(side: Side, scope: &str, message: String) -> VerifyError {
    VerifyError::Unexpected {
        side,
        scope: scope.to_string(),
        message,
    }
}

/// "X (source present, target missing)" or the reverse.
fn presence(what: &str, on_source: bool) -> String {
    if on_source {
        format!("{what} (source present, target missing)")
    } else {
        format!("{what} (source missing, target present)")
    }
}

/// `what (source s, target t)`.
fn both(what: &str, s: impl Display, t: impl Display) -> String {
    format!("{what} (source {s}, target {t})")
}

/// Keys of either map with their value on each side, in key order.
fn zip_maps<'m, V>(
    s: &'m BTreeMap<String, V>,
    t: &'m BTreeMap<String, V>,
) -> Vec<(&'m str, Option<&'m V>, Option<&'m V>)> {
    let keys: BTreeSet<&String> = s.keys().chain(t.keys()).collect();
    keys.into_iter()
        .map(|k| (k.as_str(), s.get(k), t.get(k)))
        .collect()
}
