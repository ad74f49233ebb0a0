//! HTTPS for `embassy serve`: rustls (ring provider, as the S3 client and the replication link),
//! a certificate chain and key from PEM files, and optionally client certificates signed by a
//! given CA (no certificate, no request).

use std::path::Path;
use std::sync::Arc;

use embassy_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

fn bad(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what} {}: {e}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, what, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, what, e))?;
    if certs.is_empty() {
        return Err(bad(path, what, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The TLS configuration: `cert` and `key` (PEM), and with `client_ca` a client certificate
/// signed by that CA required of every connection.
pub fn config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, "--tls-key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "--client-ca")? {
                roots
                    .add(c)
                    .map_err(|e| bad(ca, "--client-ca", format!("not a usable CA ({e})")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(ca, "--client-ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Invalid(format!("--tls-cert and --tls-key do not make a pair: {e}")))?;
    Ok(Arc::new(config))
}
