//! TLS test kit: a test CA (and a second, unrelated CA) made with the `openssl` CLI, and a
//! PostgreSQL 15 server with `ssl = on` whose certificate that CA signed.
//!
//! The server certificate names `DNS:localhost` and the machine's non-loopback IPv4 address, not
//! 127.0.0.1 (so `host=127.0.0.1 sslmode=verify-full` is a wrong host name). It is an ECDSA P-256
//! key signed with ECDSA-SHA384, so SCRAM-SHA-256-PLUS must hash it with SHA-384 (RFC 5929).
//!
//! pg_hba.conf: the role `embassy` may connect over loopback TCP only with TLS (`hostssl`, and
//! `hostnossl ... reject`), SCRAM-SHA-256; `pwuser` (LOGIN REPLICATION) is asked for a cleartext
//! password (`password` method); everyone may use SCRAM on the machine's address.
//! A missing `openssl` makes the test fail loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{PgOptions, PgServer, REPL_PASSWORD};

/// The role that pg_hba.conf asks for a cleartext password.
pub const CLEARTEXT_USER: &str = "pwuser";

/// A test CA, the server's certificate and key, and an unrelated CA.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The machine address in the certificate (and where the server also listens).
    pub ip: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the TLS tests need the openssl command line tool (apt-get install openssl): {e}"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The machine's first non-loopback IPv4 address (`hostname -I`); panics when there is none.
pub fn machine_ip() -> String {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("run hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
        .expect("the TLS tests need a non-loopback IPv4 address on this machine (hostname -I)")
}

impl TestPki {
    /// Generates the CA, the server certificate (signed with SHA-384) and an unrelated CA.
    pub fn generate() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("embassy-pki-")
            .tempdir()
            .expect("temp dir");
        let ip = machine_ip();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                    "-days",
                    "2",
                    "-sha256",
                    "-subj",
                    &format!("/CN=Embassy test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            format!(
                "subjectAltName=DNS:localhost,IP:{ip}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write server.ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-sha384",
                "-extfile",
                "server.ext",
            ],
        );
        TestPki { dir, ip }
    }

    /// The CA that signed the server's certificate (for `sslrootcert=`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server's certificate (PEM), signed by [`TestPki::ca`].
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A CA that signed nothing the server has.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    /// Starts a PostgreSQL 15 server with `ssl = on` and this PKI's certificate, listening on
    /// loopback and on the machine's address (pg_hba.conf as in the module doc).
    pub fn start_server(&self) -> PgServer {
        let srv = PgServer::init(PgOptions {
            extra_conf: vec![
                format!("listen_addresses = '127.0.0.1,{}'", self.ip),
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            ..PgOptions::default()
        });
        let data = srv.data_dir();
        for f in ["server.crt", "server.key"] {
            std::fs::copy(self.dir.path().join(f), data.join(f)).expect("copy server cert");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            if unsafe { libc::geteuid() } == 0 {
                let (uid, gid) = super::postgres_uid_gid();
                super::chown(&data.join(f), uid, gid);
            }
        }
        let ip = &self.ip;
        let hba = format!(
            "local all all trust\nlocal replication all trust\n\
             hostssl all embassy 127.0.0.1/32 scram-sha-256\n\
             hostssl replication embassy 127.0.0.1/32 scram-sha-256\n\
             hostnossl all embassy 127.0.0.1/32 reject\n\
             hostnossl replication embassy 127.0.0.1/32 reject\n\
             host all {CLEARTEXT_USER} 127.0.0.1/32 password\n\
             host replication {CLEARTEXT_USER} 127.0.0.1/32 password\n\
             host all {CLEARTEXT_USER} {ip}/32 password\n\
             host replication {CLEARTEXT_USER} {ip}/32 password\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n\
             host all all {ip}/32 scram-sha-256\n\
             host replication all {ip}/32 scram-sha-256\n"
        );
        // Overwrites the file initdb made (it keeps its owner).
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        srv.start_server();
        srv.setup_roles();
        srv.psql(&format!(
            "CREATE ROLE {CLEARTEXT_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'"
        ));
        srv
    }
}

/// Conninfo for `user` at `host` on `srv` with the replication password and `extra` settings.
pub fn conninfo(srv: &PgServer, host: &str, user: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={user} password={REPL_PASSWORD} dbname=postgres {extra}",
        srv.port()
    )
}
