//! TLS on the replication link against a real PostgreSQL 15 with `ssl = on` and a test CA
//! (embassy-testkit's pg::tls): verify-full streams WAL into the vault with SCRAM-SHA-256-PLUS, a wrong
//! host name or CA is refused with a clear message, plaintext to a non-loopback address and a
//! cleartext password off loopback are refused unless the operator opts in, and base backups
//! (our own BASE_BACKUP on the same connection code) get the same verdicts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_postgres::base_backup::{base_backup, BaseBackupOptions};
use embassy_postgres::replication::{ConnConfig, ReplicationConnection};
use embassy_postgres::stream::{StreamConfig, StreamProgress, WalStreamer};
use embassy_postgres::tls::Verification;
use embassy_postgres::{wal, PgError};
use embassy_sites::local::LocalSite;
use embassy_testkit::pg::tls::{conninfo, TestPki, CLEARTEXT_USER};
use embassy_testkit::pg::{PgServer, REPL_PASSWORD};
use embassy_testkit::wait_until;

fn connect(info: &str) -> Result<ReplicationConnection, PgError> {
    ReplicationConnection::connect(&ConnConfig::parse(info).unwrap())
}

fn verify_full(pki: &TestPki, pg: &PgServer) -> String {
    conninfo(
        pg,
        "localhost",
        "embassy",
        &format!("sslmode=verify-full sslrootcert={}", pki.ca().display()),
    )
}

#[test]
fn verify_full_streams_wal_into_the_vault_over_scram_plus_and_takes_a_base_backup() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let info = verify_full(&pki, &pg);

    // The connection is TLS, the certificate verified with the host name, and SCRAM bound to
    // the channel (the server checks the SHA-384 end-point hash of its ECDSA-SHA384 certificate).
    let conn = connect(&info).unwrap();
    let sec = conn.security();
    let tls = sec.tls.clone().expect("a TLS connection");
    assert_eq!(tls.verified, Verification::Full);
    assert_eq!(sec.authentication, "SCRAM-SHA-256-PLUS");
    conn.close();

    // Stream: WAL arrives in the vault over the verified TLS connection (pg_hba.conf rejects the
    // role without TLS on loopback).
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let root = *root.expose();
    let mut cfg = StreamConfig::new("registry", ConnConfig::parse(&info).unwrap(), "embassy_tls");
    cfg.create_slot = true;
    cfg.reconnect = false;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Mutex::new(StreamProgress::default()));
    let handle = {
        let (vault, stop, progress, cfg) =
            (vault.clone(), stop.clone(), progress.clone(), cfg.clone());
        std::thread::spawn(move || {
            let keyring =
                Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
            WalStreamer::run_with_progress(&cfg, &vault, &keyring, &stop, progress)
        })
    };
    wait_until("the streamer to start", Duration::from_secs(30), || {
        progress.lock().unwrap().durable.0 > 0 || handle.is_finished()
    });
    assert!(!handle.is_finished(), "{:?}", handle.join().unwrap().err());
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(60), || {
        progress.lock().unwrap().durable.0 >= end
    });
    let ssl_senders = pg.psql(
        "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
         WHERE s.ssl AND r.application_name = 'embassy'",
    );
    assert_eq!(ssl_senders, "1", "the WAL sender's connection is TLS");
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    let listing = wal::list(vault.site().as_ref(), "registry").unwrap();
    assert!(
        !listing.pieces.is_empty() || !listing.segments.is_empty(),
        "no WAL in the vault"
    );

    // Base backup over verify-full, on the same connection code (no child process, so no
    // command line that could show the password).
    let keyring = Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
    let backup = base_backup(
        &vault,
        &keyring,
        "registry",
        &BaseBackupOptions::new(info.clone()),
        &Silent,
    )
    .unwrap();
    assert!(backup.info.stop_lsn > backup.info.start_lsn);
}

