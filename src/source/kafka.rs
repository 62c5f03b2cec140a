//! [`MessageQueue`] for a Milvus that runs on Kafka: every Milvus channel is
//! a topic named after the channel, written on partition 0. Positions are
//! Kafka offsets: the agent's sequence of a message is its offset + 1 (so
//! that sequence 0 means "nothing", as on natsmq), and `StartAt::After(s)`
//! reads from offset `s`.
//!
//! Partitions are assigned by hand and read with plain fetches: there is no
//! consumer group and nothing is committed on the broker, so the checkpoint
//! in etcd is the only truth. The client is `rskafka` (pure Rust, no
//! librdkafka; see docs/source-reader.md for the choice).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, StreamExt as _};
use rskafka::client::{
    error::{Error as KafkaError, ProtocolError},
    partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
    Client, ClientBuilder, Credentials, SaslConfig,
};
use tokio::sync::Mutex;
use tracing::warn;

use super::mq::{ChannelInfo, MessageQueue, MessageStream, MqError, RawMessage, StartAt};
use crate::config::{KafkaConfig, KafkaSaslMechanism, KafkaSecurityProtocol};

/// Milvus writes each channel to this partition of its topic.
const PARTITION: i32 = 0;
/// Largest fetch response asked for (Milvus's messages can be large).
const MAX_FETCH_BYTES: i32 = 32 * 1024 * 1024;
/// How long a fetch waits at the end of the topic for new messages.
const FETCH_WAIT_MS: i32 = 500;

/// A (lazily connected) client of the source's Kafka. Cheap to share.
pub struct KafkaMq {
    cfg: KafkaConfig,
    timeout: Duration,
    client: Mutex<Connection>,
}

/// The shared client, or how the latest attempt to connect failed.
#[derive(Default)]
struct Connection {
    client: Option<Arc<Client>>,
    /// When the latest failed attempt ended, and its error.
    failed: Option<(Instant, MqError)>,
}

