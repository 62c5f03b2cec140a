//! Client subcommands: `milvus-cdc task …` manages tasks through the `/cdc`
//! API of any replica (followers forward to the leader), and `milvus-cdc
//! status` shows what every replica is doing, with the lag of the tasks it
//! runs (read from its `/metrics`).
//!
//! ```text
//! milvus-cdc task create --target-uri http://10.0.0.7:19530 --target-token root:Milvus
//! milvus-cdc task list --server http://cdc-0:8444,http://cdc-1:8444
//! milvus-cdc task pause 0123456789abcdef0123456789abcdef
//! milvus-cdc status --server http://cdc-0:8444,http://cdc-1:8444,http://cdc-2:8444
//! ```
//!
//! Exit codes: [`EXIT_OK`] (0), [`EXIT_API_ERROR`] (1: the server answered
//! with an error, its code and message are printed), [`EXIT_USAGE`] (2: bad
//! flags; clap also exits with 2), [`EXIT_UNREACHABLE`] (3: no server
//! answered). Every request has a timeout. With `--json` the server's answer
//! is printed exactly as received.

use std::{
    collections::BTreeMap, fmt::Write as _, io::Write as _, process::ExitCode, time::Duration,
};

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};

/// Replica asked when neither `--server` nor `MILVUS_CDC_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8444";
/// Environment variable that sets `--server`.
pub const SERVER_ENV: &str = "MILVUS_CDC_SERVER";

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the server answered with an error (or with something that is
/// not an answer of the API).
pub const EXIT_API_ERROR: u8 = 1;
/// Exit code: invalid command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no server could be reached, or it did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Longest time spent connecting to one server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a `create` gets on top of its `--connect-timeout` (the leader
/// connects to the target before it answers, and a follower forwards).
const CREATE_EXTRA: Duration = Duration::from_secs(30);

/// Where to send a request and how to show the answer (shared by every
/// `task` subcommand).
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Agent replica(s) to ask, comma separated; any replica works
    /// (followers forward to the leader). The next one is tried only when a
    /// connection cannot be opened.
    #[arg(
        long,
        short = 's',
        value_name = "URL[,URL...]",
        env = SERVER_ENV,
        default_value = DEFAULT_SERVER,
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// Print the server's JSON answer as received instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Bearer token of the task API (`server.api_token` of the agents).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MILVUS_CDC_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Seconds to wait for an answer (a `create` waits at least its
    /// connect timeout plus 30 s).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

/// `task get|pause|resume|delete TASK_ID`.
#[derive(Args, Debug, Clone)]
pub struct TaskIdArgs {
    /// The task's id (32 hexadecimal characters, as `task list` shows).
    #[arg(value_name = "TASK_ID")]
    pub task_id: String,
    /// Server and output options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `task create`: the target Milvus of a new task.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Target Milvus URI (`http://host:port`, `https://host:port` or
    /// `tcp://host:port`).
    #[arg(long, value_name = "URI")]
    pub target_uri: String,
    /// Token for the target: `user:password` or an API key.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MILVUS_CDC_TARGET_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["username", "password"]
    )]
    pub target_token: Option<String>,
    /// User name on the target (with --password), instead of a token.
    #[arg(long, value_name = "USER", requires = "password")]
    pub username: Option<String>,
    /// Password on the target (with --username).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "MILVUS_CDC_TARGET_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub password: Option<String>,
    /// Use TLS to the target (implied by an https:// URI).
    #[arg(long)]
    pub enable_tls: bool,
    /// Seconds the agent may take to connect to the target (1-60).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Server and output options.
    #[command(flatten)]
    pub server: ServerArgs,
}

