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

mod guard;
mod role;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use self::{guard::LeaseGuard, role::Role};
use crate::{
    metrics::Metrics,
    store::{Fence, StoreError, TaskStore},
    task::{service::TaskService, TaskRecord, TaskState},
};

/// A term this replica won: what the leader's workers need to write safely.
pub struct Term {
    /// Create revision of the leader key (the fencing token).
    pub revision: i64,
    /// The task store, fenced on this term.
    pub store: TaskStore,
    /// Refuses target writes once the lease may have ended.
    pub guard: LeaseGuard,
    /// Fired by a worker whose write fencing refused: leadership has moved.
    pub deposed: CancellationToken,
    /// How far back a new term replays (`ha.takeover_replay`), if at all.
    pub takeover_replay: Option<Duration>,
}

/// The leader's work as the election drives it (the replication engine):
/// the election imports this trait, never the engine itself.
pub trait LeaderWork: Send + Sync {
    /// This replica won `term`: the workers started from now on use it.
    fn begin_term(&self, term: Term);
    /// Starts a `Running` task's workers from its checkpoints.
    fn start(&self, task: &TaskRecord);
    /// Stops every task's workers (final checkpoints); resolves once they
    /// have stopped.
    fn stop_all(&self) -> BoxFuture<'_, ()>;
    /// The term ended: every later target write is refused.
    fn end_term(&self);
}

/// Why an election round ended; the election starts another after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// etcd refused or failed a request.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        /// What was asked.
        op: &'static str,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer in time.
    #[error("no answer from etcd to {op} within {limit:?}")]
    Timeout {
        /// What was asked.
        op: &'static str,
        /// The request timeout.
        limit: Duration,
    },
    /// The lease was not renewed before its renew deadline.
    #[error("lease lost: renew deadline passed")]
    LeaseLost,
    /// The watch of the leader key ended or failed.
    #[error("leader watch ended: {0}")]
    WatchEnded(String),
    /// A worker's write was refused by fencing: another replica leads.
    #[error("a write was refused by fencing")]
    Fenced,
    /// The new leader could not read its tasks.
    #[error("cannot load tasks: {0}")]
    LoadTasks(#[source] StoreError),
}

/// What the election needs.
pub struct Election {
    /// etcd client.
    pub client: Client,
    /// Unfenced store (its leader key is the election key).
    pub store: TaskStore,
    /// Task service template (fenced per term).
    pub service: TaskService,
    /// The leader's work (the replication engine).
    pub work: Arc<dyn LeaderWork>,
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

/// Runs etcd request `op` with `limit`.
async fn timed<T>(
    op: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ElectionError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ElectionError::Etcd { op, source }),
        Err(_) => Err(ElectionError::Timeout { op, limit }),
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
        self.work.stop_all().await;
        self.role.send_replace(Role::Unknown);
    }

    /// One lease: grant, keep alive, campaign, lead or follow, until the
    /// lease is lost or shutdown.
    async fn term(&self, shutdown: &CancellationToken) -> Result<(), ElectionError> {
        let mut client = self.client.clone();
        let t = self.request_timeout;
        let sent = Instant::now();
        let lease = timed("lease grant", t, client.lease_grant(self.ttl_secs(), None)).await?;
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
        // The term is over whatever ended it: anything still holding the
        // guard (a straggling worker) is refused from now on.
        guard.expire();
        // Best effort: a revoked lease frees the leader key at once.
        let _ = timed("lease revoke", t, client.lease_revoke(lease_id)).await;
        result
    }

    async fn campaign_loop(
        &self,
        lease_id: i64,
        guard: &LeaseGuard,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), ElectionError> {
        loop {
            if lost.is_cancelled() {
                return Err(ElectionError::LeaseLost);
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

    async fn campaign(&self, lease_id: i64) -> Result<Campaign, ElectionError> {
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
        let resp = timed("campaign", self.request_timeout, kv.txn(txn)).await?;
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
    ) -> Result<(), ElectionError> {
        let key = self.store.leader_key();
        let mut watch_client = self.client.watch_client();
        let mut stream = timed(
            "watch",
            self.request_timeout,
            watch_client.watch(key.as_str(), None),
        )
        .await?;
        // The key may have gone between the campaign and the watch.
        let mut kv = self.client.kv_client();
        let now = timed(
            "get leader",
            self.request_timeout,
            kv.get(key.as_str(), None),
        )
        .await?;
        let Some(current) = now.kvs().first() else {
            return Ok(());
        };
        // Leadership may have moved between the campaign and the watch.
        self.set_follower(&String::from_utf8_lossy(current.value()));
        loop {
            tokio::select! {
                () = lost.cancelled() => return Err(ElectionError::LeaseLost),
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
                    Ok(None) => return Err(ElectionError::WatchEnded("closed by etcd".into())),
                    Err(e) => return Err(ElectionError::WatchEnded(e.to_string())),
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
    ) -> Result<(), ElectionError> {
        let fence = Fence {
            key: self.store.leader_key(),
            create_revision,
        };
        let store = self.store.fenced(fence);
        let deposed = CancellationToken::new();
        // A deposed leader frozen inside a target write completes it when it
        // thaws; a replay of the takeover window covers thaws within
        // 2 · TTL + 2 s of the takeover.
        self.work.begin_term(Term {
            revision: create_revision,
            store: store.clone(),
            guard: guard.clone(),
            deposed: deposed.clone(),
            takeover_replay: self
                .takeover_replay
                .then(|| self.ttl * 2 + Duration::from_secs(2)),
        });
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
                    self.work.start(&t.value);
                }
            }
            Err(e) => {
                self.step_down("cannot load tasks").await;
                return Err(ElectionError::LoadTasks(e));
            }
        }
        let result = tokio::select! {
            () = lost.cancelled() => Err(ElectionError::LeaseLost),
            () = deposed.cancelled() => Err(ElectionError::Fenced),
            () = shutdown.cancelled() => Ok(()),
        };
        let reason = match &result {
            Ok(()) => "shutdown".to_string(),
            Err(e) => e.to_string(),
        };
        self.step_down(&reason).await;
        result
    }

    /// Stops the workers (final checkpoints, still fenced) and publishes that
    /// no leader is known.
    async fn step_down(&self, reason: &str) {
        warn!(reason, "stepping down");
        self.role.send_replace(Role::Unknown);
        self.metrics.is_leader.set(0);
        self.work.stop_all().await;
        self.work.end_term();
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
