//! Prometheus metrics of one agent process, served at `GET /metrics`.
//!
//! We use the Prometheus organisation's `prometheus-client` crate: it has no
//! global registry (each [`Metrics`] owns its own, which keeps tests
//! independent and fits "no global mutable state"), label sets are typed
//! structs, and it writes the OpenMetrics text format that Prometheus scrapes.
//!
//! ```
//! let m = milvus_cdc::metrics::Metrics::new();
//! m.record_request("list", 200);
//! assert!(m.encode().contains("milvus_cdc_api_requests_total"));
//! ```

use std::sync::{atomic::AtomicU64, Arc};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Metric, Registry},
};

/// Buckets of [`Metrics::source_delay`], in seconds.
const SOURCE_DELAY_BUCKETS: [f64; 15] = [
    0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 5.0, 10.0, 60.0,
];

/// Buckets of [`Metrics::window_delay`], in seconds.
const WINDOW_DELAY_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 5.0, 10.0,
];

/// Labels of API request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `create`, `list`, ..., or `invalid` when unparsable.
    pub request_type: String,
    /// The response code (200, 400, ...).
    pub code: u16,
}

/// Labels of per-state gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Task state name.
    pub state: String,
}

/// Labels of per-channel metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// Task id (empty outside a task, e.g. in tools).
    pub task_id: String,
    /// Channel name.
    pub channel: String,
}

impl ChannelLabels {
    /// These labels plus a message kind.
    pub fn with_kind(&self, kind: &str) -> KindLabels {
        KindLabels {
            task_id: self.task_id.clone(),
            channel: self.channel.clone(),
            kind: kind.to_string(),
        }
    }
}

/// Labels of per-channel, per-message-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Task id.
    pub task_id: String,
    /// Channel name.
    pub channel: String,
    /// Event kind (`insert`, `time_tick`, ...).
    pub kind: String,
}

/// Labels of per-task metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// Task id.
    pub task_id: String,
}

/// Labels of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Task id.
    pub task_id: String,
    /// Error kind (`target_unreachable`, `target_rejected`, `target_auth`, `checkpoint`).
    pub kind: String,
}

/// Labels of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
}

/// Every metric of the process. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `/cdc` requests by type and response code.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Number of tasks by state, as last seen in the store.
    pub tasks: Family<StateLabels, Gauge>,
    /// Messages read from the source, by kind.
    pub source_messages: Family<KindLabels, Counter>,
    /// Payload bytes read from the source.
    pub source_bytes: Family<ChannelLabels, Counter>,
    /// Source messages that could not be decoded.
    pub source_decode_errors: Family<ChannelLabels, Counter>,
    /// Times a channel was reopened after a failure.
    pub source_reconnects: Family<ChannelLabels, Counter>,
    /// Sequence gaps seen (messages removed from the source before read).
    pub source_gaps: Family<ChannelLabels, Counter>,
    /// Source messages applied to the target, by kind.
    pub applied_messages: Family<KindLabels, Counter>,
    /// Rows applied to the target (inserts as upserts, deletes).
    pub applied_rows: Family<KindLabels, Counter>,
    /// Payload bytes applied.
    pub applied_bytes: Family<ChannelLabels, Counter>,
    /// Inserted rows never written because a later change in the same
    /// window replaced or deleted them.
    pub reduced_rows: Family<TaskLabels, Counter>,
    /// Messages skipped (not replicated, undecodable, or for dropped collections).
    pub skipped_messages: Family<KindLabels, Counter>,
    /// Time to apply one write to the target.
    pub apply_latency: Family<TaskLabels, Histogram>,
    /// From a message's source timestamp to the agent reading it: the part
    /// of the replication lag that the source (and its queue) adds.
    pub source_delay: Family<TaskLabels, Histogram>,
    /// From reading the time tick that closes a window to the window applied
    /// on the target: the part of the replication lag that the agent adds.
    pub window_delay: Family<TaskLabels, Histogram>,
    /// Failed writes and checkpoint saves, by kind (each is retried).
    pub apply_errors: Family<ErrorLabels, Counter>,
    /// Now minus the source time of the last applied message, per channel.
    pub replication_lag: Family<ChannelLabels, Gauge<f64, AtomicU64>>,
    /// Seconds since the task's checkpoints were last saved.
    pub checkpoint_age: Family<TaskLabels, Gauge<f64, AtomicU64>>,
    /// Checkpoint saves.
    pub checkpoints_saved: Family<TaskLabels, Counter>,
    /// 1 while this replica leads.
    pub is_leader: Gauge,
    /// 1 while the source's message queue answers this replica's probe.
    pub source_up: Gauge,
    /// Times this replica became leader.
    pub leader_changes: Counter,
    /// Campaign transactions sent.
    pub election_attempts: Counter,
    /// Seconds since the lease was last renewed (while one is held).
    pub lease_renewal_age: Gauge<f64, AtomicU64>,
    /// Writes refused because this replica is no longer the leader.
    pub fencing_refusals: Counter,
    /// `/cdc` requests forwarded to the leader, by outcome.
    pub forwarded_requests: Family<OutcomeLabels, Counter>,
}

