//! One ordered reader per channel: opens the channel at a position, decodes
//! every message into an [`Event`], and sends it into a bounded queue (so a
//! slow consumer slows the reader instead of growing memory). When the queue
//! connection breaks it reopens after the last delivered sequence, with
//! backoff, so the output has no repeats and no gaps the queue still holds.
//!
//! Lost messages (removed by retention before they were read) are found
//! from the sequences. On a queue with dense sequences (natsmq, Kafka) a
//! hole in them is a loss, and a checkpoint `s` is complete when the oldest
//! retained message is `s + 1` or older. On Pulsar (ids jump between
//! ledgers) a hole means nothing; a loss is reported only when the
//! checkpoint's own message is no longer retained and the oldest retained
//! one is later (see [`MessageQueue::dense_sequences`]).
//!
//! ```no_run
//! # async fn f(mq: std::sync::Arc<milvus_cdc::source::natsmq::NatsMq>) {
//! use milvus_cdc::source::{mq::StartAt, reader::ChannelReader};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
//! let reader = ChannelReader::new(mq, "by-dev-rootcoord-dml_0", StartAt::Earliest);
//! tokio::spawn(reader.run(tx, tokio_util::sync::CancellationToken::new()));
//! while let Some(event) = rx.recv().await { println!("{:?}", event.position); }
//! # }
//! ```

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    decode::decode,
    event::{Event, EventKind, Position},
    mq::{MessageQueue, StartAt},
};
use crate::metrics::{ChannelLabels, Metrics};

/// Reads one channel; see the module docs.
pub struct ChannelReader<Q: ?Sized> {
    mq: Arc<Q>,
    channel: Arc<str>,
    start: StartAt,
    labels: ChannelLabels,
    metrics: Option<Metrics>,
    lost: Option<mpsc::Sender<LostRange>>,
    budget: Option<super::budget::ByteBudget>,
    errors: Option<ReadErrors>,
}

/// Why a channel cannot be read right now (e.g. its checkpoint is past the
/// end of a recreated topic), while its reader retries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadError {
    /// The channel.
    pub channel: String,
    /// The last failure.
    pub message: String,
    /// Milliseconds since the epoch of the first failure in a row.
    pub since_ms: u64,
}

/// The channels of a task that cannot be opened right now, shared by its
/// readers (each sets its channel's entry on a failed open and clears it
/// once a message arrives). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReadErrors(Arc<Mutex<BTreeMap<String, ReadError>>>);

impl ReadErrors {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, ReadError>) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn failed(&self, channel: &str, message: String) {
        self.with(|m| {
            let since_ms = m
                .get(channel)
                .map_or_else(crate::store::now_ms, |e| e.since_ms);
            m.insert(
                channel.to_string(),
                ReadError {
                    channel: channel.to_string(),
                    message,
                    since_ms,
                },
            );
        });
    }

    fn recovered(&self, channel: &str) {
        self.with(|m| m.remove(channel));
    }

    /// The current errors, by channel.
    pub fn current(&self) -> Vec<ReadError> {
        self.with(|m| m.values().cloned().collect())
    }
}

/// Messages of a channel that the queue no longer held when they were due
/// (removed by retention): the reader goes on after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    /// The channel.
    pub channel: String,
    /// First missing sequence.
    pub first: u64,
    /// Last missing sequence.
    pub last: u64,
}