#[test]
fn a_wrong_host_name_or_ca_is_refused_with_a_clear_message() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let ca = format!("sslrootcert={}", pki.ca().display());

    // The certificate names localhost and the machine's address, not 127.0.0.1.
    let wrong_host = conninfo(
        &pg,
        "127.0.0.1",
        "embassy",
        &format!("sslmode=verify-full {ca}"),
    );
    let e = connect(&wrong_host)
        .err()
        .expect("a wrong host name is refused");
    let msg = e.to_string();
    assert!(matches!(e, PgError::Tls { .. }), "{msg}");
    assert!(
        msg.contains("not valid for host name \"127.0.0.1\""),
        "{msg}"
    );

    // verify-ca checks the chain only: the same host is accepted.
    let ca_only = conninfo(
        &pg,
        "127.0.0.1",
        "embassy",
        &format!("sslmode=verify-ca {ca}"),
    );
    let conn = connect(&ca_only).unwrap();
    assert_eq!(conn.security().tls.unwrap().verified, Verification::Ca);

    // Another CA: refused, naming the CA file.
    let other = conninfo(
        &pg,
        "localhost",
        "embassy",
        &format!(
            "sslmode=verify-full sslrootcert={}",
            pki.other_ca().display()
        ),
    );
    let e = connect(&other)
        .err()
        .expect("a certificate from another CA is refused");
    let msg = e.to_string();
    assert!(matches!(e, PgError::Tls { .. }), "{msg}");
    assert!(msg.contains("not signed by the CA"), "{msg}");
    assert!(msg.contains("other-ca.crt"), "{msg}");

    // verify-full without any CA says what to add.
    let no_ca = conninfo(&pg, "localhost", "embassy", "sslmode=verify-full");
    let msg = connect(&no_ca).err().expect("no CA").to_string();
    assert!(msg.contains("sslrootcert="), "{msg}");

    // A CA file that is not there is named.
    let missing = conninfo(
        &pg,
        "localhost",
        "embassy",
        "sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
    );
    let msg = connect(&missing).err().expect("no CA file").to_string();
    assert!(msg.contains("sslrootcert=/nonexistent/ca.pem"), "{msg}");

    // And a base backup gets the same verdict.
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring = Keyring::from_root(root, vault.config()).unwrap();
    let e = base_backup(
        &vault,
        &keyring,
        "registry",
        &BaseBackupOptions::new(wrong_host),
        &Silent,
    )
    .expect_err("a base backup refuses the wrong host name");
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
}

#[test]
fn plaintext_off_loopback_needs_the_explicit_opt_in() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let ip = pki.ip.clone();
    for mode in ["sslmode=disable", "sslmode=prefer", "sslmode=allow"] {
        let e = connect(&conninfo(&pg, &ip, "embassy", mode))
            .err()
            .unwrap_or_else(|| panic!("{mode} to {ip} is refused"));
        let msg = e.to_string();
        assert!(matches!(e, PgError::Insecure { .. }), "{mode}: {msg}");
        assert!(msg.contains("insecure_plaintext=1"), "{msg}");
        assert!(msg.contains("verify-full"), "{msg}");
    }
    // No sslmode off loopback means verify-full: it needs the CA, and with it TLS works.
    let msg = connect(&conninfo(&pg, &ip, "embassy", ""))
        .err()
        .expect("verify-full by default")
        .to_string();
    assert!(msg.contains("sslrootcert="), "{msg}");
    let ca = format!("sslrootcert={}", pki.ca().display());
    let conn = connect(&conninfo(&pg, &ip, "embassy", &ca)).unwrap();
    let sec = conn.security();
    assert_eq!(sec.tls.unwrap().verified, Verification::Full);
    assert_eq!(sec.authentication, "SCRAM-SHA-256-PLUS");

    // With the operator's explicit opt-in, plaintext is used.
    let conn = connect(&conninfo(
        &pg,
        &ip,
        "embassy",
        "sslmode=disable insecure_plaintext=1",
    ))
    .unwrap();
    let sec = conn.security();
    assert!(sec.tls.is_none());
    assert_eq!(sec.authentication, "SCRAM-SHA-256");

    // On loopback, the default still tries TLS first (prefer).
    let conn = connect(&conninfo(&pg, "127.0.0.1", CLEARTEXT_USER, "")).unwrap();
    assert_eq!(
        conn.security().tls.map(|t| t.verified),
        Some(Verification::None)
    );
}

#[test]
fn cleartext_passwords_go_only_over_verified_tls_or_loopback() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let ip = pki.ip.clone();
    let ca = format!("sslrootcert={}", pki.ca().display());

    // Unencrypted to the machine's address, even with the plaintext opt-in: refused before the
    // password leaves.
    let e = connect(&conninfo(
        &pg,
        &ip,
        CLEARTEXT_USER,
        "sslmode=disable insecure_plaintext=1",
    ))
    .err()
    .expect("a cleartext password over an unencrypted network connection is refused");
    let msg = e.to_string();
    assert!(matches!(e, PgError::Insecure { .. }), "{msg}");
    assert!(msg.contains("password in clear"), "{msg}");
    assert!(msg.contains("scram-sha-256"), "{msg}");

    // TLS without verification to another machine: channel binding is required, so a password
    // request is refused.
    let e = connect(&conninfo(&pg, &ip, CLEARTEXT_USER, "sslmode=require"))
        .err()
        .expect("a cleartext password over unverified TLS is refused");
    let msg = e.to_string();
    assert!(msg.contains("channel_binding=require"), "{msg}");

    // Verified TLS: the password may go.
    let conn = connect(&conninfo(
        &pg,
        &ip,
        CLEARTEXT_USER,
        &format!("sslmode=verify-full {ca}"),
    ))
    .unwrap();
    assert_eq!(conn.security().authentication, "password");

    // Loopback without TLS: the kernel carries it.
    let conn = connect(&conninfo(
        &pg,
        "127.0.0.1",
        CLEARTEXT_USER,
        "sslmode=disable",
    ))
    .unwrap();
    assert_eq!(conn.security().authentication, "password");
}