impl CreateArgs {
    /// The `create` request body, in the official API's shape.
    fn body(&self) -> Value {
        let mut param = serde_json::Map::new();
        param.insert("uri".into(), json!(self.target_uri));
        if let Some(t) = &self.target_token {
            param.insert("token".into(), json!(t));
        }
        if let Some(u) = &self.username {
            param.insert("username".into(), json!(u));
        }
        if let Some(p) = &self.password {
            param.insert("password".into(), json!(p));
        }
        if self.enable_tls {
            param.insert("enable_tls".into(), json!(true));
        }
        param.insert("connect_timeout".into(), json!(self.connect_timeout));
        json!({
            "request_type": "create",
            "request_data": {
                "milvus_connect_param": Value::Object(param),
                "collection_infos": [{"name": "*"}],
            },
        })
    }
}

/// `milvus-cdc task …`: the six requests of the `/cdc` API.
#[derive(Subcommand, Debug, Clone)]
pub enum TaskCommand {
    /// Create a task that makes the target Milvus a replica of the source
    /// (every collection, history first). Prints the new task's id.
    Create(CreateArgs),
    /// List every task (id, state, target, collections).
    List(ServerArgs),
    /// Show one task.
    Get(TaskIdArgs),
    /// Pause a task: its workers stop after a final checkpoint.
    Pause(TaskIdArgs),
    /// Resume a paused task from its checkpoints.
    Resume(TaskIdArgs),
    /// Delete a task and its checkpoints (the target keeps its data).
    Delete(TaskIdArgs),
}

impl TaskCommand {
    fn server(&self) -> &ServerArgs {
        match self {
            TaskCommand::Create(a) => &a.server,
            TaskCommand::List(s) => s,
            TaskCommand::Get(a)
            | TaskCommand::Pause(a)
            | TaskCommand::Resume(a)
            | TaskCommand::Delete(a) => &a.server,
        }
    }

    fn request_type(&self) -> &'static str {
        match self {
            TaskCommand::Create(_) => "create",
            TaskCommand::List(_) => "list",
            TaskCommand::Get(_) => "get",
            TaskCommand::Pause(_) => "pause",
            TaskCommand::Resume(_) => "resume",
            TaskCommand::Delete(_) => "delete",
        }
    }

    fn body(&self) -> Value {
        match self {
            TaskCommand::Create(a) => a.body(),
            TaskCommand::List(_) => json!({"request_type": "list"}),
            TaskCommand::Get(a)
            | TaskCommand::Pause(a)
            | TaskCommand::Resume(a)
            | TaskCommand::Delete(a) => json!({
                "request_type": self.request_type(),
                "request_data": {"task_id": a.task_id},
            }),
        }
    }

    fn timeout(&self) -> Duration {
        let base = Duration::from_secs(self.server().timeout.max(1));
        match self {
            TaskCommand::Create(a) => {
                base.max(Duration::from_secs(a.connect_timeout.min(3600)) + CREATE_EXTRA)
            }
            _ => base,
        }
    }
}

/// `milvus-cdc status`: ask each replica who leads and what it runs.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Agent replicas to ask, comma separated.
    #[arg(
        long,
        short = 's',
        value_name = "URL[,URL...]",
        env = SERVER_ENV,
        default_value = DEFAULT_SERVER,
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// Print one JSON document (each replica's /status answer and the lag of
    /// its running tasks) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each replica's answers.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

// ---------------------------------------------------------------- transport

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeout)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Bytes,
}

/// Why no answer was received.
#[derive(Debug)]
enum Transport {
    /// No connection could be opened: the request was not sent, so another
    /// server may be tried.
    NotConnected(String),
    /// The request may have been sent, but no complete answer arrived.
    NoAnswer(String),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::NotConnected(m) | Transport::NoAnswer(m) => f.write_str(m),
        }
    }
}

/// The error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            let _ = write!(text, ": {part}");
        }
        cur = s.source();
    }
    text
}

