//! [`TaskStore`] over `etcd-client`: every call bounded by the request
//! timeout, multi-key writes in one transaction, optional fencing.

use std::{future::Future, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
};

use super::{
    Checkpoint, Checkpoints, DroppedPartition, EtcdFailure, Fence, Result, StoreError, StoredTask,
    Versioned,
};
use crate::{
    config::EtcdConfig,
    task::{TaskId, TaskRecord},
};

/// Connects to etcd and checks that it answers, within the configured
/// connect timeout.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    let endpoints = cfg.endpoints.clone();
    let what = format!("connect to etcd {}", endpoints.join(","));
    let mut client = bounded(cfg.connect_timeout, &what, async {
        Client::connect(endpoints, Some(opts)).await
    })
    .await?;
    // `connect` may succeed lazily; make sure a member answers.
    bounded(cfg.connect_timeout, &what, client.status()).await?;
    Ok(client)
}

/// Runs `fut` with a deadline, mapping both failure kinds to `Unavailable`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(StoreError::Unavailable(EtcdFailure::Failed {
            what: what.to_string(),
            source,
        })),
        Err(_) => Err(StoreError::Unavailable(EtcdFailure::NoAnswer {
            what: what.to_string(),
            limit,
        })),
    }
}

/// Tasks and checkpoints of one agent cluster (see the module docs of
/// [`crate::store`] for the key layout). Cheap to clone.
#[derive(Clone)]
pub struct TaskStore {
    kv: KvClient,
    root: String,
    timeout: Duration,
    fence: Option<Fence>,
}

impl TaskStore {
    /// A store under `root` using `client`, each call bounded by `timeout`.
    pub fn new(client: &Client, root: &str, timeout: Duration) -> Self {
        Self {
            kv: client.kv_client(),
            root: root.to_string(),
            timeout,
            fence: None,
        }
    }

    /// The same store, with every write conditioned on `fence`.
    pub fn fenced(&self, fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// The key prefix of this store.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The election key of this agent cluster.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.root)
    }

    fn tasks_prefix(&self) -> String {
        format!("{}/tasks/", self.root)
    }

    fn task_key(&self, id: &TaskId) -> String {
        format!("{}/tasks/{id}", self.root)
    }

    fn positions_prefix(&self, id: &TaskId) -> String {
        format!("{}/positions/{id}/", self.root)
    }

    fn dropped_prefix(&self, id: &TaskId) -> String {
        format!("{}/dropped/{id}/", self.root)
    }

    fn fence_compare(&self) -> Vec<Compare> {
        self.fence
            .iter()
            .map(|f| Compare::create_revision(f.key.as_str(), CompareOp::Equal, f.create_revision))
            .collect()
    }

