//! The source's natsmq: a NATS JetStream server in which every Milvus
//! channel is one stream named after the channel (subject = stream name).

use std::time::Duration;

use futures::TryStreamExt as _;

/// Why the NATS server of the source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No connection within the timeout.
    #[error("cannot connect to natsmq at {url}: {message}")]
    Connect {
        /// The server tried.
        url: String,
        /// What failed.
        message: String,
    },
    /// A JetStream request failed.
    #[error("JetStream request to {url} failed: {message}")]
    Request {
        /// The server.
        url: String,
        /// What failed.
        message: String,
    },
}

/// A connection to the source's JetStream.
#[derive(Clone)]
pub struct NatsMq {
    js: async_nats::jetstream::Context,
    url: String,
    timeout: Duration,
}

impl NatsMq {
    /// Connects to `url` within `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, NatsError> {
        let err = |message: String| NatsError::Connect {
            url: url.to_string(),
            message,
        };
        let opts = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .retry_on_initial_connect();
        let client = match tokio::time::timeout(timeout, opts.connect(url)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err(format!("no connection within {timeout:?}"))),
        };
        // `retry_on_initial_connect` returns before the connection is up;
        // flush proves the server answers.
        match tokio::time::timeout(timeout, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err(format!("no answer within {timeout:?}"))),
        }
        Ok(Self {
            js: async_nats::jetstream::new(client),
            url: url.to_string(),
            timeout,
        })
    }

    /// Names of the streams that start with `prefix`, sorted.
    pub async fn stream_names(&self, prefix: &str) -> Result<Vec<String>, NatsError> {
        let err = |message: String| NatsError::Request {
            url: self.url.clone(),
            message,
        };
        let names: Vec<String> = match tokio::time::timeout(
            self.timeout,
            self.js.stream_names().try_collect::<Vec<String>>(),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err(format!("no answer within {:?}", self.timeout))),
        };
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}
