//! One run of a task: connect to the target, start a reader and a
//! pipeline per channel from the checkpoints, save checkpoints, report lag,
//! and stop (or rewind after the target came back) as the engine asks.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    catalog::Catalog,
    durable::Durability,
    history, lock,
    pipeline::{sleep_until_opt, Pipeline},
    progress::{TaskProgress, Unreadable},
    reconcile, window, Inner, Leadership, CHANNEL_BUFFER,
};
use crate::{
    backoff::retry_delays,
    metrics::{ChannelLabels, ErrorLabels, TaskLabels},
    milvus::MilvusClient,
    source::{
        health::SourceHealth,
        mq::{MessageQueue, StartAt},
        reader::{ChannelReader, ReadErrors},
    },
    store::{now_ms, Checkpoints, StoreError},
    task::{MilvusConnectParam, TaskId, TaskRecord},
};

/// Retries `op` with backoff until it succeeds or `cancel` fires.
/// Every failure is counted in `apply_errors{kind}` so that a task stuck
/// before it starts (e.g. on an unreachable target) is visible in alerts.
async fn until_ok<T, E: std::fmt::Display, Fut>(
    cancel: &CancellationToken,
    what: &str,
    errors: &prometheus_client::metrics::counter::Counter,
    op: impl Fn() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delays = retry_delays();
    loop {
        let r = tokio::select! {
            () = cancel.cancelled() => return None,
            r = op() => r,
        };
        match r {
            Ok(v) => return Some(v),
            Err(e) => {
                errors.inc();
                let d = delays.next().unwrap_or(Duration::from_secs(10));
                warn!(what, error = %e, retry_in = ?d, "failed, retrying");
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

fn error_counter(
    inner: &Inner,
    id: &TaskId,
    kind: &str,
) -> prometheus_client::metrics::counter::Counter {
    inner
        .metrics
        .apply_errors
        .get_or_create(&ErrorLabels {
            task_id: id.to_string(),
            kind: kind.into(),
        })
        .clone()
}

/// Removes the task's gauges, so a stopped task leaves no stale lag behind
/// (counters stay: they only ever grow).
fn forget_gauges(inner: &Inner, id: &TaskId, progress: &TaskProgress) {
    for channel in progress.channels() {
        inner.metrics.replication_lag.remove(&ChannelLabels {
            task_id: id.to_string(),
            channel,
        });
    }
    inner.metrics.checkpoint_age.remove(&TaskLabels {
        task_id: id.to_string(),
    });
}

async fn connect(param: &MilvusConnectParam) -> Result<MilvusClient, String> {
    let addr = param.validate().map_err(|e| e.to_string())?;
    MilvusClient::connect(&addr)
        .await
        .map_err(|e| e.to_string())
}

pub(super) async fn run_task(
    inner: Arc<Inner>,
    task: TaskRecord,
    cancel: CancellationToken,
    quick: Arc<AtomicBool>,
    read_errors: ReadErrors,
    takeover_replay: bool,
) {
    info!(takeover_replay, "starting task workers");
    // Progress outlives each run, so the lag gauges keep being reported
    // (and keep rising) while a run reconnects after a rewind or a replay.
    let progress = TaskProgress::default();
    let reporter = tokio::spawn(report_lag(
        inner.clone(),
        task.task_id.clone(),
        progress.clone(),
        read_errors.clone(),
    ));
    let mut from = None;
    loop {
        let run = run_workers(
            &inner,
            &task,
            (&cancel, &quick),
            &progress,
            &read_errors,
            from.take(),
            takeover_replay,
        );
        match run.await {
            Run::Done => break,
            Run::Rewind => {
                warn!("the target was unreachable: replaying from the last flushed checkpoints, which a restarted target may have lost rows after");
                error_counter(&inner, &task.task_id, "target_rewind").inc();
            }
            Run::Replay(checkpoints) => {
                info!("takeover grace period over: replaying once from the checkpoints the previous leader left");
                from = Some(checkpoints);
            }
            Run::Failed(failure) => {
                error_counter(&inner, &task.task_id, "task_failed").inc();
                let leadership = lock(&inner.leadership).clone();
                if let Err(e) = history::pause_with_error(&task.task_id, &leadership, failure).await
                {
                    warn!(error = %e, "the task's failure was not recorded in its record (the log has it)");
                }
                break;
            }
        }
    }
    reporter.abort();
    let _ = reporter.await; // cancelled: it can no longer set a gauge
    forget_gauges(&inner, &task.task_id, &progress);
}

/// How often the lag gauges are refreshed: a scrape sees the lag of that
/// moment, not one up to a second old.
const LAG_REPORT_EVERY: Duration = Duration::from_millis(250);

/// Publishes every channel's lag every [`LAG_REPORT_EVERY`] for the task's
/// whole life. A channel whose reader cannot open it, or every channel
/// while the source's queue does not answer the probe, counts as unreadable:
/// its lag keeps rising instead of falling to 0 as if the source were quiet.
async fn report_lag(inner: Arc<Inner>, id: TaskId, progress: TaskProgress, errors: ReadErrors) {
    let mut tick = tokio::time::interval(LAG_REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let unreadable = Unreadable {
            source_down_since: match &*inner.source_health.borrow() {
                SourceHealth::Down { since_ms, .. } => Some(*since_ms),
                SourceHealth::Up { .. } | SourceHealth::Unknown => None,
            },
            channels: errors.current().into_iter().map(|e| e.channel).collect(),
        };
        for (channel, lag) in progress.lags(&unreadable) {
            inner
                .metrics
                .replication_lag
                .get_or_create(&ChannelLabels {
                    task_id: id.to_string(),
                    channel,
                })
                .set(lag);
        }
    }
}

/// A write the target refuses for good, reported by a pipeline: the task
/// stops (paused, with the error in its record).
#[derive(Clone, Default)]
pub struct Failure {
    fired: CancellationToken,
    first: Arc<Mutex<Option<crate::task::TaskFailure>>>,
}

impl Failure {
    /// Records the first failure and stops the run.
    pub fn report(&self, channel: &str, message: String) {
        let mut first = lock(&self.first);
        if first.is_none() {
            *first = Some(crate::task::TaskFailure {
                message,
                channel: channel.to_string(),
                at_ms: now_ms(),
            });
        }
        self.fired.cancel();
    }
}

/// How one run of a task's workers ended.
enum Run {
    /// Stopped for good (task stopped, deposed, or removed).
    Done,
    /// A write was refused for good: the task is paused with the error.
    Failed(crate::task::TaskFailure),
    /// The target was unreachable and answers again: start over from the
    /// durable checkpoints, since it may have lost unflushed rows.
    Rewind,
    /// The takeover grace period has passed: start over from the
    /// checkpoints this run started from (see [`Engine::set_leadership`]).
    Replay(Checkpoints),
}

/// Connects, starts one reader and pipeline per channel from the task's
/// checkpoints, and saves durable positions until stopped.
async fn run_workers(
    inner: &Arc<Inner>,
    task: &TaskRecord,
    (cancel, quick): (&CancellationToken, &AtomicBool),
    progress: &TaskProgress,
    read_errors: &ReadErrors,
    from: Option<Checkpoints>,
    takeover_replay: bool,
) -> Run {
    let id = task.task_id.clone();
    let leadership = lock(&inner.leadership).clone();
    let store = leadership.store.clone();
    let replay_at = leadership
        .replay_at
        .filter(|t| takeover_replay && from.is_none() && *t > tokio::time::Instant::now());
    // A takeover replay goes over what the run before it applied.
    let replay = from.is_some();
    let checkpoints = match from {
        Some(c) => c,
        None => {
            let Some(c) = until_ok(
                cancel,
                "load checkpoints",
                &error_counter(inner, &id, "checkpoint"),
                || store.load_checkpoints(&id),
            )
            .await
            else {
                return Run::Done;
            };
            c
        }
    };
    // Drops of source partitions applied by earlier runs, maybe in another
    // process: a channel replaying from before one must neither write the
    // old partition's rows nor drop the partition re-created under its name.
    let Some(dropped) = until_ok(
        cancel,
        "load dropped partitions",
        &error_counter(inner, &id, "checkpoint"),
        || store.load_dropped_partitions(&id),
    )
    .await
    else {
        return Run::Done;
    };
    inner
        .dropped
        .restore(id.as_str(), dropped.iter().map(|d| d.partition_id));
    // Registered before connecting: a task whose target is down shows its
    // backlog's lag, rising, from the start.
    let mut channels: Vec<(String, bool)> = inner
        .source
        .dml_channels()
        .into_iter()
        .map(|c| (c, true))
        .collect();
    channels.push((inner.source.replicate_channel(), false));
    // Every channel at once, and a stop does not wait for a source that is
    // down (each probe has its own deadline too).
    let probes = futures::future::join_all(
        channels
            .iter()
            .map(|(channel, _)| backlog_end(&inner.mq, channel)),
    );
    let ends = tokio::select! {
        () = cancel.cancelled() => return Run::Done,
        ends = probes => ends,
    };
    for ((channel, dml), end) in channels.iter().zip(ends) {
        if replay {
            progress.register_replay(channel, *dml, checkpoints.get(channel), end);
        } else {
            progress.register(channel, *dml, checkpoints.get(channel), end);
        }
    }
    let Some(target) = until_ok(
        cancel,
        "connect to target",
        &error_counter(inner, &id, "target_unreachable"),
        || connect(&task.milvus_connect_param),
    )
    .await
    else {
        return Run::Done;
    };
    let source_param = MilvusConnectParam {
        uri: Some(inner.source.milvus_uri.clone()),
        token: inner.source.milvus_token.clone(),
        connect_timeout: Some(inner.source.connect_timeout.as_secs().max(1)),
        ..Default::default()
    };
    let Some(source) = until_ok(
        cancel,
        "connect to source Milvus",
        &error_counter(inner, &id, "source_unreachable"),
        || connect(&source_param),
    )
    .await
    else {
        return Run::Done;
    };
    let writer = crate::sink::MilvusSink::new(target);
    // The task replicates only its selection (validated when it was
    // created); a stored selection that no longer parses replicates nothing.
    let selection = crate::task::selection::Selection::parse(&task.collection_infos)
        .unwrap_or_else(|e| {
            error!(task_id = %id, error = %e, "stored collection_infos are invalid: nothing is replicated");
            crate::task::selection::Selection::none()
        });
    let catalog = Catalog::new(source, writer.clone()).with_selection(selection);
    let workers = cancel.child_token();
    let rewind = CancellationToken::new();
    let failed = Failure::default();
    let skipped = history::SkipLog::default();
    let budget = crate::source::budget::ByteBudget::new(inner.replicate.max_buffer_bytes);
    let (lost_tx, lost_rx) = mpsc::channel(64);
    let mut handles = vec![tokio::spawn(history::record_lost_history(
        id.clone(),
        catalog.clone(),
        leadership.clone(),
        lost_rx,
        workers.clone(),
    ))
    .abort_handle()];
    for (channel, dml) in channels {
        let cp = checkpoints.get(&channel);
        let start = cp.map_or(StartAt::Earliest, |c| StartAt::After(c.sequence));
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER);
        let reader = ChannelReader::new(inner.mq.clone(), &channel, start)
            .with_metrics(inner.metrics.clone(), id.as_str())
            .with_lost_ranges(lost_tx.clone())
            .with_budget(budget.clone())
            .with_errors(read_errors.clone());
        handles.push(tokio::spawn(reader.run(tx, workers.clone())).abort_handle());
        let pipeline = Pipeline {
            channel: channel.as_str().into(),
            dml,
            writer: writer.clone(),
            catalog: catalog.clone(),
            progress: progress.clone(),
            metrics: inner.metrics.clone(),
            labels: ChannelLabels {
                task_id: id.to_string(),
                channel: channel.clone(),
            },
            cfg: inner.replicate.clone(),
            leadership: leadership.clone(),
            rewind: rewind.clone(),
            failed: failed.clone(),
            skipped: skipped.clone(),
            budget: budget.clone(),
            mq: inner.mq.clone(),
            dropped: inner.dropped.clone(),
            task: id.clone(),
            start: cp.map_or_else(window::Cut::default, |c| window::Cut {
                resume_after: c.sequence,
                through_ts: c.timestamp,
            }),
        };
        let pipe_handle = tokio::spawn(pipeline.run(rx, workers.clone()));
        handles.push(pipe_handle.abort_handle());
    }
    let task_labels = TaskLabels {
        task_id: id.to_string(),
    };
    handles.push(
        tokio::spawn(reconcile_loop(
            catalog.clone(),
            writer.clone(),
            leadership.clone(),
            inner.replicate.reconcile_interval,
            workers.clone(),
        ))
        .abort_handle(),
    );
    let durability = Durability::new(
        writer.clone(),
        progress.clone(),
        inner.replicate.flush_interval,
        error_counter(inner, &id, "target_flush"),
    );
    handles.push(tokio::spawn(durability.clone().run(workers.clone())).abort_handle());
    let mut last_save = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(
        inner
            .replicate
            .checkpoint_interval
            .min(Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            () = cancel.cancelled() => break Run::Done,
            () = rewind.cancelled() => break Run::Rewind,
            () = failed.fired.cancelled() => {
                let first = lock(&failed.first).take();
                match first {
                    Some(f) => break Run::Failed(f),
                    None => break Run::Done,
                }
            }
            () = sleep_until_opt(replay_at) => break Run::Replay(checkpoints.clone()),
            _ = tick.tick() => {}
        }
        durability.without_flushes();
        if last_save.elapsed() >= inner.replicate.checkpoint_interval {
            if let Err(e) = history::save_skipped(&id, &leadership, &skipped).await {
                warn!(error = %e, "skipped messages not recorded in the task (the log and milvus_cdc_skipped_messages_total have them)");
            }
            match save(inner, &leadership, &id, progress).await {
                Ok(()) => last_save = tokio::time::Instant::now(),
                Err(StoreError::Fenced) => {
                    leadership.refuse(&inner.metrics, "checkpoint");
                    workers.cancel();
                    wait_stopped(&handles).await;
                    return Run::Done;
                }
                Err(StoreError::NotFound(_)) => {
                    warn!("task removed from the store; stopping its workers");
                    workers.cancel();
                    wait_stopped(&handles).await;
                    return Run::Done;
                }
                Err(e) => {
                    error_counter(inner, &id, "checkpoint").inc();
                    warn!(error = %e, "cannot save checkpoints, will retry");
                }
            }
        }
        inner
            .metrics
            .checkpoint_age
            .get_or_create(&task_labels)
            .set(last_save.elapsed().max(durability.age()).as_secs_f64());
    };
    // Stop: pipelines finish their current write (or give up its retry),
    // then what the target has is flushed (not after a rewind: the target
    // was away; not on a quick stop) and the final checkpoint records it.
    workers.cancel();
    wait_stopped(&handles).await;
    if matches!(outcome, Run::Done) && !quick.load(Ordering::SeqCst) {
        durability.final_flush().await;
    }
    match save(inner, &leadership, &id, progress).await {
        Ok(()) => info!("task workers stopped after a final checkpoint"),
        Err(StoreError::Fenced) => {
            leadership.refuse(&inner.metrics, "final checkpoint");
            return Run::Done;
        }
        Err(e) => {
            warn!(error = %e, "final checkpoint not saved; the next run replays from the previous one")
        }
    }
    outcome
}

/// The channel's last sequence now (what a starting pipeline must read
/// before it can count as idle), or None if the queue does not answer soon.
async fn backlog_end(mq: &Arc<dyn MessageQueue>, channel: &str) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(5), mq.info(channel)).await {
        Ok(Ok(info)) => Some(info.last_sequence),
        Ok(Err(e)) => {
            warn!(channel, error = %e, "cannot read the channel's last sequence; it counts as busy until its first message");
            None
        }
        Err(_) => {
            warn!(channel, "no answer for the channel's last sequence within 5s; it counts as busy until its first message");
            None
        }
    }
}

/// Runs [`reconcile::reconcile_once`] every `interval` while leading.
async fn reconcile_loop(
    catalog: Catalog,
    writer: crate::sink::MilvusSink,
    leadership: Leadership,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !leadership.guard.is_valid() {
            return;
        }
        if let Err(e) = reconcile::reconcile_once(&catalog, &writer, &leadership.guard).await {
            warn!(error = %e, "metadata reconciliation failed, will retry");
        }
    }
}

/// Waits for readers and pipelines to return (they do promptly on cancel);
/// aborting them after 30 s is a backstop.
async fn wait_stopped(handles: &[tokio::task::AbortHandle]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handles.iter().any(|h| !h.is_finished()) {
        if tokio::time::Instant::now() >= deadline {
            warn!("workers did not stop within 30s; aborting them");
            for h in handles {
                h.abort();
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn save(
    inner: &Inner,
    leadership: &Leadership,
    id: &TaskId,
    progress: &TaskProgress,
) -> Result<(), StoreError> {
    // Checked first, even with nothing to save: a replica that lost its
    // lease learns it here at the latest and stops.
    if !leadership.guard.is_valid() {
        return Err(StoreError::Fenced);
    }
    let unsaved: Checkpoints = progress.unsaved();
    if unsaved.is_empty() {
        return Ok(());
    }
    leadership.store.save_checkpoints(id, &unsaved).await?;
    progress.mark_saved(&unsaved);
    inner
        .metrics
        .checkpoints_saved
        .get_or_create(&TaskLabels {
            task_id: id.to_string(),
        })
        .inc();
    tracing::debug!(
        channels = unsaved.len(),
        at_ms = now_ms(),
        "checkpoints saved"
    );
    Ok(())
}