/// Labels of forwarded requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `retried`, `failed`.
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (`/metrics` lists
    /// them in this order).
    pub fn new() -> Self {
        let mut r = Registrar(Registry::with_prefix("milvus_cdc"));
        // The fields are registered in the order written here (Rust
        // evaluates a struct expression's fields in source order).
        let mut metrics = Self {
            registry: Arc::default(),
            api_requests: r.add(
                "api_requests",
                "Requests to POST /cdc by request_type and response code",
            ),
            tasks: r.add("tasks", "Number of tasks by state"),
            source_messages: r.add(
                "source_messages",
                "Messages read from the source message queue, by task, channel and kind",
            ),
            source_bytes: r.add("source_bytes", "Payload bytes read from the source message queue"),
            source_decode_errors: r.add(
                "source_decode_errors",
                "Source messages that could not be decoded (logged with their position)",
            ),
            source_reconnects: r.add(
                "source_reconnects",
                "Times a source channel was reopened after a failure",
            ),
            source_gaps: r.add(
                "source_gaps",
                "Sequence gaps: source messages removed by retention before they were read",
            ),
            applied_messages: r.add(
                "applied_messages",
                "Source messages applied to the target, by task, channel and kind",
            ),
            applied_rows: r.add(
                "applied_rows",
                "Rows applied to the target (insert = upsert, delete), by task, channel and kind",
            ),
            applied_bytes: r.add("applied_bytes", "Insert payload bytes applied to the target"),
            reduced_rows: r.add(
                "reduced_rows",
                "Inserted rows not written because a later change of the same window replaced or deleted them",
            ),
            skipped_messages: r.add(
                "skipped_messages",
                "Source messages not applied: types not replicated, undecodable, or for dropped collections",
            ),
            apply_latency: r.histograms(
                "apply_latency_seconds",
                "Time to apply one write (batch or DDL) to the target",
                || Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            source_delay: r.histograms(
                "source_delay_seconds",
                "From a message's source timestamp to the agent reading it (the source's share of the lag; a backlog read shows its age)",
                || Histogram::new(SOURCE_DELAY_BUCKETS),
            ),
            window_delay: r.histograms(
                "window_delay_seconds",
                "From reading the time tick that closes a window to the window applied on the target (the agent's share of the lag)",
                || Histogram::new(WINDOW_DELAY_BUCKETS),
            ),
            apply_errors: r.add(
                "apply_errors",
                "Failed target writes and checkpoint saves by kind; each is retried with backoff",
            ),
            replication_lag: r.add(
                "replication_lag_seconds",
                "Now minus the source time of the last applied message (0 when idle and caught up); rises while a channel is stuck",
            ),
            checkpoint_age: r.add(
                "checkpoint_age_seconds",
                "Seconds since the task's checkpoints were last saved or found current",
            ),
            checkpoints_saved: r.add("checkpoints_saved", "Checkpoint saves to etcd"),
            is_leader: r.add("is_leader", "1 while this replica is the leader"),
            source_up: r.add(
                "source_up",
                "1 while the source's message queue answers (probed every few seconds)",
            ),
            leader_changes: r.add("leader_changes", "Times this replica became the leader"),
            election_attempts: r.add("election_attempts", "Campaign transactions sent to etcd"),
            lease_renewal_age: r.add(
                "lease_renewal_age_seconds",
                "Seconds since this replica's lease was last renewed",
            ),
            fencing_refusals: r.add(
                "fencing_refusals",
                "Writes refused because this replica no longer holds leadership",
            ),
            forwarded_requests: r.add(
                "forwarded_requests",
                "/cdc requests a follower forwarded to the leader, by outcome",
            ),
        };
        let build: Family<BuildLabels, Gauge> = r.add("build_info", "Version of the running agent");
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        metrics.registry = Arc::new(r.0);
        metrics
    }

    /// Counts one `/cdc` request.
    pub fn record_request(&self, request_type: &str, code: u16) {
        self.api_requests
            .get_or_create(&RequestLabels {
                request_type: request_type.to_string(),
                code,
            })
            .inc();
    }

    /// Sets the task-count gauges from a list of states.
    pub fn set_task_states(&self, states: impl IntoIterator<Item = crate::task::TaskState>) {
        let mut counts = [0i64; 3];
        for s in states {
            counts[crate::task::TaskState::ALL
                .iter()
                .position(|x| *x == s)
                .unwrap_or(0)] += 1;
        }
        for (state, n) in crate::task::TaskState::ALL.iter().zip(counts) {
            self.tasks
                .get_or_create(&StateLabels {
                    state: state.as_str().into(),
                })
                .set(n);
        }
    }

    /// Gives every labelled family one series with empty labels, so that
    /// [`Metrics::encode`] declares (`# HELP`, `# TYPE`) every registered
    /// metric: the text format leaves out a family without series. For
    /// tests that list the metrics; the agent never calls it, since the
    /// placeholder series would be scraped.
    pub fn add_placeholder_series(&self) {
        // Exhaustive: a new field must be handled here.
        let Self {
            registry: _,
            api_requests,
            tasks,
            source_messages,
            source_bytes,
            source_decode_errors,
            source_reconnects,
            source_gaps,
            applied_messages,
            applied_rows,
            applied_bytes,
            reduced_rows,
            skipped_messages,
            apply_latency,
            source_delay,
            window_delay,
            apply_errors,
            replication_lag,
            checkpoint_age,
            checkpoints_saved,
            is_leader: _,
            source_up: _,
            leader_changes: _,
            election_attempts: _,
            lease_renewal_age: _,
            fencing_refusals: _,
            forwarded_requests,
        } = self;
        let channel = ChannelLabels {
            task_id: String::new(),
            channel: String::new(),
        };
        let kind = channel.with_kind("");
        let task = TaskLabels {
            task_id: String::new(),
        };
        let _ = api_requests.get_or_create(&RequestLabels {
            request_type: String::new(),
            code: 0,
        });
        let _ = tasks.get_or_create(&StateLabels {
            state: String::new(),
        });
        for f in [
            source_messages,
            applied_messages,
            applied_rows,
            skipped_messages,
        ] {
            let _ = f.get_or_create(&kind);
        }
        for f in [
            source_bytes,
            source_decode_errors,
            source_reconnects,
            source_gaps,
            applied_bytes,
        ] {
            let _ = f.get_or_create(&channel);
        }
        for f in [reduced_rows, checkpoints_saved] {
            let _ = f.get_or_create(&task);
        }
        for f in [apply_latency, source_delay, window_delay] {
            let _ = f.get_or_create(&task);
        }
        let _ = apply_errors.get_or_create(&ErrorLabels {
            task_id: String::new(),
            kind: String::new(),
        });
        let _ = replication_lag.get_or_create(&channel);
        let _ = checkpoint_age.get_or_create(&task);
        let _ = forwarded_requests.get_or_create(&OutcomeLabels {
            outcome: String::new(),
        });
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Registers metrics under the registry's prefix and hands them back: a
/// handle shares its values with the registered clone, so the registry
/// encodes what the handle records.
struct Registrar(Registry);

impl Registrar {
    /// A new metric of type `M` (a counter, a gauge, or a family of them),
    /// registered as `name` with `help`.
    fn add<M: Metric + Clone + Default>(&mut self, name: &str, help: &str) -> M {
        self.register(name, help, M::default())
    }

    /// A new family of per-task histograms, each made by `new` (which sets
    /// the buckets), registered as `name` with `help`.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        new: fn() -> Histogram,
    ) -> Family<TaskLabels, Histogram> {
        self.register(name, help, Family::new_with_constructor(new))
    }

    /// Registers `metric` as `name` with `help` and returns it.
    fn register<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}
