//! `[server]` (the HTTP API, its token and TLS) and `[log]`.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{redacted, ConfigError};

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

    pub(super) fn validate_tls(&self) -> Result<(), ConfigError> {
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
