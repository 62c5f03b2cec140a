//! How far each channel pipeline of a task has applied, shared between the
//! pipelines (DDL ordering across channels), the checkpointer and the lag
//! metric.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::store::{now_ms, Checkpoint, Checkpoints};

pub use crate::source::event::physical_ms;

/// One channel's progress.
#[derive(Debug, Clone, Default)]
pub struct ChannelProgress {
    /// Last applied position and timestamp (None before the first message).
    pub applied: Option<(u64, u64)>,
    /// Whether this is a DML channel (counts for the DDL watermark).
    pub dml: bool,
    /// When the pipeline last received anything from its reader.
    pub last_received: Option<Instant>,
    /// Whether the pipeline's queue was empty at its last receive.
    pub idle: bool,
    /// Whether a received message is still being applied.
    pub busy: bool,
    /// Last position the target has made durable (flushed); what
    /// checkpoints record.
    pub durable: Option<(u64, u64)>,
    /// Checkpoint last written for this channel.
    pub saved: Option<(u64, u64)>,
    /// The stream's last sequence when the task started: until the
    /// pipeline has received it, the channel has a backlog and is never
    /// idle (0: nothing to catch up).
    pub catch_up_to: u64,
    /// Sequence of the last message received.
    pub received_seq: u64,
    /// Source timestamp of the message that woke the channel from idle: the
    /// oldest change not yet applied, until something newer is applied.
    pub woke_ts: u64,
    /// During a takeover replay: the newest timestamp the run before it
    /// applied. The target holds those changes, so the lag counts from it
    /// while the replay goes over them again (0: none).
    pub lag_floor_ts: u64,
}

/// What a task cannot read right now: its lag keeps rising there.
#[derive(Debug, Clone, Default)]
pub struct Unreadable {
    /// Since when (ms since the epoch) the source's queue has not answered
    /// the replica's probe: every channel is unreadable.
    pub source_down_since: Option<u64>,
    /// Channels whose reader cannot open them.
    pub channels: HashSet<String>,
}

/// Progress of every channel of one task.
#[derive(Debug, Clone, Default)]
pub struct TaskProgress {
    inner: Arc<Mutex<BTreeMap<String, ChannelProgress>>>,
}

/// A channel with no message for this long, and nothing queued, is idle: it
/// does not hold back the DDL watermark (active channels tick every ~200 ms).
const IDLE_AFTER: Duration = Duration::from_secs(1);

