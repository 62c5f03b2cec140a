//! [`MessageQueue`] for a Milvus that runs on Apache Pulsar: every Milvus
//! channel `c` is the non-partitioned persistent topic
//! `persistent://<tenant>/<namespace>/c` (Milvus 2.3 names it
//! `<tenant>/<namespace>/c`).
//!
//! Reading is from an exact position: each [`MessageQueue::open`] creates a
//! *non-durable* consumer (an exclusive, non-durable subscription with a
//! random name and a start message id, what Pulsar's readers are), on a
//! connection of its own (a pulsar-rs client per reader: pulsar-rs cannot
//! tell the consumers of a shared connection that it died, see
//! docs/source-reader.md). The broker forgets it when it closes; the agent
//! acknowledges nothing, so the checkpoint in etcd is the only truth. A
//! reader that receives nothing for [`SILENCE_CHECK`] checks that its topic
//! is idle rather than its reader stuck.
//!
//! Nothing but the topics' own commands is used on the hot path: a reader is
//! subscribed straight to its topic (a broker with `allowAutoTopicCreation`
//! creates a missing DML topic then, empty, as Milvus itself would with its
//! first message; one without answers "topic not found", which is an empty
//! channel). The namespace's topic list is asked only by
//! [`MessageQueue::channels`] (CLI, `check`), on a connection of its own, so
//! that a broker that never answers it (pulsar-lite) cannot stall the
//! readers' connection; such a broker is remembered, and the configured
//! channels are answered instead. The health probe is a topic lookup.
//!
//! Sequences: a Pulsar message id is `(ledger, entry, batch index)`, ordered
//! lexicographically. The agent packs it into one `u64` that keeps the
//! order ([`PulsarMessageId::sequence`]); sequences are therefore not dense
//! ([`MessageQueue::dense_sequences`] is false). The client is pulsar-rs
//! (`pulsar` crate; see docs/source-reader.md for the choice).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{future::BoxFuture, StreamExt as _};
use pulsar::{
    consumer::InitialPosition,
    error::{AuthenticationError, ConnectionError, ConsumerError, ServiceDiscoveryError},
    message::proto::{
        command_get_topics_of_namespace::Mode, command_subscribe::SubType, MessageIdData,
        ServerError,
    },
    Authentication, ConnectionRetryOptions, Consumer, ConsumerOptions, Error as PulsarError,
    OperationRetryOptions, Pulsar, TokioExecutor,
};
use tokio::sync::Mutex;
use tracing::warn;

mod handshake;
mod id;

pub use id::PulsarMessageId;
use id::{earliest_id, latest_id};

use super::mq::{ChannelInfo, MessageQueue, MessageStream, MqError, RawMessage, StartAt};
use crate::config::PulsarConfig;

/// Messages a reader asks the broker for at once (Milvus's inserts can be
/// several MB each: this bounds a reader's buffer).
const RECEIVER_QUEUE: u32 = 32;
/// Longest wait for a topic list (a broker answers it at once, or never).
const LIST_WAIT: Duration = Duration::from_secs(2);
/// How errors say that a topic does not exist.
const TOPIC_NOT_FOUND: &str = "topic not found";
/// Longest wait for the oldest message of a topic in [`MessageQueue::info`].
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);
/// How long a reader may receive nothing before it checks that it is not
/// stuck: it asks the broker for the topic's newest message id (on the
/// reader's own connection, within the timeout). A topic that holds nothing
/// newer than what the reader delivered is idle (Milvus ticks only the DML
/// channels of live collections; the replicate channel is silent between
/// DDL changes), and the reader keeps waiting. A topic with newer messages,
/// or no answer, means a stuck reader: it fails, and is reopened after its
/// last sequence on a new connection. See docs/source-reader.md (Pulsar,
/// "Stuck readers").
const SILENCE_CHECK: Duration = Duration::from_secs(10);
/// How long a silent reader whose topic answered a newer entry waits for it
/// before it is taken for stuck: the entry may have been published a moment
/// before the check and still be on its way (seen with the random workload:
/// a DropDatabase published 2 ms before the replicate channel's check made
/// an idle reader reopen). A check that gets no answer is not given this.
const STUCK_RECHECK: Duration = Duration::from_secs(2);

