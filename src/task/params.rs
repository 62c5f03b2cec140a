//! The `create` request's parameters, as the official API names them, and
//! their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest accepted string in a connect parameter.
const MAX_FIELD_LEN: usize = 4096;
/// Default port of a Milvus proxy.
pub const DEFAULT_MILVUS_PORT: u16 = 19530;
/// Connect timeout used when the request gives none.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Largest accepted `connect_timeout`, in seconds.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 60;

/// `milvus_connect_param`: how to reach the target Milvus. Exactly the
/// documented fields; unknown fields are rejected so that typos surface.
/// `Debug` hides the token, the password and any credentials in the uri.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilvusConnectParam {
    /// `http://host:port`, `https://host:port` or `tcp://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Host name or IP (with `port`, instead of `uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port (with `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `user:password` or an API key. Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// User name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (with `username`). Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Use TLS (implied by an `https://` uri).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tls: Option<bool>,
    /// Seconds allowed to connect (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
}

impl std::fmt::Debug for MilvusConnectParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("MilvusConnectParam")
            .field("uri", &self.uri.as_deref().map(without_userinfo))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &hidden(&self.token))
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("enable_tls", &self.enable_tls)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// `uri` with any `user:password@` replaced by `***@`, for messages.
pub fn without_userinfo(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

/// `collection_infos[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionInfo {
    /// `*` (every collection), a collection name of the default database,
    /// `db.name` or `db.*` (see [`Selection`](super::selection::Selection)).
    pub name: String,
    /// Where to start, per channel (a virtual channel name as the official
    /// milvus-cdc takes it, or a physical one) → base64 of a serialized
    /// Milvus `MsgPosition`; the task reads on after that message. Channels
    /// without one start at the earliest retained message.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub positions: std::collections::BTreeMap<String, String>,
}

/// A `create` parameter that cannot be accepted. The message is shown to the
/// API client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

pub(super) fn bad<T>(msg: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError(msg.into()))
}

/// Credentials for the target, after validation.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No authentication.
    None,
    /// A token: `user:password` or an API key.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// A validated target address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddress {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Whether TLS is used.
    pub tls: bool,
    /// Authentication.
    pub credentials: Credentials,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl MilvusConnectParam {
    /// The parameters without secrets, as list and get show them.
    pub fn redacted(&self) -> Self {
        Self {
            token: None,
            password: None,
            ..self.clone()
        }
    }

    /// Checks the parameters and resolves them to an address.
    pub fn validate(&self) -> Result<TargetAddress, ParamError> {
        for (name, value) in [
            ("uri", &self.uri),
            ("host", &self.host),
            ("token", &self.token),
            ("username", &self.username),
            ("password", &self.password),
        ] {
            if let Some(v) = value {
                if v.len() > MAX_FIELD_LEN {
                    return bad(format!(
                        "milvus_connect_param.{name} is longer than {MAX_FIELD_LEN} characters"
                    ));
                }
                if v.chars().any(char::is_control) {
                    return bad(format!(
                        "milvus_connect_param.{name} contains control characters"
                    ));
                }
            }
        }
        let timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        if timeout == 0 || timeout > MAX_CONNECT_TIMEOUT_SECS {
            return bad(format!(
                "milvus_connect_param.connect_timeout must be between 1 and {MAX_CONNECT_TIMEOUT_SECS} seconds"
            ));
        }
        let (scheme_tls, host, port) = match (&self.uri, &self.host) {
            (Some(_), Some(_)) => {
                return bad("milvus_connect_param: give either uri or host and port, not both")
            }
            (None, None) => return bad("milvus_connect_param: uri or host is required"),
            (Some(uri), None) => {
                if self.port.is_some() {
                    return bad("milvus_connect_param: port goes with host, not with uri");
                }
                parse_uri(uri)?
            }
            (None, Some(host)) => {
                check_host(host)?;
                (
                    false,
                    host.clone(),
                    self.port.unwrap_or(DEFAULT_MILVUS_PORT),
                )
            }
        };
        if port == 0 {
            return bad("milvus_connect_param.port must be between 1 and 65535");
        }
        let tls = match (scheme_tls, self.enable_tls) {
            (true, Some(false)) => {
                return bad("milvus_connect_param: an https uri needs enable_tls true or absent")
            }
            (true, _) => true,
            (false, t) => t.unwrap_or(false),
        };
        let credentials = match (&self.token, &self.username, &self.password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return bad(
                    "milvus_connect_param: give either token or username and password, not both",
                )
            }
            (Some(t), None, None) if t.is_empty() => Credentials::None,
            (Some(t), None, None) => Credentials::Token(t.clone()),
            (None, Some(u), Some(p)) if !u.is_empty() => Credentials::Token(format!("{u}:{p}")),
            (None, Some(_), Some(_)) => return bad("milvus_connect_param.username is empty"),
            (None, Some(_), None) => return bad("milvus_connect_param: username needs a password"),
            (None, None, Some(_)) => return bad("milvus_connect_param: password needs a username"),
            (None, None, None) => Credentials::None,
        };
        let scheme = if tls { "https" } else { "http" };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(TargetAddress {
            url: format!("{scheme}://{host}:{port}"),
            tls,
            credentials,
            connect_timeout: Duration::from_secs(timeout),
        })
    }
}