impl std::fmt::Debug for KafkaMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMq")
            .field("brokers", &self.cfg.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaMq {
    /// A client of the brokers in `cfg`; nothing is contacted yet. Fails only
    /// on a configuration that cannot work (no broker, unreadable TLS files).
    pub fn new(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, MqError> {
        if cfg.brokers.is_empty() {
            return Err(MqError {
                message: "source.kafka.brokers is empty".into(),
                retriable: false,
            });
        }
        let mq = Self {
            cfg: cfg.clone(),
            timeout,
            client: Mutex::new(Connection::default()),
        };
        if mq.cfg.security_protocol.tls() {
            mq.tls_config()?;
        }
        Ok(mq)
    }

    /// Connects now; fails if no broker answers within the timeout.
    pub async fn connect(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, MqError> {
        let mq = Self::new(cfg, timeout)?;
        mq.client().await?;
        Ok(mq)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> MqError {
        MqError::retriable(format!("kafka {} {what}: {e}", self.cfg.brokers.join(",")))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, MqError> {
        self.bounded_by(self.timeout, what, fut).await
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, MqError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(self.err(what, format!("no answer within {limit:?}"))),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, MqError> {
        crate::tls::client_config(
            self.cfg.tls_ca.as_deref(),
            self.cfg.tls_cert.as_deref(),
            self.cfg.tls_key.as_deref(),
        )
        .map(Arc::new)
        .map_err(|e| MqError {
            message: format!("source.kafka TLS: {e}"),
            retriable: false,
        })
    }

    /// The shared client, connecting it first if needed. Callers that waited
    /// while another one tried to connect get that attempt's error instead of
    /// each trying in turn (every channel asks at once: with the broker down,
    /// one attempt after the other would take channels × timeout).
    async fn client(&self) -> Result<Arc<Client>, MqError> {
        let asked = Instant::now();
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.client.as_ref() {
            return Ok(c.clone());
        }
        if let Some((at, e)) = &slot.failed {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        let result = self.connect_client().await;
        match &result {
            Ok(c) => {
                slot.client = Some(c.clone());
                slot.failed = None;
            }
            Err(e) => slot.failed = Some((Instant::now(), e.clone())),
        }
        result
    }

    async fn connect_client(&self) -> Result<Arc<Client>, MqError> {
        let mut b = ClientBuilder::new(self.cfg.brokers.clone())
            .client_id("milvus-cdc")
            .backoff_config(rskafka::BackoffConfig {
                // No new attempt after the timeout; the one under way may
                // finish (below), so the error names the broker's reason
                // (refused, SASL...) rather than only "no answer".
                deadline: Some(self.timeout),
                ..Default::default()
            });
        if self.cfg.security_protocol.tls() {
            b = b.tls_config(self.tls_config()?);
        }
        if self.cfg.security_protocol.sasl() {
            let creds = Credentials::new(
                self.cfg.sasl_username.clone().unwrap_or_default(),
                self.cfg.sasl_password.clone().unwrap_or_default(),
            );
            b = b.sasl_config(match self.cfg.sasl_mechanism {
                KafkaSaslMechanism::Plain => SaslConfig::Plain(creds),
                KafkaSaslMechanism::ScramSha256 => SaslConfig::ScramSha256(creds),
                KafkaSaslMechanism::ScramSha512 => SaslConfig::ScramSha512(creds),
            });
        }
        Ok(Arc::new(
            self.bounded_by(self.timeout * 2, "connect", b.build())
                .await?,
        ))
    }

    async fn partition(&self, topic: &str) -> Result<PartitionClient, MqError> {
        let client = self.client().await?;
        self.bounded(
            &format!("open topic {topic}"),
            client.partition_client(topic, PARTITION, UnknownTopicHandling::Error),
        )
        .await
    }

    /// `(earliest, high watermark)` offsets of a topic's partition.
    async fn offsets(&self, topic: &str, pc: &PartitionClient) -> Result<(i64, i64), MqError> {
        let earliest = self
            .bounded(
                &format!("earliest offset of {topic}"),
                pc.get_offset(OffsetAt::Earliest),
            )
            .await?;
        let latest = self
            .bounded(
                &format!("latest offset of {topic}"),
                pc.get_offset(OffsetAt::Latest),
            )
            .await?;
        Ok((earliest, latest))
    }
}

/// Whether `e` says the topic does not exist (yet).
fn is_unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ServerError {
            protocol_error: ProtocolError::UnknownTopicOrPartition,
            ..
        }
    )
}

/// The agent's sequence of the message at `offset`.
fn sequence_of(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or(0) + 1
}

impl MessageQueue for KafkaMq {
    fn open(&self, channel: &str, start: StartAt) -> BoxFuture<'_, Result<MessageStream, MqError>> {
        let topic = channel.to_string();
        Box::pin(async move {
            let pc = self.partition(&topic).await?;
            let (earliest, latest) = self.offsets(&topic, &pc).await?;
            let mut next = match start {
                StartAt::Earliest => earliest,
                StartAt::Latest => latest,
                StartAt::After(seq) => i64::try_from(seq).unwrap_or(i64::MAX),
            };
            if next > latest {
                // A checkpoint past the end: the topic was deleted and
                // recreated, or the broker lost data. Never skip silently.
                return Err(MqError::retriable(format!(
                    "kafka topic {topic}: position offset {next} is past the end of the topic \
                     (high watermark {latest}): the topic was recreated or the broker lost \
                     messages; the task waits here (see docs/operations.md)"
                )));
            }
            // Older than retention: the reader reports the gap it sees.
            next = next.max(earliest);
            let pc = Arc::new(pc);
            let timeout = self.timeout;
            let brokers = self.cfg.brokers.join(",");
            let stream = futures::stream::unfold(
                (pc, next, false),
                move |(pc, next, failed)| {
                    let topic = topic.clone();
                    let brokers = brokers.clone();
                    async move {
                        if failed {
                            return None;
                        }
                        let fetched = tokio::time::timeout(
                            timeout + Duration::from_millis(FETCH_WAIT_MS as u64),
                            pc.fetch_records(next, 1..MAX_FETCH_BYTES, FETCH_WAIT_MS),
                        )
                        .await;
                        let batch: Vec<Result<RawMessage, MqError>> = match fetched {
                            Ok(Ok((records, _high))) => {
                                let mut out = Vec::with_capacity(records.len());
                                let mut n = next;
                                for r in records {
                                    if r.offset < n {
                                        continue; // a batch may start before the offset asked for
                                    }
                                    n = r.offset + 1;
                                    out.push(Ok(RawMessage {
                                        sequence: sequence_of(r.offset),
                                        payload: r.record.value.unwrap_or_default().into(),
                                    }));
                                }
                                return Some((futures::stream::iter(out), (pc, n, false)));
                            }
                            Ok(Err(e)) => vec![Err(MqError::retriable(format!(
                                "kafka {brokers} fetch {topic} at offset {next}: {e}"
                            )))],
                            Err(_) => vec![Err(MqError::retriable(format!(
                                "kafka {brokers} fetch {topic} at offset {next}: no answer within {timeout:?}"
                            )))],
                        };
                        Some((futures::stream::iter(batch), (pc, next, true)))
                    }
                },
            )
            .flatten();
            Ok(stream.boxed())
        })
    }

    fn info(&self, channel: &str) -> BoxFuture<'_, Result<ChannelInfo, MqError>> {
        let topic = channel.to_string();
        Box::pin(async move {
            let client = self.client().await?;
            let pc = match tokio::time::timeout(
                self.timeout,
                client.partition_client(topic.as_str(), PARTITION, UnknownTopicHandling::Error),
            )
            .await
            {
                Ok(Ok(pc)) => pc,
                // Milvus creates a channel's topic with its first message.
                Ok(Err(e)) if is_unknown_topic(&e) => return Ok(ChannelInfo::default()),
                Ok(Err(e)) => return Err(self.err(&format!("open topic {topic}"), e)),
                Err(_) => {
                    return Err(self.err(
                        &format!("open topic {topic}"),
                        format!("no answer within {:?}", self.timeout),
                    ))
                }
            };
            let (earliest, latest) = match self.offsets(&topic, &pc).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(topic, error = %e, "cannot read the topic's offsets");
                    return Err(e);
                }
            };
            if latest <= earliest {
                return Ok(ChannelInfo::default());
            }
            Ok(ChannelInfo {
                first_sequence: sequence_of(earliest),
                last_sequence: sequence_of(latest - 1),
            })
        })
    }

    fn channels(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, MqError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let client = self.client().await?;
            let topics = self.bounded("list topics", client.list_topics()).await?;
            let mut names: Vec<String> = topics
                .into_iter()
                .map(|t| t.name)
                .filter(|n| n.starts_with(&prefix))
                .collect();
            names.sort();
            Ok(names)
        })
    }
}