/// A (lazily connected) client of the source's Pulsar. Cheap to share.
pub struct PulsarMq {
    cfg: PulsarConfig,
    url: String,
    timeout: Duration,
    /// The client of lookups, the health probe and `info()` (readers have
    /// their own).
    client: Arc<Mutex<Option<Pulsar<TokioExecutor>>>>,
    /// The Milvus channels the configuration names (DML and replicate).
    known_channels: Vec<String>,
    /// The broker did not answer a topic list once: do not ask again.
    no_listing: AtomicBool,
}

impl std::fmt::Debug for PulsarMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarMq")
            .field("url", &self.url)
            .field("tenant", &self.cfg.tenant)
            .field("namespace", &self.cfg.namespace)
            .finish_non_exhaustive()
    }
}

/// Whether `e` will not go away by retrying (refused credentials).
fn is_permanent(e: &PulsarError) -> bool {
    let server = |s: &Option<ServerError>| {
        matches!(
            s,
            Some(ServerError::AuthenticationError | ServerError::AuthorizationError)
        )
    };
    let conn = |c: &ConnectionError| match c {
        ConnectionError::Authentication(AuthenticationError::Custom(_)) => true,
        ConnectionError::PulsarError(s, _) => server(s),
        _ => false,
    };
    match e {
        PulsarError::Authentication(AuthenticationError::Custom(_)) => true,
        PulsarError::Connection(c)
        | PulsarError::ServiceDiscovery(ServiceDiscoveryError::Connection(c))
        | PulsarError::Consumer(ConsumerError::Connection(c)) => conn(c),
        PulsarError::ServiceDiscovery(ServiceDiscoveryError::Query(s, _)) => server(s),
        _ => false,
    }
}

/// Whether `e` says the topic does not exist (a broker without automatic
/// topic creation).
fn is_topic_not_found(e: &PulsarError) -> bool {
    let conn = |c: &ConnectionError| {
        matches!(
            c,
            ConnectionError::PulsarError(Some(ServerError::TopicNotFound), _)
        )
    };
    match e {
        PulsarError::Connection(c)
        | PulsarError::ServiceDiscovery(ServiceDiscoveryError::Connection(c))
        | PulsarError::Consumer(ConsumerError::Connection(c)) => conn(c),
        PulsarError::ServiceDiscovery(ServiceDiscoveryError::Query(s, _)) => {
            matches!(s, Some(ServerError::TopicNotFound))
        }
        _ => false,
    }
}

