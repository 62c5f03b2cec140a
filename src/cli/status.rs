//! `milvus-cdc status`: every replica's `/status` and `/metrics`, as a
//! table or JSON.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode, time::Duration};

use serde_json::{json, Value};

use super::{
    http::{base_urls, emit, fail, http_client, send, HttpClient},
    task::{format_secs, format_table},
    StatusArgs, EXIT_API_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE,
};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `{name="value",...}` after its opening brace; returns the labels
/// and the text after the closing brace.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((name, value));
        rest = &rest[end + 1..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// Every sample of a Prometheus or OpenMetrics text exposition (comments
/// and lines that do not parse are skipped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(name_end) = line.find(|c: char| c == '{' || c.is_whitespace()) else {
            continue;
        };
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let Some((l, after)) = parse_labels(inner) else {
                continue;
            };
            labels = l;
            rest = after;
        }
        let Some(value) = rest.split_whitespace().next().and_then(parse_value) else {
            continue;
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// Lag and checkpoint age of one task, from a replica's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
struct TaskLag {
    /// Largest `milvus_cdc_replication_lag_seconds` over the task's channels.
    lag_seconds: Option<f64>,
    /// The channel with that lag.
    slowest_channel: Option<String>,
    /// `milvus_cdc_checkpoint_age_seconds` of the task.
    checkpoint_age_seconds: Option<f64>,
}

/// Per `task_id`: the largest replication lag over its channels (and which
/// channel) and its checkpoint age.
fn task_lags(samples: &[Sample]) -> BTreeMap<String, TaskLag> {
    let mut out: BTreeMap<String, TaskLag> = BTreeMap::new();
    for s in samples {
        let Some(task) = s.label("task_id") else {
            continue;
        };
        match s.name.as_str() {
            "milvus_cdc_replication_lag_seconds" => {
                let entry = out.entry(task.to_string()).or_default();
                if !s.value.is_nan() && entry.lag_seconds.is_none_or(|cur| s.value > cur) {
                    entry.lag_seconds = Some(s.value);
                    entry.slowest_channel = s.label("channel").map(str::to_string);
                }
            }
            "milvus_cdc_checkpoint_age_seconds" => {
                out.entry(task.to_string())
                    .or_default()
                    .checkpoint_age_seconds = Some(s.value);
            }
            _ => {}
        }
    }
    out
}

/// What one replica answered.
#[derive(Debug)]
struct ReplicaReport {
    server: String,
    /// `/status` answer; `Err` when the replica could not be asked.
    status: Result<Value, ReplicaError>,
    /// Whether `/readyz` answered 200.
    ready: Option<bool>,
    /// Lag of the tasks this replica runs.
    tasks: BTreeMap<String, TaskLag>,
    /// A problem with `/metrics` (the status is still shown).
    metrics_error: Option<String>,
}

#[derive(Debug)]
enum ReplicaError {
    Unreachable(String),
    BadAnswer(String),
}

impl ReplicaError {
    fn message(&self) -> &str {
        match self {
            ReplicaError::Unreachable(m) | ReplicaError::BadAnswer(m) => m,
        }
    }
}

async fn ask_replica(client: &HttpClient, server: String, timeout: Duration) -> ReplicaReport {
    let get = |path: &'static str| {
        let url = format!("{server}{path}");
        async move { send(client, hyper::Method::GET, &url, None, timeout, None).await }
    };
    let (status, ready, metrics) = tokio::join!(get("/status"), get("/readyz"), get("/metrics"));
    let status = match status {
        Err(e) => Err(ReplicaError::Unreachable(e.to_string())),
        Ok(a) if a.status != 200 => Err(ReplicaError::BadAnswer(format!(
            "{server}/status answered HTTP {}",
            a.status
        ))),
        Ok(a) => match serde_json::from_slice::<Value>(&a.body) {
            Ok(v) if v.get("role").is_some() => Ok(v),
            _ => Err(ReplicaError::BadAnswer(format!(
                "{server}/status did not answer a milvus-cdc status"
            ))),
        },
    };
    let ready = ready.ok().map(|a| a.status == 200);
    let running: Vec<String> = status
        .as_ref()
        .ok()
        .and_then(|v| v.get("running_tasks"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let (mut tasks, metrics_error) = match metrics {
        Ok(a) if a.status == 200 => (
            task_lags(&parse_metrics(&String::from_utf8_lossy(&a.body))),
            None,
        ),
        Ok(a) => (
            BTreeMap::new(),
            Some(format!("{server}/metrics answered HTTP {}", a.status)),
        ),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    };
    // Gauges of tasks that stopped here keep their last value: only the
    // tasks this replica runs now are shown.
    tasks.retain(|id, _| running.contains(id));
    for id in running {
        tasks.entry(id).or_default();
    }
    ReplicaReport {
        server,
        status,
        ready,
        tasks,
        metrics_error,
    }
}

fn json_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The replicas table, the tasks table and a line about the leader.
fn format_status(reports: &[ReplicaReport]) -> String {
    let mut rows = Vec::new();
    let mut leaders: Vec<String> = Vec::new();
    for r in reports {
        match &r.status {
            Ok(v) => {
                let leader = json_text(v.get("leader"));
                if leader != "-" && !leaders.contains(&leader) {
                    leaders.push(leader.clone());
                }
                let running = v
                    .get("running_tasks")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                rows.push(vec![
                    r.server.clone(),
                    json_text(v.get("role")),
                    match r.ready {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "-".into(),
                    },
                    leader,
                    json_text(v.get("term")),
                    running.to_string(),
                    json_text(v.get("version")),
                ]);
            }
            Err(e) => {
                let role = match e {
                    ReplicaError::Unreachable(_) => "UNREACHABLE",
                    ReplicaError::BadAnswer(_) => "ERROR",
                };
                let mut row = vec![r.server.clone(), role.to_string()];
                row.resize(7, "-".to_string());
                rows.push(row);
            }
        }
    }
    let mut out = format_table(
        &[
            "REPLICA", "ROLE", "READY", "LEADER", "TERM", "TASKS", "VERSION",
        ],
        &rows,
    );
    out.push('\n');
    match leaders.as_slice() {
        [] => out.push_str("leader: none known\n"),
        [one] => {
            let _ = writeln!(out, "leader: {one}");
        }
        many => {
            let _ = writeln!(
                out,
                "leader: replicas disagree ({}); leadership is moving or a replica is cut off",
                many.join(", ")
            );
        }
    }
    let task_rows: Vec<Vec<String>> = reports
        .iter()
        .flat_map(|r| {
            r.tasks.iter().map(|(id, lag)| {
                vec![
                    id.clone(),
                    r.server.clone(),
                    format_secs(lag.lag_seconds),
                    lag.slowest_channel.clone().unwrap_or_else(|| "-".into()),
                    format_secs(lag.checkpoint_age_seconds),
                ]
            })
        })
        .collect();
    out.push('\n');
    if task_rows.is_empty() {
        out.push_str("no task is running on these replicas\n");
    } else {
        out.push_str(&format_table(
            &[
                "TASK",
                "RUNNING ON",
                "LAG",
                "SLOWEST CHANNEL",
                "CHECKPOINT AGE",
            ],
            &task_rows,
        ));
    }
    for r in reports {
        match (&r.status, &r.metrics_error) {
            (Err(e), _) => {
                let _ = writeln!(out, "error: {}", e.message());
            }
            (Ok(_), Some(e)) => {
                let _ = writeln!(out, "error: metrics unavailable: {e}");
            }
            (Ok(_), None) => {}
        }
    }
    out
}

fn status_json(reports: &[ReplicaReport]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|r| {
                let tasks: serde_json::Map<String, Value> = r
                    .tasks
                    .iter()
                    .map(|(id, l)| {
                        (
                            id.clone(),
                            json!({
                                "lag_seconds": l.lag_seconds,
                                "slowest_channel": l.slowest_channel,
                                "checkpoint_age_seconds": l.checkpoint_age_seconds,
                            }),
                        )
                    })
                    .collect();
                json!({
                    "server": r.server,
                    "reachable": !matches!(r.status, Err(ReplicaError::Unreachable(_))),
                    "ready": r.ready,
                    "status": r.status.as_ref().ok(),
                    "tasks": tasks,
                    "error": r.status.as_ref().err().map(ReplicaError::message),
                    "metrics_error": r.metrics_error,
                })
            })
            .collect(),
    )
}

