//! Agent configuration: one TOML file, then `MILVUS_CDC_<SECTION>__<KEY>`
//! environment overrides, then CLI flags (applied by the caller through
//! [`ConfigOverrides`]).
//!
//! Every key has a default, so an empty file is a valid configuration that
//! matches the official milvus-cdc server where the two overlap (port 8444,
//! channel prefix `by-dev`). Errors name the offending key:
//!
//! ```
//! use milvus_cdc::config::Config;
//! let cfg = Config::from_toml_str("[server]\nlisten = \"0.0.0.0:8444\"\n").unwrap();
//! assert_eq!(cfg.server.listen.port(), 8444);
//! let err = Config::from_toml_str("[server]\nlisten = 5\n").unwrap_err();
//! assert!(err.to_string().contains("server.listen"));
//! ```

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override file values:
/// `MILVUS_CDC_SERVER__LISTEN=0.0.0.0:9000` sets `server.listen`.
pub const ENV_PREFIX: &str = "MILVUS_CDC_";

/// Why a configuration could not be loaded. Each variant names its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
    /// A key has a value of the wrong type or an unknown key was given.
    #[error("invalid config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key (`server.listen`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("invalid environment override {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole agent configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server (the `/cdc` API, metrics, health).
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The agent's own etcd: tasks, checkpoints and leader election.
    pub etcd: EtcdConfig,
    /// The source Milvus and its message queue.
    pub source: SourceConfig,
    /// Leader election.
    pub ha: HaConfig,
    /// Task limits.
    pub tasks: TasksConfig,
    /// Replication pipeline tuning.
    pub replicate: ReplicateConfig,
}

/// `[server]`: the HTTP listener.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// URL other replicas use to reach this one (forwarded `/cdc` calls).
    /// Empty means `http://<listen>` with `0.0.0.0` replaced by `127.0.0.1`.
    pub advertise: String,
    /// Largest accepted request body in bytes; larger bodies get HTTP 413.
    pub max_body_bytes: usize,
    /// Answer `/cdc` errors with HTTP 200 and the real code only in the JSON
    /// `code` field, exactly like the official Go server.
    pub compat_http_200: bool,
    /// Longest time a stop may take after SIGTERM/SIGINT; then the process
    /// exits with status 1 whatever is still running.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// When set, every `/cdc` request must carry `Authorization: Bearer
    /// <api_token>` (401 otherwise); `/metrics` and the probes stay open.
    pub api_token: Option<String>,
    /// File holding `api_token`, instead of it.
    pub api_token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain (this replica's certificate first): when set
    /// with `tls_key_file`, every endpoint is served over HTTPS only and
    /// `/cdc` is forwarded to the leader over HTTPS.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA certificate(s) that the leader's certificate must chain to
    /// when a follower forwards `/cdc`. Unset: the system's roots plus the
    /// certificates of `tls_cert_file` (enough when that file holds the
    /// issuing CA, or when every replica shares one self-signed certificate).
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8444)),
            advertise: String::new(),
            max_body_bytes: 1024 * 1024,
            compat_http_200: false,
            shutdown_timeout: Duration::from_secs(20),
            api_token: None,
            api_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
        }
    }
}