impl PulsarMq {
    /// A client of the broker in `cfg`; nothing is contacted yet. Fails only
    /// on a configuration that cannot work (bad address, unreadable CA).
    pub fn new(cfg: &PulsarConfig, timeout: Duration) -> Result<Self, MqError> {
        let bad = |message: String| MqError {
            message,
            retriable: false,
        };
        let url = cfg
            .service_url()
            .map_err(|e| bad(format!("source.pulsar.address: {e}")))?;
        if let Some(ca) = &cfg.tls_ca {
            std::fs::metadata(ca)
                .map_err(|e| bad(format!("source.pulsar.tls_ca {}: {e}", ca.display())))?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            url,
            timeout,
            client: Arc::new(Mutex::new(None)),
            known_channels: Vec::new(),
            no_listing: AtomicBool::new(false),
        })
    }

    /// The channels Milvus is configured with, what
    /// [`MessageQueue::channels`] answers when the broker cannot list
    /// topics.
    pub fn with_known_channels(mut self, channels: Vec<String>) -> Self {
        self.known_channels = channels;
        self
    }

    /// Connects now (the handshake and a topic lookup); fails if the broker
    /// does not answer within the timeout.
    pub async fn connect(
        cfg: &PulsarConfig,
        timeout: Duration,
        known_channels: Vec<String>,
    ) -> Result<Self, MqError> {
        let mq = Self::new(cfg, timeout)?.with_known_channels(known_channels);
        mq.lookup().await?;
        Ok(mq)
    }

    /// Looks up the first configured channel's topic: one cheap round trip
    /// that needs the connection, the credentials and the namespace.
    async fn lookup(&self) -> Result<(), MqError> {
        let client = self.client().await?;
        let channel = self
            .known_channels
            .first()
            .map_or("milvus-cdc-probe", String::as_str);
        let topic = self.cfg.topic(channel);
        self.bounded(
            &format!("look up {topic}"),
            client.lookup_topic(topic.clone()),
        )
        .await
        .map(|_| ())
    }

    fn namespace(&self) -> String {
        format!("{}/{}", self.cfg.tenant, self.cfg.namespace)
    }

    fn err(&self, what: &str, e: &PulsarError) -> MqError {
        MqError {
            message: format!("pulsar {} {what}: {e}", self.url),
            retriable: !is_permanent(e),
        }
    }

    fn timed_out(&self, what: &str) -> MqError {
        MqError::retriable(format!(
            "pulsar {} {what}: no answer within {:?}",
            self.url, self.timeout
        ))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, PulsarError>>,
    ) -> Result<T, MqError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, &e)),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    async fn client(&self) -> Result<Pulsar<TokioExecutor>, MqError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = self.new_client().await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// A new client with its own connection.
    async fn new_client(&self) -> Result<Pulsar<TokioExecutor>, MqError> {
        let mut b = Pulsar::builder(self.url.clone(), TokioExecutor)
            .with_connection_retry_options(ConnectionRetryOptions {
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                max_retries: 3,
                connection_timeout: self.timeout,
                keep_alive: Duration::from_secs(30),
                ..Default::default()
            })
            .with_operation_retry_options(OperationRetryOptions {
                operation_timeout: self.timeout,
                retry_delay: Duration::from_millis(200),
                max_retries: Some(3),
            });
        if let (true, Some(token)) = (self.cfg.token_auth(), &self.cfg.auth_token) {
            b = b.with_auth(Authentication {
                name: "token".into(),
                data: token.clone().into_bytes(),
            });
        }
        if self.cfg.tls() {
            if let Some(ca) = &self.cfg.tls_ca {
                b = b.with_certificate_chain_file(ca).map_err(|e| MqError {
                    message: format!("source.pulsar.tls_ca {}: {e}", ca.display()),
                    retriable: false,
                })?;
            }
            // Certificate and host name are always verified: pulsar-rs's
            // rustls build ignores its "insecure" switches (the
            // configuration refuses `tls_allow_insecure`).
        }
        match tokio::time::timeout(self.timeout, b.build()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => {
                // pulsar-rs hides why a connection was refused (a token, a
                // certificate): ask the broker again to say it.
                match handshake::diagnose(&self.cfg, &self.url, self.timeout).await {
                    Some(d) => Err(MqError {
                        message: format!("pulsar {} connect: {}", self.url, d.message),
                        retriable: !d.permanent,
                    }),
                    None => Err(self.err("connect", &e)),
                }
            }
            Err(_) => Err(self.timed_out("connect")),
        }
    }

    /// Full names of the namespace's persistent topics; `None` when the
    /// broker does not list topics (it answered nothing while the
    /// connection worked). Asked on a connection of its own: a request the
    /// broker leaves unanswered must not stall the readers' connection.
    async fn topics(&self) -> Result<Option<Vec<String>>, MqError> {
        if self.no_listing.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let client = self.new_client().await?;
        let what = format!("list topics of {}", self.namespace());
        let wait = self.timeout.min(LIST_WAIT);
        let listed = tokio::time::timeout(
            wait,
            client.get_topics_of_namespace(self.namespace(), Mode::Persistent),
        )
        .await;
        let silent = match &listed {
            Ok(Ok(topics)) => return Ok(Some(topics.clone())),
            Ok(Err(PulsarError::Connection(ConnectionError::Io(e)))) => {
                e.kind() == std::io::ErrorKind::TimedOut
            }
            Ok(Err(_)) => false,
            Err(_) => true,
        };
        if silent {
            // Connected (the client was built), but no answer: the broker
            // does not implement the command (pulsar-lite) or it hangs.
            warn!(url = %self.url, "the broker did not answer a topic list within {wait:?}: \
                the configured channels are listed instead");
            self.no_listing.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        match listed {
            Ok(Err(e)) => Err(self.err(&what, &e)),
            _ => Err(self.timed_out(&what)),
        }
    }

    /// A non-durable consumer of `topic` on `client`'s connection, starting
    /// after `start` (or at the placeholder).
    async fn reader(
        &self,
        client: &Pulsar<TokioExecutor>,
        topic: &str,
        start: MessageIdData,
        position: InitialPosition,
    ) -> Result<Consumer<Vec<u8>, TokioExecutor>, MqError> {
        let options = ConsumerOptions::default()
            .durable(false)
            .with_initial_position(position)
            .starting_on_message(start);
        let builder = client
            .reader()
            .with_topic(topic)
            .with_subscription(format!("milvus-cdc-reader-{}", uuid::Uuid::new_v4()))
            .with_subscription_type(SubType::Exclusive)
            .with_consumer_name("milvus-cdc")
            .with_batch_size(RECEIVER_QUEUE)
            .with_options(options);
        match tokio::time::timeout(self.timeout, builder.build::<Vec<u8>>()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) if is_topic_not_found(&e) => Err(MqError::retriable(format!(
                "pulsar {} topic {topic}: {TOPIC_NOT_FOUND} (yet): Milvus creates it with the \
                 channel's first message",
                self.url
            ))),
            Ok(Err(e)) => Err(self.err(&format!("open reader on {topic}"), &e)),
            Err(_) => Err(self.timed_out(&format!("open reader on {topic}"))),
        }
    }

    /// The id of the newest message of the topic `reader` reads, `None`
    /// when the topic holds none.
    async fn last_id(
        &self,
        topic: &str,
        reader: &mut Consumer<Vec<u8>, TokioExecutor>,
    ) -> Result<Option<PulsarMessageId>, MqError> {
        newest_id(&self.url, self.timeout, topic, reader).await
    }

    fn sequence_of(&self, topic: &str, id: &MessageIdData) -> Result<u64, MqError> {
        PulsarMessageId::from_raw(id.ledger_id, id.entry_id, id.batch_index)
            .and_then(|m| m.sequence())
            .map_err(|e| MqError {
                message: format!("pulsar {} topic {topic}: {e}", self.url),
                retriable: false,
            })
    }
}

