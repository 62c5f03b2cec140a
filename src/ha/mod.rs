//! Leader election on the agent's etcd.
//!
//! Every replica grants itself a lease (TTL `ha.lease_ttl`) and campaigns
//! with one transaction: "if the leader key does not exist, put my advertised
//! URL there, attached to my lease". The winner leads until its lease ends;
//! the others watch the key and campaign again when it is deleted.
//!
//! Safety rules:
//! - the lease is kept alive in the background every TTL/4; leadership is
//!   considered valid only until the last acknowledged keep-alive's send time
//!   plus TTL·2/3 ([`LeaseGuard`]). Past that *renew deadline* the leader stops
//!   its workers first and only then campaigns again, so it has stopped before
//!   etcd lets anyone else win;
//! - every task-state and checkpoint write is fenced on the leader key's
//!   create revision ([`crate::store::Fence`]), and every target write checks
//!   the [`LeaseGuard`] first: a leader that was paused (SIGSTOP, GC, network
//!   cut) and comes back can neither overwrite the new leader's checkpoints
//!   nor keep writing to the target;
//! - on SIGTERM a leader stops its workers (final checkpoints) and revokes
//!   its lease, so a follower takes over at once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    api::Role,
    metrics::Metrics,
    replicate::Engine,
    store::{Fence, TaskStore},
    task::{
        service::{TaskService, TaskWorkers as _},
        TaskState,
    },
};

/// Whether this replica may still act as leader, judged from its own clock:
/// valid until the last acknowledged keep-alive's send time plus the renew
/// deadline. Cheap to clone and to check before every write.
#[derive(Clone, Debug)]
pub struct LeaseGuard {
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// How long after `valid_until` a write sent before it may still run
    /// (see [`LeaseGuard::write_deadline`]).
    write_grace: Duration,
}

impl Default for LeaseGuard {
    fn default() -> Self {
        Self::always_valid()
    }
}

impl LeaseGuard {
    /// A guard that never expires (single replica without election, tests).
    pub fn always_valid() -> Self {
        Self {
            valid_until: Arc::new(Mutex::new(None)),
            write_grace: Duration::ZERO,
        }
    }

    fn until(at: Instant, write_grace: Duration) -> Self {
        Self {
            valid_until: Arc::new(Mutex::new(Some(at))),
            write_grace,
        }
    }

    fn extend(&self, at: Instant) {
        let mut g = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cur) = g.as_mut() {
            *cur = (*cur).max(at);
        }
    }

    /// Makes the guard refuse from now on.
    pub fn expire_now(&self) {
        self.expire();
    }

    fn expire(&self) {
        let mut g = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = Some(Instant::now());
    }

    /// Whether leadership is still valid now.
    pub fn is_valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|t| Instant::now() < t)
    }

    /// Time left before the renew deadline (None: never expires).
    pub fn remaining(&self) -> Option<Duration> {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The latest moment a target write sent now may still run (None: no
    /// limit): the renew deadline (2/3 of the TTL after the last renewal)
    /// plus two TTLs. A successor takes over at the earliest one TTL after
    /// that renewal and replays its takeover window `2 · TTL + 2 s` later,
    /// so every write of a deposed leader has ended before that replay.
    pub fn write_deadline(&self) -> Option<tokio::time::Instant> {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| tokio::time::Instant::from_std(t + self.write_grace))
    }
}

/// What the election needs.
pub struct Election {
    /// etcd client.
    pub client: Client,
    /// Unfenced store (its leader key is the election key).
    pub store: TaskStore,
    /// Task service template (fenced per term).
    pub service: TaskService,
    /// The replication engine.
    pub engine: Engine,
    /// Where the role is published.
    pub role: watch::Sender<Role>,
    /// Metrics.
    pub metrics: Metrics,
    /// This replica's advertised URL (the leader key's value).
    pub advertise_url: String,
    /// Lease TTL.
    pub ttl: Duration,
    /// `ha.takeover_replay`.
    pub takeover_replay: bool,
    /// Per-request timeout for etcd.
    pub request_timeout: Duration,
}

enum Campaign {
    Won { create_revision: i64 },
    Lost { leader_url: String },
}

/// Runs `fut` with `limit`, flattening both error kinds into a message.
async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from etcd within {limit:?}")),
    }
}

impl Election {
    fn renew_deadline(&self) -> Duration {
        self.ttl * 2 / 3
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(5).max(2)
    }