impl ServerConfig {
    /// The URL other replicas reach this one at.
    pub fn advertise_url(&self) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.trim_end_matches('/').to_string();
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Whether the API is served over HTTPS (`tls_cert_file` is set; the
    /// key goes with it, which [`Config::validate`] checks).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Key {
                key: key.into(),
                message,
            })
        };
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return bad(
                    "server.tls_key_file",
                    "server.tls_cert_file is set but its key is not: set both or neither".into(),
                )
            }
            (None, Some(_)) => {
                return bad(
                    "server.tls_cert_file",
                    "server.tls_key_file is set but the certificate is not: set both or neither"
                        .into(),
                )
            }
            (None, None) if self.tls_ca_file.is_some() => {
                return bad(
                    "server.tls_ca_file",
                    "is only used with TLS on (server.tls_cert_file and tls_key_file)".into(),
                )
            }
            (None, None) => return Ok(()),
            // The files are read when `serve` starts (errors name the key
            // and the path); loading a configuration does not need them.
            (Some(_), Some(_)) => {}
        }
        if self.advertise.starts_with("http://") {
            return bad(
                "server.advertise",
                "must be an https:// URL when TLS is on (followers forward over HTTPS)".into(),
            );
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `milvus_cdc=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// `[etcd]`: the agent's coordination store.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix under which tasks, checkpoints and the leader key live.
    pub root: String,
    /// Optional etcd user.
    pub username: Option<String>,
    /// Optional etcd password.
    pub password: Option<String>,
    /// File holding the etcd password (e.g. a mounted Kubernetes secret),
    /// instead of `password`.
    pub password_file: Option<std::path::PathBuf>,
    /// Time allowed to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            root: "milvus-cdc/default".into(),
            username: None,
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Kind of message queue the source Milvus uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MqType {
    /// NATS JetStream, Milvus's `natsmq`.
    #[default]
    Natsmq,
    /// Apache Kafka (or a compatible broker), `mq.type: kafka`.
    Kafka,
    /// Apache Pulsar, `mq.type: pulsar`.
    Pulsar,
}

/// `security.protocol` of the source's Kafka, spelled as in Milvus's
/// `kafka.securityProtocol`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum KafkaSecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS, no SASL.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL without TLS.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

/// SASL mechanism of the source's Kafka (Milvus's `kafka.saslMechanisms`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum KafkaSaslMechanism {
    /// `PLAIN`.
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// `[source.kafka]`: the source's Kafka, as Milvus's own `kafka:` section
/// describes it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` (Milvus's `kafka.brokerList`).
    pub brokers: Vec<String>,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: KafkaSecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a SASL protocol).
    pub sasl_mechanism: KafkaSaslMechanism,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<String>,
    /// File holding the SASL password, instead of `sasl_password`.
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that sign the brokers' certificates; the
    /// system's roots when unset.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for brokers that require one.
    pub tls_cert: Option<std::path::PathBuf>,
    /// Client certificate's private key (PEM).
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            security_protocol: KafkaSecurityProtocol::default(),
            sasl_mechanism: KafkaSaslMechanism::default(),
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &redacted(&self.sasl_password))
            .field("sasl_password_file", &self.sasl_password_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// Authentication plugins of `[source.pulsar]` (Milvus's `pulsar.authPlugin`)
/// that mean JWT token authentication; any other plugin is refused.
const PULSAR_TOKEN_PLUGINS: [&str; 2] = [
    "token",
    "org.apache.pulsar.client.impl.auth.AuthenticationToken",
];

/// `[source.pulsar]`: the source's Pulsar, as Milvus's own `pulsar:` section
/// describes it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PulsarConfig {
    /// Broker host (Milvus's `pulsar.address`), or a full `pulsar://host:port`
    /// / `pulsar+ssl://host:port` URL (then `port` is used only when the URL
    /// has none).
    pub address: String,
    /// Broker port of the binary protocol (Milvus's `pulsar.port`).
    pub port: u16,
    /// Port of the broker's HTTP admin service (Milvus's `pulsar.webport`).
    /// Not used by the agent (it reads and lists topics over the binary
    /// protocol); kept so that Milvus's section can be copied as it is.
    pub web_port: u16,
    /// Tenant of Milvus's topics (Milvus's `pulsar.tenant`).
    pub tenant: String,
    /// Namespace of Milvus's topics (Milvus's `pulsar.namespace`).
    pub namespace: String,
    /// Authentication plugin (Milvus's `pulsar.authPlugin` with
    /// `enableClientAuth: true`): `token` or
    /// `org.apache.pulsar.client.impl.auth.AuthenticationToken`; empty means
    /// token auth when `auth_token` is set, none otherwise.
    pub auth_plugin: String,
    /// JWT token (the `token:<jwt>` of Milvus's `pulsar.authParams`).
    pub auth_token: Option<String>,
    /// File holding `auth_token`, instead of it.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that sign the broker's certificate, for a
    /// `pulsar+ssl://` address; the Mozilla roots when unset.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Accept any broker certificate (TLS without verification; tests only).
    pub tls_allow_insecure: bool,
    /// Largest message the broker may send, in bytes (Milvus's
    /// `pulsar.maxMessageSize`); informational: the client accepts any
    /// frame the broker sends (the broker enforces its own limit).
    pub max_message_size: Option<u64>,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 6650,
            web_port: 80,
            tenant: "public".into(),
            namespace: "default".into(),
            auth_plugin: String::new(),
            auth_token: None,
            auth_token_file: None,
            tls_ca: None,
            tls_allow_insecure: false,
            max_message_size: None,
        }
    }
}