    async fn txn(&self, what: &str, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool> {
        let mut when = self.fence_compare();
        let fenced = !when.is_empty();
        when.extend(compares);
        let mut kv = self.kv.clone();
        let txn = Txn::new().when(when).and_then(ops);
        let resp = bounded(self.timeout, what, kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        if fenced && !self.still_leader().await? {
            return Err(StoreError::Fenced);
        }
        Ok(false)
    }

    async fn still_leader(&self) -> Result<bool> {
        let Some(f) = &self.fence else {
            return Ok(true);
        };
        let mut kv = self.kv.clone();
        let resp = bounded(
            self.timeout,
            "read leader key",
            kv.get(f.key.as_str(), None),
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == f.create_revision))
    }

    fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            message: e.to_string(),
        })
    }

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        // Serializing these plain data types cannot fail.
        serde_json::to_vec(value).unwrap_or_default()
    }

    /// Every key under `prefix` with its value (bounded like every call).
    async fn get_prefix(&self, what: &str, prefix: &str) -> Result<etcd_client::GetResponse> {
        let mut kv = self.kv.clone();
        bounded(
            self.timeout,
            what,
            kv.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await
    }

    /// Every task, ordered by id.
    pub async fn load_tasks(&self) -> Result<Vec<StoredTask>> {
        let resp = self.get_prefix("list tasks", &self.tasks_prefix()).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                Ok(Versioned {
                    value: Self::decode(kv.key(), kv.value())?,
                    revision: kv.mod_revision(),
                })
            })
            .collect()
    }

    /// One task, or `NotFound`.
    pub async fn get_task(&self, id: &TaskId) -> Result<StoredTask> {
        let mut kv = self.kv.clone();
        let key = self.task_key(id);
        let resp = bounded(self.timeout, "get task", kv.get(key.as_str(), None)).await?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        Ok(Versioned {
            value: Self::decode(kv.key(), kv.value())?,
            revision: kv.mod_revision(),
        })
    }

    /// Stores a new task, with its start checkpoints, in one transaction if
    /// fewer than `max_tasks` exist. The caller serializes creates (only the
    /// leader writes), so count-then-put is safe.
    pub async fn create_task(
        &self,
        record: &TaskRecord,
        max_tasks: usize,
        start: &Checkpoints,
    ) -> Result<()> {
        let mut kv = self.kv.clone();
        let prefix = self.tasks_prefix();
        let count = bounded(
            self.timeout,
            "count tasks",
            kv.get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?
        .count();
        if usize::try_from(count).unwrap_or(usize::MAX) >= max_tasks {
            return Err(StoreError::LimitReached(max_tasks));
        }
        let key = self.task_key(&record.task_id);
        let prefix = self.positions_prefix(&record.task_id);
        let mut ops = vec![TxnOp::put(key.as_str(), Self::encode(record), None)];
        ops.extend(
            start.iter().map(|(channel, cp)| {
                TxnOp::put(format!("{prefix}{channel}"), Self::encode(cp), None)
            }),
        );
        let ok = self
            .txn(
                "create task",
                vec![Compare::version(key.as_str(), CompareOp::Equal, 0)],
                ops,
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(StoreError::Conflict(record.task_id.clone()))
        }
    }

    /// Replaces a task record read at `revision`; `Conflict` if it changed
    /// since, `NotFound` if it was deleted.
    pub async fn update_task(&self, record: &TaskRecord, revision: i64) -> Result<()> {
        let key = self.task_key(&record.task_id);
        let ok = self
            .txn(
                "update task",
                vec![Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )],
                vec![TxnOp::put(key.as_str(), Self::encode(record), None)],
            )
            .await?;
        if ok {
            return Ok(());
        }
        // Tell a deleted task from a concurrent update.
        self.get_task(&record.task_id).await?;
        Err(StoreError::Conflict(record.task_id.clone()))
    }

    /// Removes a task with all its checkpoints and dropped-partition
    /// records in one transaction.
    pub async fn delete_task(&self, id: &TaskId) -> Result<()> {
        let key = self.task_key(id);
        let positions = self.positions_prefix(id);
        let dropped = self.dropped_prefix(id);
        let ok = self
            .txn(
                "delete task",
                vec![Compare::version(key.as_str(), CompareOp::Greater, 0)],
                vec![
                    TxnOp::delete(key.as_str(), None),
                    TxnOp::delete(positions.as_str(), Some(DeleteOptions::new().with_prefix())),
                    TxnOp::delete(dropped.as_str(), Some(DeleteOptions::new().with_prefix())),
                ],
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(StoreError::NotFound(id.clone()))
        }
    }

    /// Writes the checkpoints of several channels of one task at once. The
    /// task must still exist (a deleted task's workers cannot recreate
    /// positions). Checkpoints never move backwards: a channel whose stored
    /// checkpoint is ahead of the new one keeps it, and the transaction
    /// compares every key's revision with the one read, so two writers
    /// cannot interleave a step back.
    pub async fn save_checkpoints(&self, id: &TaskId, checkpoints: &Checkpoints) -> Result<()> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        let key = self.task_key(id);
        let prefix = self.positions_prefix(id);
        for _attempt in 0..3 {
            let stored = self.checkpoint_revisions(id).await?;
            let mut compares = vec![Compare::version(key.as_str(), CompareOp::Greater, 0)];
            let mut ops = Vec::new();
            for (channel, cp) in checkpoints {
                let ckey = format!("{prefix}{channel}");
                match stored.get(channel) {
                    Some((old, _)) if old.position() > cp.position() => continue,
                    Some((_, rev)) => {
                        compares.push(Compare::mod_revision(ckey.as_str(), CompareOp::Equal, *rev))
                    }
                    None => compares.push(Compare::version(ckey.as_str(), CompareOp::Equal, 0)),
                }
                ops.push(TxnOp::put(ckey, Self::encode(cp), None));
            }
            if ops.is_empty() {
                return Ok(());
            }
            if self.txn("save checkpoints", compares, ops).await? {
                return Ok(());
            }
            // The task is gone, or a checkpoint changed since it was read.
            self.get_task(id).await?;
        }
        Err(StoreError::Conflict(id.clone()))
    }

    /// The stored checkpoints of a task with their etcd mod revisions.
    async fn checkpoint_revisions(
        &self,
        id: &TaskId,
    ) -> Result<std::collections::BTreeMap<String, (Checkpoint, i64)>> {
        let prefix = self.positions_prefix(id);
        let resp = self.get_prefix("load checkpoints", &prefix).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let channel = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                let cp = Self::decode::<Checkpoint>(kv.key(), kv.value())?;
                Ok((channel, (cp, kv.mod_revision())))
            })
            .collect()
    }

    /// The checkpoints of one task, by channel.
    pub async fn load_checkpoints(&self, id: &TaskId) -> Result<Checkpoints> {
        Ok(self
            .checkpoint_revisions(id)
            .await?
            .into_iter()
            .map(|(channel, (cp, _))| (channel, cp))
            .collect())
    }

    /// Records that the task applied the drop of a source partition. The
    /// task must still exist (a deleted task's workers cannot leave records
    /// behind); writing the same record again is harmless.
    pub async fn save_dropped_partition(
        &self,
        id: &TaskId,
        dropped: &DroppedPartition,
    ) -> Result<()> {
        let task = self.task_key(id);
        let key = format!(
            "{}{}/{}",
            self.dropped_prefix(id),
            dropped.collection_id,
            dropped.partition_id
        );
        let ok = self
            .txn(
                "record dropped partition",
                vec![Compare::version(task.as_str(), CompareOp::Greater, 0)],
                vec![TxnOp::put(key, Self::encode(dropped), None)],
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(StoreError::NotFound(id.clone()))
        }
    }

    /// The source partitions whose drop the task applied (in key order).
    pub async fn load_dropped_partitions(&self, id: &TaskId) -> Result<Vec<DroppedPartition>> {
        let resp = self
            .get_prefix("load dropped partitions", &self.dropped_prefix(id))
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| Self::decode(kv.key(), kv.value()))
            .collect()
    }

    /// Forgets the dropped partitions of a source collection that the task
    /// has dropped: a replay of their drops or rows resolves the collection
    /// as dropped on the source and skips them without the records.
    pub async fn forget_dropped_partitions(&self, id: &TaskId, collection_id: i64) -> Result<()> {
        let prefix = format!("{}{collection_id}/", self.dropped_prefix(id));
        self.txn(
            "forget dropped partitions",
            Vec::new(),
            vec![TxnOp::delete(
                prefix.as_str(),
                Some(DeleteOptions::new().with_prefix()),
            )],
        )
        .await?;
        Ok(())
    }
}