/// Runs `milvus-cdc status`: asks every `--server` (in parallel) for
/// `/status`, `/readyz` and `/metrics`, then prints each replica's role,
/// readiness, leader, term and running tasks, and per running task its
/// largest channel lag and checkpoint age. Exit code 0 when every replica
/// answered, 3 when one could not be reached, 1 when one answered
/// something else than a milvus-cdc status, 2 for a bad `--server`.
pub async fn run_status(args: StatusArgs) -> ExitCode {
    let urls = match base_urls(&args.server) {
        Ok(u) => u,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let client = match http_client(timeout, args.cacert.as_deref(), args.insecure) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let reports: Vec<ReplicaReport> = futures::future::join_all(
        urls.into_iter()
            .map(|url| ask_replica(&client, url, timeout)),
    )
    .await;
    if args.json {
        emit(&status_json(&reports).to_string());
    } else {
        emit(&format_status(&reports));
    }
    let unreachable = reports
        .iter()
        .any(|r| matches!(r.status, Err(ReplicaError::Unreachable(_))));
    let bad = reports
        .iter()
        .any(|r| r.status.is_err() || r.metrics_error.is_some());
    if unreachable {
        ExitCode::from(EXIT_UNREACHABLE)
    } else if bad {
        ExitCode::from(EXIT_API_ERROR)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP milvus_cdc_replication_lag_seconds Now minus the source time.
# TYPE milvus_cdc_replication_lag_seconds gauge
milvus_cdc_replication_lag_seconds{task_id="aaaa",channel="by-dev-rootcoord-dml_0"} 0.579
milvus_cdc_replication_lag_seconds{task_id="aaaa",channel="by-dev-replicate-msg"} 1263.68
milvus_cdc_replication_lag_seconds{task_id="bbbb",channel="by-dev-rootcoord-dml_1"} 2.5
milvus_cdc_replication_lag_seconds{task_id="bbbb",channel="odd \"name\", with {braces}"} 7
# TYPE milvus_cdc_checkpoint_age_seconds gauge
milvus_cdc_checkpoint_age_seconds{task_id="aaaa"} 0.000004847
milvus_cdc_apply_latency_seconds_bucket{le="+Inf",task_id="aaaa"} 388
milvus_cdc_is_leader 1
milvus_cdc_fencing_refusals_total 0 1700000000
this line is { broken
# EOF
"#;

    #[test]
    fn metrics_samples_parse() {
        let samples = parse_metrics(METRICS);
        assert_eq!(samples.len(), 8, "{samples:#?}");
        let odd = &samples[3];
        assert_eq!(odd.label("channel"), Some("odd \"name\", with {braces}"));
        assert_eq!(odd.value, 7.0);
        assert_eq!(samples[5].label("le"), Some("+Inf"));
        assert_eq!(samples[6].name, "milvus_cdc_is_leader");
        assert!(samples[6].labels.is_empty());
        assert_eq!(
            samples[7].value, 0.0,
            "a timestamp after the value is ignored"
        );
    }

    #[test]
    fn lag_is_the_max_per_task() {
        let lags = task_lags(&parse_metrics(METRICS));
        assert_eq!(lags.len(), 2);
        let a = &lags["aaaa"];
        assert_eq!(a.lag_seconds, Some(1263.68));
        assert_eq!(a.slowest_channel.as_deref(), Some("by-dev-replicate-msg"));
        assert_eq!(a.checkpoint_age_seconds, Some(0.000004847));
        let b = &lags["bbbb"];
        assert_eq!(b.lag_seconds, Some(7.0));
        assert_eq!(b.checkpoint_age_seconds, None);
    }

    #[test]
    fn special_values_parse() {
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_value("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_value("1e3"), Some(1000.0));
        assert_eq!(parse_value("x"), None);
    }

    #[test]
    fn status_table_shows_roles_leader_and_lag() {
        let mut tasks = BTreeMap::new();
        tasks.insert(
            "aaaa".to_string(),
            TaskLag {
                lag_seconds: Some(0.42),
                slowest_channel: Some("by-dev-rootcoord-dml_3".into()),
                checkpoint_age_seconds: Some(0.8),
            },
        );
        let reports = vec![
            ReplicaReport {
                server: "http://a:8444".into(),
                status: Ok(
                    json!({"role": "leader", "leader": "http://a:8444", "term": 42,
                                  "running_tasks": ["aaaa"], "version": "0.1.0"}),
                ),
                ready: Some(true),
                tasks,
                metrics_error: None,
            },
            ReplicaReport {
                server: "http://b:8444".into(),
                status: Ok(
                    json!({"role": "follower", "leader": "http://a:8444", "term": null,
                                  "running_tasks": [], "version": "0.1.0"}),
                ),
                ready: Some(true),
                tasks: BTreeMap::new(),
                metrics_error: None,
            },
            ReplicaReport {
                server: "http://c:8444".into(),
                status: Err(ReplicaError::Unreachable("connection refused".into())),
                ready: None,
                tasks: BTreeMap::new(),
                metrics_error: Some("connection refused".into()),
            },
        ];
        let text = format_status(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "REPLICA        ROLE         READY  LEADER         TERM  TASKS  VERSION"
        );
        assert_eq!(
            lines[1],
            "http://a:8444  leader       yes    http://a:8444  42    1      0.1.0"
        );
        assert_eq!(
            lines[2],
            "http://b:8444  follower     yes    http://a:8444  -     0      0.1.0"
        );
        assert_eq!(
            lines[3],
            "http://c:8444  UNREACHABLE  -      -              -     -      -"
        );
        assert!(text.ends_with("error: connection refused\n"), "{text}");
        assert!(text.contains("\nleader: http://a:8444\n"), "{text}");
        assert!(
            text.contains("aaaa  http://a:8444  0.4s  by-dev-rootcoord-dml_3  0.8s"),
            "{text}"
        );
        let v = status_json(&reports);
        assert_eq!(v[0]["tasks"]["aaaa"]["lag_seconds"], json!(0.42));
        assert_eq!(v[2]["reachable"], json!(false));
    }
}