fn check_host(host: &str) -> Result<(), ParamError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        bad(format!(
            "milvus_connect_param.host {host:?} is not a valid host name or IP address"
        ))
    }
}

/// Splits `scheme://host[:port][/]` into (tls, host, port).
fn parse_uri(uri: &str) -> Result<(bool, String, u16), ParamError> {
    // Messages show the uri without credentials.
    let shown = without_userinfo(uri);
    let (tls, rest) = if let Some(r) = uri.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = uri.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = uri.strip_prefix("tcp://") {
        (false, r)
    } else {
        return bad(format!(
            "milvus_connect_param.uri {shown:?} must start with http://, https:// or tcp://"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return bad(format!(
            "milvus_connect_param.uri {shown:?} must be scheme://host:port without a path or user"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return bad(format!(
                "milvus_connect_param.uri {shown:?} has an unclosed '['"
            ));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "",
            None => return bad(format!("milvus_connect_param.uri {shown:?} is malformed")),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (rest.to_string(), ""),
        }
    };
    check_host(&host)?;
    let port = if port.is_empty() {
        DEFAULT_MILVUS_PORT
    } else {
        port.parse::<u16>().map_err(|_| {
            ParamError(format!(
                "milvus_connect_param.uri {shown:?} has an invalid port"
            ))
        })?
    };
    Ok((tls, host, port))
}

#[cfg(test)]
mod tests {

    #[test]
    fn credentials_never_show_in_errors_or_debug() {
        let p = MilvusConnectParam {
            uri: Some("http://root:s3cret-pw@target:19530".into()),
            token: Some("root:s3cret-tok".into()),
            password: Some("s3cret-pass".into()),
            ..Default::default()
        };
        let err = p.validate().expect_err("userinfo in uri").to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("***@target:19530"), "{err}");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert_eq!(without_userinfo("tcp://u:p@h:1"), "tcp://***@h:1");
        assert_eq!(without_userinfo("http://h:1"), "http://h:1");
    }

    use super::*;

    fn p(json: serde_json::Value) -> MilvusConnectParam {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn uri_forms() {
        let a = p(serde_json::json!({"uri": "http://localhost:19530"}))
            .validate()
            .unwrap();
        assert_eq!(a.url, "http://localhost:19530");
        assert!(!a.tls);
        assert_eq!(a.connect_timeout, Duration::from_secs(10));
        let a = p(serde_json::json!({"uri": "https://milvus.example:443/"}))
            .validate()
            .unwrap();
        assert_eq!(a.url, "https://milvus.example:443");
        assert!(a.tls);
        let a = p(serde_json::json!({"uri": "tcp://10.0.0.1"}))
            .validate()
            .unwrap();
        assert_eq!(a.url, "http://10.0.0.1:19530");
        let a = p(serde_json::json!({"uri": "http://[::1]:19540"}))
            .validate()
            .unwrap();
        assert_eq!(a.url, "http://[::1]:19540");
    }

    #[test]
    fn host_port_and_credentials() {
        let a = p(
            serde_json::json!({"host": "127.0.0.1", "port": 19540, "username": "root",
            "password": "Milvus", "enable_tls": false, "connect_timeout": 3}),
        )
        .validate()
        .unwrap();
        assert_eq!(a.url, "http://127.0.0.1:19540");
        assert_eq!(a.credentials, Credentials::Token("root:Milvus".into()));
        assert_eq!(a.connect_timeout, Duration::from_secs(3));
        let a = p(serde_json::json!({"host": "h", "enable_tls": true}))
            .validate()
            .unwrap();
        assert_eq!(a.url, "https://h:19530");
    }

    #[test]
    fn rejects() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"uri": "localhost:19530"}),
            serde_json::json!({"uri": "http://h:1", "host": "h"}),
            serde_json::json!({"uri": "http://h:1", "port": 3}),
            serde_json::json!({"uri": "http://h:99999"}),
            serde_json::json!({"uri": "http://h:0"}),
            serde_json::json!({"uri": "http://u@h:1"}),
            serde_json::json!({"uri": "http://h:1/path"}),
            serde_json::json!({"uri": "http://"}),
            serde_json::json!({"host": "bad host"}),
            serde_json::json!({"host": ""}),
            serde_json::json!({"host": "h", "port": 0}),
            serde_json::json!({"uri": "http://h", "connect_timeout": 0}),
            serde_json::json!({"uri": "http://h", "connect_timeout": 61}),
            serde_json::json!({"uri": "http://h", "token": "a:b", "username": "a"}),
            serde_json::json!({"uri": "http://h", "username": "a"}),
            serde_json::json!({"uri": "http://h", "password": "a"}),
            serde_json::json!({"uri": "https://h", "enable_tls": false}),
            serde_json::json!({"uri": "http://h", "token": "a\nb"}),
            serde_json::json!({"uri": format!("http://{}", "h".repeat(5000))}),
        ] {
            let r = p(bad.clone()).validate();
            assert!(r.is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials::Token("root:secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
