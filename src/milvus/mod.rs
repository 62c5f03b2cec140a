//! A client of one Milvus (`MilvusService` over tonic): address, TLS,
//! authentication and timeouts from a `milvus_connect_param`, and the
//! mapping of gRPC and Milvus statuses to [`MilvusError`].
//!
//! The one client for every Milvus the agent talks to: the source's
//! metadata (catalog, reconciler), the target's writes (through
//! [`crate::sink`]), `milvus-cdc check` and `milvus-cdc verify`. Its errors
//! name the address, not a role; callers that know the role add it.
//!
//! ```no_run
//! # async fn f() -> Result<(), milvus_cdc::milvus::MilvusError> {
//! use milvus_cdc::task::MilvusConnectParam;
//! let param = MilvusConnectParam { uri: Some("http://127.0.0.1:19540".into()), ..Default::default() };
//! let milvus = milvus_cdc::milvus::MilvusClient::connect(&param.validate().unwrap()).await?;
//! milvus.probe().await?; // reachable and credentials accepted
//! # Ok(()) }
//! ```

mod call;

use std::time::Duration;

pub use self::call::{MilvusCall, WithStatus};
use base64::Engine as _;
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Request, Status,
};

use crate::{
    proto::{common, milvus as pb, milvus::milvus_service_client::MilvusServiceClient, schema},
    task::params::{Credentials, TargetAddress},
};

/// Per-request deadline for calls to a Milvus.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a Milvus cannot be used. The messages name the address, not the
/// role (source or target): the caller adds that.
#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    /// No connection within the connect timeout, or the transport failed.
    #[error("Milvus {url} is unreachable: {message}")]
    Unreachable {
        /// The address tried.
        url: String,
        /// What failed.
        message: String,
        /// The gRPC status, when a call failed (not when connecting).
        #[source]
        status: Option<Box<Status>>,
    },
    /// The Milvus refused the credentials.
    #[error("Milvus {url} rejected the credentials: {message}")]
    Unauthenticated {
        /// The address tried.
        url: String,
        /// The server's reason.
        message: String,
        /// The gRPC status, when the refusal was one (not a Milvus status
        /// in a response body).
        #[source]
        status: Option<Box<Status>>,
    },
    /// This replica may no longer write (its lease guard expired); nothing
    /// was sent.
    #[error("not the leader any more: write not sent")]
    Fenced,
    /// The Milvus answered with an error status.
    #[error("Milvus {url} answered {what} with error {code}: {reason}")]
    Rejected {
        /// The address tried.
        url: String,
        /// The call.
        what: &'static str,
        /// Milvus error code (the gRPC code when `status` is set).
        code: i32,
        /// Milvus reason text.
        reason: String,
        /// Retrying cannot help (an invalid argument, a schema mismatch):
        /// the request itself is wrong for this Milvus.
        permanent: bool,
        /// The gRPC status, when the call failed as one (not a Milvus
        /// status in a response body).
        #[source]
        status: Option<Box<Status>>,
    },
}

impl MilvusError {
    /// The gRPC status the error came from, if a call failed as one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            MilvusError::Unreachable { status, .. }
            | MilvusError::Unauthenticated { status, .. }
            | MilvusError::Rejected { status, .. } => status.as_deref(),
            MilvusError::Fenced => None,
        }
    }

    /// Whether the Milvus itself said no to the request (an error status
    /// in its answer, or a permanent gRPC refusal), as opposed to not
    /// answering, being overloaded or rate-limiting: what a change that may
    /// not fit the target at all is skipped on.
    pub fn is_refusal(&self) -> bool {
        match self {
            MilvusError::Rejected {
                permanent: true, ..
            } => true,
            MilvusError::Rejected {
                status: None,
                reason,
                ..
            } => {
                let r = reason.to_ascii_lowercase();
                !(r.contains("rate limit") || r.contains("not ready") || r.contains("unhealthy"))
            }
            _ => false,
        }
    }

    /// Whether retrying the same request cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MilvusError::Rejected {
                permanent: true,
                ..
            }
        )
    }
}

