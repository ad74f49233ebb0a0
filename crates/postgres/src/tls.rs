//! TLS for the replication link (rustls with the ring provider, as the S3 client uses).
//!
//! libpq's `sslmode` semantics, with safer defaults (docs/design.md, "Transport security"):
//!
//! - `verify-full`: TLS; the server's certificate must chain to `sslrootcert` and name the host.
//! - `verify-ca`: TLS; the certificate must chain to `sslrootcert` (any host name).
//! - `require`: TLS; without a root certificate nothing is verified, so the password exchange
//!   must be SCRAM-SHA-256-PLUS (channel binding is the only thing that detects a man in the
//!   middle then); with `sslrootcert` (or `~/.postgresql/root.crt`) it behaves as `verify-ca`.
//! - `prefer` / `allow` / `disable`: may fall back to (or be) plaintext, so they are accepted only
//!   over a Unix socket or loopback, or with the explicit `insecure_plaintext=1`.
//!
//! Without `sslmode` the mode is `prefer` for a Unix socket or a loopback address and
//! `verify-full` for anything else. PostgreSQL never speaks TLS on a Unix socket (the kernel
//! protects it), like libpq.
//!
//! The TLS handshake follows PostgreSQL's `SSLRequest`; the server's end-entity certificate gives
//! the `tls-server-end-point` channel binding (RFC 5929) for SCRAM-SHA-256-PLUS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
};

use crate::error::{PgError, Result};

/// How much protection the connection's transport must have (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only (loopback, Unix socket, or with `insecure_plaintext=1`).
    Disable,
    /// Plaintext, TLS if the server insists (treated like `prefer`: TLS is tried first).
    Allow,
    /// TLS if the server offers it, plaintext otherwise (loopback, Unix socket, or opt-in).
    Prefer,
    /// TLS; the certificate is verified only when a root certificate is given.
    Require,
    /// TLS; the certificate must chain to the root certificate.
    VerifyCa,
    /// TLS; the certificate must chain to the root certificate and name the host.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgError::Conninfo(format!(
                    "sslmode={other} is not a mode: use verify-full (recommended, with \
                     sslrootcert=CA.pem), verify-ca, require, or disable/prefer on loopback"
                )))
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True for the modes that never fall back to plaintext.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// Whether SCRAM must bind to the TLS channel (libpq's `channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never use SCRAM-SHA-256-PLUS.
    Disable,
    /// Use SCRAM-SHA-256-PLUS when the server offers it over TLS.
    Prefer,
    /// Only SCRAM-SHA-256-PLUS authenticates (trust, md5, password and plain SCRAM are refused).
    Require,
}

impl ChannelBindingMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => {
                return Err(PgError::Conninfo(format!(
                    "channel_binding={other} is not a mode: use prefer or require"
                )))
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        }
    }
}

/// What the TLS layer established, for messages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub protocol: String,
    /// What was checked of the server's certificate.
    pub verified: Verification,
}

/// What was checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (sslmode=require without a root certificate): SCRAM-SHA-256-PLUS must
    /// authenticate the server.
    None,
    /// The certificate chains to the root certificate.
    Ca,
    /// The certificate chains to the root certificate and names the host.
    Full,
}

/// The root certificate file libpq reads when `sslrootcert` is not given.
pub fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".postgresql").join("root.crt");
    p.is_file().then_some(p)
}

/// A TLS client session over the TCP stream, after PostgreSQL's `SSLRequest` was accepted.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM certificates of `path` into a root store; errors name the file.
fn root_store(path: &Path) -> Result<RootCertStore> {
    let bad = |m: String| PgError::Tls {
        addr: String::new(),
        message: format!(
            "sslrootcert={}: {m}: give the PEM file of the CA that signed the server's certificate",
            path.display()
        ),
    };
    let mut store = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in iter {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        store
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
    }
    if store.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(store)
}

