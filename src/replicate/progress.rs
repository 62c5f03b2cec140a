//! How far each channel pipeline of a task has applied, shared between the
//! pipelines (DDL ordering across channels), the checkpointer and the lag
//! metric.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::store::{now_ms, Checkpoint, Checkpoints};

/// Milliseconds since the Unix epoch of a Milvus hybrid timestamp (the
/// physical part is the high bits, the low 18 bits are a logical counter).
pub fn physical_ms(ts: u64) -> u64 {
    ts >> 18
}

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
    /// Checkpoint last written for this channel.
    pub saved: Option<(u64, u64)>,
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

    /// Registers a channel, with its checkpoint if any.
    pub fn register(&self, channel: &str, dml: bool, checkpoint: Option<&Checkpoint>) {
        self.with(|m| {
            let p = m.entry(channel.to_string()).or_default();
            p.dml = dml;
            p.applied = checkpoint.map(|c| (c.sequence, c.timestamp));
            p.saved = p.applied;
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

    /// Records that the pipeline received a message (`queue_empty` after it)
    /// and is applying it until [`applied`](Self::applied) is called.
    pub fn received(&self, channel: &str, queue_empty: bool) {
        self.with(|m| {
            let p = m.entry(channel.to_string()).or_default();
            p.last_received = Some(Instant::now());
            p.idle = queue_empty;
            p.busy = true;
        });
    }

    /// Idle: nothing being applied, nothing queued at the last receive, and
    /// nothing received for [`IDLE_AFTER`]. A pipeline stuck on a write is
    /// busy, never idle, so its lag keeps rising.
    fn is_idle(p: &ChannelProgress) -> bool {
        !p.busy
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

    /// Positions applied since the last save, to be checkpointed.
    pub fn unsaved(&self) -> Checkpoints {
        let now = now_ms();
        self.with(|m| {
            m.iter()
                .filter(|(_, p)| p.applied.is_some() && p.applied != p.saved)
                .filter_map(|(c, p)| {
                    p.applied.map(|(sequence, timestamp)| {
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
    /// of the last applied message; 0 for an idle, caught-up channel. It
    /// keeps rising while a channel with pending messages is stuck.
    pub fn lags(&self) -> Vec<(String, f64)> {
        let now = now_ms();
        self.with(|m| {
            m.iter()
                .map(|(c, p)| {
                    let lag = match p.applied {
                        _ if Self::is_idle(p) => 0.0,
                        Some((_, ts)) if ts > 0 => {
                            now.saturating_sub(physical_ms(ts)) as f64 / 1000.0
                        }
                        _ => 0.0,
                    };
                    (c.clone(), lag)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_ignores_idle_channels() {
        let p = TaskProgress::default();
        p.register("a", true, None);
        p.register("b", true, None);
        p.register("r", false, None);
        assert_eq!(p.dml_watermark(), u64::MAX, "nothing received: all idle");
        p.received("a", false);
        p.applied("a", 1, 100);
        assert_eq!(p.dml_watermark(), 100);
        p.received("b", false);
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
        );
        assert!(p.unsaved().is_empty());
        p.applied("a", 4, 10);
        let u = p.unsaved();
        assert_eq!(u["a"].sequence, 4);
        p.mark_saved(&u);
        assert!(p.unsaved().is_empty());
    }

    #[test]
    fn lag_of_a_stuck_busy_channel_grows() {
        let p = TaskProgress::default();
        p.register("a", true, None);
        let old = (now_ms() - 5_000) << 18;
        p.received("a", true);
        p.applied("a", 1, old);
        // The next message arrives and its write hangs (target down).
        p.received("a", true);
        let lag = p.lags()[0].1;
        assert!(lag >= 5.0, "{lag}");
        let mut g = p.inner.lock().unwrap();
        g.get_mut("a").unwrap().last_received = Some(Instant::now() - Duration::from_secs(60));
        drop(g);
        assert!(
            p.lags()[0].1 >= 5.0,
            "still busy long after: lag must not reset"
        );
    }
}
