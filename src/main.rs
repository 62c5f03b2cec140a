//! The `milvus-cdc` command: `serve` runs an agent replica; `config`,
//! `check`, `source`, `verify`, `task` and `status` help operate it.
//! Exit codes: 0 success, 1 runtime failure (or an API error / differences
//! found), 2 bad configuration or usage, 3 server unreachable (`task`,
//! `status`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use milvus_cdc::config::{Config, ConfigOverrides, LogFormat};

/// Highly available change-data-capture agent for Milvus.
///
/// Replicas elect a leader through an etcd lease; the leader replicates the
/// source Milvus into each task's target Milvus and serves the task API
/// (`POST /cdc` on port 8444, as the official milvus-cdc).
#[derive(Parser)]
#[command(name = "milvus-cdc", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent replica: the HTTP API, and the replication workers while
    /// this replica leads. Stops cleanly on SIGTERM or SIGINT.
    Serve(ConfigArgs),
    /// Load and validate the configuration, then print it with defaults
    /// filled in (secrets hidden). Exit code 2 if it is invalid.
    Config(ConfigArgs),
    /// Connect to the agent's etcd, the source's message queue and Milvus (and a
    /// target Milvus with --target) and report what answered.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also check this target Milvus URI, e.g. http://127.0.0.1:19540.
        #[arg(long)]
        target: Option<String>,
        /// Token (`user:password`) for the target given with --target.
        #[arg(long, env = "MILVUS_CDC_TARGET_TOKEN", hide_env_values = true)]
        target_token: Option<String>,
    },
    /// Inspect the source's message streams.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Compare a source and a target Milvus (collections, schemas, indexes,
    /// load state, primary keys, sampled rows). Exit code 0: identical; 1:
    /// differences (printed); 2: could not compare.
    Verify(milvus_cdc::verify::VerifyArgs),
    /// Manage tasks through the /cdc API of any replica (create, list, get,
    /// pause, resume, delete, position).
    #[command(subcommand)]
    Task(milvus_cdc::cli::TaskCommand),
    /// Show each replica's role, readiness, leader and term, and the lag of
    /// the tasks it runs.
    Status(milvus_cdc::cli::StatusArgs),
    /// Fail over a task's target: pause the task, make its replicas there
    /// owned collections, print the positions reached and the reverse task.
    Promote(milvus_cdc::cli::PromoteArgs),
}

#[derive(Subcommand)]
enum SourceCommand {
    /// List the source's channels (JetStream streams) with their retained
    /// sequence range.
    Channels(ConfigArgs),
    /// Print the decoded events of channels as JSON lines, read exactly as a
    /// replication worker reads them.
    Dump {
        #[command(flatten)]
        config: ConfigArgs,
        /// Channel names (default: every DML channel and the replicate channel).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Start after this sequence (a checkpoint); default: the earliest retained.
        #[arg(long, conflicts_with = "latest")]
        after: Option<u64>,
        /// Start with the next message published.
        #[arg(long)]
        latest: bool,
        /// Stop each channel after this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// Stop each channel after this many seconds without a message.
        #[arg(long, default_value_t = 2.0)]
        idle_secs: f64,
        /// Leave time ticks out.
        #[arg(long)]
        skip_time_ticks: bool,
        /// Keep reading new messages (default: stop at each channel's last
        /// message at start).
        #[arg(long)]
        follow: bool,
    },
}

/// Where the configuration comes from.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file (see config/example.toml). Without it, the
    /// defaults plus MILVUS_CDC_<SECTION>__<KEY> environment variables apply.
    #[arg(long, short, env = "MILVUS_CDC_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overrides server.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Advertised URL, overrides server.advertise.
    #[arg(long)]
    advertise: Option<String>,
    /// etcd endpoints (comma separated), overrides etcd.endpoints.
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Log format, overrides log.format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, ExitCode> {
        let overrides = ConfigOverrides {
            listen: self.listen,
            advertise: self.advertise.clone(),
            etcd_endpoints: self.etcd.clone(),
            log_format: self.log_format,
        };
        Config::load(self.config.as_deref(), std::env::vars(), &overrides).map_err(|e| {
            eprintln!("milvus-cdc: {e}");
            ExitCode::from(2)
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("milvus-cdc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.load() {
                Ok(c) => c,
                Err(code) => return code,
            };
            milvus_cdc::telemetry::init(&cfg.log);
            match runtime.block_on(milvus_cdc::server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "milvus-cdc stopped");
                    eprintln!("milvus-cdc: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(args) => match args.load() {
            Ok(cfg) => match toml::to_string_pretty(&cfg.with_secrets_hidden()) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("milvus-cdc: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::Check {
            config,
            target,
            target_token,
        } => {
            let cfg = match config.load() {
                Ok(c) => c,
                Err(code) => return code,
            };
            let lines = runtime.block_on(milvus_cdc::check::run(
                &cfg,
                target.as_deref(),
                target_token,
            ));
            let mut ok = true;
            for l in &lines {
                match &l.result {
                    Ok(d) => println!("ok    {:<14} {d}", l.what),
                    Err(e) => {
                        ok = false;
                        println!("FAIL  {:<14} {e}", l.what);
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Source(cmd) => runtime.block_on(source_command(cmd)),
        Command::Verify(args) => runtime.block_on(milvus_cdc::verify::run(&args)),
        Command::Task(cmd) => runtime.block_on(milvus_cdc::cli::run_task(cmd)),
        Command::Status(args) => runtime.block_on(milvus_cdc::cli::run_status(args)),
        Command::Promote(args) => runtime.block_on(milvus_cdc::cli::run_promote(args)),
    }
}

async fn source_command(cmd: SourceCommand) -> ExitCode {
    use milvus_cdc::source::{
        inspect::{dump, DumpOptions},
        mq::StartAt,
        open_queue,
    };
    let config = match &cmd {
        SourceCommand::Channels(c) | SourceCommand::Dump { config: c, .. } => c,
    };
    let cfg = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    milvus_cdc::telemetry::init(&cfg.log);
    let mq = match open_queue(&cfg.source, false).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("milvus-cdc: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cmd {
        SourceCommand::Channels(_) => {
            let prefix = format!("{}-", cfg.source.channel_prefix);
            let names = match mq.channels(&prefix).await {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("milvus-cdc: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for name in names {
                match mq.info(&name).await {
                    Ok(i) => println!(
                        "{name}\tfirst={}\tlast={}",
                        i.first_sequence, i.last_sequence
                    ),
                    Err(e) => println!("{name}\terror={e}"),
                }
            }
            ExitCode::SUCCESS
        }
        SourceCommand::Dump {
            channels,
            after,
            latest,
            limit,
            idle_secs,
            skip_time_ticks,
            follow,
            ..
        } => {
            let channels = if channels.is_empty() {
                let mut all = cfg.source.dml_channels();
                all.push(cfg.source.replicate_channel());
                all
            } else {
                channels
            };
            let start = match (after, latest) {
                (Some(s), _) => StartAt::After(s),
                (None, true) => StartAt::Latest,
                (None, false) => StartAt::Earliest,
            };
            let opts = DumpOptions {
                channels,
                start,
                limit,
                idle: std::time::Duration::from_secs_f64(idle_secs.clamp(0.1, 3600.0)),
                skip_time_ticks,
                follow,
            };
            let mut out = std::io::stdout();
            match dump(mq, &opts, &mut out).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("milvus-cdc: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