/// Accepts any certificate (sslmode=require without a root certificate) but still checks the
/// handshake signatures, so the channel binding hash is of the key that spoke.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must verify; a certificate for another name is accepted (webpki checks
/// the chain before the name, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Runs the TLS handshake on `tcp` (after the server answered `S` to `SSLRequest`). `host` is
/// the name the certificate must carry for verify-full; `root` the CA file, if any.
pub fn handshake(
    tcp: TcpStream,
    host: &str,
    addr: &str,
    mode: SslMode,
    root: Option<&Path>,
) -> Result<(TlsStream, TlsInfo)> {
    let provider = provider();
    let verification = match (mode, root) {
        (SslMode::VerifyFull, Some(_)) => Verification::Full,
        (_, Some(_)) => Verification::Ca,
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(PgError::Tls {
                addr: addr.into(),
                message: format!(
                    "sslmode={} needs the CA that signed the server's certificate: add \
                     sslrootcert=/path/to/ca.pem to the connection string (or put it in \
                     ~/.postgresql/root.crt)",
                    mode.as_str()
                ),
            })
        }
        (_, None) => Verification::None,
    };
    let with_addr = |e: PgError| match e {
        PgError::Tls { message, .. } => PgError::Tls {
            addr: addr.into(),
            message,
        },
        other => other,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (verification, root) {
        (Verification::None, _) | (_, None) => Arc::new(AnyCertificate(provider.clone())),
        (v, Some(root)) => {
            let store = root_store(root).map_err(with_addr)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| PgError::Tls {
                        addr: addr.into(),
                        message: format!("sslrootcert={}: {e}", root.display()),
                    })?;
            if v == Verification::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls {
            addr: addr.into(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|_| PgError::Tls {
            addr: addr.into(),
            message: format!(
                "host={host} is not a valid DNS name for certificate verification: use the name \
                 in the server's certificate"
            ),
        })?,
    };
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| PgError::Tls {
        addr: addr.into(),
        message: e.to_string(),
    })?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            return Err(handshake_error(e, host, addr, mode, root));
        }
    }
    let protocol = match stream.conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    Ok((
        stream,
        TlsInfo {
            protocol,
            verified: verification,
        },
    ))
}

/// A handshake failure in words that say what to change.
fn handshake_error(
    e: std::io::Error,
    host: &str,
    addr: &str,
    mode: SslMode,
    root: Option<&Path>,
) -> PgError {
    let root_name = root
        .map(|r| r.display().to_string())
        .unwrap_or_else(|| "(none)".into());
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    let message = match inner {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's certificate is not valid for host name \"{host}\" ({}): connect with \
             a host= the certificate names, or reissue the certificate with that name \
             (sslmode=verify-ca skips the name check)",
            inner_text(&e)
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "the server's certificate is not signed by the CA in sslrootcert={root_name} \
             (unknown issuer): give the CA that signed the server's certificate, or this is \
             not the server you think it is"
        ),
        Some(rustls::Error::InvalidCertificate(
            c @ (CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. }),
        )) => format!(
            "the server's certificate is outside its validity period ({c}): renew it (or fix \
             this machine's clock)"
        ),
        Some(other) => format!("TLS handshake failed (sslmode={}): {other}", mode.as_str()),
        // The connection broke (reset, timeout): an I/O error, retried by the streamer.
        None => return PgError::Io(e),
    };
    PgError::Tls {
        addr: addr.into(),
        message,
    }
}

