//! Client subcommands: `milvus-cdc task …` manages tasks through the `/cdc`
//! API of any replica (followers forward to the leader), and `milvus-cdc
//! status` shows what every replica is doing, with the lag of the tasks it
//! runs (read from its `/metrics`).
//!
//! ```text
//! milvus-cdc task create --target-uri http://10.0.0.7:19530 --target-token root:Milvus
//! milvus-cdc task create --target-uri http://10.0.0.7:19530 --collection books --collection shop.*
//! milvus-cdc task list --server http://cdc-0:8444,http://cdc-1:8444
//! milvus-cdc task pause 0123456789abcdef0123456789abcdef
//! milvus-cdc status --server http://cdc-0:8444,http://cdc-1:8444,http://cdc-2:8444
//! milvus-cdc task list --server https://cdc-0:8444 --cacert ca.pem
//! milvus-cdc task position 0123456789abcdef0123456789abcdef
//! ```
//!
//! Exit codes: [`EXIT_OK`] (0), [`EXIT_API_ERROR`] (1: the server answered
//! with an error, its code and message are printed), [`EXIT_USAGE`] (2: bad
//! flags; clap also exits with 2), [`EXIT_UNREACHABLE`] (3: no server
//! answered). Every request has a timeout. With `--json` the server's answer
//! is printed exactly as received.
//!
//! Layout: this file holds the flags and exit codes; `http` the requests
//! and the reading of answers, `task` the task commands, `status` the
//! status command.

mod http;
mod promote;
mod status;
mod task;

pub use self::{
    promote::{run_promote, PromoteArgs},
    status::run_status,
    task::run_task,
};

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Replica asked when neither `--server` nor `MILVUS_CDC_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8444";
/// Environment variable that sets `--server`.
pub const SERVER_ENV: &str = "MILVUS_CDC_SERVER";
/// Environment variable that sets `--cacert`.
pub const CACERT_ENV: &str = "MILVUS_CDC_CACERT";
/// What `task create` replicates without `--collection`: everything.
pub const ALL_COLLECTIONS: &str = "*";

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
    /// CA certificate(s) (PEM) that an `https://` server's certificate must
    /// chain to; the system's roots without it.
    #[arg(long, value_name = "FILE", env = CACERT_ENV)]
    pub cacert: Option<std::path::PathBuf>,
    /// Do not verify the certificate of an `https://` server (like `curl
    /// -k`): for tests only, anyone on the path could read the requests and
    /// the API token. A warning is printed on stderr.
    #[arg(long, short = 'k')]
    pub insecure: bool,
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
    /// A collection to replicate: `name` (default database), `db.name`,
    /// `db.*` (a whole database) or `*` (everything, the default). Repeat
    /// the flag for several; the agent checks the names (400 if invalid).
    #[arg(long = "collection", value_name = "NAME")]
    pub collections: Vec<String>,
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
        let infos: Vec<Value> = if self.collections.is_empty() {
            vec![json!({ "name": ALL_COLLECTIONS })]
        } else {
            self.collections
                .iter()
                .map(|n| json!({ "name": n }))
                .collect()
        };
        json!({
            "request_type": "create",
            "request_data": {
                "milvus_connect_param": Value::Object(param),
                "collection_infos": infos,
            },
        })
    }
}

/// `milvus-cdc task …`: the task requests of the `/cdc` API (`promote` is
/// its own command).
#[derive(Subcommand, Debug, Clone)]
pub enum TaskCommand {
    /// Create a task that makes the target Milvus a replica of the source
    /// (every collection unless --collection is given, history first).
    /// Prints the new task's id.
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
    /// Show how far a task has read each channel: its checkpoints, as
    /// positions that can start a new task (`position` extension).
    Position(TaskIdArgs),
}

impl TaskCommand {
    fn server(&self) -> &ServerArgs {
        match self {
            TaskCommand::Create(a) => &a.server,
            TaskCommand::List(s) => s,
            TaskCommand::Get(a)
            | TaskCommand::Pause(a)
            | TaskCommand::Resume(a)
            | TaskCommand::Delete(a)
            | TaskCommand::Position(a) => &a.server,
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
            TaskCommand::Position(_) => "position",
        }
    }

