//! HTTP API of one replica: `POST /cdc` (the official task API), plus
//! `GET /metrics`, `/healthz`, `/readyz` and `/status`.
//!
//! The handlers talk to the task state machine ([`TaskService`]) only when
//! this replica leads; what the replica is doing comes from a
//! [`tokio::sync::watch`] of [`Role`] that the election updates.

pub mod cdc;
pub mod forward;
pub mod tls;

use std::time::Duration;

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info_span, warn, Instrument};

use self::cdc::{ApiError, CdcRequest};
use crate::{
    metrics::Metrics,
    source::health::SourceHealth,
    task::{service::TaskService, Action, TaskRecord},
};

pub use crate::ha::Role;

/// Checks whether the coordination store answers (for `/readyz`).
pub trait StoreProbe: Send + Sync {
    /// Resolves to `Ok` when the store answered in time.
    fn probe(&self) -> futures::future::BoxFuture<'static, Result<(), String>>;
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Current role, set by the election.
    pub role: watch::Receiver<Role>,
    /// Process metrics.
    pub metrics: Metrics,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Answer errors with HTTP 200 like the official server.
    pub compat_http_200: bool,
    /// This replica's advertised URL.
    pub advertise_url: String,
    /// Store reachability check.
    pub store_probe: std::sync::Arc<dyn StoreProbe>,
    /// Client that forwards `/cdc` to the leader.
    pub forwarder: forward::Forwarder,
    /// How long a request waits for a new leader after the old one failed.
    pub leader_wait: Duration,
    /// Ids of the tasks whose workers run on this replica.
    pub running_tasks: std::sync::Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The bearer token `/cdc` requires, if any.
    pub api_token: Option<std::sync::Arc<str>>,
    /// What the last probe of the source's message queue found.
    pub source: watch::Receiver<SourceHealth>,
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in
/// constant time).
fn authorized(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router of every endpoint.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/cdc", post(cdc_handler))
        .route("/metrics", get(metrics_handler))
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz_handler))
        .route("/status", get(status_handler))
        .fallback(|| async {
            json_response(
                StatusCode::NOT_FOUND,
                json!({"code": 404, "message": "not found: the task API is POST /cdc"}),
            )
        })
        .method_not_allowed_fallback(|| async {
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"code": 405, "message": "method not allowed: the task API is POST /cdc"}),
            )
        })
        .with_state(state)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl ApiState {
    fn error_response(&self, e: &ApiError) -> Response {
        let status = if self.compat_http_200 {
            StatusCode::OK
        } else {
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        };
        let mut resp = json_response(status, e.body());
        if e.code == 503 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

async fn cdc_handler(State(state): State<ApiState>, req: Request) -> Response {
    if let Some(token) = &state.api_token {
        if !authorized(req.headers(), token) {
            let e = ApiError {
                code: 401,
                message:
                    "missing or wrong bearer token: send Authorization: Bearer <server.api_token>"
                        .into(),
            };
            state.metrics.record_request("unauthorized", e.code);
            let mut resp = state.error_response(&e);
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let forwarded = req.headers().contains_key(forward::FORWARDED_HEADER);
    let parsed = match read_body(req.into_body(), state.max_body_bytes).await {
        Ok(body) => cdc::parse(&body).map(|r| (r, body)),
        Err(e) => Err(e),
    };
    let (request, body) = match parsed {
        Ok(p) => p,
        Err(e) => {
            state.metrics.record_request("invalid", e.code);
            return state.error_response(&e);
        }
    };
    let kind = request.kind();
    match dispatch(&state, request, body, forwarded).await {
        Dispatched::Local(Ok(v)) => {
            state.metrics.record_request(kind, 200);
            json_response(StatusCode::OK, v)
        }
        Dispatched::Local(Err(e)) => {
            state.metrics.record_request(kind, e.code);
            if e.code >= 500 {
                warn!(request_type = kind, code = e.code, message = %e.message, "request failed");
            }
            state.error_response(&e)
        }
        Dispatched::Forwarded(answer) => {
            state.metrics.record_request(kind, answer.status);
            forwarded_response(answer)
        }
    }
}

/// Where a request was answered.
enum Dispatched {
    /// Here (this replica leads, or no leader could be reached).
    Local(Result<Value, ApiError>),
    /// By the leader, whose answer is passed on unchanged.
    Forwarded(forward::Forwarded),
}

/// Executes `request` if this replica leads, else forwards it to the leader;
/// after a failed forward, waits once for a leader change and tries again.
/// A request that was already forwarded is never forwarded again.
async fn dispatch(
    state: &ApiState,
    request: CdcRequest,
    body: bytes::Bytes,
    forwarded: bool,
) -> Dispatched {
    let mut role = state.role.borrow().clone();
    let mut retried = false;
    loop {
        let leader_url = match role {
            Role::Leader { service, .. } => {
                let span = info_span!("cdc", request_type = request.kind());
                let source = state.source.borrow().clone();
                return Dispatched::Local(
                    execute(&service, request, &source).instrument(span).await,
                );
            }
            Role::Follower { .. } | Role::Unknown if forwarded => {
                return Dispatched::Local(Err(ApiError {
                    code: 503,
                    message: "this replica is not the leader (leadership is moving), retry".into(),
                }));
            }
            Role::Unknown if retried => {
                return Dispatched::Local(Err(ApiError {
                    code: 503,
                    message: "no leader is known yet, retry shortly".into(),
                }));
            }
            Role::Unknown => String::new(),
            Role::Follower { leader_url } => leader_url,
        };
        if !leader_url.is_empty() {
            match state.forwarder.forward(&leader_url, body.clone()).await {
                // The former leader answers 503 while leadership moves: wait
                // for the new one and try once more.
                Ok(answer) if answer.status == 503 && !retried => {
                    warn!(leader = %leader_url, "the leader answered 503; waiting for a leader change");
                }
                Ok(answer) => {
                    count_forward(state, if retried { "retried" } else { "ok" });
                    return Dispatched::Forwarded(answer);
                }
                // A create that may have reached the leader is not sent
                // again: it would make a second task.
                Err(e @ forward::ForwardError::NoAnswer { .. })
                    if retried || matches!(request, CdcRequest::Create(_)) =>
                {
                    count_forward(state, "failed");
                    return Dispatched::Local(Err(ApiError {
                        code: 504,
                        message: format!("{e}: check with list before retrying"),
                    }));
                }
                Err(e) if retried => {
                    count_forward(state, "failed");
                    return Dispatched::Local(Err(ApiError {
                        code: 503,
                        message: e.to_string(),
                    }));
                }
                Err(e) => {
                    warn!(leader = %leader_url, error = %e, "forwarding failed; waiting for a leader change");
                }
            }
        }
        retried = true;
        role = wait_for_other_leader(state, &leader_url).await;
    }
}

fn count_forward(state: &ApiState, outcome: &str) {
    state
        .metrics
        .forwarded_requests
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
}

/// Waits (at most `leader_wait`) until the role is no longer "following
/// `old`" and not unknown, and returns it.
async fn wait_for_other_leader(state: &ApiState, old: &str) -> Role {
    let mut rx = state.role.clone();
    let changed = tokio::time::timeout(
        state.leader_wait,
        rx.wait_for(|r| match r {
            Role::Leader { .. } => true,
            Role::Follower { leader_url } => leader_url != old,
            Role::Unknown => false,
        }),
    )
    .await;
    match changed {
        Ok(Ok(r)) => r.clone(),
        _ => state.role.borrow().clone(),
    }
}

fn forwarded_response(answer: forward::Forwarded) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, answer.body).into_response();
    let ct = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    resp
}

/// Reads at most `limit` bytes; a larger body is a 413.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(Duration::from_secs(30), to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large || e.to_string().contains("length limit") {
                Err(ApiError {
                    code: 413,
                    message: format!("request body is larger than {limit} bytes"),
                })
            } else {
                Err(ApiError::bad_request(format!(
                    "cannot read request body: {e}"
                )))
            }
        }
        Err(_) => Err(ApiError {
            code: 408,
            message: "request body not received within 30s".into(),
        }),
    }
}

