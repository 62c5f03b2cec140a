//! The etcd task store against a real etcd: checkpoints never move
//! backwards, fenced writes are refused once leadership moved, a create
//! writes the task and its start checkpoints together or not at all, the
//! records of applied partition drops live and go with their task (or
//! collection).
//!
//! Needs an etcd: `CDC_TEST_ETCD=127.0.0.1:12379` (scripts/test.sh sets it
//! while its stack runs). Without it every test here says so and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and bench helpers

use std::time::Duration;

use etcd_client::Client;
use milvus_cdc::{
    store::{Checkpoint, Checkpoints, DroppedPartition, Fence, StoreError, TaskStore},
    task::{CollectionInfo, MilvusConnectParam, TaskId, TaskRecord, TaskState},
};

async fn store() -> Option<(Client, TaskStore)> {
    let Ok(endpoint) = std::env::var("CDC_TEST_ETCD") else {
        eprintln!("skipped: set CDC_TEST_ETCD=host:port to run the etcd store tests");
        return None;
    };
    let client = Client::connect([endpoint.as_str()], None)
        .await
        .expect("CDC_TEST_ETCD is set but etcd does not answer");
    let root = format!("milvus-cdc-store-test/{}", TaskId::generate());
    let store = TaskStore::new(&client, &root, Duration::from_secs(5));
    Some((client, store))
}

fn record() -> TaskRecord {
    TaskRecord {
        task_id: TaskId::generate(),
        milvus_connect_param: MilvusConnectParam {
            uri: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        },
        collection_infos: vec![CollectionInfo {
            name: "*".into(),
            positions: Default::default(),
        }],
        state: TaskState::Running,
        created_at_ms: 1,
        history_gaps: Vec::new(),
        last_error: None,
        skipped_messages: Vec::new(),
    }
}

fn cps(sequence: u64, timestamp: u64) -> Checkpoints {
    [(
        "by-dev-rootcoord-dml_0".to_string(),
        Checkpoint {
            sequence,
            timestamp,
            written_at_ms: 1,
        },
    )]
    .into_iter()
    .collect()
}

#[tokio::test]
async fn checkpoints_never_move_backwards() {
    let Some((_c, store)) = store().await else {
        return;
    };
    let task = record();
    store
        .create_task(&task, 10, &Checkpoints::new())
        .await
        .unwrap();
    store
        .save_checkpoints(&task.task_id, &cps(10, 100))
        .await
        .unwrap();
    store
        .save_checkpoints(&task.task_id, &cps(7, 90))
        .await
        .unwrap();
    let got = store.load_checkpoints(&task.task_id).await.unwrap();
    assert_eq!(got["by-dev-rootcoord-dml_0"].position(), (10, 100));
    // Same sequence, later time (a window cut holding a message): forward.
    store
        .save_checkpoints(&task.task_id, &cps(10, 120))
        .await
        .unwrap();
    let got = store.load_checkpoints(&task.task_id).await.unwrap();
    assert_eq!(got["by-dev-rootcoord-dml_0"].position(), (10, 120));
}

