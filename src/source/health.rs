//! Whether the source's message queue answers, probed in the background on
//! every replica: `/readyz`, `/status`, the task API's `get`/`list` and the
//! `milvus_cdc_source_up` gauge report it, so that a source outage is
//! visible as such and not only as a lag that keeps rising.
//!
//! The readers retry on their own (with backoff); this probe only observes.

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mq::MessageQueue;
use crate::metrics::Metrics;

/// What the last probe of the source found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SourceHealth {
    /// Not probed yet.
    Unknown,
    /// The queue answered; `since_ms` is when it first did after an outage.
    Up {
        /// Milliseconds since the epoch.
        since_ms: u64,
    },
    /// The queue did not answer (or refused us) since `since_ms`.
    Down {
        /// The last probe's error.
        error: String,
        /// Milliseconds since the epoch of the first failed probe.
        since_ms: u64,
    },
}

impl SourceHealth {
    /// The error while the source is down.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Down { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The state after a probe that returned `result` at `now_ms`.
    fn next(&self, result: Result<(), String>, now_ms: u64) -> Self {
        match (self, result) {
            (Self::Up { since_ms }, Ok(())) => Self::Up {
                since_ms: *since_ms,
            },
            (_, Ok(())) => Self::Up { since_ms: now_ms },
            (Self::Down { since_ms, .. }, Err(error)) => Self::Down {
                error,
                since_ms: *since_ms,
            },
            (_, Err(error)) => Self::Down {
                error,
                since_ms: now_ms,
            },
        }
    }
}

/// Probes `mq` every `interval` ([`MessageQueue::probe`], bounded by
/// `interval`) until `cancel` fires; logs each change.
pub fn spawn_probe(
    mq: Arc<dyn MessageQueue>,
    interval: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) -> watch::Receiver<SourceHealth> {
    let (tx, rx) = watch::channel(SourceHealth::Unknown);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = match tokio::time::timeout(interval, mq.probe()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.message),
                Err(_) => Err(format!(
                    "the source's queue did not answer within {interval:?}"
                )),
            };
            let now = crate::store::now_ms();
            let before = tx.borrow().clone();
            let after = before.next(result, now);
            match (&before, &after) {
                (SourceHealth::Down { .. }, SourceHealth::Up { .. }) => {
                    info!("the source's message queue answers again");
                }
                (
                    SourceHealth::Up { .. } | SourceHealth::Unknown,
                    SourceHealth::Down { error, .. },
                ) => {
                    warn!(%error, "the source's message queue does not answer; replication waits and retries");
                }
                _ => {}
            }
            metrics
                .source_up
                .set(i64::from(matches!(after, SourceHealth::Up { .. })));
            tx.send_replace(after);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_and_shows_the_latest_error() {
        let s = SourceHealth::Unknown.next(Ok(()), 10);
        assert_eq!(s, SourceHealth::Up { since_ms: 10 });
        let s = s.next(Ok(()), 20);
        assert_eq!(s, SourceHealth::Up { since_ms: 10 });
        let s = s.next(Err("refused".into()), 30);
        let s = s.next(Err("timeout".into()), 40);
        assert_eq!(
            s,
            SourceHealth::Down {
                error: "timeout".into(),
                since_ms: 30
            }
        );
        assert_eq!(s.error(), Some("timeout"));
        assert_eq!(s.next(Ok(()), 50), SourceHealth::Up { since_ms: 50 });
    }

    #[test]
    fn serializes_with_a_state_tag() {
        let v = serde_json::to_value(SourceHealth::Down {
            error: "x".into(),
            since_ms: 1,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "down", "error": "x", "since_ms": 1})
        );
    }
}