/// Why a reader stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The cancellation token fired.
    Cancelled,
    /// The receiving side was dropped.
    ConsumerGone,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl<Q: MessageQueue + ?Sized> ChannelReader<Q> {
    /// A reader of `channel` starting at `start`.
    pub fn new(mq: Arc<Q>, channel: &str, start: StartAt) -> Self {
        Self {
            mq,
            channel: channel.into(),
            start,
            labels: ChannelLabels {
                task_id: String::new(),
                channel: channel.to_string(),
            },
            metrics: None,
            lost: None,
            budget: None,
            errors: None,
        }
    }

    /// Reports failed opens of the channel in `errors` (cleared by the next
    /// message read).
    pub fn with_errors(mut self, errors: ReadErrors) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Takes each event's bytes from `budget` before queueing it (the
    /// consumer gives them back when it takes the event out).
    pub fn with_budget(mut self, budget: super::budget::ByteBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Reports every [`LostRange`] it finds to `tx` (besides the log and
    /// the `source_gaps` metric).
    pub fn with_lost_ranges(mut self, tx: mpsc::Sender<LostRange>) -> Self {
        self.lost = Some(tx);
        self
    }

    fn report_lost(&self, first: u64, last: u64) {
        self.count(|m, l| m.source_gaps.get_or_create(l).inc());
        if let Some(tx) = &self.lost {
            // Best effort: the log line and the metric always record it.
            let _ = tx.try_send(LostRange {
                channel: self.channel.to_string(),
                first,
                last,
            });
        }
    }

    /// Counts what it reads in `metrics`, labelled with `task_id`.
    pub fn with_metrics(mut self, metrics: Metrics, task_id: &str) -> Self {
        self.labels.task_id = task_id.to_string();
        self.metrics = Some(metrics);
        self
    }

    fn count<R>(&self, f: impl FnOnce(&Metrics, &ChannelLabels) -> R) {
        if let Some(m) = &self.metrics {
            f(m, &self.labels);
        }
    }

    /// Reads until `cancel` fires or `tx` is closed. Never returns an error:
    /// queue failures are retried with backoff, undecodable messages are
    /// passed on as [`EventKind::Undecodable`].
    pub async fn run(self, tx: mpsc::Sender<Event>, cancel: CancellationToken) -> Stopped {
        let mut last: Option<u64> = match self.start {
            StartAt::After(s) => Some(s),
            _ => None,
        };
        let mut delays = backoff();
        let mut first_open = true;
        // Whether `errors` holds this channel (a failed open, no message since).
        let mut failing = false;
        let dense = self.mq.dense_sequences();
        loop {
            let start = match last {
                Some(s) => StartAt::After(s),
                None => self.start,
            };
            if first_open {
                if let Some(lost_up_to) = self.check_retention(start).await {
                    // Reported once here, not again as a gap on the read.
                    last = Some(lost_up_to);
                    continue;
                }
            }
            let opened = tokio::select! {
                () = cancel.cancelled() => return Stopped::Cancelled,
                r = self.mq.open(&self.channel, start) => r,
            };
            let mut stream = match opened {
                Ok(s) => {
                    if !first_open {
                        info!(channel = %self.channel, ?start, "channel reopened");
                    }
                    first_open = false;
                    s
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    warn!(channel = %self.channel, error = %e, retry_in = ?delay, "cannot open channel");
                    if let Some(errors) = &self.errors {
                        errors.failed(&self.channel, e.message.clone());
                        failing = true;
                    }
                    self.count(|m, l| m.source_reconnects.get_or_create(l).inc());
                    tokio::select! {
                        () = cancel.cancelled() => return Stopped::Cancelled,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = cancel.cancelled() => return Stopped::Cancelled,
                    n = stream.next() => n,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        warn!(channel = %self.channel, error = %e, "channel read failed, reopening");
                        break;
                    }
                    None => {
                        warn!(channel = %self.channel, "channel stream ended, reopening");
                        break;
                    }
                };
                delays = backoff();
                if failing {
                    if let Some(errors) = &self.errors {
                        errors.recovered(&self.channel);
                    }
                    failing = false;
                }
                if let Some(l) = last {
                    if msg.sequence <= l {
                        debug!(channel = %self.channel, sequence = msg.sequence, "duplicate skipped");
                        continue;
                    }
                    if dense && msg.sequence > l + 1 {
                        error!(channel = %self.channel, after = l, next = msg.sequence,
                            "sequence gap: messages were removed from the source stream before they were read");
                        self.report_lost(l + 1, msg.sequence - 1);
                    }
                }
                last = Some(msg.sequence);
                let position = Position {
                    channel: self.channel.clone(),
                    sequence: msg.sequence,
                };
                let event = match decode(position.clone(), &msg.payload) {
                    Ok(ev) => ev,
                    Err(e) => {
                        error!(channel = %self.channel, sequence = msg.sequence, error = %e, "undecodable message");
                        self.count(|m, l| m.source_decode_errors.get_or_create(l).inc());
                        Event {
                            position,
                            timestamp: 0,
                            kind: EventKind::Undecodable(e.to_string()),
                        }
                    }
                };
                if let EventKind::Unsupported { msg_type } = event.kind {
                    debug!(channel = %self.channel, sequence = msg.sequence, msg_type, "message type not replicated");
                }
                self.count(|m, l| {
                    m.source_messages
                        .get_or_create(&l.with_kind(event.kind.name()))
                        .inc();
                    m.source_bytes
                        .get_or_create(l)
                        .inc_by(msg.payload.len() as u64);
                });
                if let Some(b) = &self.budget {
                    tokio::select! {
                        () = cancel.cancelled() => return Stopped::Cancelled,
                        () = b.take(super::budget::event_bytes(&event)) => {}
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return Stopped::Cancelled,
                    r = tx.send(event) => if r.is_err() { return Stopped::ConsumerGone },
                }
            }
            self.count(|m, l| m.source_reconnects.get_or_create(l).inc());
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = cancel.cancelled() => return Stopped::Cancelled,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Warns when the queue no longer holds the messages right after the
    /// start position (history lost to retention); returns the last lost
    /// sequence then.
    ///
    /// With sparse sequences (Pulsar) only a checkpoint can be checked: it is
    /// reported when the checkpoint's own message is gone and the oldest
    /// retained message is later. That can over-report (the checkpoint was
    /// the last message of a ledger that retention removed: nothing after it
    /// was lost) and cannot see a replay from the earliest message that
    /// retention already shortened (the first message ever written is not
    /// known).
    async fn check_retention(&self, start: StartAt) -> Option<u64> {
        let info = self.mq.info(&self.channel).await.ok()?;
        let dense = self.mq.dense_sequences();
        // Dense: message `s + 1` must still be there. Sparse: the same test
        // says the checkpoint's own message `s` is gone and the oldest
        // retained one is not the very next id.
        let wanted = match start {
            // Nothing read yet (sequence 0): on a sparse queue as unknown as
            // a replay from the start.
            StartAt::After(0) if !dense => return None,
            StartAt::After(s) => s + 1,
            // Replaying history: it is complete only if the stream still
            // holds its first message (unknown on a sparse queue).
            StartAt::Earliest if dense && info.last_sequence > 0 => 1,
            _ => return None,
        };
        if info.first_sequence > wanted {
            error!(channel = %self.channel, wanted, first_retained = info.first_sequence,
                "checkpoint is older than the retained stream: messages in between are lost");
            self.report_lost(wanted, info.first_sequence - 1);
            return Some(info.first_sequence - 1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use prost::Message as _;

    use super::*;
    use crate::{
        proto::{common::MsgBase, common::MsgType, msg::TimeTickMsg},
        source::mq::{ChannelInfo, MessageStream, MqError, RawMessage},
    };

    /// An in-memory queue whose streams break after `break_every` messages,
    /// and which re-delivers the last message after a reopen to exercise
    /// de-duplication.
    struct FakeMq {
        messages: Vec<RawMessage>,
        break_every: usize,
        opens: Mutex<Vec<StartAt>>,
        /// What `dense_sequences` answers (Pulsar: false).
        dense: bool,
        /// Opens left to refuse before the queue answers.
        refused_opens: std::sync::atomic::AtomicUsize,
    }

    fn tick(ts: u64) -> Bytes {
        TimeTickMsg {
            base: Some(MsgBase {
                msg_type: MsgType::TimeTick as i32,
                timestamp: ts,
                ..Default::default()
            }),
        }
        .encode_to_vec()
        .into()
    }

    impl FakeMq {
        fn new(n: u64, break_every: usize) -> Self {
            let mut messages: Vec<RawMessage> = (1..=n)
                .map(|s| RawMessage {
                    sequence: s,
                    payload: tick(s * 10),
                })
                .collect();
            // One undecodable message at sequence 5.
            if n >= 5 {
                messages[4].payload = Bytes::from_static(&[0xff, 0xff]);
            }
            Self {
                messages,
                break_every,
                opens: Mutex::new(Vec::new()),
                dense: true,
                refused_opens: Default::default(),
            }
        }

        /// A queue with sparse sequences, as Pulsar's packed message ids:
        /// ledgers 1, 3 and 7, a few entries each.
        fn sparse(break_every: usize) -> Self {
            let seqs = [
                (1 << 32) + 1,
                (1 << 32) + (1 << 10) + 1,
                (1 << 32) + (2 << 10) + 1,
                (3 << 32) + 1,
                (3 << 32) + (1 << 10) + 1,
                (7 << 32) + 1,
                (7 << 32) + (1 << 10) + 1,
                (7 << 32) + (1 << 10) + 2,
                (7 << 32) + (2 << 10) + 1,
            ];
            Self {
                messages: seqs
                    .iter()
                    .map(|&s| RawMessage {
                        sequence: s,
                        payload: tick(s),
                    })
                    .collect(),
                break_every,
                opens: Mutex::new(Vec::new()),
                dense: false,
                refused_opens: Default::default(),
            }
        }

        fn sequences(&self) -> Vec<u64> {
            self.messages.iter().map(|m| m.sequence).collect()
        }
    }

    impl MessageQueue for FakeMq {
        fn open(&self, _c: &str, start: StartAt) -> BoxFuture<'_, Result<MessageStream, MqError>> {
            self.opens.lock().unwrap().push(start);
            let refused = self
                .refused_opens
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
            if refused {
                return Box::pin(async { Err(MqError::retriable("position is past the end")) });
            }
            let from = match start {
                StartAt::Earliest => 0,
                StartAt::Latest => self.messages.len(),
                // Deliberately re-deliver the checkpointed message.
                StartAt::After(s) => self
                    .messages
                    .iter()
                    .position(|m| m.sequence >= s)
                    .unwrap_or(self.messages.len()),
            };
            let items: Vec<Result<RawMessage, MqError>> = self
                .messages
                .iter()
                .skip(from)
                .take(self.break_every)
                .cloned()
                .map(Ok)
                .chain(std::iter::once(Err(MqError::retriable("connection lost"))))
                .collect();
            Box::pin(async move { Ok(futures::stream::iter(items).boxed()) })
        }
        fn info(&self, _c: &str) -> BoxFuture<'_, Result<ChannelInfo, MqError>> {
            let info = ChannelInfo {
                first_sequence: self.messages.first().map_or(0, |m| m.sequence),
                last_sequence: self.messages.len() as u64,
            };
            Box::pin(async move { Ok(info) })
        }
        fn channels(&self, _p: &str) -> BoxFuture<'_, Result<Vec<String>, MqError>> {
            Box::pin(async { Ok(vec!["c".to_string()]) })
        }
        fn dense_sequences(&self) -> bool {
            self.dense
        }
    }

    async fn read_all(mq: Arc<FakeMq>, start: StartAt, n: usize) -> Vec<Event> {
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(ChannelReader::new(mq, "c", start).run(tx, cancel.clone()));
        let mut out = Vec::new();
        while out.len() < n {
            out.push(rx.recv().await.unwrap());
        }
        cancel.cancel();
        assert_eq!(task.await.unwrap(), Stopped::Cancelled);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_without_gaps_or_repeats() {
        let mq = Arc::new(FakeMq::new(20, 3));
        let events = read_all(mq.clone(), StartAt::Earliest, 20).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.position.sequence).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert!(matches!(events[4].kind, EventKind::Undecodable(_)));
        assert_eq!(events[5].timestamp, 60);
        assert!(
            mq.opens.lock().unwrap().len() > 5,
            "stream broke and was reopened"
        );
        assert_eq!(mq.opens.lock().unwrap()[1], StartAt::After(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sparse_queue_read_from_sequence_zero_reports_no_loss() {
        let mq = Arc::new(FakeMq::sparse(100));
        let (lost_tx, mut lost_rx) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            ChannelReader::new(mq.clone(), "c", StartAt::After(0))
                .with_lost_ranges(lost_tx)
                .run(tx, cancel.clone()),
        );
        let first = rx.recv().await.unwrap().position.sequence;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(first, mq.sequences()[0], "read from the first message");
        assert!(lost_rx.try_recv().is_err(), "no loss claimed");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_opens_are_shown_until_a_message_arrives() {
        let mq = FakeMq::new(6, 100);
        mq.refused_opens
            .store(3, std::sync::atomic::Ordering::SeqCst);
        let mq = Arc::new(mq);
        let errors = ReadErrors::default();
        let (tx, mut rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            ChannelReader::new(mq.clone(), "c", StartAt::After(2))
                .with_errors(errors.clone())
                .run(tx, cancel.clone()),
        );
        // Refused three times: the error is shown, with its first time.
        while mq.opens.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shown = errors.current();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0].channel, "c");
        assert!(shown[0].message.contains("past the end"));
        assert!(shown[0].since_ms > 0);
        // The fourth open works: the first message clears it.
        assert_eq!(rx.recv().await.unwrap().position.sequence, 3);
        assert!(errors.current().is_empty(), "{:?}", errors.current());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn restart_from_checkpoint_equals_uninterrupted_read() {
        let whole = read_all(Arc::new(FakeMq::new(12, 100)), StartAt::Earliest, 12).await;
        let first = read_all(Arc::new(FakeMq::new(12, 100)), StartAt::Earliest, 7).await;
        let cp = first.last().unwrap().position.sequence;
        let rest = read_all(Arc::new(FakeMq::new(12, 100)), StartAt::After(cp), 5).await;
        let joined: Vec<u64> = first
            .iter()
            .chain(rest.iter())
            .map(|e| e.position.sequence)
            .collect();
        let expected: Vec<u64> = whole.iter().map(|e| e.position.sequence).collect();
        assert_eq!(joined, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_history_is_reported_with_its_range() {
        // Retention removed 1..=3, and 8 vanished mid-stream.
        let mut mq = FakeMq::new(12, 100);
        mq.messages.retain(|m| m.sequence > 3 && m.sequence != 8);
        let mq = Arc::new(mq);
        let (lost_tx, mut lost_rx) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            ChannelReader::new(mq, "c", StartAt::After(1))
                .with_lost_ranges(lost_tx)
                .run(tx, cancel.clone()),
        );
        let mut seqs = Vec::new();
        while seqs.len() < 8 {
            seqs.push(rx.recv().await.unwrap().position.sequence);
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(seqs, [4, 5, 6, 7, 9, 10, 11, 12]);
        let range = |first, last| LostRange {
            channel: "c".into(),
            first,
            last,
        };
        assert_eq!(lost_rx.recv().await.unwrap(), range(2, 3));
        assert_eq!(lost_rx.recv().await.unwrap(), range(8, 8));
    }

    /// Reads `n` events of `mq` from `start` and what it reported lost.
    async fn read_with_lost(mq: FakeMq, start: StartAt, n: usize) -> (Vec<u64>, Vec<LostRange>) {
        let (lost_tx, mut lost_rx) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            ChannelReader::new(Arc::new(mq), "c", start)
                .with_lost_ranges(lost_tx)
                .run(tx, cancel.clone()),
        );
        let mut seqs = Vec::new();
        while seqs.len() < n {
            seqs.push(rx.recv().await.unwrap().position.sequence);
        }
        cancel.cancel();
        task.await.unwrap();
        let mut lost = Vec::new();
        while let Ok(l) = lost_rx.try_recv() {
            lost.push(l);
        }
        (seqs, lost)
    }

    #[tokio::test(start_paused = true)]
    async fn sparse_sequences_are_not_gaps() {
        // Jumps between ledgers, reconnects every 2 messages (each reopen
        // re-delivers the checkpointed message): everything exactly once,
        // in order, nothing reported lost.
        let all = FakeMq::sparse(2).sequences();
        let (seqs, lost) = read_with_lost(FakeMq::sparse(2), StartAt::Earliest, all.len()).await;
        assert_eq!(seqs, all);
        assert_eq!(lost, []);
        // Resuming after any message yields exactly the rest.
        for (i, cp) in all.iter().enumerate() {
            let rest = all.len() - i - 1;
            if rest == 0 {
                continue;
            }
            let (seqs, lost) = read_with_lost(FakeMq::sparse(3), StartAt::After(*cp), rest).await;
            assert_eq!(seqs, all[i + 1..], "after {cp}");
            assert_eq!(lost, [], "after {cp}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sparse_retention_loss_is_the_checkpoint_message_gone() {
        let all = FakeMq::sparse(100).sequences();
        // Retention removed ledgers 1 and 3; the checkpoint is in ledger 1.
        let trimmed = || {
            let mut mq = FakeMq::sparse(100);
            mq.messages.retain(|m| m.sequence >= 7 << 32);
            mq
        };
        let (seqs, lost) = read_with_lost(trimmed(), StartAt::After(all[1]), 4).await;
        assert_eq!(seqs, all[5..]);
        assert_eq!(
            lost,
            [LostRange {
                channel: "c".into(),
                first: all[1] + 1,
                last: all[5] - 1,
            }]
        );
        // The checkpoint's message is still retained: nothing lost, even
        // though the next id is far away.
        let mut mq = FakeMq::sparse(100);
        mq.messages.retain(|m| m.sequence >= all[2]);
        let (seqs, lost) = read_with_lost(mq, StartAt::After(all[2]), 6).await;
        assert_eq!(seqs, all[3..]);
        assert_eq!(lost, []);
        // A replay from the earliest retained message: the first message
        // ever written is unknown on a sparse queue, so nothing is claimed.
        let (seqs, lost) = read_with_lost(trimmed(), StartAt::Earliest, 4).await;
        assert_eq!(seqs, all[5..]);
        assert_eq!(lost, []);
    }
}
