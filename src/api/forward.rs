//! Forwarding `/cdc` from a follower to the leader: the leader's answer
//! (status and body) is returned unchanged. A header marks forwarded
//! requests, so a replica that is not the leader never forwards one again
//! (no loops while leadership moves). The leader's advertised URL decides
//! the scheme: `https://` when the API is served with TLS, the leader's
//! certificate verified against the configured roots.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use super::tls::{https_client, HttpsClient};

/// Header set on forwarded requests.
pub const FORWARDED_HEADER: &str = "x-milvus-cdc-forwarded-by";

/// Time allowed for the leader to answer one forwarded request (a `create`
/// may wait up to its `connect_timeout`, at most 60 s, for the target).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(90);

/// The leader's answer.
#[derive(Debug)]
pub struct Forwarded {
    /// HTTP status.
    pub status: u16,
    /// Content type, if any.
    pub content_type: Option<String>,
    /// Body bytes.
    pub body: Bytes,
}

/// Why a forwarded request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request never reached the leader (no connection): safe to retry.
    #[error("leader {leader} unreachable: {message}")]
    NotSent {
        /// The leader's URL.
        leader: String,
        /// What failed.
        message: String,
    },
    /// The request may have reached the leader, but no answer came: the
    /// leader may have applied it.
    #[error("no answer from the leader {leader}: {message}; the request may have been applied")]
    NoAnswer {
        /// The leader's URL.
        leader: String,
        /// What failed.
        message: String,
    },
}

/// Longest time spent opening a connection to the leader (TCP, then TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An HTTP/1 client for forwarding. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: HttpsClient,
    me: String,
    timeout: Duration,
    token: Option<String>,
}

impl Forwarder {
    /// A forwarder for the replica advertised as `me`, trusting `tls`'s
    /// roots for `https://` leaders.
    pub fn new(me: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            client: https_client(tls, CONNECT_TIMEOUT),
            me: me.to_string(),
            timeout: FORWARD_TIMEOUT,
            token: None,
        }
    }

    /// The same forwarder sending the API's bearer token to the leader.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The same forwarder with another answer timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Posts `body` to `<leader_url>/cdc`.
    pub async fn forward(&self, leader_url: &str, body: Bytes) -> Result<Forwarded, ForwardError> {
        let not_sent = |message: String| ForwardError::NotSent {
            leader: leader_url.to_string(),
            message,
        };
        let no_answer = |message: String| ForwardError::NoAnswer {
            leader: leader_url.to_string(),
            message,
        };
        let url = format!("{}/cdc", leader_url.trim_end_matches('/'));
        let mut req = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, self.me.as_str());
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| not_sent(format!("cannot build request to {url}: {e}")))?;
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_connect() => return Err(not_sent(crate::error_text::chain(&e))),
            Ok(Err(e)) => return Err(no_answer(crate::error_text::chain(&e))),
            Err(_) => return Err(no_answer(format!("none within {:?}", self.timeout))),
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(no_answer(format!("reading the answer failed: {e}"))),
            Err(_) => return Err(no_answer("the answer did not arrive in time".into())),
        };
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_not_sent_and_a_silent_leader_is_no_answer() {
        let tls = crate::api::tls::client_config(None, None).unwrap();
        let fwd = Forwarder::new("http://me", tls).with_timeout(Duration::from_millis(300));
        // Nothing listens: the request never left.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = fwd
            .forward(
                &format!("http://127.0.0.1:{port}"),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::NotSent { .. }), "{err}");
        // A leader that reads the request and never answers: it may have
        // applied it, so it must not be sent again.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = silent.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = fwd
            .forward(&url, Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::NoAnswer { .. }), "{err}");
        assert!(err.to_string().contains("may have been applied"), "{err}");
    }
}