impl std::fmt::Debug for PulsarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarConfig")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("web_port", &self.web_port)
            .field("tenant", &self.tenant)
            .field("namespace", &self.namespace)
            .field("auth_plugin", &self.auth_plugin)
            .field("auth_token", &redacted(&self.auth_token))
            .field("auth_token_file", &self.auth_token_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_allow_insecure", &self.tls_allow_insecure)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl PulsarConfig {
    /// The broker's service URL: `address` as it is when it is a
    /// `pulsar://` or `pulsar+ssl://` URL (with `:port` added when it has
    /// none), `pulsar://<address>:<port>` for a host.
    pub fn service_url(&self) -> Result<String, String> {
        let addr = self.address.trim().trim_end_matches('/');
        if addr.is_empty() {
            return Err("must not be empty".into());
        }
        let (scheme, host) = match addr.split_once("://") {
            Some((s @ ("pulsar" | "pulsar+ssl"), h)) => (s, h),
            Some((s, _)) => {
                return Err(format!(
                    "scheme `{s}://` is not a Pulsar scheme (pulsar:// or pulsar+ssl://)"
                ))
            }
            None => ("pulsar", addr),
        };
        if host.is_empty() || host.contains(['/', ',', ' ']) {
            return Err(format!(
                "`{addr}` is not a host or a pulsar://host:port URL"
            ));
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
        if has_port {
            if !addr.contains("://") {
                return Err(format!(
                    "`{addr}`: give the port in source.pulsar.port, or a full pulsar://host:port URL"
                ));
            }
            Ok(format!("{scheme}://{host}"))
        } else {
            Ok(format!("{scheme}://{host}:{}", self.port))
        }
    }

    /// Whether the broker is reached over TLS (`pulsar+ssl://`).
    pub fn tls(&self) -> bool {
        self.address.trim().starts_with("pulsar+ssl://")
    }

    /// The full topic name of Milvus channel `channel`:
    /// `persistent://<tenant>/<namespace>/<channel>` (Milvus 2.3 names its
    /// topics `<tenant>/<namespace>/<channel>`, which Pulsar reads as a
    /// persistent topic).
    pub fn topic(&self, channel: &str) -> String {
        format!("{}{channel}", self.topic_prefix())
    }

    /// `persistent://<tenant>/<namespace>/`, what [`Self::topic`] puts in
    /// front of a channel name.
    pub fn topic_prefix(&self) -> String {
        format!("persistent://{}/{}/", self.tenant, self.namespace)
    }

    /// Whether token authentication is configured.
    pub fn token_auth(&self) -> bool {
        PULSAR_TOKEN_PLUGINS.contains(&self.auth_plugin.as_str()) || self.auth_token.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Key {
                key: format!("source.pulsar.{key}"),
                message,
            })
        };
        if let Err(e) = self.service_url() {
            return bad("address", e);
        }
        if self.port == 0 {
            return bad("port", "must be a port number (1-65535)".into());
        }
        for (key, v) in [("tenant", &self.tenant), ("namespace", &self.namespace)] {
            if v.is_empty() || v.contains(['/', ' ']) {
                return bad(key, "must be a non-empty name without '/' or spaces".into());
            }
        }
        if !self.auth_plugin.is_empty()
            && !PULSAR_TOKEN_PLUGINS.contains(&self.auth_plugin.as_str())
        {
            return bad(
                "auth_plugin",
                format!(
                    "`{}` is not supported: only token authentication (`token` or `{}`) is",
                    self.auth_plugin, PULSAR_TOKEN_PLUGINS[1]
                ),
            );
        }
        if self.token_auth() && self.auth_token.as_deref().is_none_or(str::is_empty) {
            return bad(
                "auth_token",
                "token authentication needs source.pulsar.auth_token or auth_token_file".into(),
            );
        }
        if (self.tls_ca.is_some() || self.tls_allow_insecure) && !self.tls() {
            return bad(
                "tls_ca",
                "TLS settings need a pulsar+ssl:// source.pulsar.address".into(),
            );
        }
        if self.tls_allow_insecure {
            // pulsar-rs built with rustls always verifies the certificate and
            // the host name (the flag only reaches its native-tls build).
            return bad(
                "tls_allow_insecure",
                "is not supported: the broker's certificate is always verified; give the CA \
                 that signs it in source.pulsar.tls_ca"
                    .into(),
            );
        }
        if self.max_message_size == Some(0) {
            return bad("max_message_size", "must be greater than zero".into());
        }
        Ok(())
    }
}

