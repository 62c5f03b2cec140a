//! Why a connection to the broker failed, when pulsar-rs does not say.
//!
//! pulsar-rs turns every failure it deems not retriable while establishing a
//! connection (a CONNECT refused with `AuthenticationError`, a TLS
//! certificate that does not verify) into the bare I/O error "fatal error
//! when connecting to the Pulsar server", and logs the reason only through
//! the `log` crate. After such a failure, [`diagnose`] repeats the
//! handshake itself — TCP, TLS with the same roots as the client (the
//! Mozilla roots plus `tls_ca`), CONNECT with the same credentials — and
//! reports what the broker answered. It runs only after a failed connect,
//! once per failure, within the source's timeout; it sends nothing but a
//! CONNECT and closes.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt as _, StreamExt as _};
use pulsar::message::{
    proto::{self, BaseCommand, CommandConnect, ServerError},
    Codec, Message,
};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_util::codec::Framed;

use crate::config::PulsarConfig;

/// What the repeated handshake found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Diagnosis {
    /// The reason, for the error message (no credentials in it).
    pub message: String,
    /// Whether retrying cannot help (refused credentials, a certificate
    /// that does not verify).
    pub permanent: bool,
}

impl Diagnosis {
    fn permanent(message: String) -> Option<Self> {
        Some(Self {
            message,
            permanent: true,
        })
    }
}

/// The handshake of `cfg`'s client with the broker at `url`
/// (`pulsar://host:port` or `pulsar+ssl://host:port`), within `timeout`;
/// `None` when it succeeds or fails in a way pulsar-rs already reports
/// (unreachable, no answer).
pub(super) async fn diagnose(
    cfg: &PulsarConfig,
    url: &str,
    timeout: Duration,
) -> Option<Diagnosis> {
    tokio::time::timeout(timeout, handshake(cfg, url))
        .await
        .ok()
        .flatten()
}

async fn handshake(cfg: &PulsarConfig, url: &str) -> Option<Diagnosis> {
    let (tls, host_port) = match url.split_once("://") {
        Some(("pulsar+ssl", h)) => (true, h),
        Some((_, h)) => (false, h),
        None => (false, url),
    };
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect(host_port).await.ok()?;
    if !tls {
        return connect(tcp, cfg).await;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &cfg.tls_ca {
        let certs = match CertificateDer::pem_file_iter(ca) {
            Ok(certs) => certs,
            Err(e) => {
                return Diagnosis::permanent(format!("tls_ca {}: {e}", ca.display()));
            }
        };
        for cert in certs {
            match cert {
                Ok(c) => {
                    if let Err(e) = roots.add(c) {
                        return Diagnosis::permanent(format!("tls_ca {}: {e}", ca.display()));
                    }
                }
                Err(e) => return Diagnosis::permanent(format!("tls_ca {}: {e}", ca.display())),
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = match ServerName::try_from(host.clone()) {
        Ok(n) => n,
        Err(e) => return Diagnosis::permanent(format!("TLS server name {host}: {e}")),
    };
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(stream) => connect(stream, cfg).await,
        Err(e) => Diagnosis::permanent(format!("TLS handshake with {host_port}: {e}")),
    }
}

/// Sends CONNECT (with the token, if configured) and reads the answer.
async fn connect<S>(stream: S, cfg: &PulsarConfig) -> Option<Diagnosis>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, Codec);
    let (auth_method_name, auth_data) = match (cfg.token_auth(), &cfg.auth_token) {
        (true, Some(token)) => (Some("token".to_string()), Some(token.clone().into_bytes())),
        _ => (None, None),
    };
    let hello = Message {
        command: BaseCommand {
            r#type: proto::base_command::Type::Connect as i32,
            connect: Some(CommandConnect {
                client_version: proto::client_version(),
                auth_method_name,
                auth_data,
                protocol_version: Some(12),
                ..Default::default()
            }),
            ..Default::default()
        },
        payload: None,
    };
    framed.send(hello).await.ok()?;
    let answer = framed.next().await;
    // Closed here, whatever the answer.
    let _ = framed.close().await;
    match answer {
        Some(Ok(Message { command, .. })) => match command.error {
            Some(err) => {
                let code = ServerError::try_from(err.error).ok();
                let permanent = matches!(
                    code,
                    Some(ServerError::AuthenticationError | ServerError::AuthorizationError)
                );
                Some(Diagnosis {
                    message: format!(
                        "the broker refused the connection: {}: {}",
                        code.map_or_else(|| format!("error {}", err.error), |c| format!("{c:?}")),
                        err.message
                    ),
                    permanent,
                })
            }
            None => None,
        },
        Some(Err(e)) => Some(Diagnosis {
            message: format!("the broker's answer to CONNECT: {e}"),
            permanent: false,
        }),
        None => Some(Diagnosis {
            message: "the broker closed the connection after CONNECT (credentials refused?)".into(),
            permanent: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::message::proto::CommandError;
    use tokio::net::TcpListener;

    /// A broker that answers the first frame with `answer`, or closes.
    async fn broker(answer: Option<BaseCommand>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(tcp, Codec);
            let hello = framed.next().await.unwrap().unwrap();
            assert!(hello.command.connect.is_some(), "{hello:?}");
            if let Some(command) = answer {
                framed
                    .send(Message {
                        command,
                        payload: None,
                    })
                    .await
                    .unwrap();
            }
        });
        format!("pulsar://{addr}")
    }

    #[tokio::test]
    async fn a_refused_token_is_named_and_permanent() {
        let url = broker(Some(BaseCommand {
            r#type: proto::base_command::Type::Error as i32,
            error: Some(CommandError {
                request_id: u64::MAX,
                error: ServerError::AuthenticationError as i32,
                message: "Unable to authenticate".into(),
            }),
            ..Default::default()
        }))
        .await;
        let cfg = PulsarConfig {
            auth_token: Some("secret-token".into()),
            ..PulsarConfig::default()
        };
        let d = diagnose(&cfg, &url, Duration::from_secs(5))
            .await
            .expect("a diagnosis");
        assert!(d.permanent, "{d:?}");
        assert!(
            d.message
                .contains("AuthenticationError: Unable to authenticate"),
            "{}",
            d.message
        );
        assert!(!d.message.contains("secret-token"), "{}", d.message);
    }

    #[tokio::test]
    async fn a_close_after_connect_is_named_and_retriable() {
        let url = broker(None).await;
        let d = diagnose(&PulsarConfig::default(), &url, Duration::from_secs(5))
            .await
            .expect("a diagnosis");
        assert!(!d.permanent, "{d:?}");
        assert!(d.message.contains("closed the connection"), "{}", d.message);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_left_to_pulsar_rs() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("pulsar://127.0.0.1:{port}");
        assert_eq!(
            diagnose(&PulsarConfig::default(), &url, Duration::from_secs(5)).await,
            None
        );
    }
}