    /// Campaigns until `shutdown` fires; then, if leading, stops the workers
    /// and revokes the lease.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = crate::backoff::retry_delays();
        while !shutdown.is_cancelled() {
            match self.term(&shutdown).await {
                Ok(()) => backoff = crate::backoff::retry_delays(),
                Err(e) => {
                    let d = backoff
                        .next()
                        .unwrap_or(Duration::from_secs(5))
                        .min(self.ttl);
                    warn!(error = %e, retry_in = ?d, "election round failed");
                    self.role.send_replace(Role::Unknown);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        self.engine.stop_all().await;
        self.role.send_replace(Role::Unknown);
    }

    /// One lease: grant, keep alive, campaign, lead or follow, until the
    /// lease is lost or shutdown.
    async fn term(&self, shutdown: &CancellationToken) -> Result<(), String> {
        let mut client = self.client.clone();
        let t = self.request_timeout;
        let sent = Instant::now();
        let lease = timed(t, client.lease_grant(self.ttl_secs(), None)).await?;
        let lease_id = lease.id();
        let guard = LeaseGuard::until(sent + self.renew_deadline(), self.ttl * 2);
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease_id,
            self.ttl,
            self.renew_deadline(),
            guard.clone(),
            lost.clone(),
            self.metrics.clone(),
        ));
        let result = self.campaign_loop(lease_id, &guard, &lost, shutdown).await;
        keeper.abort();
        // Best effort: a revoked lease frees the leader key at once.
        let _ = timed(t, client.lease_revoke(lease_id)).await;
        result
    }

    async fn campaign_loop(
        &self,
        lease_id: i64,
        guard: &LeaseGuard,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        loop {
            if lost.is_cancelled() {
                return Err("lease lost".into());
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            self.metrics.election_attempts.inc();
            match self.campaign(lease_id).await? {
                Campaign::Won { create_revision } => {
                    return self
                        .lead(lease_id, create_revision, guard, lost, shutdown)
                        .await;
                }
                Campaign::Lost { leader_url } => {
                    self.set_follower(&leader_url);
                    self.follow(lost, shutdown).await?;
                }
            }
        }
    }

    async fn campaign(&self, lease_id: i64) -> Result<Campaign, String> {
        let key = self.store.leader_key();
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.advertise_url.as_str(),
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut kv = self.client.kv_client();
        let resp = timed(self.request_timeout, kv.txn(txn)).await?;
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(Campaign::Won {
                create_revision: rev,
            });
        }
        let leader_url = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Campaign::Lost { leader_url })
    }

    fn set_follower(&self, leader_url: &str) {
        if leader_url == self.advertise_url {
            // Our own URL: a previous incarnation of this replica (killed
            // before it could revoke its lease). Its key expires with the
            // lease; until then no usable leader is known.
            if !matches!(&*self.role.borrow(), Role::Unknown) {
                info!("the leader key holds this replica's own URL from before a restart; waiting for it to expire");
                self.role.send_replace(Role::Unknown);
            }
            return;
        }
        let changed =
            !matches!(&*self.role.borrow(), Role::Follower { leader_url: u } if u == leader_url);
        if changed {
            info!(leader = %leader_url, "following");
            self.metrics.is_leader.set(0);
            self.role.send_replace(Role::Follower {
                leader_url: leader_url.to_string(),
            });
        }
    }

    /// Waits until the leader key is deleted (or changes), the lease is lost,
    /// or shutdown.
    async fn follow(
        &self,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let key = self.store.leader_key();
        let mut watch_client = self.client.watch_client();
        let mut stream =
            timed(self.request_timeout, watch_client.watch(key.as_str(), None)).await?;
        // The key may have gone between the campaign and the watch.
        let mut kv = self.client.kv_client();
        let now = timed(self.request_timeout, kv.get(key.as_str(), None)).await?;
        let Some(current) = now.kvs().first() else {
            return Ok(());
        };
        // Leadership may have moved between the campaign and the watch.
        self.set_follower(&String::from_utf8_lossy(current.value()));
        loop {
            tokio::select! {
                () = lost.cancelled() => return Err("lease lost while following".into()),
                () = shutdown.cancelled() => return Ok(()),
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            info!("leader key deleted: campaigning");
                            return Ok(());
                        }
                        if let Some(url) = resp.events().iter().filter_map(|e| e.kv()).map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).next_back() {
                            self.set_follower(&url);
                        }
                    }
                    Ok(None) => return Err("leader watch ended".into()),
                    Err(e) => return Err(format!("leader watch failed: {e}")),
                },
            }
        }
    }

    async fn lead(
        &self,
        lease_id: i64,
        create_revision: i64,
        guard: &LeaseGuard,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let fence = Fence {
            key: self.store.leader_key(),
            create_revision,
        };
        let store = self.store.fenced(fence);
        let deposed = CancellationToken::new();
        // A deposed leader frozen inside a target write completes it when it
        // thaws; a replay of the takeover window covers thaws within
        // 2 · TTL + 2 s of the takeover.
        self.engine.set_leadership(
            create_revision,
            store.clone(),
            guard.clone(),
            deposed.clone(),
            self.takeover_replay
                .then(|| self.ttl * 2 + Duration::from_secs(2)),
        );
        info!(lease = lease_id, term = create_revision, "became leader");
        self.metrics.is_leader.set(1);
        self.metrics.leader_changes.inc();
        let service = self.service.with_store(store.clone());
        self.role.send_replace(Role::Leader {
            service: Box::new(service),
            term: create_revision,
            lease: lease_id,
            since_ms: crate::store::now_ms(),
        });
        // Start every Running task from its checkpoints.
        match store.load_tasks().await {
            Ok(tasks) => {
                for t in tasks
                    .into_iter()
                    .filter(|t| t.value.state == TaskState::Running)
                {
                    self.engine.start(&t.value);
                }
            }
            Err(e) => {
                self.step_down("cannot load tasks").await;
                return Err(format!("cannot load tasks: {e}"));
            }
        }
        let result = tokio::select! {
            () = lost.cancelled() => Err("lease lost: renew deadline passed".to_string()),
            () = deposed.cancelled() => Err("a write was refused by fencing".to_string()),
            () = shutdown.cancelled() => Ok(()),
        };
        let reason = match &result {
            Ok(()) => "shutdown",
            Err(e) => e.as_str(),
        };
        self.step_down(reason).await;
        result
    }

    /// Stops the workers (final checkpoints, still fenced) and publishes that
    /// no leader is known.
    async fn step_down(&self, reason: &str) {
        warn!(reason, "stepping down");
        self.role.send_replace(Role::Unknown);
        self.metrics.is_leader.set(0);
        self.engine.stop_all().await;
        self.engine.clear_leadership();
    }
}