#[tokio::test]
async fn a_deleted_task_cannot_get_checkpoints_back() {
    let Some((_c, store)) = store().await else {
        return;
    };
    let task = record();
    store
        .create_task(&task, 10, &Checkpoints::new())
        .await
        .unwrap();
    store.delete_task(&task.task_id).await.unwrap();
    let err = store
        .save_checkpoints(&task.task_id, &cps(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(store
        .load_checkpoints(&task.task_id)
        .await
        .unwrap()
        .is_empty());
}

fn dropped(collection_id: i64, partition_id: i64) -> DroppedPartition {
    DroppedPartition {
        collection_id,
        partition_id,
        partition_name: "p".into(),
        channel: "by-dev-rootcoord-dml_0".into(),
        recorded_at_ms: 1,
    }
}

#[tokio::test]
async fn dropped_partitions_are_kept_per_task_until_their_collection_or_task_goes() {
    let Some((_c, store)) = store().await else {
        return;
    };
    let (task, other) = (record(), record());
    for t in [&task, &other] {
        store.create_task(t, 10, &Checkpoints::new()).await.unwrap();
    }
    let id = &task.task_id;
    for d in [dropped(12, 101), dropped(12, 102), dropped(123, 103)] {
        store.save_dropped_partition(id, &d).await.unwrap();
    }
    // Written again (a retry): still one record.
    store
        .save_dropped_partition(id, &dropped(12, 101))
        .await
        .unwrap();
    store
        .save_dropped_partition(&other.task_id, &dropped(12, 101))
        .await
        .unwrap();
    let ids = |v: Vec<DroppedPartition>| v.into_iter().map(|d| d.partition_id).collect::<Vec<_>>();
    let mut got = ids(store.load_dropped_partitions(id).await.unwrap());
    got.sort_unstable();
    assert_eq!(got, vec![101, 102, 103]);
    // Collection 12's drop: its records go, not those of 123 (a prefix of
    // the other id's key) or of another task.
    store.forget_dropped_partitions(id, 12).await.unwrap();
    assert_eq!(
        ids(store.load_dropped_partitions(id).await.unwrap()),
        vec![103]
    );
    assert_eq!(
        ids(store.load_dropped_partitions(&other.task_id).await.unwrap()),
        vec![101]
    );
    // The task's deletion removes the rest, and its workers cannot write
    // records back.
    store.delete_task(id).await.unwrap();
    assert!(store.load_dropped_partitions(id).await.unwrap().is_empty());
    let err = store
        .save_dropped_partition(id, &dropped(12, 104))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(store.load_dropped_partitions(id).await.unwrap().is_empty());
}

#[tokio::test]
async fn fenced_writes_are_refused_after_leadership_moved() {
    let Some((mut client, store)) = store().await else {
        return;
    };
    let key = store.leader_key();
    client.put(key.as_str(), "replica-a", None).await.unwrap();
    let rev = client.get(key.as_str(), None).await.unwrap().kvs()[0].create_revision();
    let fenced = store.fenced(Fence {
        key: key.clone(),
        create_revision: rev,
    });
    let task = record();
    fenced
        .create_task(&task, 10, &Checkpoints::new())
        .await
        .unwrap();
    fenced
        .save_checkpoints(&task.task_id, &cps(1, 1))
        .await
        .unwrap();
    // Another replica wins the key (deleted and created again).
    client.delete(key.as_str(), None).await.unwrap();
    client.put(key.as_str(), "replica-b", None).await.unwrap();
    let err = fenced
        .save_checkpoints(&task.task_id, &cps(2, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced), "{err}");
    let got = store.load_checkpoints(&task.task_id).await.unwrap();
    assert_eq!(
        got["by-dev-rootcoord-dml_0"].position(),
        (1, 1),
        "nothing written"
    );
}

#[tokio::test]
async fn create_writes_the_task_and_its_start_positions_together() {
    let Some((_c, store)) = store().await else {
        return;
    };
    let task = record();
    store.create_task(&task, 1, &cps(5, 50)).await.unwrap();
    assert_eq!(
        store.load_checkpoints(&task.task_id).await.unwrap()["by-dev-rootcoord-dml_0"].position(),
        (5, 50)
    );
    // The limit refuses the next create: no task and no checkpoint of it.
    let other = record();
    let err = store.create_task(&other, 1, &cps(9, 90)).await.unwrap_err();
    assert!(matches!(err, StoreError::LimitReached(1)), "{err}");
    assert!(store
        .load_checkpoints(&other.task_id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.load_tasks().await.unwrap().len(), 1);
}

mod service {
    use std::sync::{Arc, Mutex};

    use milvus_cdc::{
        metrics::Metrics,
        task::{
            service::{TaskService, TaskWorkers},
            Action,
        },
    };

    use super::*;

    /// Workers that record what was asked of them.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl TaskWorkers for Recorder {
        fn start(&self, task: &TaskRecord) {
            self.0
                .lock()
                .unwrap()
                .push(format!("start {}", task.task_id));
        }
        fn stop(&self, id: &TaskId) -> futures::future::BoxFuture<'static, ()> {
            self.0.lock().unwrap().push(format!("stop {id}"));
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_failed_pause_or_delete_leaves_the_workers_running() {
        let Some((_c, store)) = store().await else {
            return;
        };
        let task = record();
        store
            .create_task(&task, 10, &Checkpoints::new())
            .await
            .unwrap();
        // A store whose every write is refused (a stale fence).
        let stale = store.fenced(Fence {
            key: store.leader_key(),
            create_revision: 1,
        });
        let workers = Arc::new(Recorder::default());
        let svc = TaskService::new(stale, 10, Metrics::new(), workers.clone());
        assert!(svc
            .change_state(&task.task_id, Action::Pause)
            .await
            .is_err());
        assert!(svc.delete(&task.task_id).await.is_err());
        assert!(
            workers.0.lock().unwrap().is_empty(),
            "workers untouched: {:?}",
            workers.0.lock().unwrap()
        );
        assert_eq!(
            store.get_task(&task.task_id).await.unwrap().value.state,
            TaskState::Running
        );
    }

    #[tokio::test]
    async fn resume_of_a_running_task_starts_missing_workers() {
        let Some((_c, store)) = store().await else {
            return;
        };
        let task = record();
        store
            .create_task(&task, 10, &Checkpoints::new())
            .await
            .unwrap();
        let workers = Arc::new(Recorder::default());
        let svc = TaskService::new(store.clone(), 10, Metrics::new(), workers.clone());
        svc.change_state(&task.task_id, Action::Resume)
            .await
            .unwrap();
        svc.change_state(&task.task_id, Action::Pause)
            .await
            .unwrap();
        assert_eq!(
            *workers.0.lock().unwrap(),
            vec![
                format!("start {}", task.task_id),
                format!("stop {}", task.task_id)
            ]
        );
        svc.delete(&task.task_id).await.unwrap();
        assert!(store.get_task(&task.task_id).await.is_err());
    }
}
