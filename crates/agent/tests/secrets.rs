//! Secrets stay secret, as library calls: alarm webhooks over HTTPS to a real TLS server
//! (rustls, a test CA made with the openssl CLI) verify its certificate; http:// only to
//! loopback or by explicit choice; the status page's address and token rules; command texts
//! are not described; the passphrase variable a configuration names is withheld from commands.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use embassy_agent::agent::StatusToken;
use embassy_agent::alarms::{self, Notice};
use embassy_agent::config::{Config, Source};

fn parse(text: &str, dir: &Path) -> Result<Config, embassy_agent::ConfigError> {
    Config::parse(text, &dir.join("embassy.toml"))
}

const BASE: &str = r#"[keys]
file = "vault.key"
passphrase_env = "VAULT_PASS"

[[sites]]
name = "lux"
path = "/srv/lux"
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is needed to make the test CA");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`name`-ca.pem) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`name`-server.pem, `name`-server.key).
fn make_ca(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}-server.key");
    let csr = format!("{name}-server.csr");
    let cert = format!("{name}-server.pem");
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

fn pem_items(path: &Path) -> Vec<ureq::tls::PemItem<'static>> {
    let pem = std::fs::read(path).unwrap();
    ureq::tls::parse_pem(&pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// An HTTPS server on loopback presenting `cert`: records each POST body, answers 200.
fn tls_server(cert: &Path, key: &Path) -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> = pem_items(cert)
        .into_iter()
        .filter_map(|i| match i {
            ureq::tls::PemItem::Certificate(c) => {
                Some(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
            }
            _ => None,
        })
        .collect();
    let key = pem_items(key)
        .into_iter()
        .find_map(|i| match i {
            ureq::tls::PemItem::PrivateKey(k) => {
                Some(rustls::pki_types::PrivateKeyDer::try_from(k.der().to_vec()).expect("a key"))
            }
            _ => None,
        })
        .expect("a private key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            let mut length = 0usize;
            let mut line = String::new();
            let mut ok = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        ok = false;
                        break;
                    }
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            if !ok {
                continue; // the handshake failed: the client refused the certificate
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    store.lock().unwrap().push(v);
                }
            }
            let stream = reader.get_mut();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    (port, got)
}

fn notice() -> Notice {
    Notice {
        event: "raised",
        dataset: "registry".into(),
        site: "lux".into(),
        lag_seconds: Some(500.0),
        rpo_seconds: 100.0,
        message: "registry at lux: RPO breached".into(),
        at: 1_800_000_000,
        kind: None,
    }
}

fn alarm_config(dir: &Path, alarms: &str) -> Config {
    parse(&format!("{BASE}[alarms]\n{alarms}"), dir).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_https_webhook_is_delivered_only_to_a_certificate_the_configured_ca_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_ca(dir, "good");
    make_ca(dir, "other");
    let (port, got) = tls_server(&dir.join("good-server.pem"), &dir.join("good-server.key"));
    let url = format!("https://127.0.0.1:{port}/alarm/secret-path-token");

    // The CA that signed the server's certificate: delivered, body intact.
    let config = alarm_config(
        dir,
        &format!("webhook = \"{url}\"\nwebhook_ca_file = \"good-ca.pem\"\n"),
    );
    assert_eq!(
        config.alarms.webhook_ca_file.as_deref(),
        Some(dir.join("good-ca.pem").as_path())
    );
    alarms::deliver(&config, &notice()).unwrap_or_else(|e| panic!("not delivered: {e}"));
    {
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["event"], "raised");
        assert_eq!(got[0]["dataset"], "registry");
    }

    // No CA configured: the Mozilla roots do not know the test CA, so nothing is sent, and the
    // error says why and what to set, without the URL's secret path.
    let config = alarm_config(dir, &format!("webhook = \"{url}\"\n"));
    let e = alarms::deliver(&config, &notice()).unwrap_err();
    assert!(e.contains("webhook to 127.0.0.1: TLS failed"), "{e}");
    assert!(e.contains("webhook_ca_file"), "{e}");
    assert!(!e.contains("secret-path-token"), "{e}");

    // Another CA: refused as well.
    let config = alarm_config(
        dir,
        &format!("webhook = \"{url}\"\nwebhook_ca_file = \"other-ca.pem\"\n"),
    );
    let e = alarms::deliver(&config, &notice()).unwrap_err();
    assert!(e.contains("TLS failed"), "{e}");
    assert_eq!(got.lock().unwrap().len(), 1, "nothing more was accepted");

    // A CA file that is not one: a clear error.
    std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
    let config = alarm_config(
        dir,
        &format!("webhook = \"{url}\"\nwebhook_ca_file = \"empty.pem\"\n"),
    );
    let e = alarms::deliver(&config, &notice()).unwrap_err();
    assert!(e.contains("holds no certificate"), "{e}");
}

