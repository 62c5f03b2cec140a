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
    event::{physical_ms, Event, EventKind, Position},
    mq::{MessageQueue, StartAt},
};
use crate::metrics::{ChannelLabels, Metrics, TaskLabels};

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
/// once the channel opens again). Cheap to clone.
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
    /// successful open).
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
        // Whether `errors` holds this channel (a failed open, none opened since).
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
                    // Opening reached the queue (every queue's open asks it
                    // for the channel): a quiet channel must not keep an
                    // error until its next message.
                    if std::mem::take(&mut failing) {
                        if let Some(errors) = &self.errors {
                            errors.recovered(&self.channel);
                        }
                    }
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
                let read_at_ms = crate::store::now_ms();
                self.count(|m, l| {
                    m.source_messages
                        .get_or_create(&l.with_kind(event.kind.name()))
                        .inc();
                    if event.timestamp > 0 {
                        let delay_ms = read_at_ms.saturating_sub(physical_ms(event.timestamp));
                        m.source_delay
                            .get_or_create(&TaskLabels {
                                task_id: l.task_id.clone(),
                            })
                            .observe(delay_ms as f64 / 1000.0);
                    }
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
mod tests;
