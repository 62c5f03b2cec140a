//! The election against a real etcd: one leader among replicas, a clean
//! hand-over on shutdown, and a leader whose lease is gone stops its work
//! before anyone else leads.
//!
//! Needs an etcd: `CDC_TEST_ETCD=127.0.0.1:12379` (scripts/test.sh sets it
//! while its stack runs). Without it every test here says so and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::Client;
use futures::future::BoxFuture;
use milvus_cdc::{
    ha::{Election, LeaderWork, LeaseGuard, Role, Term},
    metrics::Metrics,
    store::TaskStore,
    task::{
        service::{NoWorkers, TaskService},
        TaskId, TaskRecord,
    },
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

/// What the election asked of one replica's work, in order.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    guard: Arc<Mutex<Option<LeaseGuard>>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn guard(&self) -> Option<LeaseGuard> {
        self.guard.lock().unwrap().clone()
    }
}

impl LeaderWork for Recorder {
    fn begin_term(&self, term: Term) {
        *self.guard.lock().unwrap() = Some(term.guard);
        self.calls
            .lock()
            .unwrap()
            .push(format!("begin {}", term.revision));
    }

    fn start(&self, task: &TaskRecord) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("start {}", task.task_id));
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        self.calls.lock().unwrap().push("stop_all".into());
        Box::pin(async {})
    }

    fn end_term(&self) {
        self.calls.lock().unwrap().push("end".into());
    }
}

/// One replica: its election task, role and recorded work.
struct Replica {
    url: String,
    role: watch::Receiver<Role>,
    work: Recorder,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

fn replica(client: &Client, root: &str, url: &str) -> Replica {
    let store = TaskStore::new(client, root, Duration::from_secs(5));
    let metrics = Metrics::new();
    let service = TaskService::new(store.clone(), 10, metrics.clone(), Arc::new(NoWorkers));
    let (role_tx, role) = watch::channel(Role::Unknown);
    let work = Recorder::default();
    let election = Election {
        client: client.clone(),
        store,
        service,
        work: Arc::new(work.clone()),
        role: role_tx,
        metrics,
        advertise_url: url.to_string(),
        ttl: TTL,
        takeover_replay: false,
        request_timeout: Duration::from_secs(2),
    };
    let stop = CancellationToken::new();
    let handle = tokio::spawn(election.run(stop.clone()));
    Replica {
        url: url.to_string(),
        role,
        work,
        stop,
        handle,
    }
}

async fn etcd() -> Option<Client> {
    let Ok(endpoint) = std::env::var("CDC_TEST_ETCD") else {
        eprintln!("skipped: set CDC_TEST_ETCD=host:port to run the election tests");
        return None;
    };
    Some(
        Client::connect([endpoint.as_str()], None)
            .await
            .expect("CDC_TEST_ETCD is set but etcd does not answer"),
    )
}

fn root() -> String {
    format!("milvus-cdc-election-test/{}", TaskId::generate())
}

/// Waits up to `limit` until `f` holds for `r`'s role.
async fn until_role(r: &mut Replica, limit: Duration, f: impl Fn(&Role) -> bool) -> bool {
    tokio::time::timeout(limit, r.role.wait_for(|x| f(x)))
        .await
        .is_ok_and(|x| x.is_ok())
}

fn is_leader(r: &Role) -> bool {
    matches!(r, Role::Leader { .. })
}

/// Index of the one leader among `rs` once every replica knows its role.
async fn one_leader(rs: &mut [Replica]) -> usize {
    for r in rs.iter_mut() {
        assert!(
            until_role(r, Duration::from_secs(10), |x| !matches!(x, Role::Unknown)).await,
            "{} found no role in 10 s",
            r.url
        );
    }
    let leaders: Vec<usize> = (0..rs.len())
        .filter(|&i| is_leader(&rs[i].role.borrow()))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    leaders[0]
}

#[tokio::test]
async fn one_leader_and_a_clean_hand_over_on_shutdown() {
    let Some(client) = etcd().await else {
        return;
    };
    let root = root();
    let mut rs = vec![
        replica(&client, &root, "http://a:1"),
        replica(&client, &root, "http://b:1"),
        replica(&client, &root, "http://c:1"),
    ];
    let leader = one_leader(&mut rs).await;
    let leader_url = rs[leader].url.clone();
    for (i, r) in rs.iter().enumerate() {
        if i != leader {
            match &*r.role.borrow() {
                Role::Follower { leader_url: u } => assert_eq!(u, &leader_url),
                _ => panic!("{} is not a follower", r.url),
            }
            assert!(r.work.calls().iter().all(|c| !c.starts_with("begin")));
        }
    }
    assert!(rs[leader].work.calls()[0].starts_with("begin"));

    // Shutdown: the leader stops its work, ends its term and revokes its
    // lease, so a follower leads well before the TTL would have run out.
    let old = rs.remove(leader);
    old.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), old.handle)
        .await
        .expect("the election stops within 5 s of shutdown")
        .unwrap();
    let calls = old.work.calls();
    let stop = calls
        .iter()
        .position(|c| c == "stop_all")
        .expect("stop_all");
    let end = calls.iter().position(|c| c == "end").expect("end_term");
    assert!(stop < end, "workers stop before the term ends: {calls:?}");
    assert!(!old.work.guard().unwrap().is_valid());

    let started = tokio::time::Instant::now();
    let mut new_leader = None;
    while new_leader.is_none() && started.elapsed() < TTL {
        new_leader = rs.iter().position(|r| is_leader(&r.role.borrow()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        new_leader.is_some(),
        "a follower leads within one TTL of a revoked lease"
    );
    for r in rs {
        r.stop.cancel();
        let _ = r.handle.await;
    }
}

#[tokio::test]
async fn a_leader_whose_lease_is_gone_stops_its_work() {
    let Some(client) = etcd().await else {
        return;
    };
    let root = root();
    let mut rs = vec![
        replica(&client, &root, "http://a:1"),
        replica(&client, &root, "http://b:1"),
    ];
    let leader = one_leader(&mut rs).await;
    let (lease, term) = match &*rs[leader].role.borrow() {
        Role::Leader { lease, term, .. } => (*lease, *term),
        _ => unreachable!(),
    };
    // The lease vanishes behind the leader's back (as when etcd expired it
    // during a pause): its keep-alive learns it and it steps down.
    client.clone().lease_revoke(lease).await.unwrap();
    let old = &mut rs[leader];
    assert!(
        until_role(old, Duration::from_secs(5), |x| !is_leader(x)).await,
        "the old leader gives up leadership"
    );
    let calls = old.work.calls();
    assert!(
        calls.iter().any(|c| c == "stop_all") && calls.iter().any(|c| c == "end"),
        "work stopped: {calls:?}"
    );
    assert!(!old.work.guard().unwrap().is_valid());

    // Someone leads again, in a newer term.
    let mut newer = false;
    for _ in 0..250 {
        newer = rs
            .iter()
            .any(|r| matches!(&*r.role.borrow(), Role::Leader { term: t, .. } if *t > term));
        if newer {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(newer, "a new term began within 5 s");
    for r in rs {
        r.stop.cancel();
        let _ = r.handle.await;
    }
}