#[test]
fn unverified_tls_authenticates_only_with_scram_plus() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let ip = pki.ip.clone();
    // sslmode=require without a CA: SCRAM-SHA-256-PLUS, nothing verified.
    let conn = connect(&conninfo(&pg, &ip, "embassy", "sslmode=require")).unwrap();
    let sec = conn.security();
    assert_eq!(sec.tls.unwrap().verified, Verification::None);
    assert_eq!(sec.authentication, "SCRAM-SHA-256-PLUS");
    // Explicitly without channel binding over verified TLS: plain SCRAM.
    let conn = connect(&conninfo(
        &pg,
        "localhost",
        "embassy",
        &format!(
            "sslmode=verify-full sslrootcert={} channel_binding=disable",
            pki.ca().display()
        ),
    ))
    .unwrap();
    assert_eq!(conn.security().authentication, "SCRAM-SHA-256");
    // channel_binding=require refuses a connection with no channel to bind to (plaintext
    // loopback, where the server asks for a cleartext password).
    let e = connect(&conninfo(
        &pg,
        "127.0.0.1",
        CLEARTEXT_USER,
        "sslmode=disable channel_binding=require",
    ))
    .err()
    .expect("channel_binding=require without TLS is refused");
    assert!(e.to_string().contains("channel_binding=require"), "{e}");
}

/// A hostile server (a man in the middle who holds a certificate the client does not verify)
/// on the machine's address: answers SSLRequest with `S`, runs TLS with the test certificate,
/// reads the startup message, then runs `script` on the TLS stream.
fn hostile_server(
    pki: &TestPki,
    script: impl FnOnce(&mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>)
        + Send
        + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let listener = std::net::TcpListener::bind((pki.ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut ssl_request = [0u8; 8];
        tcp.read_exact(&mut ssl_request).unwrap();
        assert_eq!(ssl_request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        tcp.write_all(b"S").unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut len = [0u8; 4];
        tls.read_exact(&mut len).unwrap();
        let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        tls.read_exact(&mut startup).unwrap();
        script(&mut tls);
    });
    (
        format!(
            "host={} port={port} user=embassy password={REPL_PASSWORD} connect_timeout=5",
            pki.ip
        ),
        handle,
    )
}

/// Backend message `tag` with `body`.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth_ok_and_ready() -> Vec<u8> {
    let mut m = message(b'R', &0u32.to_be_bytes());
    m.extend(message(b'Z', b"I"));
    m
}

#[test]
fn a_man_in_the_middle_with_an_unverified_certificate_gets_neither_password_nor_stream() {
    use std::io::{Read, Write};
    let pki = TestPki::generate();

    // He offers only plain SCRAM (so that he could relay it): refused before any SCRAM message.
    let (info, server) = hostile_server(&pki, |tls| {
        let mut body = 10u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256\0\0");
        tls.write_all(&message(b'R', &body)).unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(
            !rest.windows(13).any(|w| w == b"SCRAM-SHA-256"),
            "the client answered the stripped SCRAM offer"
        );
    });
    let e = connect(&format!("{info} sslmode=require"))
        .err()
        .expect("plain SCRAM over unverified TLS to another machine is refused");
    assert!(matches!(e, PgError::Insecure { .. }), "{e}");
    assert!(
        e.to_string().contains("does not offer SCRAM-SHA-256-PLUS"),
        "{e}"
    );
    server.join().unwrap();

    // He lets the client in without any password exchange ("trust"): refused too.
    let (info, server) = hostile_server(&pki, |tls| {
        tls.write_all(&auth_ok_and_ready()).unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
    });
    let e = connect(&format!("{info} sslmode=require"))
        .err()
        .expect("a trust login over unverified TLS to another machine is refused");
    assert!(
        e.to_string().contains("accepted the connection with trust"),
        "{e}"
    );
    server.join().unwrap();

    // He offers SCRAM-SHA-256-PLUS, then says "OK" without SCRAM's final server proof (he does
    // not know the password): refused, whatever the TLS mode.
    let (info, server) = hostile_server(&pki, |tls| {
        let mut body = 10u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        tls.write_all(&message(b'R', &body)).unwrap();
        let mut head = [0u8; 5];
        tls.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'p', "the client's SASLInitialResponse");
        let mut initial =
            vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
        tls.read_exact(&mut initial).unwrap();
        assert!(initial.starts_with(b"SCRAM-SHA-256-PLUS\0"));
        tls.write_all(&auth_ok_and_ready()).unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
    });
    let e = connect(&format!("{info} sslmode=require"))
        .err()
        .expect("a login without SCRAM's server proof is refused");
    assert!(
        e.to_string().contains("SCRAM's final message was skipped"),
        "{e}"
    );
    server.join().unwrap();
}
