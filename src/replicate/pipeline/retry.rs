//! Every target write of a pipeline runs here: retried with backoff until it
//! succeeds or the task stops, checked against the lease before it is sent
//! and bounded by the lease's write deadline.

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Pipeline;
use crate::{backoff::retry_delays, milvus::MilvusError};

/// Consecutive permanent refusals of one write before the task stops.
const PERMANENT_ATTEMPTS: u32 = 3;

impl Pipeline {
    /// Runs `op` until it succeeds, with backoff; None if cancelled first.
    /// Every failure is counted and logged: nothing is skipped on error, so
    /// nothing is lost, and the lag shows that the channel is stuck.
    pub(super) async fn retry<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        what: &str,
        op: F,
    ) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, MilvusError>>,
    {
        let mut delays = retry_delays();
        let mut attempt = 0u32;
        let mut unreachable = false;
        let mut permanent = 0u32;
        let target_url = self.writer.target().url().to_string();
        loop {
            if !self.leadership.guard.is_valid() {
                self.leadership.refuse(&self.metrics, what);
                return None;
            }
            // No write may outlive this replica's leadership: a deposed
            // leader's last write ends (on the target too: gRPC deadline)
            // before its successor's takeover replay.
            let write = async {
                match self.leadership.guard.write_deadline() {
                    Some(deadline) => crate::milvus::with_deadline(deadline, op()).await,
                    None => op().await,
                }
            };
            let r = tokio::select! {
                () = cancel.cancelled() => return None,
                r = write => r,
            };
            match r {
                Ok(a) => {
                    if attempt > 0 {
                        info!(what, attempt, "write succeeded after retries");
                    }
                    if unreachable {
                        self.rewind.cancel();
                    }
                    return Some(a);
                }
                Err(e) => {
                    attempt += 1;
                    // Only the target being away can lose its rows: the
                    // source (the catalog's look-ups) going away does not.
                    unreachable |=
                        matches!(&e, MilvusError::Unreachable { url, .. } if *url == target_url);
                    permanent = if e.is_permanent() { permanent + 1 } else { 0 };
                    let kind = match &e {
                        MilvusError::Unreachable { url, .. } if *url != target_url => {
                            "source_unreachable"
                        }
                        MilvusError::Unreachable { .. } => "target_unreachable",
                        MilvusError::Unauthenticated { .. } => "target_auth",
                        MilvusError::Rejected {
                            permanent: true, ..
                        } => "target_permanent",
                        MilvusError::Rejected { .. } => "target_rejected",
                        MilvusError::Fenced => "fenced",
                    };
                    self.count_error(kind);
                    // A refusal that repeats (not a passing state of the
                    // target) stops the task instead of looping silently.
                    if permanent >= PERMANENT_ATTEMPTS {
                        error!(what, attempt, error = %e, "the target refuses this change for good: stopping the task (fix the cause, then resume it)");
                        self.failed.report(&self.channel, format!("{what}: {e}"));
                        return None;
                    }
                    let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
                    warn!(what, attempt, error = %e, retry_in = ?delay, "write failed, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Counts a failed attempt in `milvus_cdc_apply_errors_total` under
    /// `kind`.
    pub(super) fn count_error(&self, kind: &str) {
        self.metrics
            .apply_errors
            .get_or_create(&crate::metrics::ErrorLabels {
                task_id: self.labels.task_id.clone(),
                kind: kind.into(),
            })
            .inc();
    }
}
