//! The HTTP side of the client commands: addresses, requests with a
//! timeout, and what an answer means for the exit code.

use std::{io::Write as _, path::Path, process::ExitCode, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use serde_json::Value;

use super::{ServerArgs, CONNECT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE};

pub(super) type HttpClient = crate::api::tls::HttpsClient;

/// A client for `http://` and `https://` servers; `https://` ones must
/// present a certificate that chains to `cacert` (PEM) when given, to the
/// system's roots otherwise. An unusable `cacert` is an error naming it.
/// With `insecure` (`--insecure`) no certificate is verified, and a warning
/// says so on stderr.
pub(super) fn http_client(
    timeout: Duration,
    cacert: Option<&Path>,
    insecure: bool,
) -> Result<HttpClient, String> {
    let tls = if insecure {
        eprintln!(
            "milvus-cdc: warning: --insecure: the certificates of https:// servers are not \
             verified; anyone on the path can read and change the requests and the API token"
        );
        insecure_client_config()?
    } else {
        crate::api::tls::client_config(cacert, None).map_err(|e| format!("--cacert: {e}"))?
    };
    Ok(crate::api::tls::https_client(
        tls,
        CONNECT_TIMEOUT.min(timeout),
    ))
}

/// Client TLS settings that accept any server certificate (`--insecure`).
fn insecure_client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--insecure: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A verifier that accepts every server certificate, whoever issued it and
/// whatever name it holds (`--insecure`). The handshake signatures are
/// still checked, so the peer does hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Bytes,
}

/// Why no answer was received.
#[derive(Debug)]
pub(super) enum Transport {
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

/// Checks a `--server` value and returns it as `http://host:port` or
/// `https://host:port` without a trailing slash. A value without a scheme
/// gets `http://`.
fn base_url(server: &str) -> Result<String, String> {
    let s = server.trim();
    if s.is_empty() {
        return Err("--server: empty URL".into());
    }
    let (scheme, rest) = match s.split_once("://") {
        None => ("http", s),
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => {
            return Err(format!(
                "--server {server}: expected http://host:port or https://host:port"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--server {server}: no host in the URL"));
    }
    let url = format!("{scheme}://{rest}");
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
pub(super) fn base_urls(servers: &[String]) -> Result<Vec<String>, String> {
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
pub(super) async fn send(
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
                crate::error_text::chain(&e)
            )))
        }
        Ok(Err(e)) => {
            return Err(Transport::NoAnswer(format!(
                "{url} did not answer: {}",
                crate::error_text::chain(&e)
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
            crate::error_text::chain(&e)
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
pub(super) enum Reply {
    /// `{"code": 200, "data": ...}`.
    Ok(Value),
    /// `{"code": N, "message": "..."}` (with any HTTP status, so that
    /// `server.compat_http_200` servers work), or an answer that is not the
    /// API's.
    Error { code: u16, message: String },
}

/// Interprets a `/cdc` answer: the JSON `code` decides, whatever the HTTP
/// status.
pub(super) fn interpret(status: u16, body: &[u8]) -> Reply {
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
pub(super) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

pub(super) fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("milvus-cdc: {message}");
    ExitCode::from(code)
}

/// Posts `body` to `/cdc` of the first of `args.server` that accepts a
/// connection: a server that refused the connection never saw the request,
/// so the next one is tried. When a request was sent but no answer came,
/// nothing else is tried (it may have taken effect) and `if_unanswered`, a
/// hint on how to find out, is added to the error. Errors are the exit code
/// to return, already reported on stderr.
pub(super) async fn post_cdc(
    args: &ServerArgs,
    timeout: Duration,
    body: Bytes,
    if_unanswered: Option<&str>,
) -> Result<Answer, ExitCode> {
    let urls = base_urls(&args.server).map_err(|e| fail(EXIT_USAGE, &e))?;
    let client = http_client(timeout, args.cacert.as_deref(), args.insecure)
        .map_err(|e| fail(EXIT_USAGE, &e))?;
    let mut last_error = String::new();
    for url in &urls {
        match send(
            &client,
            hyper::Method::POST,
            &format!("{url}/cdc"),
            Some(body.clone()),
            timeout,
            args.api_token.as_deref(),
        )
        .await
        {
            Ok(answer) => return Ok(answer),
            // Nothing was sent: the next replica may be tried safely.
            Err(Transport::NotConnected(e)) => last_error = e,
            Err(e @ Transport::NoAnswer(_)) => {
                let mut message = e.to_string();
                if let Some(hint) = if_unanswered {
                    message.push_str("; ");
                    message.push_str(hint);
                }
                return Err(fail(EXIT_UNREACHABLE, &message));
            }
        }
    }
    Err(fail(EXIT_UNREACHABLE, &last_error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(base_url("https://h:1/").unwrap(), "https://h:1");
        assert!(base_url("ftps://h:1").unwrap_err().contains("https://"));
        assert!(base_url("ftp://h").is_err());
        assert!(base_url("").is_err());
        assert!(base_url("http://").is_err());
        assert!(base_urls(&[]).is_err());
    }
}