/// `[source]`: the Milvus instance that is replicated.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// gRPC address of the source Milvus proxy (metadata look-ups).
    pub milvus_uri: String,
    /// Token (`user:password` or API key) for the source Milvus, if auth is on.
    pub milvus_token: Option<String>,
    /// File holding `milvus_token`, instead of it.
    pub milvus_token_file: Option<std::path::PathBuf>,
    /// Message queue type (`natsmq`, `kafka` or `pulsar`; key `mq` works too).
    #[serde(alias = "mq")]
    pub mq_type: MqType,
    /// NATS server URL of the source's natsmq.
    pub nats_url: String,
    /// The source's Kafka (with `mq_type = "kafka"`).
    pub kafka: KafkaConfig,
    /// The source's Pulsar (with `mq_type = "pulsar"`).
    pub pulsar: PulsarConfig,
    /// Milvus channel name prefix (`msgChannel.chanNamePrefix.cluster`).
    pub channel_prefix: String,
    /// Number of DML channels (`rootCoord.dmlChannelNum`).
    pub dml_channel_num: u32,
    /// Time allowed to connect to the source.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            milvus_uri: "http://127.0.0.1:19530".into(),
            milvus_token: None,
            milvus_token_file: None,
            mq_type: MqType::Natsmq,
            nats_url: "nats://127.0.0.1:4222".into(),
            kafka: KafkaConfig::default(),
            pulsar: PulsarConfig::default(),
            channel_prefix: "by-dev".into(),
            dml_channel_num: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl SourceConfig {
    /// Name of the replicate channel, `<prefix>-replicate-msg`.
    pub fn replicate_channel(&self) -> String {
        format!("{}-replicate-msg", self.channel_prefix)
    }

    /// Names of the physical DML channels, `<prefix>-rootcoord-dml_<n>`.
    pub fn dml_channels(&self) -> Vec<String> {
        (0..self.dml_channel_num)
            .map(|n| format!("{}-rootcoord-dml_{n}", self.channel_prefix))
            .collect()
    }
}

/// `[ha]`: leader election.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// Lease time-to-live.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Whether a new leader replays each task's takeover window once,
    /// `2 · lease_ttl + 2s` after it took over (covers a deposed leader that
    /// was frozen inside a target write and completed it late).
    pub takeover_replay: bool,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(5),
            takeover_replay: true,
        }
    }
}

/// `[tasks]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// Most tasks that may exist at once (the official server's default is 100).
    pub max_tasks: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self { max_tasks: 100 }
    }
}

/// `[replicate]`: pipeline tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicateConfig {
    /// Most rows in one batched insert.
    pub batch_rows: usize,
    /// Most bytes in one batched insert.
    pub batch_bytes: usize,
    /// Bytes of source events a task may hold queued between its readers
    /// and pipelines, shared by its channels (one message larger than this
    /// is let through alone).
    pub max_buffer_bytes: usize,
    /// Ignored, kept so that existing files load: windows are closed by the
    /// source's time ticks.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// How often checkpoints are written.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How often aliases and empty partitions (not in Milvus 2.3.5's
    /// streams) are compared with the source and synced.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How often the target collections written since the last time are
    /// flushed; checkpoints only record positions whose rows the target has
    /// flushed (a killed Milvus 2.3.5 can lose unflushed rows it had
    /// acknowledged). `0s`: checkpoint as soon as the target acknowledged.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        Self {
            batch_rows: 10_000,
            batch_bytes: 8 * 1024 * 1024,
            max_buffer_bytes: 32 * 1024 * 1024,
            batch_wait: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(10),
        }
    }
}