async fn execute(
    service: &TaskService,
    req: CdcRequest,
    source: &SourceHealth,
) -> Result<Value, ApiError> {
    let to_api = |e: crate::task::service::ServiceError| ApiError {
        code: e.status(),
        message: e.to_string(),
    };
    match req {
        CdcRequest::Create(c) => service.create(c).await.map(|id| cdc::created(&id)),
        CdcRequest::List => service.list().await.map(|tasks| {
            let live = |t: &TaskRecord| cdc::Live {
                source,
                read_errors: service.read_errors(&t.task_id),
            };
            cdc::listed(&tasks, live)
        }),
        CdcRequest::Get(id) => service.get(&id).await.map(|t| {
            let live = cdc::Live {
                source,
                read_errors: service.read_errors(&t.task_id),
            };
            cdc::got(&t, &live)
        }),
        CdcRequest::Pause(id) => service
            .change_state(&id, Action::Pause)
            .await
            .map(|()| cdc::done()),
        CdcRequest::Resume(id) => service
            .change_state(&id, Action::Resume)
            .await
            .map(|()| cdc::done()),
        CdcRequest::Delete(id) => service.delete(&id).await.map(|()| cdc::done()),
        CdcRequest::Position(id) => service.positions(&id).await.map(|p| cdc::positioned(&p)),
        CdcRequest::Promote(id) => service.promote(&id).await.map(|p| cdc::promoted(&p)),
    }
    .map_err(to_api)
}

async fn metrics_handler(State(state): State<ApiState>) -> Response {
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn readyz_handler(State(state): State<ApiState>) -> Response {
    let store = state.store_probe.probe().await;
    let role = state.role.borrow().clone();
    let leader_known = !matches!(role, Role::Unknown);
    let ready = store.is_ok() && leader_known;
    // A source outage concerns every replica alike: it is reported, not
    // made a reason to be unready (that would hide the API that reports it).
    let source = state.source.borrow().clone();
    let body = json!({
        "ready": ready,
        "store": store.err().unwrap_or_else(|| "ok".into()),
        "leader_known": leader_known,
        "role": role.name(),
        "source": source.error().unwrap_or("ok"),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

async fn status_handler(State(state): State<ApiState>) -> Response {
    let role = state.role.borrow().clone();
    let (leader, term, lease, since) = match &role {
        Role::Leader {
            term,
            lease,
            since_ms,
            ..
        } => (
            Some(state.advertise_url.clone()),
            Some(*term),
            Some(*lease),
            Some(*since_ms),
        ),
        Role::Follower { leader_url } => (Some(leader_url.clone()), None, None, None),
        Role::Unknown => (None, None, None, None),
    };
    json_response(
        StatusCode::OK,
        json!({
            "role": role.name(),
            "leader": leader,
            "advertise": state.advertise_url,
            "term": term,
            "lease_id": lease,
            "leader_since_ms": since,
            "running_tasks": (state.running_tasks)(),
            "source": *state.source.borrow(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!authorized(&h, "tok"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(authorized(&h, "tok"));
        assert!(!authorized(&h, "toke"));
        assert!(!authorized(&h, "to"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic tok"));
        assert!(!authorized(&h, "tok"));
    }
}