/// Milvus 2.3's code for an invalid parameter (legacy `IllegalArgument`):
/// e.g. rows that do not fit the collection's schema.
const MILVUS_PARAMETER_INVALID: i32 = 1100;

tokio::task_local! {
    /// The deadline of the target calls made inside [`with_deadline`].
    static CALL_DEADLINE: tokio::time::Instant;
}

/// Runs `f` with every target call it makes bounded by `deadline`: each
/// call carries it as its gRPC deadline (`grpc-timeout`, which Milvus
/// honours and which also bounds the client's wait).
pub async fn with_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    f: F,
) -> F::Output {
    CALL_DEADLINE.scope(deadline, f).await
}

/// Adds Milvus's `authorization` header (base64 of the token) to every
/// call, and the deadline of [`with_deadline`] when there is one.
#[derive(Clone)]
pub struct AuthInterceptor {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AuthInterceptor {
    /// An interceptor for `credentials`.
    pub fn new(credentials: &Credentials) -> Self {
        let header = match credentials {
            Credentials::None => None,
            Credentials::Token(t) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(t);
                // Base64 output is always a valid header value.
                MetadataValue::try_from(encoded).ok()
            }
        };
        Self { header }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Ok(deadline) = CALL_DEADLINE.try_with(|d| *d) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the write deadline (the leader lease) has passed",
                ));
            }
            req.set_timeout(left);
        }
        Ok(req)
    }
}

/// The generated Milvus client with authentication.
pub type ServiceClient = MilvusServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// A connection to one Milvus (source or target).
#[derive(Clone)]
pub struct MilvusClient {
    client: ServiceClient,
    url: String,
}

