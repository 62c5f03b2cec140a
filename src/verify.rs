//! `milvus-cdc verify`: compares a source and a target Milvus and reports
//! every difference, to prove after a failover drill (or in an end-to-end
//! test) that the target is an exact replica.
//!
//! What is compared, per database and collection present on both sides:
//! user fields (type, key flags, type parameters, ...), dynamic-field flag,
//! shards, consistency level, properties, partitions, indexes, load state,
//! aliases; and, when the collection is loaded on both sides, the full set of
//! primary keys, `count(*)`, and the values of `sample` rows spread over the
//! key range. The replica's documented deviations are not differences: the
//! [`SOURCE_ID_PROPERTY`] property, and `auto_id` being off on the target
//! (reported as a note).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use milvus_cdc::{task::MilvusConnectParam, target::MilvusTarget, verify};
//! let addr = |uri: &str| MilvusConnectParam { uri: Some(uri.into()), ..Default::default() }.validate();
//! let source = MilvusTarget::connect(&addr("http://127.0.0.1:19530")?).await?;
//! let target = MilvusTarget::connect(&addr("http://127.0.0.1:19540")?).await?;
//! let report = verify::verify(&source, &target, &verify::VerifyOptions::default()).await?;
//! assert!(report.differences.is_empty(), "{:?}", report.differences);
//! # Ok(()) }
//! ```
//!
//! Run it while nothing writes to either side: rows written during the run
//! show up as differences.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::{self, Display, Write as _},
    io::IsTerminal as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    proto::{
        common::{self, ConsistencyLevel, KeyValuePair, LoadState},
        milvus as pb,
        schema::{
            field_data::Field, scalar_field::Data as Scalar, CollectionSchema, DataType, FieldData,
            FieldSchema,
        },
    },
    source::inspect::column_values,
    target::{
        writer::{is_system_field, SOURCE_ID_PROPERTY},
        MilvusTarget, TargetError,
    },
    task::MilvusConnectParam,
};