    fn body(&self) -> Value {
        match self {
            TaskCommand::Create(a) => a.body(),
            TaskCommand::List(_) => json!({"request_type": "list"}),
            TaskCommand::Get(a)
            | TaskCommand::Pause(a)
            | TaskCommand::Resume(a)
            | TaskCommand::Delete(a)
            | TaskCommand::Position(a) => json!({
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
    /// CA certificate(s) (PEM) that an `https://` server's certificate must
    /// chain to; the system's roots without it.
    #[arg(long, value_name = "FILE", env = CACERT_ENV)]
    pub cacert: Option<std::path::PathBuf>,
    /// Do not verify the certificate of `https://` replicas (like `curl
    /// -k`): for tests only. A warning is printed on stderr.
    #[arg(long, short = 'k')]
    pub insecure: bool,
    /// Seconds to wait for each replica's answers.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

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

    fn create_body(extra: &[&str]) -> Result<Value, clap::Error> {
        let mut args = vec!["task", "create", "--target-uri", "http://t:19530"];
        args.extend_from_slice(extra);
        match parse(&args)? {
            TestCmd::Task(cmd @ TaskCommand::Create(_)) => Ok(cmd.body()),
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn collection_flags_fill_collection_infos_in_order() {
        let infos = |body: Value| body["request_data"]["collection_infos"].clone();
        assert_eq!(infos(create_body(&[]).unwrap()), json!([{"name": "*"}]));
        assert_eq!(
            infos(create_body(&["--collection", "books"]).unwrap()),
            json!([{"name": "books"}])
        );
        assert_eq!(
            infos(
                create_body(&[
                    "--collection",
                    "shop.*",
                    "--collection=default.books",
                    "--collection",
                    "*"
                ])
                .unwrap()
            ),
            json!([{"name": "shop.*"}, {"name": "default.books"}, {"name": "*"}]),
            "given as typed: the agent checks them and answers 400 for a bad list"
        );
        // The names are the agent's to check, even odd ones.
        assert_eq!(
            infos(create_body(&["--collection", "a b"]).unwrap()),
            json!([{"name": "a b"}])
        );
        let missing = create_body(&["--collection"]).unwrap_err();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::InvalidValue,
            "{missing}"
        );
    }

    #[test]
    fn every_request_type_but_promote_is_a_task_command() {
        let id = "0123456789abcdef0123456789abcdef";
        for (sub, request_type) in [
            ("get", "get"),
            ("pause", "pause"),
            ("resume", "resume"),
            ("delete", "delete"),
            ("position", "position"),
        ] {
            let TestCmd::Task(cmd) = parse(&["task", sub, id]).unwrap() else {
                panic!("not a task command")
            };
            assert_eq!(cmd.request_type(), request_type);
            assert_eq!(
                cmd.body(),
                json!({"request_type": request_type, "request_data": {"task_id": id}})
            );
        }
        let TestCmd::Task(cmd) = parse(&["task", "list"]).unwrap() else {
            panic!("not a task command")
        };
        assert_eq!(cmd.body(), json!({"request_type": "list"}));
    }

    #[test]
    fn insecure_is_opt_in() {
        let TestCmd::Task(cmd) = parse(&["task", "list"]).unwrap() else {
            panic!("not a task command")
        };
        assert!(!cmd.server().insecure);
        for flag in ["--insecure", "-k"] {
            let TestCmd::Task(cmd) = parse(&["task", "list", flag]).unwrap() else {
                panic!("not a task command")
            };
            assert!(cmd.server().insecure, "{flag}");
            let TestCmd::Status(s) = parse(&["status", flag]).unwrap() else {
                panic!("not status")
            };
            assert!(s.insecure, "{flag}");
        }
    }

    /// `task list` arguments for `server`, with a short timeout.
    fn list_args(server: &str) -> ServerArgs {
        ServerArgs {
            server: vec![server.into()],
            json: false,
            timeout: 5,
            api_token: None,
            cacert: None,
            insecure: false,
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_exit_3() {
        // Port 1 on localhost refuses connections.
        let code = run_task(TaskCommand::List(list_args("127.0.0.1:1"))).await;
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let code = run_status(StatusArgs {
            server: vec!["127.0.0.1:1".into()],
            json: true,
            timeout: 5,
            cacert: None,
            insecure: false,
        })
        .await;
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let code = run_task(TaskCommand::List(list_args("https://127.0.0.1:1"))).await;
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let code = run_task(TaskCommand::List(list_args("ftp://127.0.0.1:1"))).await;
        assert_eq!(code, ExitCode::from(EXIT_USAGE));
        // An unusable CA file is a usage error that names it.
        let code = run_task(TaskCommand::List(ServerArgs {
            cacert: Some("/nonexistent/ca.pem".into()),
            ..list_args("https://127.0.0.1:1")
        }))
        .await;
        assert_eq!(code, ExitCode::from(EXIT_USAGE));
    }
}