/// Values given on the command line; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--etcd` (comma separated).
    pub etcd_endpoints: Option<Vec<String>>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Parses a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        Self::from_table(table)
    }

    /// Loads `path` (or the defaults when `None`), applies the environment
    /// `env` (pass `std::env::vars()`), then the CLI `overrides`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut cfg = Self::from_table(table)?;
        if let Some(l) = overrides.listen {
            cfg.server.listen = l;
        }
        if let Some(a) = &overrides.advertise {
            cfg.server.advertise.clone_from(a);
        }
        if let Some(e) = &overrides.etcd_endpoints {
            cfg.etcd.endpoints.clone_from(e);
        }
        if let Some(f) = overrides.log_format {
            cfg.log.format = f;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let mut cfg: Self = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            },
        )?;
        read_secret_file(
            "server.api_token",
            &mut cfg.server.api_token,
            cfg.server.api_token_file.as_deref(),
        )?;
        read_secret_file(
            "etcd.password",
            &mut cfg.etcd.password,
            cfg.etcd.password_file.as_deref(),
        )?;
        read_secret_file(
            "source.milvus_token",
            &mut cfg.source.milvus_token,
            cfg.source.milvus_token_file.as_deref(),
        )?;
        read_secret_file(
            "source.kafka.sasl_password",
            &mut cfg.source.kafka.sasl_password,
            cfg.source.kafka.sasl_password_file.as_deref(),
        )?;
        read_secret_file(
            "source.pulsar.auth_token",
            &mut cfg.source.pulsar.auth_token,
            cfg.source.pulsar.auth_token_file.as_deref(),
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The same configuration with every secret replaced by `<hidden>`,
    /// for printing.
    pub fn with_secrets_hidden(mut self) -> Self {
        for secret in [
            &mut self.server.api_token,
            &mut self.etcd.password,
            &mut self.source.milvus_token,
            &mut self.source.kafka.sasl_password,
            &mut self.source.pulsar.auth_token,
        ] {
            if secret.is_some() {
                *secret = Some("<hidden>".into());
            }
        }
        self
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.etcd.endpoints.is_empty() || self.etcd.endpoints.iter().any(|e| e.is_empty()) {
            return bad(
                "etcd.endpoints",
                "at least one non-empty endpoint is required",
            );
        }
        if self.etcd.root.is_empty() || self.etcd.root.ends_with('/') {
            return bad("etcd.root", "must be non-empty and must not end with '/'");
        }
        if self.etcd.connect_timeout.is_zero() || self.etcd.request_timeout.is_zero() {
            return bad("etcd.connect_timeout", "timeouts must be greater than zero");
        }
        if self.ha.lease_ttl < Duration::from_secs(2) {
            return bad("ha.lease_ttl", "must be at least 2s");
        }
        if self.tasks.max_tasks == 0 {
            return bad("tasks.max_tasks", "must be at least 1");
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024");
        }
        if self.source.channel_prefix.is_empty() {
            return bad("source.channel_prefix", "must not be empty");
        }
        if self.source.dml_channel_num == 0 {
            return bad("source.dml_channel_num", "must be at least 1");
        }
        if self.source.connect_timeout.is_zero() {
            return bad("source.connect_timeout", "must be greater than zero");
        }
        if self.source.mq_type == MqType::Pulsar {
            self.source.pulsar.validate()?;
        }
        if self.replicate.checkpoint_interval.is_zero()
            || self.replicate.reconcile_interval.is_zero()
        {
            return bad(
                "replicate.checkpoint_interval",
                "intervals must be greater than zero",
            );
        }
        if self.replicate.batch_rows == 0 || self.replicate.batch_bytes == 0 {
            return bad(
                "replicate.batch_rows",
                "batch limits must be greater than zero",
            );
        }
        let adv = &self.server.advertise;
        if !(adv.is_empty() || adv.starts_with("http://") || adv.starts_with("https://")) {
            return bad("server.advertise", "must be an http:// or https:// URL");
        }
        self.server.validate_tls()?;
        Ok(())
    }
}