impl KafkaSecurityProtocol {
    /// Whether connections use TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_offsets_plus_one() {
        assert_eq!(sequence_of(0), 1);
        assert_eq!(sequence_of(41), 42);
    }

    #[test]
    fn an_empty_broker_list_is_refused() {
        let cfg = KafkaConfig {
            brokers: vec![],
            ..KafkaConfig::default()
        };
        let err = KafkaMq::new(&cfg, Duration::from_secs(1)).expect_err("no broker");
        assert!(!err.retriable);
        assert!(err.message.contains("brokers"), "{}", err.message);
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failing_connect_share_its_error() {
        // Nothing listens on port 1: every attempt is refused.
        let cfg = KafkaConfig {
            brokers: vec!["127.0.0.1:1".into()],
            ..KafkaConfig::default()
        };
        let mq = KafkaMq::new(&cfg, Duration::from_secs(1)).expect("config");
        let t0 = Instant::now();
        let calls = (0..16).map(|_| mq.info("by-dev-rootcoord-dml_0"));
        for r in futures::future::join_all(calls).await {
            let e = r.expect_err("refused");
            assert!(
                e.retriable && e.message.contains("127.0.0.1:1"),
                "{}",
                e.message
            );
        }
        // One attempt (about the 1 s timeout) for all, not one per caller
        // (16 s); generous for a loaded machine.
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        // A later call tries again (and fails the same way).
        assert!(mq.info("x").await.is_err());
    }
}