#[test]
fn plain_http_webhooks_go_to_loopback_only_unless_allowed() {
    let dir = PathBuf::from("/etc/embassy");
    let e = parse(
        &format!("{BASE}[alarms]\nwebhook = \"http://alerts.example.org/hook\"\n"),
        &dir,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alarms.webhook: an http:// webhook to another host")
            && e.contains("webhook_allow_http = true"),
        "{e}"
    );
    for ok in [
        "webhook = \"http://127.0.0.1:9000/hook\"\n",
        "webhook = \"http://localhost/hook\"\n",
        "webhook = \"http://[::1]:9000/hook\"\n",
        "webhook = \"http://alerts.example.org/hook\"\nwebhook_allow_http = true\n",
        "webhook = \"https://alerts.example.org/hook\"\n",
    ] {
        parse(&format!("{BASE}[alarms]\n{ok}"), &dir).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let e = parse(&format!("{BASE}[alarms]\nwebhook = \"ftp://x/\"\n"), &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected an https:// URL"), "{e}");
}

#[test]
fn the_status_page_listens_on_loopback_unless_a_token_guards_it() {
    let dir = PathBuf::from("/etc/embassy");
    // A bare port: loopback.
    let c = parse(&format!("{BASE}[status]\nlisten = \"8470\"\n"), &dir).unwrap();
    assert_eq!(c.status.listen.as_deref(), Some("127.0.0.1:8470"));
    // Every interface without a token: refused, with the way out.
    for addr in ["0.0.0.0:8470", "[::]:8470", "192.0.2.7:8470"] {
        let e = parse(&format!("{BASE}[status]\nlisten = \"{addr}\"\n"), &dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("status.listen:")
                && e.contains("reachable from other hosts")
                && e.contains("token_file"),
            "{e}"
        );
    }
    let c = parse(
        &format!("{BASE}[status]\nlisten = \"0.0.0.0:8470\"\ntoken_file = \"status-token\"\n"),
        &dir,
    )
    .unwrap();
    assert_eq!(
        c.status.token_file.as_deref(),
        Some(Path::new("/etc/embassy/status-token"))
    );
    assert!(c.summary().contains("(token required)"), "{}", c.summary());
}

#[test]
fn a_status_token_is_long_and_compared_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let e = StatusToken::read(&short).unwrap_err();
    assert!(e.contains("shorter than 16 characters"), "{e}");
    let e = StatusToken::read(&tmp.path().join("missing")).unwrap_err();
    assert!(e.contains("openssl rand -hex 32"), "{e}");
    let good = tmp.path().join("good");
    std::fs::write(&good, "0123456789abcdef0123\nignored\n").unwrap();
    let t = StatusToken::read(&good).unwrap();
    assert!(t.matches(b"0123456789abcdef0123"));
    assert!(!t.matches(b"0123456789abcdef012"));
    assert!(!t.matches(b"0123456789abcdef01234"));
    assert!(!t.matches(b""));
    assert!(!format!("{t:?}").contains("0123"), "Debug hides the token");
}

#[test]
fn a_command_source_is_described_without_its_text_and_the_passphrase_variable_is_withheld() {
    let dir = PathBuf::from("/etc/embassy");
    let c = parse(
        &format!(
            "{BASE}[[datasets]]\nname = \"dump\"\nsource = {{ command = \"PGPASSWORD=hunter2 pg_dump registry\", pass_env = [\"PGHOST_TOKEN\"] }}\ninterval = \"1h\"\nrpo = \"2h\"\n"
        ),
        &dir,
    )
    .unwrap();
    let d = c.dataset("dump").unwrap();
    assert!(!d.source.describe().contains("hunter2"));
    assert!(!c.summary().contains("hunter2"), "{}", c.summary());
    let Source::Command { pass_env, .. } = &d.source else {
        panic!("a command source");
    };
    assert_eq!(pass_env, &["PGHOST_TOKEN"]);
    // The configured passphrase variable is withheld whatever its name; secrets are withheld
    // unless passed.
    let scrub = c.command_scrub(pass_env);
    assert!(scrub.withholds(OsStr::new("VAULT_PASS")));
    assert!(scrub.withholds(OsStr::new("EMBASSY_PASSPHRASE")));
    assert!(scrub.withholds(OsStr::new("AWS_SECRET_ACCESS_KEY")));
    assert!(!scrub.withholds(OsStr::new("PGHOST_TOKEN")));
    assert!(!scrub.withholds(OsStr::new("PATH")));
    // pass_env belongs to a command.
    let e = parse(
        &format!(
            "{BASE}[[datasets]]\nname = \"f\"\nsource = {{ files = [\"/srv\"], pass_env = [\"X\"] }}\ninterval = \"1h\"\nrpo = \"2h\"\n"
        ),
        &dir,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("pass_env applies to a command source only"),
        "{e}"
    );
}