/// `Some("<redacted>")` for a set secret, for `Debug` output.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// Fills `secret` (the key `key`) from `file` when one is given: its
/// content without the trailing newline. Both at once is an error; the
/// error names the key and the file, never the content.
fn read_secret_file(
    key: &str,
    secret: &mut Option<String>,
    file: Option<&Path>,
) -> Result<(), ConfigError> {
    let Some(file) = file else { return Ok(()) };
    if secret.is_some() {
        return Err(ConfigError::Key {
            key: key.into(),
            message: format!("set either {key} or {key}_file, not both"),
        });
    }
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Key {
        key: format!("{key}_file"),
        message: format!("cannot read {}: {e}", file.display()),
    })?;
    *secret = Some(text.trim_end_matches(['\n', '\r']).to_string());
    Ok(())
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("compat_http_200", &self.compat_http_200)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("api_token", &redacted(&self.api_token))
            .field("api_token_file", &self.api_token_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("milvus_uri", &self.milvus_uri)
            .field("milvus_token", &redacted(&self.milvus_token))
            .field("milvus_token_file", &self.milvus_token_file)
            .field("mq_type", &self.mq_type)
            .field("nats_url", &self.nats_url)
            .field("kafka", &self.kafka)
            .field("pulsar", &self.pulsar)
            .field("channel_prefix", &self.channel_prefix)
            .field("dml_channel_num", &self.dml_channel_num)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Applies `MILVUS_CDC_<SECTION>__<KEY>=value` variables to `table`. The value
/// is read as a TOML value when it parses as one (`5`, `true`, `["a"]`) and as
/// a string otherwise. `MILVUS_CDC_*` names without `__` belong to CLI flags
/// (`MILVUS_CDC_CONFIG`, `MILVUS_CDC_SERVER`, `MILVUS_CDC_TARGET_TOKEN`, ...)
/// and are left alone.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        // SECTION__KEY, or SECTION__SUBSECTION__KEY (`[source.kafka]`).
        let (tables, key) = match parts.as_slice() {
            [s, k] => (vec![s.clone()], k),
            [s, sub, k] => (vec![s.clone(), sub.clone()], k),
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: "expected MILVUS_CDC_<SECTION>__<KEY> or MILVUS_CDC_<SECTION>__<SUBSECTION>__<KEY>".into(),
                })
            }
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut at = &mut *table;
        for name in &tables {
            let entry = at
                .entry(name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{name}` is not a section"),
                });
            };
            at = t;
        }
        at.insert(key.clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn secrets_come_from_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file-s3cret\n").unwrap();
        let text = format!(
            "[etcd]\npassword_file = {:?}\n[source]\nmilvus_token = \"tok-s3cret\"\n",
            file.display().to_string()
        );
        let cfg = Config::from_toml_str(&text).unwrap();
        assert_eq!(cfg.etcd.password.as_deref(), Some("from-file-s3cret"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        let mut cfg = cfg;
        cfg.source.kafka.sasl_password = Some("kafka-s3cret".into());
        let printed = toml::to_string(&cfg.with_secrets_hidden()).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        let both = format!(
            "[etcd]\npassword = \"x\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let err = Config::from_toml_str(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let missing = "[source.kafka]\nsasl_password_file = \"/nonexistent/pw\"\n";
        let err = Config::from_toml_str(missing).unwrap_err().to_string();
        assert!(
            err.contains("sasl_password_file") && err.contains("/nonexistent/pw"),
            "{err}"
        );
    }

    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = Config::from_toml_str("").unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.server.advertise_url(), "http://127.0.0.1:8444");
        assert_eq!(cfg.source.replicate_channel(), "by-dev-replicate-msg");
        assert_eq!(cfg.source.dml_channels()[15], "by-dev-rootcoord-dml_15");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[etcd]\nendpoint = [\"x\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("etcd"), "{msg}");
        assert!(msg.contains("endpoint"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml_str("[ha]\nlease_ttl = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("ha.lease_ttl"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = Config::from_toml_str("[tasks]\nmax_tasks = 0\n").unwrap_err();
        assert!(err.to_string().contains("tasks.max_tasks"), "{err}");
        let err = Config::from_toml_str("[server]\nadvertise = \"host:1\"\n").unwrap_err();
        assert!(err.to_string().contains("server.advertise"), "{err}");
    }

    #[test]
    fn tls_settings_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        // A certificate without its key, and the reverse.
        let err = Config::from_toml_str(&format!("[server]\ntls_cert_file = {}\n", q(&cert)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls_key_file"), "{err}");
        let err = Config::from_toml_str(&format!("[server]\ntls_key_file = {}\n", q(&key)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls_cert_file"), "{err}");
        // The files themselves are read by `serve` (api::tls names them).
        let elsewhere = "[server]\ntls_cert_file = \"/n/c.pem\"\ntls_key_file = \"/n/k.pem\"\n";
        assert!(Config::from_toml_str(elsewhere)
            .unwrap()
            .server
            .tls_enabled());
        // A CA without TLS on is a mistake.
        let err = Config::from_toml_str(&format!("[server]\ntls_ca_file = {}\n", q(&cert)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls_ca_file"), "{err}");
        // With TLS on, the advertised URL is https.
        let both = format!(
            "[server]\ntls_cert_file = {}\ntls_key_file = {}\n",
            q(&cert),
            q(&key)
        );
        let cfg = Config::from_toml_str(&both).unwrap();
        assert_eq!(cfg.server.advertise_url(), "https://127.0.0.1:8444");
        let err = Config::from_toml_str(&format!("{both}advertise = \"http://h:8444\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.advertise") && err.contains("https"),
            "{err}"
        );
    }

    #[test]
    fn env_and_cli_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"0.0.0.0:1000\"\n[tasks]\nmax_tasks = 3\n",
        )
        .unwrap();
        let env = vec![
            ("MILVUS_CDC_TASKS__MAX_TASKS".to_string(), "7".to_string()),
            ("MILVUS_CDC_ETCD__ROOT".to_string(), "a/b".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let cli = ConfigOverrides {
            listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let cfg = Config::load(Some(&path), env, &cli).unwrap();
        assert_eq!(cfg.tasks.max_tasks, 7);
        assert_eq!(cfg.etcd.root, "a/b");
        assert_eq!(cfg.server.listen.port(), 2000);
    }

    #[test]
    fn bad_env_is_named() {
        let env = vec![(
            "MILVUS_CDC_TASKS__MAX_TASKS".to_string(),
            "many".to_string(),
        )];
        let err = Config::load(None, env, &ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("tasks.max_tasks"), "{err}");
        let env = vec![("MILVUS_CDC_A__B__C__D".to_string(), "1".to_string())];
        let err = Config::load(None, env, &ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("MILVUS_CDC_A__B__C__D"), "{err}");
        // A subsection: [source.kafka].
        let env = vec![
            (
                "MILVUS_CDC_SOURCE__MQ_TYPE".to_string(),
                "kafka".to_string(),
            ),
            (
                "MILVUS_CDC_SOURCE__KAFKA__BROKERS".to_string(),
                r#"["k1:9092", "k2:9092"]"#.to_string(),
            ),
            (
                "MILVUS_CDC_SOURCE__KAFKA__SASL_PASSWORD".to_string(),
                "s3cret".to_string(),
            ),
        ];
        let cfg = Config::load(None, env, &ConfigOverrides::default()).unwrap();
        assert_eq!(cfg.source.mq_type, MqType::Kafka);
        assert_eq!(cfg.source.kafka.brokers, vec!["k1:9092", "k2:9092"]);
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "secrets are redacted"
        );
        // CLI variables (no `__`) are not configuration keys.
        let env = vec![("MILVUS_CDC_TARGET_TOKEN".to_string(), "x".to_string())];
        assert!(Config::load(None, env, &ConfigOverrides::default()).is_ok());
    }

    #[test]
    fn shipped_example_is_valid_and_complete() {
        let text = include_str!("../config/example.toml");
        let cfg = Config::from_toml_str(text).unwrap();
        assert_eq!(cfg, Config::default(), "example must document the defaults");
        // Every section of the config appears in the example.
        for section in [
            "[server]",
            "[log]",
            "[etcd]",
            "[source]",
            "[ha]",
            "[tasks]",
            "[replicate]",
        ] {
            assert!(text.contains(section), "{section} missing from example");
        }
    }

    #[test]
    fn pulsar_section_as_milvus_describes_it() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "jwt-s3cret\n").unwrap();
        let text = format!(
            "[source]\nmq = \"pulsar\"\n[source.pulsar]\naddress = \"pulsar.example\"\n\
             port = 6651\ntenant = \"milvus\"\nnamespace = \"prod\"\n\
             auth_plugin = \"org.apache.pulsar.client.impl.auth.AuthenticationToken\"\n\
             auth_token_file = {:?}\n",
            tok.display().to_string()
        );
        let cfg = Config::from_toml_str(&text).unwrap();
        let p = &cfg.source.pulsar;
        assert_eq!(cfg.source.mq_type, MqType::Pulsar);
        assert_eq!(p.service_url().unwrap(), "pulsar://pulsar.example:6651");
        assert_eq!(p.web_port, 80);
        assert_eq!(
            p.topic("by-dev-rootcoord-dml_3"),
            "persistent://milvus/prod/by-dev-rootcoord-dml_3"
        );
        assert!(p.token_auth());
        assert_eq!(p.auth_token.as_deref(), Some("jwt-s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let printed = toml::to_string(&cfg.clone().with_secrets_hidden()).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        // Full URLs, with or without a port.
        let url = |address: &str| {
            PulsarConfig {
                address: address.into(),
                ..PulsarConfig::default()
            }
            .service_url()
        };
        assert_eq!(url("pulsar+ssl://b:6651").unwrap(), "pulsar+ssl://b:6651");
        assert_eq!(url("pulsar://b").unwrap(), "pulsar://b:6650");
        assert_eq!(url("localhost").unwrap(), "pulsar://localhost:6650");
    }

    #[test]
    fn bad_pulsar_settings_are_named() {
        let err_of = |body: &str| {
            Config::from_toml_str(&format!(
                "[source]\nmq_type = \"pulsar\"\n[source.pulsar]\n{body}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        let err = err_of("address = \"http://b:8080\"");
        assert!(err.contains("source.pulsar.address"), "{err}");
        let err = err_of("address = \"b:6650\"");
        assert!(
            err.contains("source.pulsar.address") && err.contains("port"),
            "{err}"
        );
        let err = err_of(
            "auth_plugin = \"org.apache.pulsar.client.impl.auth.oauth2.AuthenticationOAuth2\"",
        );
        assert!(
            err.contains("source.pulsar.auth_plugin") && err.contains("token"),
            "{err}"
        );
        let err = err_of("auth_plugin = \"token\"");
        assert!(err.contains("source.pulsar.auth_token"), "{err}");
        let err = err_of("tenant = \"a/b\"");
        assert!(err.contains("source.pulsar.tenant"), "{err}");
        let err = err_of("tls_ca = \"/ca.pem\"");
        assert!(
            err.contains("source.pulsar.tls_ca") && err.contains("pulsar+ssl"),
            "{err}"
        );
        let err = err_of("address = \"pulsar+ssl://b\"\ntls_allow_insecure = true");
        assert!(
            err.contains("source.pulsar.tls_allow_insecure") && err.contains("tls_ca"),
            "{err}"
        );
        let err = err_of("auth_token = \"x\"\nauth_token_file = \"/nonexistent\"");
        assert!(err.contains("not both"), "{err}");
        let err = err_of("port = \"many\"");
        assert!(err.contains("source.pulsar.port"), "{err}");
        // Environment overrides reach the subsection.
        let env = vec![
            (
                "MILVUS_CDC_SOURCE__MQ_TYPE".to_string(),
                "pulsar".to_string(),
            ),
            (
                "MILVUS_CDC_SOURCE__PULSAR__ADDRESS".to_string(),
                "pulsar://10.0.0.5:6650".to_string(),
            ),
            (
                "MILVUS_CDC_SOURCE__PULSAR__AUTH_TOKEN".to_string(),
                "s3cret".to_string(),
            ),
        ];
        let cfg = Config::load(None, env, &ConfigOverrides::default()).unwrap();
        assert_eq!(
            cfg.source.pulsar.service_url().unwrap(),
            "pulsar://10.0.0.5:6650"
        );
        assert!(cfg.source.pulsar.token_auth());
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
