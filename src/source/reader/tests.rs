//! The channel reader against an in-memory queue.

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
async fn failed_opens_are_shown_until_the_channel_opens_again() {
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
    // The fourth open works: that clears it.
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