fn inner_text(e: &std::io::Error) -> String {
    e.get_ref()
        .map(|i| i.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The hash PostgreSQL uses for `tls-server-end-point`: the certificate's signature hash, with
/// MD5 and SHA-1 replaced by SHA-256 (RFC 5929 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    /// SHA-256 (also for MD5, SHA-1 and SHA-224 signatures).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// The `tls-server-end-point` channel binding data of a DER certificate, or None when its
/// signature algorithm names no hash (Ed25519, Ed448: PostgreSQL cannot bind those either).
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let alg = match end_point_hash(cert_der)? {
        EndPointHash::Sha256 => &ring::digest::SHA256,
        EndPointHash::Sha384 => &ring::digest::SHA384,
        EndPointHash::Sha512 => &ring::digest::SHA512,
    };
    Some(ring::digest::digest(alg, cert_der).as_ref().to_vec())
}

/// One DER TLV: (tag, content, rest). None if malformed.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The certificate's signature hash, from `Certificate.signatureAlgorithm`.
pub fn end_point_hash(cert_der: &[u8]) -> Option<EndPointHash> {
    const SEQ: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, cert, _) = der_tlv(cert_der)?;
    if tag != SEQ {
        return None;
    }
    let (tag, _tbs, rest) = der_tlv(cert)?;
    if tag != SEQ {
        return None;
    }
    let (tag, alg_id, _) = der_tlv(rest)?;
    if tag != SEQ {
        return None;
    }
    let (tag, oid, params) = der_tlv(alg_id)?;
    if tag != OID {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
    let sha2 = |n: u8| match n {
        1 | 4 => Some(EndPointHash::Sha256), // SHA-256, SHA-224
        2 => Some(EndPointHash::Sha384),
        3 => Some(EndPointHash::Sha512),
        _ => None,
    };
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    if let Some(&[n]) = oid.strip_prefix(ECDSA_SHA2) {
        return match n {
            1 | 2 => Some(EndPointHash::Sha256),
            3 => Some(EndPointHash::Sha384),
            4 => Some(EndPointHash::Sha512),
            _ => None,
        };
    }
    match oid.strip_prefix(RSA) {
        // md5, sha1, sha256, sha224 with RSA
        Some(&[4 | 5 | 11 | 14]) => Some(EndPointHash::Sha256),
        Some(&[12]) => Some(EndPointHash::Sha384),
        Some(&[13]) => Some(EndPointHash::Sha512),
        // RSASSA-PSS: the hash is in the parameters ([0] hashAlgorithm, default SHA-1).
        Some(&[10]) => {
            let (tag, pss, _) = der_tlv(params)?;
            if tag != SEQ {
                return None;
            }
            match der_tlv(pss) {
                Some((0xa0, hash_alg, _)) => {
                    let (_, hash_id, _) = der_tlv(hash_alg)?;
                    let (_, hash_oid, _) = der_tlv(hash_id)?;
                    match hash_oid.strip_prefix(SHA2) {
                        Some(&[n]) => sha2(n),
                        _ => Some(EndPointHash::Sha256), // SHA-1
                    }
                }
                _ => Some(EndPointHash::Sha256),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_hash_is_read_from_the_certificate() {
        // Certificate { tbs, AlgorithmIdentifier { oid }, signature } with a tiny tbs.
        let cert = |oid: &[u8], params: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            alg.extend_from_slice(params);
            let mut alg_seq = vec![0x30, alg.len() as u8];
            alg_seq.extend(alg);
            let mut body = vec![0x30, 0x00];
            body.extend(alg_seq);
            body.extend([0x03, 0x01, 0x00]);
            let mut c = vec![0x30, body.len() as u8];
            c.extend(body);
            c
        };
        let rsa = |n: u8| cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n], &[]);
        assert_eq!(end_point_hash(&rsa(11)), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&rsa(5)), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&rsa(12)), Some(EndPointHash::Sha384));
        assert_eq!(end_point_hash(&rsa(13)), Some(EndPointHash::Sha512));
        let ec384 = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], &[]);
        assert_eq!(end_point_hash(&ec384), Some(EndPointHash::Sha384));
        let ed25519 = cert(&[0x2b, 0x65, 0x70], &[]);
        assert_eq!(end_point_hash(&ed25519), None);
        assert_eq!(end_point_hash(&[0x30, 0x05, 0x01]), None);
        assert_eq!(server_end_point(&rsa(11)).map(|h| h.len()), Some(32));
        assert_eq!(server_end_point(&rsa(13)).map(|h| h.len()), Some(64));
    }
}