/// The id of the newest message of the topic `reader` reads, `None` when the
/// topic holds none; asked on the reader's connection within `timeout`.
async fn newest_id(
    url: &str,
    timeout: Duration,
    topic: &str,
    reader: &mut Consumer<Vec<u8>, TokioExecutor>,
) -> Result<Option<PulsarMessageId>, MqError> {
    let what = format!("last message id of {topic}");
    let ids = match tokio::time::timeout(timeout, reader.get_last_message_id()).await {
        Ok(Ok(ids)) => ids,
        // pulsar-lite answers an error for an empty topic.
        Ok(Err(e)) if e.to_string().contains("Topic has no messages") => return Ok(None),
        Ok(Err(e)) => {
            return Err(MqError {
                message: format!("pulsar {url} {what}: {e}"),
                retriable: !is_permanent(&e),
            })
        }
        Err(_) => {
            return Err(MqError::retriable(format!(
                "pulsar {url} {what}: no answer within {timeout:?}"
            )))
        }
    };
    // Apache Pulsar answers an empty topic with entry -1 (or ledger -1).
    Ok(ids
        .first()
        .and_then(|id| PulsarMessageId::from_raw(id.ledger_id, id.entry_id, id.batch_index).ok()))
}

/// Whether a topic whose newest message is `newest` holds an entry after the
/// one of sequence `seen` (0: none seen), i.e. whether a reader that
/// delivered up to `seen` and then received nothing for a while is behind.
fn is_behind(newest: Option<&PulsarMessageId>, seen: u64) -> bool {
    let Some(newest) = newest else {
        return false;
    };
    match PulsarMessageId::from_sequence(seen) {
        None => true,
        Some(s) => (newest.ledger_id, newest.entry_id) > (s.ledger_id, s.entry_id),
    }
}

/// What a silent reader does after asking for its topic's newest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// Nothing newer than what it delivered: an idle topic, wait on.
    Idle,
    /// A newer entry, found for the first time: wait [`STUCK_RECHECK`] for
    /// it, then check again.
    Recheck,
    /// A newer entry still undelivered after a recheck: stuck, reopen.
    Stuck,
}