/// Checks a `--server` value and returns it as `http://host:port` without a
/// trailing slash. A value without a scheme gets `http://`.
fn base_url(server: &str) -> Result<String, String> {
    let s = server.trim();
    if s.is_empty() {
        return Err("--server: empty URL".into());
    }
    if s.starts_with("https://") {
        return Err(format!(
            "--server {server}: https is not supported (the agent serves plain HTTP)"
        ));
    }
    let rest = match s.split_once("://") {
        None => s,
        Some(("http", rest)) => rest,
        Some(_) => return Err(format!("--server {server}: expected http://host:port")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--server {server}: no host in the URL"));
    }
    let url = format!("http://{rest}");
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("--server {server}: not a valid URL: {e}"))?;
    if uri.authority().is_none() {
        return Err(format!("--server {server}: no host in the URL"));
    }
    if uri.query().is_some() {
        return Err(format!("--server {server}: a query string is not allowed"));
    }
    Ok(url)
}

/// Checks every `--server` value.
fn base_urls(servers: &[String]) -> Result<Vec<String>, String> {
    let urls = servers
        .iter()
        .map(|s| base_url(s))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err("--server: at least one URL is required".into());
    }
    Ok(urls)
}

/// Sends one request and reads the whole answer, all within `timeout`.
async fn send(
    client: &HttpClient,
    method: hyper::Method,
    url: &str,
    body: Option<Bytes>,
    timeout: Duration,
    api_token: Option<&str>,
) -> Result<Answer, Transport> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut builder = hyper::Request::builder().method(method).uri(url).header(
        hyper::header::USER_AGENT,
        concat!("milvus-cdc-cli/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(t) = api_token {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| Transport::NotConnected(format!("cannot build a request to {url}: {e}")))?;
    let resp = match tokio::time::timeout_at(deadline, client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_connect() => {
            return Err(Transport::NotConnected(format!(
                "{url} unreachable: {}",
                error_chain(&e)
            )))
        }
        Ok(Err(e)) => {
            return Err(Transport::NoAnswer(format!(
                "{url} did not answer: {}",
                error_chain(&e)
            )))
        }
        Err(_) => {
            return Err(Transport::NoAnswer(format!(
                "{url} did not answer within {}s",
                timeout.as_secs()
            )))
        }
    };
    let status = resp.status().as_u16();
    match tokio::time::timeout_at(deadline, resp.into_body().collect()).await {
        Ok(Ok(b)) => Ok(Answer {
            status,
            body: b.to_bytes(),
        }),
        Ok(Err(e)) => Err(Transport::NoAnswer(format!(
            "reading the answer of {url} failed: {}",
            error_chain(&e)
        ))),
        Err(_) => Err(Transport::NoAnswer(format!(
            "the answer of {url} did not arrive within {}s",
            timeout.as_secs()
        ))),
    }
}

// ---------------------------------------------------------------- answers

/// What a `/cdc` answer means.
#[derive(Debug, PartialEq)]
enum Reply {
    /// `{"code": 200, "data": ...}`.
    Ok(Value),
    /// `{"code": N, "message": "..."}` (with any HTTP status, so that
    /// `server.compat_http_200` servers work), or an answer that is not the
    /// API's.
    Error { code: u16, message: String },
}

/// Interprets a `/cdc` answer: the JSON `code` decides, whatever the HTTP
/// status.
fn interpret(status: u16, body: &[u8]) -> Reply {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    match (parsed, code) {
        (Some(v), Some(200)) if status == 200 => {
            Reply::Ok(v.get("data").cloned().unwrap_or(Value::Null))
        }
        (Some(v), Some(code)) => Reply::Error {
            code: if code == 200 { status } else { code },
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let shown: String = text.trim().chars().take(200).collect();
            Reply::Error {
                code: status,
                message: format!("not an answer of the milvus-cdc API (HTTP {status}): {shown}"),
            }
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("milvus-cdc: {message}");
    ExitCode::from(code)
}

// ---------------------------------------------------------------- formatting

/// Left-aligned columns separated by two spaces, with a header line.
fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The target of a task as one short text: its URI (or `host:port`), with
/// the user name and TLS when set. Secrets are never in the API's answers.
fn target_text(param: &Value) -> String {
    let mut t = match (str_field(param, "uri"), str_field(param, "host")) {
        (Some(uri), _) => uri.to_string(),
        (None, Some(host)) => match param.get("port").and_then(Value::as_u64) {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        },
        (None, None) => "-".to_string(),
    };
    if let Some(user) = str_field(param, "username") {
        let _ = write!(t, " (user {user})");
    }
    if param.get("enable_tls").and_then(Value::as_bool) == Some(true) {
        t.push_str(" (tls)");
    }
    t
}

fn collections_text(infos: Option<&Value>) -> String {
    let names: Vec<&str> = infos
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| str_field(c, "name")).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The `list` answer's tasks as a table.
fn format_task_list(tasks: &[Value]) -> String {
    if tasks.is_empty() {
        return "no tasks\n".into();
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let param = t
                .get("milvus_connect_param")
                .cloned()
                .unwrap_or(Value::Null);
            vec![
                str_field(t, "task_id").unwrap_or("-").to_string(),
                str_field(t, "state").unwrap_or("-").to_string(),
                target_text(&param),
                collections_text(t.get("collection_infos")),
            ]
        })
        .collect();
    format_table(&["TASK ID", "STATE", "TARGET", "COLLECTIONS"], &rows)
}

/// The `get` answer's task as `key: value` lines.
fn format_task_detail(task: &Value) -> String {
    let param = task
        .get("milvus_connect_param")
        .cloned()
        .unwrap_or(Value::Null);
    let mut lines: Vec<(&str, String)> = vec![
        ("task id", str_field(task, "task_id").unwrap_or("-").into()),
        ("state", str_field(task, "state").unwrap_or("-").into()),
        ("target", target_text(&param)),
    ];
    if let Some(t) = param.get("connect_timeout").and_then(Value::as_u64) {
        lines.push(("connect timeout", format!("{t}s")));
    }
    lines.push((
        "collections",
        collections_text(task.get("collection_infos")),
    ));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        let key = format!("{k}:");
        let _ = writeln!(out, "{key:<width$}  {v}");
    }
    out
}

/// Seconds as a short duration: `0.4s`, `59.0s`, `5m03s`, `2h01m`, `-`.
fn format_secs(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    if s < 120.0 {
        return format!("{s:.1}s");
    }
    // Whole seconds from here on; the value is finite and non-negative.
    let total = s.round() as u64;
    if total < 3600 {
        format!("{}m{:02}s", total / 60, total % 60)
    } else {
        format!("{}h{:02}m", total / 3600, (total % 3600) / 60)
    }
}

/// The human answer of a successful request.
fn format_reply(cmd: &TaskCommand, data: &Value) -> String {
    match cmd {
        TaskCommand::Create(_) => match str_field(data, "task_id") {
            Some(id) => format!("{id}\n"),
            None => format!("{data}\n"),
        },
        TaskCommand::List(_) => match data.get("tasks").and_then(Value::as_array) {
            Some(tasks) => format_task_list(tasks),
            None => format!("{data}\n"),
        },
        TaskCommand::Get(_) => match data.get("Task") {
            Some(task) => format_task_detail(task),
            None => format!("{data}\n"),
        },
        TaskCommand::Pause(a) => format!("task {} paused\n", a.task_id),
        TaskCommand::Resume(a) => format!("task {} running\n", a.task_id),
        TaskCommand::Delete(a) => format!("task {} deleted\n", a.task_id),
    }
}

// ---------------------------------------------------------------- task

/// Runs a `task` subcommand: sends its request to the first `--server` that
/// accepts a connection and prints the answer. Exit code 0 on success, 1 if
/// the server answered with an error (code and message on stderr), 2 for a
/// bad `--server`, 3 if no server answered.
pub async fn run_task(cmd: TaskCommand) -> ExitCode {
    let args = cmd.server();
    let urls = match base_urls(&args.server) {
        Ok(u) => u,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let timeout = cmd.timeout();
    let client = http_client(timeout);
    let body = Bytes::from(cmd.body().to_string());
    let mut last_error = String::new();
    let mut answer = None;
    for url in &urls {
        let endpoint = format!("{url}/cdc");
        match send(
            &client,
            hyper::Method::POST,
            &endpoint,
            Some(body.clone()),
            timeout,
            args.api_token.as_deref(),
        )
        .await
        {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            // Nothing was sent: the next replica may be tried safely.
            Err(Transport::NotConnected(e)) => last_error = e,
            Err(e @ Transport::NoAnswer(_)) => {
                let mut message = e.to_string();
                if matches!(cmd, TaskCommand::Create(_)) {
                    message.push_str(
                        "; the task may have been created anyway: check with `milvus-cdc task list`",
                    );
                }
                return fail(EXIT_UNREACHABLE, &message);
            }
        }
    }
    let Some(answer) = answer else {
        return fail(EXIT_UNREACHABLE, &last_error);
    };
    match interpret(answer.status, &answer.body) {
        Reply::Ok(data) => {
            if args.json {
                emit(&String::from_utf8_lossy(&answer.body));
            } else {
                emit(&format_reply(&cmd, &data));
            }
            ExitCode::from(EXIT_OK)
        }
        Reply::Error { code, message } => {
            if args.json {
                emit(&String::from_utf8_lossy(&answer.body));
            }
            fail(EXIT_API_ERROR, &format!("error {code}: {message}"))
        }
    }
}

// ---------------------------------------------------------------- status

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
    let client = http_client(timeout);
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
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        cmd: TestCmd,
    }

    #[derive(Subcommand, Debug)]
    enum TestCmd {
        #[command(subcommand)]
        Task(TaskCommand),
        Status(StatusArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCmd, clap::Error> {
        TestCli::try_parse_from(std::iter::once("milvus-cdc").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

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
    fn tables_align() {
        let t = format_table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "".into()],
                vec!["z".into(), "w".into(), "v".into()],
            ],
        );
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y\nz     w            v\n");
    }

    #[test]
    fn task_list_table() {
        let tasks = vec![
            json!({"task_id": "0123456789abcdef0123456789abcdef", "state": "Running",
                   "milvus_connect_param": {"uri": "http://t:19530", "connect_timeout": 10},
                   "collection_infos": [{"name": "*"}]}),
            json!({"task_id": "fedcba9876543210fedcba9876543210", "state": "Paused",
                   "milvus_connect_param": {"host": "10.0.0.7", "port": 19530,
                                            "username": "cdc", "enable_tls": true},
                   "collection_infos": [{"name": "*"}]}),
        ];
        let text = format_task_list(&tasks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "TASK ID                           STATE    TARGET                           COLLECTIONS"
        );
        assert_eq!(
            lines[1],
            "0123456789abcdef0123456789abcdef  Running  http://t:19530                   *"
        );
        assert_eq!(
            lines[2],
            "fedcba9876543210fedcba9876543210  Paused   10.0.0.7:19530 (user cdc) (tls)  *"
        );
        assert_eq!(format_task_list(&[]), "no tasks\n");
    }

    #[test]
    fn task_detail_lines() {
        let task = json!({"task_id": "0123456789abcdef0123456789abcdef", "state": "Running",
                          "milvus_connect_param": {"uri": "http://t:19530", "connect_timeout": 10},
                          "collection_infos": [{"name": "*"}]});
        assert_eq!(
            format_task_detail(&task),
            "task id:          0123456789abcdef0123456789abcdef\n\
             state:            Running\n\
             target:           http://t:19530\n\
             connect timeout:  10s\n\
             collections:      *\n"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_secs(None), "-");
        assert_eq!(format_secs(Some(f64::NAN)), "-");
        assert_eq!(format_secs(Some(0.04)), "0.0s");
        assert_eq!(format_secs(Some(59.96)), "60.0s");
        assert_eq!(format_secs(Some(303.0)), "5m03s");
        assert_eq!(format_secs(Some(7260.0)), "2h01m");
    }

    #[test]
    fn answers_are_interpreted_by_their_code() {
        assert_eq!(
            interpret(200, br#"{"code":200,"data":{"tasks":[]}}"#),
            Reply::Ok(json!({"tasks": []}))
        );
        let not_found = Reply::Error {
            code: 404,
            message: "task x not found".into(),
        };
        assert_eq!(
            interpret(404, br#"{"code":404,"message":"task x not found"}"#),
            not_found
        );
        // server.compat_http_200: HTTP 200, the real code in the body.
        assert_eq!(
            interpret(200, br#"{"code":404,"message":"task x not found"}"#),
            not_found
        );
        match interpret(502, b"<html>bad gateway</html>") {
            Reply::Error { code, message } => {
                assert_eq!(code, 502);
                assert!(message.contains("bad gateway"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(base_url("127.0.0.1:8444").unwrap(), "http://127.0.0.1:8444");
        assert_eq!(base_url(" http://h:1/ ").unwrap(), "http://h:1");
        assert!(base_url("https://h:1").unwrap_err().contains("https"));
        assert!(base_url("ftp://h").is_err());
        assert!(base_url("").is_err());
        assert!(base_url("http://").is_err());
        assert!(base_urls(&[]).is_err());
    }

    #[test]
    fn create_body_has_the_official_shape() {
        let TestCmd::Task(cmd) = parse(&[
            "task",
            "create",
            "--target-uri",
            "http://t:19530",
            "--username",
            "u",
            "--password",
            "p",
            "--connect-timeout",
            "5",
        ])
        .unwrap() else {
            panic!("not a task command")
        };
        assert_eq!(
            cmd.body(),
            json!({"request_type": "create", "request_data": {
                "milvus_connect_param": {"uri": "http://t:19530", "username": "u",
                                         "password": "p", "connect_timeout": 5},
                "collection_infos": [{"name": "*"}]}})
        );
        assert_eq!(cmd.timeout(), Duration::from_secs(35));
    }

    #[test]
    fn flags_are_checked_by_clap() {
        let id = "0123456789abcdef0123456789abcdef";
        let TestCmd::Task(cmd) = parse(&["task", "pause", id, "--server", "a:1,b:2"]).unwrap()
        else {
            panic!("not a task command")
        };
        assert_eq!(cmd.server().server, vec!["a:1", "b:2"]);
        assert_eq!(
            cmd.body(),
            json!({"request_type": "pause", "request_data": {"task_id": id}})
        );
        assert!(parse(&["task", "get"]).is_err(), "task id is required");
        assert!(
            parse(&["task", "create"]).is_err(),
            "--target-uri is required"
        );
        let both = parse(&[
            "task",
            "create",
            "--target-uri",
            "http://t",
            "--target-token",
            "a:b",
            "--username",
            "u",
            "--password",
            "p",
        ]);
        assert!(both.is_err(), "token and username/password conflict");
        let half = parse(&[
            "task",
            "create",
            "--target-uri",
            "http://t",
            "--username",
            "u",
        ]);
        assert!(half.is_err(), "--username needs --password");
        let TestCmd::Status(s) = parse(&["status", "-s", "h:1,h:2,h:3"]).unwrap() else {
            panic!("not status")
        };
        assert_eq!(s.server.len(), 3);
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

    #[tokio::test]
    async fn unreachable_server_is_exit_3() {
        // Port 1 on localhost refuses connections.
        let code = run_task(TaskCommand::List(ServerArgs {
            server: vec!["127.0.0.1:1".into()],
            json: false,
            timeout: 5,
            api_token: None,
        }))
        .await;
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let code = run_status(StatusArgs {
            server: vec!["127.0.0.1:1".into()],
            json: true,
            timeout: 5,
        })
        .await;
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let code = run_task(TaskCommand::List(ServerArgs {
            server: vec!["https://127.0.0.1:1".into()],
            json: false,
            timeout: 5,
            api_token: None,
        }))
        .await;
        assert_eq!(code, ExitCode::from(EXIT_USAGE));
    }
}
