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

mod cluster;
mod server;
mod source;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

pub use self::{
    cluster::{EtcdConfig, HaConfig, ReplicateConfig, TasksConfig},
    server::{LogConfig, LogFormat, ServerConfig},
    source::{
        KafkaConfig, KafkaSaslMechanism, KafkaSecurityProtocol, MqType, PulsarConfig, SourceConfig,
    },
};

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
pub(crate) fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// Fills `secret` (the key `key`) from `file` when one is given: its
/// content without the trailing newline. Both at once is an error; the
/// error names the key and the file, never the content.
pub(crate) fn read_secret_file(
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