impl TaskProgress {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, ChannelProgress>) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Registers a channel, with its checkpoint if any. `catch_up_to` is the
    /// stream's last sequence at start (`None` if unknown: then the channel
    /// has a backlog until its first message): a channel is not idle before
    /// it has received that far, so that after a (re)start a DDL change on
    /// the replicate channel waits for the DML channels' backlog.
    pub fn register(
        &self,
        channel: &str,
        dml: bool,
        checkpoint: Option<&Checkpoint>,
        catch_up_to: Option<u64>,
    ) {
        self.with(|m| {
            // A fresh state: a run that starts over (rewind, replay) has
            // applied nothing after its checkpoint yet.
            let applied = checkpoint.map(|c| (c.sequence, c.timestamp));
            let received_seq = checkpoint.map_or(0, |c| c.sequence);
            let catch_up_to = catch_up_to.unwrap_or(u64::MAX);
            m.insert(
                channel.to_string(),
                ChannelProgress {
                    applied,
                    dml,
                    durable: applied,
                    saved: applied,
                    received_seq,
                    catch_up_to: if catch_up_to <= received_seq {
                        0
                    } else {
                        catch_up_to
                    },
                    ..ChannelProgress::default()
                },
            );
        });
    }

    /// Like [`register`](Self::register), for a run that replays what the
    /// run before it applied (the takeover replay): the channel's lag keeps
    /// counting from the newest change applied before, not from the older
    /// checkpoint the replay starts at, since the target holds those changes
    /// already. A replay stuck on a write still shows a rising lag.
    pub fn register_replay(
        &self,
        channel: &str,
        dml: bool,
        checkpoint: Option<&Checkpoint>,
        catch_up_to: Option<u64>,
    ) {
        let floor = self.with(|m| {
            m.get(channel)
                .map_or(0, |p| p.applied.map_or(0, |(_, ts)| ts).max(p.lag_floor_ts))
        });
        self.register(channel, dml, checkpoint, catch_up_to);
        self.with(|m| {
            if let Some(p) = m.get_mut(channel) {
                p.lag_floor_ts = floor;
            }
        });
    }

    /// Records that everything up to `sequence` (timestamp `ts`) is applied.
    pub fn applied(&self, channel: &str, sequence: u64, ts: u64) {
        self.with(|m| {
            let p = m.entry(channel.to_string()).or_default();
            let ts = p.applied.map_or(ts, |(_, old)| old.max(ts));
            p.applied = Some((sequence, ts));
            p.busy = false;
        });
    }

    /// Records that the pipeline received message `sequence` (source time
    /// `ts`; `queue_empty` after it) and is applying it until
    /// [`applied`](Self::applied) is called.
    pub fn received(&self, channel: &str, queue_empty: bool, sequence: u64, ts: u64) {
        self.with(|m| {
            let p = m.entry(channel.to_string()).or_default();
            if Self::is_idle(p) {
                p.woke_ts = ts;
            }
            p.last_received = Some(Instant::now());
            p.idle = queue_empty;
            p.busy = true;
            p.received_seq = p.received_seq.max(sequence);
            if p.catch_up_to != 0 && (p.received_seq >= p.catch_up_to || p.catch_up_to == u64::MAX)
            {
                p.catch_up_to = 0;
            }
        });
    }

    /// Idle: caught up with the backlog it had at start, nothing being
    /// applied, nothing queued at the last receive, and nothing received for
    /// [`IDLE_AFTER`]. A pipeline stuck on a write is busy, never idle, so
    /// its lag keeps rising.
    fn is_idle(p: &ChannelProgress) -> bool {
        p.catch_up_to == 0
            && !p.busy
            && p.last_received
                .is_none_or(|t| t.elapsed() >= IDLE_AFTER && p.idle)
    }

    /// The lowest applied timestamp over DML channels that are not idle:
    /// every DML change older than this is on the target. `u64::MAX` when all
    /// are idle.
    pub fn dml_watermark(&self) -> u64 {
        self.with(|m| {
            m.values()
                .filter(|p| p.dml && !Self::is_idle(p))
                .map(|p| p.applied.map_or(0, |(_, ts)| ts))
                .min()
                .unwrap_or(u64::MAX)
        })
    }

    /// Every channel's applied position now (to be marked durable once the
    /// target has flushed what was applied).
    pub fn applied_snapshot(&self) -> BTreeMap<String, (u64, u64)> {
        self.with(|m| {
            m.iter()
                .filter_map(|(c, p)| p.applied.map(|a| (c.clone(), a)))
                .collect()
        })
    }

    /// Records that the target has made everything up to `snapshot` durable.
    pub fn mark_durable(&self, snapshot: &BTreeMap<String, (u64, u64)>) {
        self.with(|m| {
            for (c, pos) in snapshot {
                if let Some(p) = m.get_mut(c) {
                    // A window cut may keep its sequence (a held message)
                    // while its time moves on: compare both.
                    if p.durable.is_none_or(|d| d < *pos) {
                        p.durable = Some(*pos);
                    }
                }
            }
        });
    }

    /// Durable positions not saved yet, to be checkpointed.
    pub fn unsaved(&self) -> Checkpoints {
        let now = now_ms();
        self.with(|m| {
            m.iter()
                .filter(|(_, p)| p.durable.is_some() && p.durable != p.saved)
                .filter_map(|(c, p)| {
                    p.durable.map(|(sequence, timestamp)| {
                        (
                            c.clone(),
                            Checkpoint {
                                sequence,
                                timestamp,
                                written_at_ms: now,
                            },
                        )
                    })
                })
                .collect()
        })
    }

    /// Marks `saved` as written.
    pub fn mark_saved(&self, saved: &Checkpoints) {
        self.with(|m| {
            for (c, cp) in saved {
                if let Some(p) = m.get_mut(c) {
                    p.saved = Some((cp.sequence, cp.timestamp));
                }
            }
        });
    }

    /// Replication lag of each channel in seconds: now minus the source time
    /// of the oldest change not yet applied, i.e. of the last applied
    /// message, or of the message that woke the channel from idle if that is
    /// newer (the last applied one may be minutes old); 0 for an idle,
    /// caught-up channel. It keeps rising while a channel with pending
    /// messages is stuck.
    ///
    /// A channel the task cannot read ([`Unreadable`]) is never idle: it gets
    /// no message because its queue does not answer, not because the source
    /// is quiet, so its lag keeps rising from its last applied change. A
    /// channel without any position yet (no checkpoint, nothing applied)
    /// counts from the moment the source's queue stopped answering; a read
    /// error of that channel alone leaves it at 0, as its topic may not
    /// exist yet (Milvus creates it at the first message).
    pub fn lags(&self, unreadable: &Unreadable) -> Vec<(String, f64)> {
        let now = now_ms();
        self.with(|m| {
            m.iter()
                .map(|(c, p)| {
                    let since = p
                        .applied
                        .map_or(0, |(_, ts)| ts)
                        .max(p.woke_ts)
                        .max(p.lag_floor_ts);
                    let stuck =
                        unreadable.source_down_since.is_some() || unreadable.channels.contains(c);
                    let since_ms = if since == 0 {
                        unreadable.source_down_since.unwrap_or(now)
                    } else if Self::is_idle(p) && !stuck {
                        now
                    } else {
                        physical_ms(since)
                    };
                    (c.clone(), now.saturating_sub(since_ms) as f64 / 1000.0)
                })
                .collect()
        })
    }

    /// The channels tracked, for clearing their gauges.
    pub fn channels(&self) -> Vec<String> {
        self.with(|m| m.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pretends `channel` last received something `secs` seconds ago.
    fn received_ago(p: &TaskProgress, channel: &str, secs: u64) {
        p.with(|m| {
            m.get_mut(channel).unwrap().last_received =
                Some(Instant::now() - Duration::from_secs(secs));
        });
    }

    #[test]
    fn watermark_ignores_idle_channels() {
        let p = TaskProgress::default();
        p.register("a", true, None, Some(0));
        p.register("b", true, None, Some(0));
        p.register("r", false, None, Some(0));
        assert_eq!(p.dml_watermark(), u64::MAX, "nothing received: all idle");
        p.received("a", false, 1, 100);
        p.applied("a", 1, 100);
        assert_eq!(p.dml_watermark(), 100);
        p.received("b", false, 1, 50);
        p.applied("b", 1, 50);
        assert_eq!(p.dml_watermark(), 50);
        p.applied("r", 1, 10);
        assert_eq!(
            p.dml_watermark(),
            50,
            "the replicate channel does not count"
        );
    }

    #[test]
    fn unsaved_and_mark_saved() {
        let p = TaskProgress::default();
        p.register(
            "a",
            true,
            Some(&Checkpoint {
                sequence: 3,
                timestamp: 9,
                written_at_ms: 0,
            }),
            None,
        );
        assert!(p.unsaved().is_empty());
        p.applied("a", 4, 10);
        assert!(p.unsaved().is_empty(), "applied but not durable yet");
        let snap = p.applied_snapshot();
        p.applied("a", 5, 11);
        p.mark_durable(&snap);
        let u = p.unsaved();
        assert_eq!(u["a"].sequence, 4);
        p.mark_saved(&u);
        assert!(p.unsaved().is_empty());
    }

    #[test]
    fn lag_of_a_stuck_busy_channel_grows() {
        let p = TaskProgress::default();
        p.register("a", true, None, Some(0));
        let old = (now_ms() - 5_000) << 18;
        p.received("a", true, 1, old);
        p.applied("a", 1, old);
        // The next message arrives and its write hangs (target down).
        p.received("a", true, 2, old);
        let lag = p.lags(&Unreadable::default())[0].1;
        assert!(lag >= 5.0, "{lag}");
        received_ago(&p, "a", 60);
        assert!(
            p.lags(&Unreadable::default())[0].1 >= 5.0,
            "still busy long after: lag must not reset"
        );
    }

    #[test]
    fn a_channel_with_a_backlog_holds_the_watermark_until_caught_up() {
        let p = TaskProgress::default();
        p.register("a", true, None, Some(10));
        p.register("b", true, None, Some(0));
        p.register("r", false, None, Some(0));
        assert_eq!(p.dml_watermark(), 0, "a has 10 messages to read");
        p.received("a", false, 5, 100);
        p.applied("a", 5, 100);
        assert_eq!(p.dml_watermark(), 100);
        p.received("a", true, 10, 200);
        p.applied("a", 10, 200);
        received_ago(&p, "a", 2);
        assert_eq!(p.dml_watermark(), u64::MAX, "caught up and idle");
    }

    #[test]
    fn a_checkpoint_at_the_end_means_nothing_to_catch_up() {
        let cp = Checkpoint {
            sequence: 10,
            timestamp: 9,
            written_at_ms: 0,
        };
        let p = TaskProgress::default();
        p.register("a", true, Some(&cp), Some(10));
        assert_eq!(p.dml_watermark(), u64::MAX);
        let q = TaskProgress::default();
        q.register("a", true, None, None);
        assert_eq!(q.dml_watermark(), 0, "unknown end: busy until a message");
        q.received("a", true, 1, 5);
        q.applied("a", 1, 5);
        assert_eq!(q.dml_watermark(), 5);
    }

    #[test]
    fn a_takeover_replay_keeps_the_lag_of_what_was_applied_before() {
        let recent = (now_ms() - 500) << 18;
        let old_cp = Checkpoint {
            sequence: 1,
            timestamp: (now_ms() - 70_000) << 18,
            written_at_ms: 0,
        };
        let p = TaskProgress::default();
        p.register("a", true, Some(&old_cp), Some(100));
        p.received("a", false, 50, recent);
        p.applied("a", 50, recent);
        let lag = |p: &TaskProgress| p.lags(&Unreadable::default())[0].1;
        assert!(lag(&p) < 5.0, "{}", lag(&p));
        // The replay starts again at the old checkpoint, with a backlog.
        p.register_replay("a", true, Some(&old_cp), Some(100));
        assert!(
            lag(&p) < 5.0,
            "replaying what is on the target: {}",
            lag(&p)
        );
        // A rewind (the target may have lost rows) counts from the checkpoint.
        p.register("a", true, Some(&old_cp), Some(100));
        assert!(lag(&p) > 60.0, "{}", lag(&p));
    }

    #[test]
    fn waking_from_idle_measures_lag_from_the_new_message() {
        let p = TaskProgress::default();
        p.register("a", true, None, Some(0));
        let long_ago = (now_ms() - 600_000) << 18;
        p.received("a", true, 1, long_ago);
        p.applied("a", 1, long_ago);
        received_ago(&p, "a", 2);
        assert_eq!(p.lags(&Unreadable::default())[0].1, 0.0, "idle");
        let recent = (now_ms() - 1_000) << 18;
        p.received("a", true, 2, recent);
        let lag = p.lags(&Unreadable::default())[0].1;
        assert!(
            (0.9..5.0).contains(&lag),
            "{lag}: not the 600 s since the previous message"
        );
    }

    #[test]
    fn an_unreadable_channel_is_never_idle() {
        let p = TaskProgress::default();
        p.register("a", true, None, Some(0));
        p.register("b", true, None, Some(0));
        let old = (now_ms() - 30_000) << 18;
        p.received("a", true, 1, old);
        p.applied("a", 1, old);
        received_ago(&p, "a", 20);
        assert_eq!(
            p.lags(&Unreadable::default())[0].1,
            0.0,
            "readable and quiet: idle"
        );
        let channels = Unreadable {
            source_down_since: None,
            channels: ["a".to_string(), "b".to_string()].into(),
        };
        let lags = p.lags(&channels);
        assert!(lags[0].1 >= 30.0, "{lags:?}: from the last applied change");
        assert_eq!(
            lags[1].1, 0.0,
            "{lags:?}: no position (its topic may not exist)"
        );
        let down = Unreadable {
            source_down_since: Some(now_ms() - 7_000),
            channels: HashSet::new(),
        };
        let lags = p.lags(&down);
        assert!(lags[0].1 >= 30.0, "{lags:?}");
        assert!(
            (7.0..20.0).contains(&lags[1].1),
            "{lags:?}: no position: from the outage"
        );
    }
}