impl MilvusClient {
    /// Connects to `addr` within its connect timeout.
    pub async fn connect(addr: &TargetAddress) -> Result<Self, MilvusError> {
        let unreachable = |message: String| MilvusError::Unreachable {
            url: addr.url.clone(),
            message,
            status: None,
        };
        let mut endpoint = Endpoint::from_shared(addr.url.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(addr.connect_timeout)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if addr.tls {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let channel = match tokio::time::timeout(addr.connect_timeout, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {}s",
                    addr.connect_timeout.as_secs()
                )))
            }
        };
        let client =
            MilvusServiceClient::with_interceptor(channel, AuthInterceptor::new(&addr.credentials))
                .max_decoding_message_size(256 * 1024 * 1024)
                .max_encoding_message_size(256 * 1024 * 1024);
        Ok(Self {
            client,
            url: addr.url.clone(),
        })
    }

    /// The generated client, for calls this type does not wrap.
    pub fn client(&self) -> ServiceClient {
        self.client.clone()
    }

    /// The address connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `req` and returns the answer's body whatever its Milvus status
    /// says, for a caller that reads the status itself (a refusal that
    /// means "done already"); a gRPC failure is an error naming the call.
    pub async fn send<R: MilvusCall>(&self, req: R) -> Result<R::Response, MilvusError> {
        req.send(self.client())
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.status_error(R::NAME, s))
    }

    /// Sends `req` and returns the answer's body; a gRPC failure or a
    /// Milvus error status is an error naming the call.
    pub async fn call<R: MilvusCall>(&self, req: R) -> Result<R::Response, MilvusError> {
        let resp = self.send(req).await?;
        self.check(R::NAME, resp.milvus_status())?;
        Ok(resp)
    }

    /// Checks that the target answers and accepts the credentials by listing
    /// its collections. Returns their names.
    pub async fn probe(&self) -> Result<Vec<String>, MilvusError> {
        let resp = self.call(pb::ShowCollectionsRequest::default()).await?;
        Ok(resp.collection_names)
    }

    /// The target's version string (`GetVersion`).
    pub async fn version(&self) -> Result<String, MilvusError> {
        Ok(self.call(pb::GetVersionRequest::default()).await?.version)
    }

    /// Names of the databases.
    pub async fn list_databases(&self) -> Result<Vec<String>, MilvusError> {
        Ok(self
            .call(pb::ListDatabasesRequest::default())
            .await?
            .db_names)
    }

    /// `(collection id, name)` of every collection in `db`; empty if the
    /// database is gone.
    pub async fn show_collections(&self, db: &str) -> Result<Vec<(i64, String)>, MilvusError> {
        let resp = match self
            .call(pb::ShowCollectionsRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
        {
            Ok(resp) => resp,
            // 800: database not found (dropped meanwhile).
            Err(MilvusError::Rejected {
                code: 800,
                status: None,
                ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(resp
            .collection_ids
            .into_iter()
            .zip(resp.collection_names)
            .collect())
    }

    /// `DescribeCollection` of `db.name`, or None if it does not exist.
    pub async fn describe_collection(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Option<pb::DescribeCollectionResponse>, MilvusError> {
        match self
            .call(pb::DescribeCollectionRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
        {
            Ok(resp) => Ok(Some(resp)),
            // 100: collection not found (also when dropped meanwhile).
            Err(MilvusError::Rejected {
                code: 100,
                status: None,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Partition names of `db.name`, or None if the collection is gone.
    pub async fn show_partitions(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Option<Vec<String>>, MilvusError> {
        let resp = self
            .send(pb::ShowPartitionsRequest {
                db_name: db.to_string(),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await?;
        if self.collection_gone(pb::ShowPartitionsRequest::NAME, resp.status.as_ref())? {
            return Ok(None);
        }
        Ok(Some(resp.partition_names))
    }

    /// [`check`](Self::check), but a missing collection or database
    /// (codes 100, 800) is `Ok(true)` instead of an error.
    pub fn collection_gone(
        &self,
        what: &'static str,
        status: Option<&common::Status>,
    ) -> Result<bool, MilvusError> {
        match self.check(what, status) {
            Ok(()) => Ok(false),
            Err(MilvusError::Rejected {
                code: 100 | 800, ..
            }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Maps the gRPC status a call `what` failed with to a [`MilvusError`],
    /// which keeps it as its source.
    pub fn status_error(&self, what: &'static str, s: Status) -> MilvusError {
        let url = self.url.clone();
        match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => MilvusError::Unauthenticated {
                url,
                message: s.message().to_string(),
                status: Some(Box::new(s)),
            },
            // The connection is gone or never came: the Milvus may have
            // restarted (and lost unflushed rows). (A call that ran out of
            // time is `Cancelled` or `DeadlineExceeded`: slow, not away.)
            Code::Unavailable | Code::Unknown => MilvusError::Unreachable {
                url,
                message: format!("{:?}: {}", s.code(), s.message()),
                status: Some(Box::new(s)),
            },
            code => MilvusError::Rejected {
                url,
                what,
                code: code as i32,
                reason: format!("gRPC {:?}: {}", code, s.message()),
                permanent: matches!(
                    code,
                    Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::OutOfRange
                        | Code::Unimplemented
                        | Code::DataLoss
                ),
                // Slow, overloaded or rate-limited (not permanent): retried,
                // no rewind.
                status: Some(Box::new(s)),
            },
        }
    }

    /// Maps a Milvus status in a response body to a [`MilvusError`].
    pub fn check(
        &self,
        what: &'static str,
        status: Option<&common::Status>,
    ) -> Result<(), MilvusError> {
        let Some(st) = status else {
            return Ok(());
        };
        #[allow(deprecated)]
        let legacy = st.error_code;
        if legacy == 0 && st.code == 0 {
            return Ok(());
        }
        // 1800 is Milvus 2.3's "privilege not permitted / auth failed" code.
        let auth_failure = legacy == common::ErrorCode::PermissionDenied as i32 || st.code == 1800;
        if auth_failure {
            return Err(MilvusError::Unauthenticated {
                url: self.url.clone(),
                message: st.reason.clone(),
                status: None,
            });
        }
        Err(MilvusError::Rejected {
            url: self.url.clone(),
            what,
            code: if st.code != 0 { st.code } else { legacy },
            reason: st.reason.clone(),
            permanent: st.code == MILVUS_PARAMETER_INVALID
                || legacy == common::ErrorCode::IllegalArgument as i32,
            status: None,
        })
    }
}

/// Milvus's own `RowID` and `Timestamp` fields (ids below 100).
pub fn is_system_field(f: &schema::FieldSchema) -> bool {
    f.field_id < 100 && (f.name == "RowID" || f.name == "Timestamp")
}

/// The error and its causes, joined, so a transport error says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn grpc_errors_keep_the_status_and_name_no_role() {
        let url = "http://127.0.0.1:1";
        let channel = Endpoint::from_static(url).connect_lazy();
        let milvus = MilvusClient {
            client: MilvusServiceClient::with_interceptor(
                channel,
                AuthInterceptor::new(&Credentials::None),
            ),
            url: url.into(),
        };
        let e = milvus.status_error("Upsert", Status::unavailable("gone"));
        assert_eq!(
            e.to_string(),
            "Milvus http://127.0.0.1:1 is unreachable: Unavailable: gone"
        );
        assert_eq!(e.status().map(Status::code), Some(Code::Unavailable));
        assert!(std::error::Error::source(&e).is_some());
        let e = milvus.status_error("Upsert", Status::invalid_argument("bad"));
        assert!(e.is_permanent());
        assert_eq!(e.status().map(Status::message), Some("bad"));
        let e = milvus.status_error("Upsert", Status::resource_exhausted("slow down"));
        assert!(!e.is_permanent());
        // A refused call names itself.
        assert!(e.to_string().contains("answered Upsert with error"), "{e}");
        assert!(matches!(
            milvus.status_error("Upsert", Status::permission_denied("no")),
            MilvusError::Unauthenticated { .. }
        ));
    }

    #[tokio::test]
    async fn a_refusal_is_an_answer_not_a_failure_to_answer() {
        let url = "http://127.0.0.1:1";
        let milvus = MilvusClient {
            client: MilvusServiceClient::with_interceptor(
                Endpoint::from_static(url).connect_lazy(),
                AuthInterceptor::new(&Credentials::None),
            ),
            url: url.into(),
        };
        let answered = |code: i32, reason: &str| {
            milvus
                .check(
                    "CreateIndex",
                    Some(&common::Status {
                        code,
                        reason: reason.into(),
                        ..Default::default()
                    }),
                )
                .unwrap_err()
        };
        // What Milvus 2.3.5 answers to a FLAT index on a binary vector: not
        // an invalid argument, but a refusal all the same.
        let e = answered(65535, "float or float16 vector are only supported");
        assert!(!e.is_permanent());
        assert!(e.is_refusal());
        assert!(answered(1100, "invalid parameter").is_refusal());
        assert!(!answered(8, "rate limit exceeded").is_refusal());
        assert!(!milvus
            .status_error("CreateIndex", Status::unavailable("gone"))
            .is_refusal());
        assert!(!milvus
            .status_error("CreateIndex", Status::resource_exhausted("slow down"))
            .is_refusal());
        assert!(milvus
            .status_error("CreateIndex", Status::invalid_argument("bad"))
            .is_refusal());
    }

    #[tokio::test]
    async fn calls_inside_a_deadline_carry_it() {
        let mut auth = AuthInterceptor::new(&Credentials::None);
        let plain = auth.call(Request::new(())).unwrap();
        assert!(plain.metadata().get("grpc-timeout").is_none());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let req = with_deadline(deadline, async { auth.call(Request::new(())) })
            .await
            .unwrap();
        let timeout = req.metadata().get("grpc-timeout").expect("deadline set");
        let text = timeout.to_str().unwrap();
        let (value, unit) = text.split_at(text.len() - 1);
        let value: u64 = value.parse().unwrap();
        let ms = match unit {
            "S" => value * 1000,
            "m" => value,
            "u" => value / 1000,
            "n" => value / 1_000_000,
            other => panic!("unit {other}"),
        };
        assert!(ms > 2000 && ms <= 3000, "{timeout:?}");
        let passed = tokio::time::Instant::now();
        let err = with_deadline(passed, async { auth.call(Request::new(())) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }
}