/// Keeps `lease_id` alive every TTL/4; extends `guard` after each
/// acknowledged renewal; fires `lost` (and expires the guard) when the renew
/// deadline passes without one or etcd says the lease is gone.
async fn keep_alive(
    mut client: Client,
    lease_id: i64,
    ttl: Duration,
    renew_deadline: Duration,
    guard: LeaseGuard,
    lost: CancellationToken,
    metrics: Metrics,
) {
    let interval = ttl / 4;
    let mut last_ok = Instant::now();
    let mut stream_pair = None;
    loop {
        metrics
            .lease_renewal_age
            .set(last_ok.elapsed().as_secs_f64());
        if last_ok.elapsed() >= renew_deadline {
            error!(
                lease = lease_id,
                "lease not renewed before the renew deadline"
            );
            guard.expire();
            lost.cancel();
            return;
        }
        let sent = Instant::now();
        if stream_pair.is_none() {
            match tokio::time::timeout(interval, client.lease_keep_alive(lease_id)).await {
                Ok(Ok(pair)) => stream_pair = Some(pair),
                _ => {
                    tokio::time::sleep(interval / 2).await;
                    continue;
                }
            }
        }
        let Some((keeper, stream)) = stream_pair.as_mut() else {
            continue;
        };
        let renewed = tokio::time::timeout(interval, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                last_ok = sent;
                guard.extend(sent + renew_deadline);
                metrics.lease_renewal_age.set(0.0);
            }
            Ok(Ok(Some(_))) => {
                error!(lease = lease_id, "etcd says the lease expired");
                guard.expire();
                lost.cancel();
                return;
            }
            _ => {
                warn!(lease = lease_id, "keep-alive failed; reconnecting");
                stream_pair = None;
            }
        }
        let spent = sent.elapsed();
        tokio::time::sleep(interval.saturating_sub(spent)).await;
    }
}
