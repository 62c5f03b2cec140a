//! `milvus-cdc serve`: wires configuration, the etcd store, the election, the
//! replication engine, metrics and the HTTP API together, and runs until
//! SIGTERM or SIGINT.
//!
//! Shutdown order: stop accepting HTTP requests, then the election stops the
//! workers (final fenced checkpoints) and revokes the lease so that a
//! follower takes over at once.
//!
//! With `server.tls_cert_file`/`tls_key_file` the API is served over HTTPS
//! only (see [`crate::api::tls`]); its files are read before anything
//! starts, so a bad certificate stops the start with the file's name.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    api::{self, forward::Forwarder, ApiState, Role, StoreProbe},
    config::Config,
    ha::Election,
    metrics::Metrics,
    replicate::Engine,
    store::{self, TaskStore},
    task::service::TaskService,
};

/// How often every replica checks that the source's message queue answers.
const SOURCE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Answers `/readyz` by asking etcd for its status.
struct EtcdProbe {
    client: etcd_client::Client,
    timeout: Duration,
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

/// Why the agent could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The agent's own etcd did not answer at start.
    #[error("cannot start without the agent's etcd: {0}")]
    Etcd(#[source] crate::store::StoreError),
    /// The source's message-queue settings cannot work.
    #[error("invalid source message-queue settings: {0}")]
    Source(#[source] crate::source::mq::MqError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The API's TLS files cannot be used.
    #[error("invalid TLS settings of the HTTP API: {0}")]
    Tls(#[source] crate::api::tls::ApiTlsError),
}

/// The API's listener.
enum Listening {
    /// Plain HTTP (the default).
    Plain(tokio::net::TcpListener),
    /// HTTPS only.
    Tls(api::tls::TlsListener),
}

/// The server's and the forwarder's TLS settings (None: plain HTTP).
type TlsSettings = (Option<Arc<rustls::ServerConfig>>, Arc<rustls::ClientConfig>);

fn tls_settings(cfg: &crate::config::ServerConfig) -> Result<TlsSettings, ServeError> {
    let server = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            Some(api::tls::server_config(cert, key).map_err(ServeError::Tls)?)
        }
        _ => None,
    };
    let client = api::tls::client_config(cfg.tls_ca_file.as_deref(), cfg.tls_cert_file.as_deref())
        .map_err(ServeError::Tls)?;
    Ok((server, client))
}

/// Runs the agent until a shutdown signal.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    let (server_tls, client_tls) = tls_settings(&cfg.server)?;
    let metrics = Metrics::new();
    let client = store::connect(&cfg.etcd).await.map_err(ServeError::Etcd)?;
    let store = TaskStore::new(&client, &cfg.etcd.root, cfg.etcd.request_timeout);
    let mq = crate::source::open_queue(&cfg.source, true)
        .await
        .map_err(ServeError::Source)?;
    let stop_probe = CancellationToken::new();
    let source_health = crate::source::health::spawn_probe(
        mq.clone(),
        SOURCE_PROBE_INTERVAL,
        metrics.clone(),
        stop_probe.clone(),
    );
    let engine = Engine::new(
        cfg.source.clone(),
        cfg.replicate.clone(),
        mq,
        source_health.clone(),
        store.clone(),
        metrics.clone(),
    );
    let service = TaskService::new(
        store.clone(),
        cfg.tasks.max_tasks,
        metrics.clone(),
        Arc::new(engine.clone()),
    )
    .with_source(&cfg.source);
    let advertise_url = cfg.server.advertise_url();
    let (role_tx, role_rx) = watch::channel(Role::Unknown);
    let running = engine.clone();
    let state = ApiState {
        role: role_rx,
        metrics: metrics.clone(),
        max_body_bytes: cfg.server.max_body_bytes,
        compat_http_200: cfg.server.compat_http_200,
        advertise_url: advertise_url.clone(),
        store_probe: Arc::new(EtcdProbe {
            client: client.clone(),
            timeout: cfg.etcd.request_timeout,
        }),
        forwarder: Forwarder::new(&advertise_url, client_tls)
            .with_token(cfg.server.api_token.clone()),
        leader_wait: cfg.ha.lease_ttl * 2,
        running_tasks: Arc::new(move || {
            running.running().iter().map(ToString::to_string).collect()
        }),
        api_token: cfg.server.api_token.as_deref().map(Arc::from),
        source: source_health,
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.server.listen,
            source,
        })?;
    let listener = match &server_tls {
        Some(tls) => Listening::Tls(api::tls::TlsListener::new(listener, tls.clone()).map_err(
            |source| ServeError::Listen {
                addr: cfg.server.listen,
                source,
            },
        )?),
        None => Listening::Plain(listener),
    };
    let election = Election {
        client: client.clone(),
        store,
        service,
        work: Arc::new(engine),
        role: role_tx,
        metrics,
        advertise_url: advertise_url.clone(),
        ttl: cfg.ha.lease_ttl,
        takeover_replay: cfg.ha.takeover_replay,
        request_timeout: cfg.etcd.request_timeout,
    };
    let stop_election = CancellationToken::new();
    let election_task = tokio::spawn(election.run(stop_election.clone()));
    info!(
        listen = %cfg.server.listen,
        advertise = %advertise_url,
        tls = server_tls.is_some(),
        "milvus-cdc serving"
    );
    // On a signal, the election stops the workers and revokes the lease at
    // once, while the HTTP server drains its in-flight requests.
    let on_signal = stop_election.clone();
    let shutdown_timeout = cfg.server.shutdown_timeout;
    let on_shutdown = async move {
        shutdown_signal().await;
        arm_shutdown_deadline(shutdown_timeout);
        on_signal.cancel();
    };
    let router = api::router(state);
    let http = match listener {
        Listening::Tls(listener) => {
            axum::serve(listener, router)
                .with_graceful_shutdown(on_shutdown)
                .await
        }
        Listening::Plain(listener) => {
            axum::serve(listener, router)
                .with_graceful_shutdown(on_shutdown)
                .await
        }
    }
    .map_err(ServeError::Http);
    stop_election.cancel();
    stop_probe.cancel();
    if election_task.await.is_err() {
        tracing::error!("election task panicked");
    }
    http?;
    info!("shut down cleanly");
    Ok(())
}

/// Bounds a stop: when `timeout` passes and the process still runs
/// (something waits on an unreachable dependency), it exits with status 1.
fn arm_shutdown_deadline(timeout: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        tracing::error!(
            ?timeout,
            "shutdown did not finish within server.shutdown_timeout; exiting now"
        );
        std::process::exit(1);
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_tls_files_are_named_and_stop_the_start() {
        let cfg = crate::config::ServerConfig {
            tls_cert_file: Some("/nonexistent/tls.crt".into()),
            tls_key_file: Some("/nonexistent/tls.key".into()),
            ..Default::default()
        };
        let Err(err) = tls_settings(&cfg) else {
            panic!("missing files accepted")
        };
        let err = err.to_string();
        assert!(
            err.contains("server.tls_cert_file") && err.contains("/nonexistent/tls.crt"),
            "{err}"
        );
        // Plain HTTP (the default) needs no file.
        let (server, _) = tls_settings(&crate::config::ServerConfig::default()).unwrap();
        assert!(server.is_none());
    }
}
