//! Forwarding `/cdc` from a follower to the leader: the leader's answer
//! (status and body) is returned unchanged. A header marks forwarded
//! requests, so a replica that is not the leader never forwards one again
//! (no loops while leadership moves).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

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

/// An HTTP/1 client for forwarding. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    me: String,
}

impl Forwarder {
    /// A forwarder for the replica advertised as `me`.
    pub fn new(me: &str) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            me: me.to_string(),
        }
    }

    /// Posts `body` to `<leader_url>/cdc`.
    pub async fn forward(&self, leader_url: &str, body: Bytes) -> Result<Forwarded, String> {
        let url = format!("{}/cdc", leader_url.trim_end_matches('/'));
        let req = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, self.me.as_str())
            .body(Full::new(body))
            .map_err(|e| format!("cannot build request to {url}: {e}"))?;
        let resp = match tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("leader {leader_url} unreachable: {e}")),
            Err(_) => {
                return Err(format!(
                    "leader {leader_url} did not answer within {FORWARD_TIMEOUT:?}"
                ))
            }
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match tokio::time::timeout(FORWARD_TIMEOUT, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(format!("reading the leader's answer failed: {e}")),
            Err(_) => return Err("the leader's answer did not arrive in time".into()),
        };
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }
}
