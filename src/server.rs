//! `milvus-cdc serve`: wires configuration, the etcd store, metrics and the
//! HTTP API together and runs until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::info;

use crate::{
    api::{self, ApiState, Role, StoreProbe},
    config::Config,
    metrics::Metrics,
    replicate::Engine,
    source::natsmq::NatsMq,
    store::{self, TaskStore},
    task::{
        service::{TaskService, TaskWorkers as _},
        TaskState,
    },
};

/// Answers `/readyz` by asking etcd for its status.
struct EtcdProbe {
    client: etcd_client::Client,
    timeout: std::time::Duration,
}

impl StoreProbe for EtcdProbe {
    fn probe(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let mut client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, client.status()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("etcd: {e}")),
                Err(_) => Err(format!("etcd: no answer within {timeout:?}")),
            }
        })
    }
}

/// Runs the agent until a shutdown signal.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let client = store::connect(&cfg.etcd)
        .await
        .context("cannot start without the agent's etcd")?;
    let store = TaskStore::new(&client, &cfg.etcd.root, cfg.etcd.request_timeout);
    let mq = NatsMq::connect_lazy(&cfg.source.nats_url, cfg.source.connect_timeout)
        .await
        .context("invalid source.nats_url")?;
    let engine = Engine::new(
        cfg.source.clone(),
        cfg.replicate.clone(),
        Arc::new(mq),
        store.clone(),
        metrics.clone(),
    );
    let service = TaskService::new(
        store.clone(),
        cfg.tasks.max_tasks,
        metrics.clone(),
        Arc::new(engine.clone()),
    );
    // Without an election this replica leads: start every Running task.
    for t in store.load_tasks().await.context("cannot load tasks")? {
        if t.value.state == TaskState::Running {
            engine.start(&t.value);
        }
    }
    // Without an election every replica leads; the HA module replaces this.
    let (_role_tx, role_rx) = watch::channel(Role::Leader {
        service: Box::new(service),
    });
    let state = ApiState {
        role: role_rx,
        metrics: metrics.clone(),
        max_body_bytes: cfg.server.max_body_bytes,
        compat_http_200: cfg.server.compat_http_200,
        advertise_url: cfg.server.advertise_url(),
        store_probe: Arc::new(EtcdProbe {
            client: client.clone(),
            timeout: cfg.etcd.request_timeout,
        }),
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    info!(listen = %cfg.server.listen, advertise = %state.advertise_url, "milvus-cdc serving");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    engine.stop_all().await;
    info!("shut down cleanly");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received, shutting down"),
        () = term => info!("SIGTERM received, shutting down"),
    }
}