/// The verdict on a reader that delivered up to `seen` and then received
/// nothing, given the topic's newest entry and whether the previous check
/// (with nothing received since) had found it behind already.
fn after_silence(newest: Option<&PulsarMessageId>, seen: u64, behind_before: bool) -> Silence {
    match (is_behind(newest, seen), behind_before) {
        (false, _) => Silence::Idle,
        (true, false) => Silence::Recheck,
        (true, true) => Silence::Stuck,
    }
}

/// What a reader's stream carries from one message to the next.
struct ReadState {
    reader: Consumer<Vec<u8>, TokioExecutor>,
    /// Sequence of the last message delivered (or of the start position):
    /// anything at or before it is dropped.
    floor: u64,
    /// Newest sequence the reader is known to be past (`floor`, or the
    /// topic's end when it started at the latest message).
    seen: u64,
    /// An error was delivered: the stream ends.
    failed: bool,
    /// The last silence check found the topic behind, and nothing was
    /// received since: the next check comes after [`STUCK_RECHECK`].
    behind: bool,
}

impl MessageQueue for PulsarMq {
    fn open(&self, channel: &str, start: StartAt) -> BoxFuture<'_, Result<MessageStream, MqError>> {
        let topic = self.cfg.topic(channel);
        Box::pin(async move {
            let after = match start {
                StartAt::After(s) => PulsarMessageId::from_sequence(s),
                StartAt::Earliest | StartAt::Latest => None,
            };
            let (id, position) = match (start, after) {
                (StartAt::Latest, _) => (latest_id(), InitialPosition::Latest),
                (_, Some(a)) => (a.to_proto(), InitialPosition::Earliest),
                (_, None) => (earliest_id(), InitialPosition::Earliest),
            };
            // Each reader has a connection (a pulsar-rs client) of its own:
            // pulsar-rs keeps one error slot per connection, and the first
            // consumer that sees an error takes it, so the other consumers of
            // a shared connection never learn that it died (they wait
            // forever, or spin on a closed channel). See docs/source-reader.md.
            let client = self.new_client().await?;
            let mut reader = self.reader(&client, &topic, id, position).await?;
            let floor = match (start, after) {
                (StartAt::After(s), Some(a)) => {
                    let last = self.last_id(&topic, &mut reader).await?;
                    if last.is_none_or(|l| (a.ledger_id, a.entry_id) > (l.ledger_id, l.entry_id)) {
                        // A checkpoint past the end: the topic was deleted and
                        // recreated, or the broker lost data. Never skip silently.
                        let end = last.map_or("none (empty topic)".to_string(), |l| {
                            format!("{}:{}", l.ledger_id, l.entry_id)
                        });
                        return Err(MqError::retriable(format!(
                            "pulsar {} topic {topic}: position {}:{}:{} (sequence {s}) is past \
                             the end of the topic (last message {end}): the topic was recreated \
                             or the broker lost messages; the task waits here (see \
                             docs/operations.md)",
                            self.url, a.ledger_id, a.entry_id, a.batch_index
                        )));
                    }
                    s
                }
                _ => 0,
            };
            let seen = match start {
                // Started after the topic's end: what is there now was seen.
                StartAt::Latest => self
                    .last_id(&topic, &mut reader)
                    .await?
                    .and_then(|l| l.sequence().ok())
                    .unwrap_or(0),
                _ => floor,
            };
            let url = self.url.clone();
            let timeout = self.timeout;
            let state = ReadState {
                reader,
                floor,
                seen,
                failed: false,
                behind: false,
            };
            // The broker starts after the start id, or at it (an inclusive
            // broker, or a batch): anything at or before `floor` is dropped,
            // as is anything that does not move forward.
            let stream = futures::stream::unfold(state, move |mut st| {
                let topic = topic.clone();
                let url = url.clone();
                async move {
                    if st.failed {
                        return None;
                    }
                    let item = loop {
                        let wait = if st.behind {
                            STUCK_RECHECK
                        } else {
                            SILENCE_CHECK
                        };
                        let Ok(next) = tokio::time::timeout(wait, st.reader.next()).await else {
                            // Silent: an idle topic, or a stuck reader?
                            let newest = newest_id(&url, timeout, &topic, &mut st.reader).await;
                            match newest {
                                Ok(n) => match after_silence(n.as_ref(), st.seen, st.behind) {
                                    Silence::Idle => {
                                        st.behind = false;
                                        continue;
                                    }
                                    Silence::Recheck => {
                                        st.behind = true;
                                        continue;
                                    }
                                    Silence::Stuck => {
                                        let n = n.map_or(String::new(), |n| {
                                            format!("{}:{}", n.ledger_id, n.entry_id)
                                        });
                                        break MqError::retriable(format!(
                                            "pulsar {url} read {topic}: stuck: nothing received \
                                             for {}s while the topic holds newer messages (up \
                                             to {n}): reopening on a new connection",
                                            (SILENCE_CHECK + STUCK_RECHECK).as_secs()
                                        ));
                                    }
                                },
                                Err(e) => {
                                    break MqError::retriable(format!(
                                        "nothing received for {}s and the connection does not \
                                         answer ({}): reopening on a new connection",
                                        SILENCE_CHECK.as_secs(),
                                        e.message
                                    ))
                                }
                            }
                        };
                        st.behind = false;
                        match next {
                            None => return None,
                            Some(Err(e)) => {
                                break MqError {
                                    message: format!("pulsar {url} read {topic}: {e}"),
                                    retriable: !is_permanent(&e),
                                }
                            }
                            Some(Ok(msg)) => {
                                let id = &msg.message_id.id;
                                match PulsarMessageId::from_raw(
                                    id.ledger_id,
                                    id.entry_id,
                                    id.batch_index,
                                )
                                .and_then(|m| m.sequence())
                                {
                                    Ok(seq) if seq <= st.floor => continue,
                                    Ok(seq) => {
                                        let raw = RawMessage {
                                            sequence: seq,
                                            payload: msg.payload.data.into(),
                                        };
                                        st.floor = seq;
                                        st.seen = st.seen.max(seq);
                                        return Some((Ok(raw), st));
                                    }
                                    Err(e) => {
                                        break MqError {
                                            message: format!("pulsar {url} topic {topic}: {e}"),
                                            retriable: false,
                                        }
                                    }
                                }
                            }
                        }
                    };
                    st.failed = true;
                    Some((Err(item), st))
                }
            });
            Ok(stream.boxed())
        })
    }

    fn info(&self, channel: &str) -> BoxFuture<'_, Result<ChannelInfo, MqError>> {
        let topic = self.cfg.topic(channel);
        Box::pin(async move {
            // Milvus creates a channel's topic with its first message.
            let mut reader = match self
                .reader(
                    &self.client().await?,
                    &topic,
                    earliest_id(),
                    InitialPosition::Earliest,
                )
                .await
            {
                Err(e) if e.message.contains(TOPIC_NOT_FOUND) => return Ok(ChannelInfo::default()),
                r => r?,
            };
            let Some(last) = self.last_id(&topic, &mut reader).await? else {
                return Ok(ChannelInfo::default());
            };
            let last_sequence = last.sequence().map_err(|e| MqError {
                message: format!("pulsar {} topic {topic}: {e}", self.url),
                retriable: false,
            })?;
            // The oldest retained message: the first one an earliest reader
            // gets. None within the wait (retention removed everything):
            // unknown, 0.
            let first_sequence =
                match tokio::time::timeout(FIRST_MESSAGE_WAIT.min(self.timeout), reader.next())
                    .await
                {
                    Ok(Some(Ok(msg))) => self.sequence_of(&topic, &msg.message_id.id)?,
                    Ok(Some(Err(e))) => return Err(self.err(&format!("read {topic}"), &e)),
                    Ok(None) | Err(_) => 0,
                };
            // Closed here rather than dropped with messages in flight.
            let _ = tokio::time::timeout(self.timeout, reader.close()).await;
            Ok(ChannelInfo {
                first_sequence,
                last_sequence: last_sequence.max(first_sequence),
            })
        })
    }

    fn channels(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, MqError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let ns = self.cfg.topic_prefix();
            let topics = match self.topics().await? {
                Some(topics) => topics,
                None => self
                    .known_channels
                    .iter()
                    .map(|c| self.cfg.topic(c))
                    .collect(),
            };
            let mut names: Vec<String> = topics
                .iter()
                .filter_map(|t| t.strip_prefix(&ns))
                .filter(|n| n.starts_with(&prefix))
                .map(str::to_string)
                .collect();
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    fn dense_sequences(&self) -> bool {
        false
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), MqError>> {
        Box::pin(async move {
            let r = self.lookup().await;
            if r.is_err() {
                // A pulsar-rs client whose connection broke can keep failing
                // for a minute after the broker is back (it drops the dead
                // connection only when it goes idle): the next probe, and
                // the next call sharing this client, start a fresh one.
                *self.client.lock().await = None;
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_refused_before_connecting() {
        let cfg = PulsarConfig {
            address: "http://broker:8080".into(),
            ..PulsarConfig::default()
        };
        let err = PulsarMq::new(&cfg, Duration::from_secs(1)).expect_err("not pulsar://");
        assert!(!err.retriable);
        assert!(
            err.message.contains("source.pulsar.address"),
            "{}",
            err.message
        );
    }

    fn id(ledger_id: u64, entry_id: u64) -> PulsarMessageId {
        PulsarMessageId {
            ledger_id,
            entry_id,
            batch_index: 0,
        }
    }

    fn seq(ledger_id: u64, entry_id: u64) -> u64 {
        id(ledger_id, entry_id).sequence().unwrap()
    }

    #[test]
    fn a_silent_reader_is_behind_only_when_the_topic_holds_a_newer_entry() {
        // An empty topic, or one whose newest entry was delivered: idle.
        assert!(!is_behind(None, 0));
        assert!(!is_behind(None, seq(3, 7)));
        assert!(!is_behind(Some(&id(3, 7)), seq(3, 7)));
        // A checkpoint after the newest entry (nothing new yet): idle.
        assert!(!is_behind(Some(&id(3, 7)), seq(3, 9)));
        assert!(!is_behind(Some(&id(3, 7)), seq(4, 0)));
        // A newer entry in the same ledger or a later one: stuck.
        assert!(is_behind(Some(&id(3, 8)), seq(3, 7)));
        assert!(is_behind(Some(&id(4, 0)), seq(3, 7)));
        // Nothing delivered yet from a topic that holds messages: stuck.
        assert!(is_behind(Some(&id(1, 0)), 0));
        // Within one batch entry: the entry was delivered, not behind.
        let in_batch = PulsarMessageId {
            ledger_id: 3,
            entry_id: 7,
            batch_index: 2,
        };
        assert!(!is_behind(Some(&id(3, 7)), in_batch.sequence().unwrap()));
    }

    #[test]
    fn a_newer_entry_is_waited_for_once_before_the_reader_is_taken_for_stuck() {
        // Idle, whatever the previous check said.
        assert_eq!(
            after_silence(Some(&id(3, 7)), seq(3, 7), false),
            Silence::Idle
        );
        assert_eq!(
            after_silence(Some(&id(3, 7)), seq(3, 7), true),
            Silence::Idle
        );
        assert_eq!(after_silence(None, 0, true), Silence::Idle);
        // A newer entry may have been published just before the check
        // (the race the random workload hit): wait for it once ...
        assert_eq!(
            after_silence(Some(&id(3, 8)), seq(3, 7), false),
            Silence::Recheck
        );
        // ... and only when it is still undelivered at the recheck, reopen.
        assert_eq!(
            after_silence(Some(&id(3, 8)), seq(3, 7), true),
            Silence::Stuck
        );
        assert_eq!(
            after_silence(Some(&id(4, 0)), seq(3, 7), true),
            Silence::Stuck
        );
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_a_bounded_retriable_error() {
        // A port nobody listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = PulsarConfig {
            address: format!("pulsar://127.0.0.1:{port}"),
            ..PulsarConfig::default()
        };
        let started = std::time::Instant::now();
        let err = PulsarMq::connect(&cfg, Duration::from_secs(2), vec![])
            .await
            .expect_err("nobody listens");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(err.retriable, "{}", err.message);
        assert!(
            err.message.contains(&format!("127.0.0.1:{port}")),
            "{}",
            err.message
        );
    }
}