/// Largest `limit` Milvus 2.3 accepts in a query (`offset + limit <= 16384`).
const KEY_BATCH: usize = 16_384;
/// Most sampled rows fetched per `pk in [...]` query (a strongly
/// consistent query costs about 0.4 s on Milvus 2.3 whatever its size).
const SAMPLE_BATCH: usize = 1024;
/// Longest `pk in [...]` expression, in bytes (long varchar keys).
const MAX_EXPR_BYTES: usize = 1 << 20;
/// Example keys shown for missing or extra primary keys.
const EXAMPLES: usize = 10;
/// Rows with differing values reported one by one per collection.
const ROW_DIFFS_SHOWN: usize = 10;
/// Longest value shown in a difference, in characters.
const VALUE_SHOWN: usize = 80;
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    /// (spread evenly over the primary keys; 0 compares keys only).
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
    /// Distinct primary keys compared (seen on either side).
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
    #[error("cannot connect to the {side} Milvus: {}", plain(.source))]
    Connect {
        /// Which side.
        side: Side,
        /// The connection error.
        source: TargetError,
    },
    /// A call failed.
    #[error("{side} {scope}: {call} failed: {}", plain(.source))]
    Call {
        /// Which side.
        side: Side,
        /// Database or collection concerned.
        scope: String,
        /// The Milvus call.
        call: &'static str,
        /// The error.
        source: TargetError,
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

/// A [`TargetError`] without its "target Milvus" wording (the side is
/// named by the caller).
fn plain(e: &TargetError) -> String {
    match e {
        TargetError::Unreachable { url, message } => format!("{url} is unreachable: {message}"),
        TargetError::Unauthenticated { url, message } => {
            format!("{url} rejected the credentials: {message}")
        }
        TargetError::Rejected {
            url,
            what,
            code,
            reason,
            ..
        } => format!("{url} answered {what} with error {code}: {reason}"),
        TargetError::Fenced => e.to_string(),
    }
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
) -> Result<MilvusTarget, VerifyError> {
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
    let m = MilvusTarget::connect(&addr)
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
    source: &MilvusTarget,
    target: &MilvusTarget,
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

// ------------------------------------------------------------------ Milvus calls

/// Calls to one side, with errors that say which side and what.
#[derive(Clone, Copy)]
struct Api<'a> {
    m: &'a MilvusTarget,
    side: Side,
}

/// A collection's metadata on one side.
#[derive(Debug, Clone, Default)]
struct CollectionMeta {
    desc: pb::DescribeCollectionResponse,
    partitions: Vec<String>,
    indexes: Vec<pb::IndexDescription>,
    load: i32,
    /// Per-partition load state (only for loaded collections without a
    /// partition key).
    partition_loads: BTreeMap<String, i32>,
}

impl CollectionMeta {
    fn schema(&self) -> CollectionSchema {
        self.desc.schema.clone().unwrap_or_default()
    }
}

impl<'a> Api<'a> {
    fn call_error(
        &self,
        scope: &str,
        call: &'static str,
    ) -> impl Fn(TargetError) -> VerifyError + 'a {
        let (side, scope) = (self.side, scope.to_string());
        move |source| VerifyError::Call {
            side,
            scope: scope.clone(),
            call,
            source,
        }
    }

    fn grpc(&self, scope: &str, call: &'static str, s: tonic::Status) -> VerifyError {
        self.call_error(scope, call)(self.m.status_error(s))
    }

    fn check(
        &self,
        scope: &str,
        call: &'static str,
        st: Option<&common::Status>,
    ) -> Result<(), VerifyError> {
        self.m.check(call, st).map_err(self.call_error(scope, call))
    }

    async fn databases(&self) -> Result<Vec<String>, VerifyError> {
        let r = self
            .m
            .client()
            .list_databases(pb::ListDatabasesRequest::default())
            .await
            .map_err(|s| self.grpc("databases", "ListDatabases", s))?
            .into_inner();
        self.check("databases", "ListDatabases", r.status.as_ref())?;
        Ok(r.db_names)
    }

    async fn collections(&self, db: &str) -> Result<Vec<String>, VerifyError> {
        let r = self
            .m
            .client()
            .show_collections(pb::ShowCollectionsRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(db, "ShowCollections", s))?
            .into_inner();
        self.check(db, "ShowCollections", r.status.as_ref())?;
        Ok(r.collection_names)
    }

    async fn meta(&self, db: &str, c: &str) -> Result<CollectionMeta, VerifyError> {
        let scope = scope_of(db, c);
        let desc = self.describe(db, c, &scope).await?;
        let partitions = self.partitions(db, c, &scope).await?;
        let indexes = self.indexes(db, c, &scope).await?;
        let load = self.load_state(db, c, &scope, &[]).await?;
        let has_partition_key = desc
            .schema
            .as_ref()
            .is_some_and(|s| s.fields.iter().any(|f| f.is_partition_key));
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
            .m
            .client()
            .describe_collection(pb::DescribeCollectionRequest {
                db_name: db.to_string(),
                collection_name: c.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(scope, "DescribeCollection", s))?
            .into_inner();
        self.check(scope, "DescribeCollection", r.status.as_ref())?;
        Ok(r)
    }

    async fn partitions(&self, db: &str, c: &str, scope: &str) -> Result<Vec<String>, VerifyError> {
        let r = self
            .m
            .client()
            .show_partitions(pb::ShowPartitionsRequest {
                db_name: db.to_string(),
                collection_name: c.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(scope, "ShowPartitions", s))?
            .into_inner();
        self.check(scope, "ShowPartitions", r.status.as_ref())?;
        Ok(r.partition_names)
    }

    /// Every index of the collection; none when Milvus says "index not found".
    async fn indexes(
        &self,
        db: &str,
        c: &str,
        scope: &str,
    ) -> Result<Vec<pb::IndexDescription>, VerifyError> {
        let r = self
            .m
            .client()
            .describe_index(pb::DescribeIndexRequest {
                db_name: db.to_string(),
                collection_name: c.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(scope, "DescribeIndex", s))?
            .into_inner();
        match self.m.check("DescribeIndex", r.status.as_ref()) {
            Ok(()) => Ok(r.index_descriptions),
            Err(TargetError::Rejected { code, reason, .. })
                if is_index_not_found(code, &reason) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(self.call_error(scope, "DescribeIndex")(e)),
        }
    }

    async fn load_state(
        &self,
        db: &str,
        c: &str,
        scope: &str,
        partitions: &[String],
    ) -> Result<i32, VerifyError> {
        let r = self
            .m
            .client()
            .get_load_state(pb::GetLoadStateRequest {
                db_name: db.to_string(),
                collection_name: c.to_string(),
                partition_names: partitions.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(scope, "GetLoadState", s))?
            .into_inner();
        self.check(scope, "GetLoadState", r.status.as_ref())?;
        Ok(r.state)
    }

    /// A strongly consistent query; `limit` None returns every match.
    async fn query(
        &self,
        db: &str,
        c: &str,
        expr: &str,
        output_fields: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<FieldData>, VerifyError> {
        let scope = scope_of(db, c);
        let mut query_params = Vec::new();
        if let Some(l) = limit {
            query_params.push(KeyValuePair {
                key: "limit".into(),
                value: l.to_string(),
            });
        }
        let r = self
            .m
            .client()
            .query(pb::QueryRequest {
                db_name: db.to_string(),
                collection_name: c.to_string(),
                expr: expr.to_string(),
                output_fields: output_fields.iter().map(|s| s.to_string()).collect(),
                query_params,
                // Strong with guarantee_timestamp 0: the proxy uses "now".
                consistency_level: ConsistencyLevel::Strong as i32,
                use_default_consistency: false,
                ..Default::default()
            })
            .await
            .map_err(|s| self.grpc(&scope, "Query", s))?
            .into_inner();
        self.check(&scope, "Query", r.status.as_ref())?;
        Ok(r.fields_data)
    }

    /// `count(*)` of the whole collection (duplicated keys count twice).
    async fn count(&self, db: &str, c: &str) -> Result<u64, VerifyError> {
        let cols = self.query(db, c, "", &["count(*)"], None).await?;
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
fn is_index_not_found(code: i32, reason: &str) -> bool {
    code == 700
        || code == common::ErrorCode::IndexNotExist as i32
        || reason.contains("index not found")
        || reason.contains("index not exist")
}

fn is_loaded_or_loading(state: i32) -> bool {
    state == LoadState::Loaded as i32 || state == LoadState::Loading as i32
}

/// `db.collection`.
fn scope_of(db: &str, c: &str) -> String {
    format!("{db}.{c}")
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
        self.rows(db, c, &s.schema()).await
    }

    async fn rows(
        &mut self,
        db: &str,
        c: &str,
        schema: &CollectionSchema,
    ) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let Some(pk) = schema.fields.iter().find(|f| f.is_primary_key) else {
            self.note(&scope, "no primary key: rows not compared");
            return Ok(());
        };
        match DataType::try_from(pk.data_type) {
            Ok(DataType::Int64) => self.rows_typed::<i64>(db, c, &pk.name).await,
            Ok(DataType::VarChar) => self.rows_typed::<String>(db, c, &pk.name).await,
            _ => {
                self.note(&scope, "unsupported primary key type: rows not compared");
                Ok(())
            }
        }
    }

    /// Walks both key sets in order, reports missing and extra keys and
    /// duplicates, then compares the values of sampled rows.
    async fn rows_typed<K: Key>(&mut self, db: &str, c: &str, pk: &str) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let (src, tgt) = (self.src, self.tgt);
        let (s_count, t_count) = tokio::try_join!(src.count(db, c), tgt.count(db, c))?;
        let mut s_cur = KeyCursor::<K>::new(src, db, c, pk);
        let mut t_cur = KeyCursor::<K>::new(tgt, db, c, pk);
        let mut s_buf = VecDeque::new();
        let mut t_buf = VecDeque::new();
        let mut diff = KeyDiff::default();
        let mut sampler = Sampler::new(s_count.max(t_count), self.opts.sample);
        loop {
            let need_s = s_buf.is_empty() && !s_cur.done;
            let need_t = t_buf.is_empty() && !t_cur.done;
            let (s_new, t_new) = tokio::try_join!(s_cur.next_if(need_s), t_cur.next_if(need_t))?;
            s_buf.extend(s_new);
            t_buf.extend(t_new);
            let common = diff.merge(&mut s_buf, &mut t_buf, s_cur.done, t_cur.done);
            sampler.offer(common);
            self.progress
                .tick(&scope, diff.source_keys(), s_count.max(t_count));
            if s_cur.done && t_cur.done && s_buf.is_empty() && t_buf.is_empty() {
                break;
            }
        }
        for cur in [&s_cur, &t_cur] {
            if cur.fell_back {
                let side = cur.api.side;
                self.note(
                    &scope,
                    format!("{side} returned keys out of order; batches were re-read by range"),
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
                    format!("query returned fewer keys than count(*) {count} ({keys}) before the last key"),
                ));
            }
        }
        self.report.rows_compared += diff.union();
        for what in diff.describe() {
            self.differ(&scope, what);
        }
        let (differences, notes) =
            duplicates(s_count, diff.source_keys(), t_count, diff.target_keys());
        for what in differences {
            self.differ(&scope, what);
        }
        for what in notes {
            self.note(&scope, what);
        }
        self.compare_samples(db, c, pk, sampler.keys).await
    }

    async fn compare_samples<K: Key>(
        &mut self,
        db: &str,
        c: &str,
        pk: &str,
        keys: Vec<K>,
    ) -> Result<(), VerifyError> {
        let scope = scope_of(db, c);
        let mut differing = Vec::new();
        for chunk in in_chunks(&keys, SAMPLE_BATCH, MAX_EXPR_BYTES) {
            let expr = in_expr(pk, chunk);
            let (s, t) = tokio::try_join!(
                self.src.query(db, c, &expr, &["*"], None),
                self.tgt.query(db, c, &expr, &["*"], None),
            )?;
            let s = rows_by_key::<K>(&s, pk).map_err(|m| unexpected(Side::Source, &scope, m))?;
            let t = rows_by_key::<K>(&t, pk).map_err(|m| unexpected(Side::Target, &scope, m))?;
            differing.extend(compare_rows(chunk, &s, &t));
        }
        let total = differing.len();
        for what in differing.into_iter().take(ROW_DIFFS_SHOWN) {
            self.differ(&scope, what);
        }
        if total > ROW_DIFFS_SHOWN {
            self.differ(
                &scope,
                format!(
                    "values differ in {total} of {} sampled rows ({} more not shown)",
                    keys.len(),
                    total - ROW_DIFFS_SHOWN
                ),
            );
        }
        Ok(())
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

// ------------------------------------------------------------------ metadata

/// Compares everything but rows. Pushes differences and notes (without scope).
fn compare_meta(
    s: &CollectionMeta,
    t: &CollectionMeta,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let (ss, ts) = (s.schema(), t.schema());
    compare_fields(&ss, &ts, diffs, notes);
    if ss.enable_dynamic_field != ts.enable_dynamic_field {
        diffs.push(both(
            "enable_dynamic_field",
            ss.enable_dynamic_field,
            ts.enable_dynamic_field,
        ));
    }
    if ss.description != ts.description {
        diffs.push(both(
            "description",
            quoted(&ss.description),
            quoted(&ts.description),
        ));
    }
    if s.desc.shards_num != t.desc.shards_num {
        diffs.push(both("shards_num", s.desc.shards_num, t.desc.shards_num));
    }
    if s.desc.consistency_level != t.desc.consistency_level {
        diffs.push(both(
            "consistency level",
            consistency_name(s.desc.consistency_level),
            consistency_name(t.desc.consistency_level),
        ));
    }
    let props = |kv: &[KeyValuePair]| {
        let mut m = param_map(kv);
        m.remove(SOURCE_ID_PROPERTY);
        m
    };
    for d in map_diff(&props(&s.desc.properties), &props(&t.desc.properties)) {
        diffs.push(format!("property {d}"));
    }
    compare_sets("partition", &s.partitions, &t.partitions, diffs);
    compare_sets("alias", &s.desc.aliases, &t.desc.aliases, diffs);
    compare_indexes(&s.indexes, &t.indexes, diffs);
    if s.load != t.load {
        diffs.push(both("load state", load_name(s.load), load_name(t.load)));
    }
    for (p, s_state, t_state) in zip_maps(&s.partition_loads, &t.partition_loads) {
        if s.load == t.load && s_state != t_state {
            diffs.push(both(
                &format!("load state of partition {p}"),
                s_state.map_or("absent", |x| load_name(*x)),
                t_state.map_or("absent", |x| load_name(*x)),
            ));
        }
    }
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

/// Reports the members only one side has.
fn compare_sets(what: &str, s: &[String], t: &[String], diffs: &mut Vec<String>) {
    let (s, t): (BTreeSet<&String>, BTreeSet<&String>) = (s.iter().collect(), t.iter().collect());
    for x in s.symmetric_difference(&t) {
        diffs.push(presence(&format!("{what} {}", quoted(x)), s.contains(x)));
    }
}

/// The user fields: system fields and the dynamic `$meta` field are left
/// out (the latter is covered by `enable_dynamic_field`).
fn user_fields(schema: &CollectionSchema) -> Vec<&FieldSchema> {
    schema
        .fields
        .iter()
        .filter(|f| !is_system_field(f) && !f.is_dynamic)
        .collect()
}

fn compare_fields(
    s: &CollectionSchema,
    t: &CollectionSchema,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let (sf, tf) = (user_fields(s), user_fields(t));
    let names = |v: &[&FieldSchema]| v.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    let (sn, tn) = (names(&sf), names(&tf));
    compare_sets("field", &sn, &tn, diffs);
    let common_s: Vec<&String> = sn.iter().filter(|n| tn.contains(n)).collect();
    let common_t: Vec<&String> = tn.iter().filter(|n| sn.contains(n)).collect();
    if common_s != common_t {
        diffs.push(both(
            "field order",
            format!("{common_s:?}"),
            format!("{common_t:?}"),
        ));
    }
    for s_field in &sf {
        if let Some(t_field) = tf.iter().find(|f| f.name == s_field.name) {
            compare_field(s_field, t_field, diffs, notes);
        }
    }
}

fn compare_field(
    s: &FieldSchema,
    t: &FieldSchema,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let name = &s.name;
    let mut check = |what: &str, sv: String, tv: String| {
        if sv != tv {
            diffs.push(both(&format!("field {name} {what}"), sv, tv));
        }
    };
    check("data_type", type_name(s.data_type), type_name(t.data_type));
    check(
        "element_type",
        type_name(s.element_type),
        type_name(t.element_type),
    );
    check(
        "is_primary_key",
        s.is_primary_key.to_string(),
        t.is_primary_key.to_string(),
    );
    check(
        "is_partition_key",
        s.is_partition_key.to_string(),
        t.is_partition_key.to_string(),
    );
    check(
        "description",
        quoted(&s.description),
        quoted(&t.description),
    );
    check(
        "default_value",
        format!("{:?}", s.default_value),
        format!("{:?}", t.default_value),
    );
    for d in map_diff(&param_map(&s.type_params), &param_map(&t.type_params)) {
        diffs.push(format!("field {name} type param {d}"));
    }
    match (s.auto_id, t.auto_id) {
        (true, false) => notes.push(format!(
            "field {name}: auto_id on the source, off on the target (expected: the replica keeps the source's keys)"
        )),
        (false, true) => diffs.push(both(&format!("field {name} auto_id"), false, true)),
        _ => {}
    }
}

fn compare_indexes(
    s: &[pb::IndexDescription],
    t: &[pb::IndexDescription],
    diffs: &mut Vec<String>,
) {
    let by_name = |v: &[pb::IndexDescription]| {
        v.iter()
            .map(|i| (i.index_name.clone(), i.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (sm, tm) = (by_name(s), by_name(t));
    for (name, si, ti) in zip_maps(&sm, &tm) {
        let label = format!("index {}", quoted(name));
        let (si, ti) = match (si, ti) {
            (Some(a), Some(b)) => (a, b),
            (a, _) => {
                let field = a.or(ti).map(|i| i.field_name.as_str()).unwrap_or("");
                diffs.push(presence(&format!("{label} on field {field}"), a.is_some()));
                continue;
            }
        };
        if si.field_name != ti.field_name {
            diffs.push(both(
                &format!("{label} field"),
                &si.field_name,
                &ti.field_name,
            ));
        }
        for d in map_diff(&param_map(&si.params), &param_map(&ti.params)) {
            diffs.push(format!("{label} param {d}"));
        }
    }
}

/// Key-value pairs as a map; values that hold a JSON object or array (an
/// index's `params`) are parsed so that key order does not matter.
fn param_map(kv: &[KeyValuePair]) -> BTreeMap<String, Value> {
    kv.iter()
        .map(|p| {
            let v = p.value.trim_start();
            let parsed = if v.starts_with('{') || v.starts_with('[') {
                serde_json::from_str(&p.value).ok()
            } else {
                None
            };
            (
                p.key.clone(),
                parsed.unwrap_or_else(|| Value::String(p.value.clone())),
            )
        })
        .collect()
}

/// The keys whose values differ: `key (source X, target Y)`, "absent" for
/// a key one side lacks. JSON object values compare regardless of key order.
fn map_diff(s: &BTreeMap<String, Value>, t: &BTreeMap<String, Value>) -> Vec<String> {
    zip_maps(s, t)
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(k, a, b)| both(k, shown(a), shown(b)))
        .collect()
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(Value::String(s)) => quoted(s),
        Some(v) => short(v),
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn type_name(t: i32) -> String {
    DataType::try_from(t)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn consistency_name(c: i32) -> String {
    ConsistencyLevel::try_from(c)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| c.to_string())
}

fn load_name(l: i32) -> &'static str {
    match LoadState::try_from(l) {
        Ok(LoadState::NotExist) => "not exist",
        Ok(LoadState::NotLoad) => "not loaded",
        Ok(LoadState::Loading) => "loading",
        Ok(LoadState::Loaded) => "loaded",
        Err(_) => "unknown",
    }
}

// ------------------------------------------------------------------ keys

/// A primary key type: `i64` or `String`, ordered as Milvus orders them
/// (numbers; strings byte-wise).
trait Key: Ord + Clone + Default + Send + Sync + fmt::Debug + 'static {
    /// The key as an expression literal.
    fn literal(&self) -> String;
    /// The keys in a query result column.
    fn column(f: &FieldData) -> Option<Vec<Self>>;
    /// `pk > self`.
    fn gt_expr(&self, pk: &str) -> String {
        format!("{pk} > {}", self.literal())
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
}

/// A Milvus expression string literal: double quotes, with `"` and `\`
/// escaped and control characters as escapes (Milvus unquotes with Go's
/// rules; other characters, including non-ASCII, pass as they are).
fn quote_str(s: &str) -> String {
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
fn in_expr<K: Key>(pk: &str, keys: &[K]) -> String {
    let list: Vec<String> = keys.iter().map(Key::literal).collect();
    format!("{pk} in [{}]", list.join(", "))
}

/// `keys` cut into runs of at most `max_keys` keys whose literals take at
/// most about `max_bytes` (a single longer key still gets a run of its own).
fn in_chunks<K: Key>(keys: &[K], max_keys: usize, max_bytes: usize) -> Vec<&[K]> {
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
fn after_expr<K: Key>(pk: &str, last: Option<&K>) -> String {
    last.map(|k| k.gt_expr(pk)).unwrap_or_default()
}

/// The expression selecting keys in `(last, max]`.
fn window_expr<K: Key>(pk: &str, last: Option<&K>, max: &K) -> String {
    let upper = format!("{pk} <= {}", max.literal());
    match last {
        Some(k) => format!("{} && {upper}", k.gt_expr(pk)),
        None => upper,
    }
}

fn strictly_increasing<K: Ord>(keys: &[K]) -> bool {
    keys.windows(2).all(|w| w[0] < w[1])
}

/// Reads one side's primary keys in ascending order, a batch at a time,
/// with `pk > last` and the largest `limit` Milvus allows.
struct KeyCursor<'a, K> {
    api: Api<'a>,
    db: &'a str,
    collection: &'a str,
    pk: &'a str,
    last: Option<K>,
    /// No keys after `last`.
    done: bool,
    /// A batch came back unordered and was re-read by range.
    fell_back: bool,
}

impl<'a, K: Key> KeyCursor<'a, K> {
    fn new(api: Api<'a>, db: &'a str, collection: &'a str, pk: &'a str) -> Self {
        Self {
            api,
            db,
            collection,
            pk,
            last: None,
            done: false,
            fell_back: false,
        }
    }

    /// The next batch when `wanted`, else nothing.
    async fn next_if(&mut self, wanted: bool) -> Result<Vec<K>, VerifyError> {
        if wanted {
            self.next().await
        } else {
            Ok(Vec::new())
        }
    }

    /// The next batch of keys, ascending. Milvus 2.3 answers a query with a
    /// limit with the smallest matching keys in ascending order; if a batch
    /// is not ascending, that cannot be trusted, and every key up to the
    /// batch's largest one is read again without a limit.
    async fn next(&mut self) -> Result<Vec<K>, VerifyError> {
        let expr = after_expr(self.pk, self.last.as_ref());
        let mut keys = self.fetch(&expr, Some(KEY_BATCH)).await?;
        if keys.len() < KEY_BATCH {
            self.done = true;
        }
        if !strictly_increasing(&keys) {
            self.fell_back = true;
            keys.sort();
            keys.dedup();
            if let Some(max) = keys.last().cloned() {
                let window = window_expr(self.pk, self.last.as_ref(), &max);
                // Kept with the batch, so the cursor moves on even if rows
                // vanish meanwhile.
                keys.extend(self.fetch(&window, None).await?);
                keys.sort();
                keys.dedup();
            }
        }
        if let Some(k) = keys.last() {
            self.last = Some(k.clone());
        }
        Ok(keys)
    }

    /// Whether keys exist after the last one returned: a check that the
    /// walk did not end early, for when `count(*)` disagrees with it.
    async fn ended_early(&self) -> Result<bool, VerifyError> {
        let expr = after_expr(self.pk, self.last.as_ref());
        Ok(!self.fetch(&expr, Some(1)).await?.is_empty())
    }

    async fn fetch(&self, expr: &str, limit: Option<usize>) -> Result<Vec<K>, VerifyError> {
        let cols = self
            .api
            .query(self.db, self.collection, expr, &[self.pk], limit)
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
struct KeyDiff<K> {
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
    fn merge(
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

    fn source_keys(&self) -> u64 {
        self.common + self.missing
    }

    fn target_keys(&self) -> u64 {
        self.common + self.extra
    }

    fn union(&self) -> u64 {
        self.common + self.missing + self.extra
    }

    /// The differences: keys missing on the target, extra keys on it.
    fn describe(&self) -> Vec<String> {
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

/// Compares `count(*)` with the number of distinct keys on each side.
/// Milvus counts a key written twice without upsert twice (and on 2.3.5 an
/// upsert into another partition than the one holding the key leaves both
/// rows), on the source as on the target, faithfully replicated. So only a target with *more* surplus rows
/// than the source is a difference (duplicates the replication made); any
/// other surplus is a note. Returns (differences, notes).
fn duplicates(s_count: u64, s_keys: u64, t_count: u64, t_keys: u64) -> (Vec<String>, Vec<String>) {
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

/// Picks about `wanted` keys spread evenly over a stream of about
/// `expected` keys.
struct Sampler<K> {
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

// ------------------------------------------------------------------ row values

/// A query result as `key -> column -> value`. The dynamic field's keys
/// become columns of their own, as pymilvus shows them.
fn rows_by_key<K: Key>(
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

fn add_cell(row: &mut BTreeMap<String, Value>, col: &FieldData, v: Value) {
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

/// One line per sampled key whose row differs.
fn compare_rows<K: Key>(
    keys: &[K],
    s: &BTreeMap<K, BTreeMap<String, Value>>,
    t: &BTreeMap<K, BTreeMap<String, Value>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        let (sr, tr) = match (s.get(k), t.get(k)) {
            (Some(a), Some(b)) => (a, b),
            // Deleted or written during the run; keys were compared already.
            (a, b) => {
                out.push(both(
                    &format!("row {}", k.show()),
                    if a.is_some() { "present" } else { "missing" },
                    if b.is_some() { "present" } else { "missing" },
                ));
                continue;
            }
        };
        let fields: Vec<String> = zip_maps(sr, tr)
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(f, a, b)| both(f, value_shown(a), value_shown(b)))
            .collect();
        if !fields.is_empty() {
            out.push(format!("row {}: {}", k.show(), fields.join("; ")));
        }
    }
    out
}

fn value_shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), short)
}

/// `v` as JSON, cut to [`VALUE_SHOWN`] characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= VALUE_SHOWN {
        return s;
    }
    let mut cut: String = s.chars().take(VALUE_SHOWN).collect();
    cut.push('…');
    cut
}

// ------------------------------------------------------------------ progress

/// A progress line on stderr, at most once per [`PROGRESS_EVERY`].
struct Progress {
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
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
    use crate::proto::schema::{ScalarField, StringArray};
    use serde_json::json;

    fn kv(k: &str, v: &str) -> KeyValuePair {
        KeyValuePair {
            key: k.into(),
            value: v.into(),
        }
    }

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
        let (d, _) = duplicates(10, 10, 12, 10);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("duplicate primary keys on the target"));
    }

    #[test]
    fn param_maps_ignore_key_order() {
        let a = param_map(&[
            kv("index_type", "HNSW"),
            kv("metric_type", "L2"),
            kv("params", r#"{"M":"16","efConstruction":"200"}"#),
        ]);
        let b = param_map(&[
            kv("params", r#"{"efConstruction": "200", "M": "16"}"#),
            kv("metric_type", "L2"),
            kv("index_type", "HNSW"),
        ]);
        assert!(map_diff(&a, &b).is_empty());
        let c = param_map(&[
            kv("index_type", "HNSW"),
            kv("params", r#"{"M":"8","efConstruction":"200"}"#),
        ]);
        assert_eq!(
            map_diff(&a, &c),
            vec![
                r#"metric_type (source "L2", target absent)"#.to_string(),
                r#"params (source {"M":"16","efConstruction":"200"}, target {"M":"8","efConstruction":"200"})"#
                    .to_string(),
            ]
        );
        // A value that only looks like JSON stays a string.
        assert_eq!(param_map(&[kv("x", "{oops")])["x"], json!("{oops"));
    }

    #[test]
    fn index_comparison() {
        let idx = |name: &str, field: &str, metric: &str| pb::IndexDescription {
            index_name: name.into(),
            field_name: field.into(),
            params: vec![kv("index_type", "FLAT"), kv("metric_type", metric)],
            ..Default::default()
        };
        let mut d = Vec::new();
        compare_indexes(
            &[idx("v", "v", "L2"), idx("s", "s", "L2")],
            &[idx("v", "v", "IP"), idx("w", "w", "L2")],
            &mut d,
        );
        assert_eq!(
            d,
            vec![
                r#"index "s" on field s (source present, target missing)"#,
                r#"index "v" param metric_type (source "L2", target "IP")"#,
                r#"index "w" on field w (source missing, target present)"#,
            ]
        );
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
        assert_eq!(window_expr("id", Some(&1i64), &9), "id > 1 && id <= 9");
        assert_eq!(window_expr::<i64>("id", None, &9), "id <= 9");
        assert_eq!(in_expr("id", &[1i64, 2, 3]), "id in [1, 2, 3]");
        assert_eq!(
            in_expr("pk", &["a".to_string(), "b\\".to_string()]),
            r#"pk in ["a", "b\\"]"#
        );
        assert!(strictly_increasing(&[1, 2, 5]));
        assert!(!strictly_increasing(&[1, 2, 2]));
        assert!(!strictly_increasing(&[3, 1]));
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

    fn field(name: &str, dt: DataType, params: &[(&str, &str)]) -> FieldSchema {
        FieldSchema {
            field_id: 100,
            name: name.into(),
            data_type: dt as i32,
            type_params: params.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        }
    }

    fn meta(fields: Vec<FieldSchema>) -> CollectionMeta {
        CollectionMeta {
            desc: pb::DescribeCollectionResponse {
                schema: Some(CollectionSchema {
                    name: "c".into(),
                    fields,
                    enable_dynamic_field: true,
                    ..Default::default()
                }),
                shards_num: 2,
                properties: vec![kv("collection.ttl.seconds", "60")],
                ..Default::default()
            },
            partitions: vec!["_default".into()],
            load: LoadState::Loaded as i32,
            ..Default::default()
        }
    }

    #[test]
    fn replica_deviations_are_not_differences() {
        let mut pk = field("id", DataType::Int64, &[]);
        pk.is_primary_key = true;
        pk.auto_id = true;
        let rowid = FieldSchema {
            field_id: 0,
            ..field("RowID", DataType::Int64, &[])
        };
        let dynamic = FieldSchema {
            is_dynamic: true,
            ..field("$meta", DataType::Json, &[])
        };
        let v = field("v", DataType::FloatVector, &[("dim", "4")]);
        let s = meta(vec![rowid, pk.clone(), v.clone(), dynamic]);
        let mut t = meta(vec![
            FieldSchema {
                auto_id: false,
                ..pk
            },
            v,
        ]);
        t.desc.properties.push(kv(SOURCE_ID_PROPERTY, "4455"));
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("auto_id"));
    }

    #[test]
    fn schema_and_collection_differences() {
        let mut pk = field("id", DataType::Int64, &[]);
        pk.is_primary_key = true;
        let s = meta(vec![
            pk.clone(),
            field("v", DataType::FloatVector, &[("dim", "4")]),
            field("s", DataType::VarChar, &[("max_length", "64")]),
        ]);
        let mut t = meta(vec![
            pk,
            field("v", DataType::FloatVector, &[("dim", "8")]),
            field("s", DataType::Int32, &[]),
            field("x", DataType::Bool, &[]),
        ]);
        t.desc.shards_num = 1;
        t.desc.properties.clear();
        t.desc.aliases = vec!["al".into()];
        t.partitions.push("p1".into());
        t.load = LoadState::NotLoad as i32;
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert_eq!(
            d,
            vec![
                r#"field "x" (source missing, target present)"#,
                "field v type param dim (source \"4\", target \"8\")",
                "field s data_type (source VarChar, target Int32)",
                "field s type param max_length (source \"64\", target absent)",
                "shards_num (source 2, target 1)",
                "property collection.ttl.seconds (source \"60\", target absent)",
                r#"partition "p1" (source missing, target present)"#,
                r#"alias "al" (source missing, target present)"#,
                "load state (source loaded, target not loaded)",
            ]
        );
        assert!(n.is_empty());
    }

    #[test]
    fn field_order_is_compared() {
        let s = meta(vec![
            field("a", DataType::Bool, &[]),
            field("b", DataType::Bool, &[]),
        ]);
        let t = meta(vec![
            field("b", DataType::Bool, &[]),
            field("a", DataType::Bool, &[]),
        ]);
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("field order"));
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
