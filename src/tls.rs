//! TLS client settings from PEM files, for the source's message queue.

use std::{path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The files do not make a valid configuration.
    #[error("{0}")]
    Invalid(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A client configuration that trusts `ca` (PEM; the system's roots when
/// None) and presents `cert` + `key` (PEM) when both are given.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_err(path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(path, e))?;
            if certs.is_empty() {
                return Err(file_err(path, "no certificate in the file"));
            }
            for c in certs {
                roots.add(c).map_err(|e| file_err(path, e))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is not ours to fix.
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots);
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Invalid(format!("client certificate: {e}")))
        }
        _ => Err(TlsError::Invalid(
            "a client certificate and its key go together (tls_cert and tls_key)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn cert_without_key_is_refused() {
        let err = client_config(None, Some(Path::new("/x.pem")), None).expect_err("no key");
        assert!(err.to_string().contains("tls_key"), "{err}");
    }

    #[test]
    fn system_roots_without_files() {
        assert!(client_config(None, None, None).is_ok());
    }
}
