//! `[source]` and its queues: `[source.kafka]`, `[source.pulsar]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{redacted, ConfigError};

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
