//! [`MessageQueue`] for Milvus's natsmq: a NATS JetStream server in which
//! every Milvus channel is one stream named after the channel (subject =
//! stream name). Positions are JetStream stream sequences.
//!
//! Each open channel is an ephemeral *ordered* pull consumer: the server
//! delivers in sequence order, nothing is acknowledged (the source's stream is
//! never modified), and async-nats recreates the consumer after a missed
//! heartbeat at the last delivered sequence. When the client reconnects (a
//! source restart), every open stream ends and its reader reopens it after
//! its last sequence at once.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use futures::{future::BoxFuture, StreamExt as _, TryStreamExt as _};

use async_nats::jetstream::{
    self,
    consumer::{pull::OrderedConfig, DeliverPolicy},
};

use super::mq::{ChannelInfo, MessageQueue, MessageStream, MqError, RawMessage, StartAt};

/// Longest a pull of a channel's ordered consumer waits for messages: the
/// consumer's heartbeat is half of it, and two missed heartbeats recreate
/// it.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// A connection to the source's JetStream. Cheap to clone.
#[derive(Clone)]
pub struct NatsMq {
    js: jetstream::Context,
    url: String,
    timeout: Duration,
    /// Counts (re)connections. An open stream ends when it changes, so its
    /// reader reopens at once after a source restart instead of waiting for
    /// the ordered consumer's missed heartbeats (about 15 s).
    connections: Arc<watch::Sender<u64>>,
}

/// Options shared by both ways to connect; `connections` counts connects.
fn options(timeout: Duration, connections: &Arc<watch::Sender<u64>>) -> async_nats::ConnectOptions {
    let connections = connections.clone();
    async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let connections = connections.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    connections.send_modify(|n| *n += 1);
                }
            }
        })
}

impl NatsMq {
    /// A client that connects (and reconnects, with backoff) in the
    /// background; calls fail with a timeout until the server answers.
    pub async fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, MqError> {
        let connections = Arc::new(watch::Sender::new(0));
        let client = options(timeout, &connections)
            .connect(url)
            .await
            .map_err(|e| MqError::retriable(format!("natsmq {url}: {e}")))?;
        Ok(Self {
            js: jetstream::new(client),
            url: url.to_string(),
            timeout,
            connections,
        })
    }

    /// Connects to `url`; fails if the server does not answer within `timeout`.
    /// Afterwards the client reconnects by itself, with backoff.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, MqError> {
        let err = |message: String| MqError::retriable(format!("natsmq {url}: {message}"));
        let connections = Arc::new(watch::Sender::new(0));
        let opts = options(timeout, &connections);
        let client = match tokio::time::timeout(timeout, opts.connect(url)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err(format!("no connection within {timeout:?}"))),
        };
        // `retry_on_initial_connect` returns before the connection is up;
        // a flush proves the server answers.
        match tokio::time::timeout(timeout, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err(format!("no answer within {timeout:?}"))),
        }
        Ok(Self {
            js: jetstream::new(client),
            url: url.to_string(),
            timeout,
            connections,
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> MqError {
        MqError::retriable(format!("natsmq {} {what}: {e}", self.url))
    }

    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, MqError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(self.err(what, format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// Whether `e` says the stream does not exist.
fn is_stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

impl MessageQueue for NatsMq {
    fn open(&self, channel: &str, start: StartAt) -> BoxFuture<'_, Result<MessageStream, MqError>> {
        let channel = channel.to_string();
        Box::pin(async move {
            let mut reconnected = self.connections.subscribe();
            reconnected.mark_unchanged();
            let stream = self
                .bounded(
                    &format!("get stream {channel}"),
                    self.js.get_stream(&channel),
                )
                .await?;
            let deliver_policy = match start {
                StartAt::Earliest => DeliverPolicy::All,
                StartAt::Latest => DeliverPolicy::New,
                StartAt::After(seq) => DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
            };
            let consumer = self
                .bounded(
                    &format!("create consumer on {channel}"),
                    stream.create_consumer(OrderedConfig {
                        deliver_policy,
                        // Messages in flight per channel: up to 1.5 pulls.
                        // natsmq disconnects a client with more than 64 MiB
                        // pending (500 per pull stalled 10 s), and prefetched
                        // messages sit outside the byte budget: a pull of 8
                        // keeps a backlog of large inserts within memory
                        // (docs/benchmarks.md) and time ticks still flowing.
                        max_batch: 8,
                        // A pull lasts 30 s by default, with a heartbeat
                        // every 15 s, and the consumer is recreated after
                        // two missed heartbeats: a pull lost by a busy
                        // natsmq stalled one channel for 60 s (seen in an
                        // e2e run behind a long history). Pulls of 5 s
                        // bring that down to about 10 s; a channel is
                        // never idle that long (time ticks every 200 ms).
                        max_expires: PULL_EXPIRES,
                        ..Default::default()
                    }),
                )
                .await?;
            let messages = self
                .bounded(&format!("read {channel}"), consumer.messages())
                .await?;
            let url = self.url.clone();
            let out = messages.map(move |m| {
                let m =
                    m.map_err(|e| MqError::retriable(format!("natsmq {url} {channel}: {e}")))?;
                let info = m.info().map_err(|e| {
                    MqError::retriable(format!("natsmq {url}: bad reply subject: {e}"))
                })?;
                Ok(RawMessage {
                    sequence: info.stream_sequence,
                    payload: m.message.payload.clone(),
                })
            });
            // Ends at the next (re)connection: the reader reopens after
            // its last sequence.
            let out = out.take_until(async move {
                if reconnected.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            Ok(out.boxed())
        })
    }

    fn info(&self, channel: &str) -> BoxFuture<'_, Result<ChannelInfo, MqError>> {
        let channel = channel.to_string();
        Box::pin(async move {
            let got = tokio::time::timeout(self.timeout, self.js.get_stream(&channel)).await;
            let mut stream = match got {
                Ok(Ok(s)) => s,
                // Milvus creates a channel's stream at its first message.
                Ok(Err(e)) if is_stream_not_found(&e) => return Ok(ChannelInfo::default()),
                Ok(Err(e)) => return Err(self.err(&format!("get stream {channel}"), e)),
                Err(_) => {
                    return Err(self.err(
                        &format!("get stream {channel}"),
                        format!("no answer within {:?}", self.timeout),
                    ))
                }
            };
            let info = self
                .bounded(&format!("stream info {channel}"), stream.info())
                .await?;
            Ok(ChannelInfo {
                first_sequence: info.state.first_sequence,
                last_sequence: info.state.last_sequence,
            })
        })
    }

    fn channels(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, MqError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let names: Vec<String> = self
                .bounded(
                    "list streams",
                    self.js.stream_names().try_collect::<Vec<_>>(),
                )
                .await?;
            let mut names: Vec<String> = names
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            names.sort();
            Ok(names)
        })
    }
}
