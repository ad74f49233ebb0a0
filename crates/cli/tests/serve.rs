//! `embassy serve` on real trees, through the binary, with curl (ranges, ETags, 304, 416, 405,
//! path escapes, credentials, HEAD, HTTPS with client certificates), headless Chromium (the
//! listing, the check page, a hostile HTML file), a tampered chunk, and a 200 MB file served
//! with bounded memory. curl, openssl and Chromium must be installed: the tests fail, never
//! skip, where they are not.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_testkit::cli::{cheapen, Embassy, TestVault};
use embassy_testkit::{free_port, random_bytes};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A running `embassy serve`.
struct Serving {
    child: Child,
    port: u16,
    scheme: &'static str,
    stderr: Arc<Mutex<String>>,
}

impl Serving {
    /// Starts `embassy serve EXTRA` as `vault`'s machine `m` with `key`, on a free port (unless
    /// EXTRA says --listen), and waits until it listens.
    fn start(vault: &TestVault, key: &Path, extra: &[&str]) -> Serving {
        let port = free_port();
        let mut cmd = Embassy::new(EXE, &vault.base).command();
        cmd.arg("--site")
            .arg(&vault.site)
            .arg("--key-file")
            .arg(key)
            .arg("--state-dir")
            .arg(vault.state("m"))
            .arg("serve");
        if !extra.contains(&"--listen") {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        let port = extra
            .iter()
            .position(|a| *a == "--listen")
            .and_then(|i| extra[i + 1].rsplit(':').next())
            .map_or(port, |p| p.parse().unwrap());
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        cmd.args(extra);
        let mut child = cmd.spawn().expect("start embassy serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let started = Instant::now();
        loop {
            if stderr.lock().unwrap().contains("serving ") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "embassy serve exited ({status}): {}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "embassy serve did not start: {}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Serving {
            child,
            port,
            scheme,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    /// The server's peak resident memory so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Stops it with SIGTERM; what it said.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let said = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "{status}: {said}");
        said
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got: the status, the headers of the last response, the body, curl's exit code.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    curl: i32,
    stderr: String,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        f.debug_struct("Got")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body_start", &body)
            .field("curl", &self.curl)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn curl(args: &[&str], url: &str) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-s", "-S", "--path-as-is", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(url)
        .output()
        .expect("curl is needed for the serve tests (apt-get install curl)");
    let head = fs::read_to_string(&head).unwrap_or_default();
    let block = head
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Got {
        status,
        headers,
        body: fs::read(&body).unwrap_or_default(),
        curl: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn get(s: &Serving, path: &str) -> Got {
    curl(&[], &s.url(path))
}

/// A vault with dataset `docs` (two versions of a tree) and `dump` (a stream).
struct Fixture {
    _tmp: tempfile::TempDir,
    vault: TestVault,
    src: PathBuf,
}

const EVIL: &str =
    "<html><body><p>hostile page</p><script>document.body.innerHTML = 'RAN-' + (6 * 7);\
</script></body></html>\n";

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let vault = TestVault::init(EXE, tmp.path(), "vault");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("gazette/2026")).unwrap();
        fs::write(src.join("gazette/2026/act-1.txt"), "The first act.\n").unwrap();
        fs::write(src.join("gazette/2026/act 2 ä.txt"), "The second act.\n").unwrap();
        fs::write(src.join("gazette/evil.html"), EVIL).unwrap();
        fs::write(src.join("big.bin"), random_bytes(1_500_000, 3)).unwrap();
        std::os::unix::fs::symlink("gazette", src.join("link")).unwrap();
        vault.ok(
            "m",
            &vault.key,
            &["backup", "docs", src.to_str().unwrap()],
            None,
        );
        fs::write(
            src.join("gazette/2026/act-1.txt"),
            "The first act, amended.\n",
        )
        .unwrap();
        vault.ok(
            "m",
            &vault.key,
            &["backup", "docs", src.to_str().unwrap()],
            None,
        );
        vault.backup_bytes("m", "dump", b"0123456789abcdefghij");
        Self {
            _tmp: tmp,
            vault,
            src,
        }
    }

    fn serve(&self, extra: &[&str]) -> Serving {
        Serving::start(&self.vault, &self.vault.key, extra)
    }

    /// `embassy --json versions docs` as JSON.
    fn versions(&self, dataset: &str) -> serde_json::Value {
        self.vault
            .ok("m", &self.vault.key, &["--json", "versions", dataset], None)
            .json()
    }
}

#[test]
fn files_are_served_with_ranges_etags_and_their_ledger_entry() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    let big = fs::read(f.src.join("big.bin")).unwrap();

    // The whole file, naming its version and ledger entry as `embassy versions` does.
    let whole = get(&s, "/docs/2/big.bin");
    assert_eq!(whole.status, 200, "{whole:?}");
    assert!(whole.body == big, "the served bytes differ");
    let versions = f.versions("docs");
    let v2 = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap();
    assert_eq!(whole.header("Embassy-Dataset"), Some("docs"));
    assert_eq!(whole.header("Embassy-Version"), Some("2"));
    assert_eq!(
        whole.header("Embassy-Ledger-Entry").unwrap(),
        format!(
            "seq={}; id={}",
            v2["ledger_seq"],
            v2["ledger_entry"].as_str().unwrap()
        )
    );
    assert_eq!(whole.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(whole.header("Content-Length"), Some("1500000"));
    let etag = whole.header("ETag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );

    // Same bytes in another version: the same tag; changed bytes: another.
    assert_eq!(
        get(&s, "/docs/1/big.bin").header("ETag"),
        Some(etag.as_str())
    );
    let act1 = get(&s, "/docs/1/gazette/2026/act-1.txt");
    let act2 = get(&s, "/docs/2/gazette/2026/act-1.txt");
    assert_eq!(act1.body, b"The first act.\n");
    assert_eq!(act2.body, b"The first act, amended.\n");
    assert_ne!(act1.header("ETag"), act2.header("ETag"));
    assert_eq!(act1.header("Embassy-Version"), Some("1"));
    assert_eq!(
        get(&s, "/docs/latest/gazette/2026/act-1.txt").body,
        act2.body
    );

    // If-None-Match: 304, no body.
    let not_modified = curl(
        &["-H", &format!("If-None-Match: {etag}")],
        &s.url("/docs/2/big.bin"),
    );
    assert_eq!(not_modified.status, 304, "{not_modified:?}");
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("ETag"), Some(etag.as_str()));

    // One range; a suffix range; an open range.
    let part = curl(&["-r", "1000-1999"], &s.url("/docs/2/big.bin"));
    assert_eq!(part.status, 206, "{part:?}");
    assert_eq!(
        part.header("Content-Range"),
        Some("bytes 1000-1999/1500000")
    );
    assert!(part.body == big[1000..2000]);
    let tail = curl(&["-r", "-10"], &s.url("/docs/2/big.bin"));
    assert_eq!(tail.status, 206);
    assert!(tail.body == big[big.len() - 10..]);
    let across = curl(&["-r", "700000-"], &s.url("/docs/2/big.bin"));
    assert_eq!(across.status, 206);
    assert!(across.body == big[700_000..]);

    // Not in the file: 416 naming its size.
    let beyond = curl(&["-r", "1500000-"], &s.url("/docs/2/big.bin"));
    assert_eq!(beyond.status, 416, "{beyond:?}");
    assert_eq!(beyond.header("Content-Range"), Some("bytes */1500000"));

    // If-Range: the range only while the tag still holds.
    let same = curl(
        &["-r", "0-9", "-H", &format!("If-Range: {etag}")],
        &s.url("/docs/2/big.bin"),
    );
    assert_eq!(same.status, 206);
    let changed = curl(
        &["-r", "0-9", "-H", "If-Range: \"another\""],
        &s.url("/docs/2/big.bin"),
    );
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body.len(), big.len());

    // HEAD: the headers of GET, no body.
    let head = curl(&["-I"], &s.url("/docs/2/big.bin"));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("1500000"));
    assert_eq!(head.header("ETag"), Some(etag.as_str()));
    // On the wire: the head, then the connection closes (curl -I prints the head as body).
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    tcp.write_all(b"HEAD /docs/2/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("\r\nContent-Length: 1500000\r\n"), "{raw}");
    assert_eq!(
        raw.find("\r\n\r\n"),
        Some(raw.len() - 4),
        "a body after the head: {raw}"
    );

    // A stream's version: its one object.
    let stream = get(&s, "/dump/1/stream");
    assert_eq!(stream.body, b"0123456789abcdefghij");
    assert_eq!(stream.header("Embassy-Dataset"), Some("dump"));
    let range = curl(&["-r", "10-"], &s.url("/dump/1/stream"));
    assert_eq!(range.body, b"abcdefghij");

    // Listings: JSON and HTML, with ETags and never cached without asking.
    let datasets = get(&s, "/?format=json");
    let json: serde_json::Value = serde_json::from_slice(&datasets.body).unwrap();
    assert_eq!(json["datasets"][0]["dataset"], "docs");
    assert_eq!(json["datasets"][0]["newest"], 2);
    assert_eq!(json["datasets"][1]["dataset"], "dump");
    let folder = get(&s, "/docs/1/gazette/2026/?format=json");
    let json: serde_json::Value = serde_json::from_slice(&folder.body).unwrap();
    let names: Vec<&str> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["gazette/2026/act 2 ä.txt", "gazette/2026/act-1.txt"]
    );
    assert_eq!(json["ledger_seq"], versions["versions"][0]["ledger_seq"]);
    let html = get(&s, "/docs/1/gazette/2026/");
    assert_eq!(html.header("Cache-Control"), Some("no-cache"));
    assert!(
        html.text().contains("href=\"act%202%20%C3%A4.txt\""),
        "{}",
        html.text()
    );
    let tag = html.header("ETag").unwrap().to_string();
    let again = curl(
        &["-H", &format!("If-None-Match: {tag}")],
        &s.url("/docs/1/gazette/2026/"),
    );
    assert_eq!(again.status, 304);
    let unicode = get(&s, "/docs/1/gazette/2026/act%202%20%C3%A4.txt");
    assert_eq!(unicode.body, b"The second act.\n");

    // What is not there.
    assert_eq!(get(&s, "/docs/9/big.bin").status, 404);
    assert_eq!(get(&s, "/docs/1/nothere").status, 404);
    assert_eq!(get(&s, "/nosuch/").status, 404);
    let link = get(&s, "/docs/1/link");
    assert_eq!(link.status, 404);
    assert!(link.text().contains("not followed"), "{}", link.text());
    s.stop();
}

#[test]
fn it_is_read_only_and_paths_never_leave_the_version() {
    let f = Fixture::new();
    let s = f.serve(&["docs"]);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let got = curl(&["-X", method], &s.url("/docs/1/big.bin"));
        assert_eq!(got.status, 405, "{method}: {got:?}");
        assert_eq!(got.header("Allow"), Some("GET, HEAD"));
    }
    for escape in [
        "/docs/1/../2/big.bin",
        "/docs/1/gazette/..%2f..%2fbig.bin",
        "/docs/1/%2e%2e/big.bin",
        "/docs/1/gazette%2f2026/act-1.txt",
        "/docs/1/gazette%5c2026",
        "/docs/1/big.bin%00.txt",
        "/docs/1/./big.bin",
        "/../../etc/passwd",
    ] {
        let got = get(&s, escape);
        assert_eq!(got.status, 400, "{escape}: {got:?}");
        assert!(got.body.len() < 200, "{escape}");
    }
    // Only the datasets named are served.
    assert_eq!(get(&s, "/dump/1/stream").status, 404);
    // Every answer says nosniff; file bodies are attachments under a sandbox.
    let file = get(&s, "/docs/1/gazette/evil.html");
    assert_eq!(file.status, 200);
    assert_eq!(file.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(
        file.header("Content-Type"),
        Some("application/octet-stream")
    );
    assert!(file
        .header("Content-Disposition")
        .unwrap()
        .starts_with("attachment; filename=\"evil.html\""));
    assert!(file
        .header("Content-Security-Policy")
        .unwrap()
        .starts_with("sandbox"));
    let page = get(&s, "/docs/");
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    assert!(page
        .header("Content-Security-Policy")
        .unwrap()
        .starts_with("default-src 'none'"));
    // The vault is as it was: nothing was written to the site.
    f.vault.ok("m", &f.vault.key, &["verify"], None);
    s.stop();
}

/// Issues a reader credential for `dataset` and returns its (cheap) file.
fn reader_credential(vault: &TestVault, dataset: &str) -> PathBuf {
    let slow = vault.base.join("keys/reader.slow");
    vault.ok(
        "m",
        &vault.key,
        &[
            "keys",
            "issue",
            "--reader",
            "--dataset",
            dataset,
            "--label",
            "embassy-web",
            "--out",
            slow.to_str().unwrap(),
        ],
        None,
    );
    let cheap = vault.base.join("keys/reader.cred");
    cheapen(&slow, &cheap);
    cheap
}

#[test]
fn beyond_loopback_a_token_is_required_and_a_reader_credential_suffices() {
    let f = Fixture::new();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    // No credential: refused before anything listens (a server that starts fails the test
    // after a while instead of hanging it).
    let mut cmd = Embassy::new(EXE, &f.vault.base).command();
    cmd.arg("--site")
        .arg(&f.vault.site)
        .arg("--key-file")
        .arg(&f.vault.key)
        .arg("--state-dir")
        .arg(f.vault.state("m"))
        .args(["serve", "--listen", &listen, "docs"]);
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve started on {listen} without a credential: {}",
                show(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = child.wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("refusing to serve on 0.0.0.0") && said.contains("--token-file"),
        "{said}"
    );
    // A short token is refused too.
    let short = f.vault.base.join("short.token");
    fs::write(&short, "abc\n").unwrap();
    let run = f.vault.run(
        "m",
        &f.vault.key,
        &[
            "serve",
            "--listen",
            &listen,
            "--token-file",
            short.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("shorter than 16"), "{run:?}");

    let token = "4f1c2a9e7b6d5c3a1f0e9d8c7b6a5f4e";
    let token_file = f.vault.base.join("serve.token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let reader = reader_credential(&f.vault, "docs");
    let s = Serving::start(
        &f.vault,
        &reader,
        &[
            "--listen",
            &listen,
            "--token-file",
            token_file.to_str().unwrap(),
            "docs",
        ],
    );
    let url = s.url("/docs/2/gazette/2026/act-1.txt");
    let none = curl(&[], &url);
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.body.len() < 200 && !none.text().contains("amended"));
    assert!(none.header("WWW-Authenticate").is_some());
    let wrong = curl(
        &[
            "-H",
            "Authorization: Bearer 4f1c2a9e7b6d5c3a1f0e9d8c7b6a5f4f",
        ],
        &url,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(curl(&["-I"], &url).status, 401);
    let bearer = curl(&["-H", &format!("Authorization: Bearer {token}")], &url);
    assert_eq!(bearer.status, 200, "{bearer:?}");
    assert_eq!(bearer.body, b"The first act, amended.\n");
    let basic = curl(&["-u", &format!("anyone:{token}")], &url);
    assert_eq!(basic.status, 200);
    // Listings need it as well.
    assert_eq!(curl(&[], &s.url("/")).status, 401);
    assert_eq!(
        curl(&["-u", &format!("x:{token}")], &s.url("/?format=json")).status,
        200
    );
    s.stop();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the HTTPS serve test (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", show(&out));
}

/// A CA, a server certificate for localhost and a client certificate, all signed by the CA.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

#[test]
fn https_with_client_certificates_may_listen_beyond_loopback() {
    let f = Fixture::new();
    let dir = f.vault.base.join("tls");
    fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let listen = format!("0.0.0.0:{}", free_port());
    let s = f.serve(&[
        "--listen",
        &listen,
        "--tls-cert",
        &p("server.pem"),
        "--tls-key",
        &p("server.key"),
        "--client-ca",
        &p("ca.pem"),
        "docs",
    ]);
    let url = s.url("/docs/2/gazette/2026/act-1.txt");
    let with = curl(
        &[
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
        ],
        &url,
    );
    assert_eq!(with.status, 200, "{with:?}");
    assert_eq!(with.body, b"The first act, amended.\n");
    assert_eq!(with.curl, 0, "{with:?}");
    // Without a client certificate there is no answer at all.
    let without = curl(&["--cacert", &p("ca.pem")], &url);
    assert_ne!(without.curl, 0, "{without:?}");
    assert_eq!(without.status, 0, "{without:?}");
    assert!(without.body.is_empty());
    // Plain HTTP on the TLS port gets nothing either.
    let plain = curl(&[], &url.replace("https://", "http://"));
    assert_eq!(plain.status, 0, "{plain:?}");
    s.stop();
}

fn show(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The first offset (in steps of `step`) whose one-byte range the server refuses as damaged.
fn first_damaged(s: &Serving, path: &str, len: usize, step: usize) -> Option<usize> {
    (0..len).step_by(step).find(|&at| {
        let got = curl(&["-r", &format!("{at}-{at}")], &s.url(path));
        assert!(matches!(got.status, 206 | 502), "{got:?}");
        got.status == 502
    })
}

#[test]
fn a_tampered_chunk_never_yields_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    const LEN: usize = 6_000_000;
    let bytes = random_bytes(LEN, 11);
    fs::write(src.join("big.bin"), &bytes).unwrap();
    vault.ok(
        "m",
        &vault.key,
        &["backup", "data", src.to_str().unwrap()],
        None,
    );
    let s = Serving::start(&vault, &vault.key, &[]);
    let path = "/data/1/big.bin";
    assert_eq!(first_damaged(&s, path, LEN, 200_000), None);

    // Flip one byte inside a chunk of big.bin that is not its first (so that the damage comes
    // after the head and the first bytes went out): try places in the packs until one is.
    let mut packs = walk_files(&vault.site.join("packs/data"));
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    let mut damaged = None;
    'places: for pack in &packs {
        for (num, den) in [(4, 5), (9, 10), (3, 5), (1, 2)] {
            let mut stored = fs::read(pack).unwrap();
            let at = stored.len() * num / den;
            stored[at] ^= 0x20;
            fs::write(pack, &stored).unwrap();
            match first_damaged(&s, path, LEN, 100_000) {
                Some(d) if d > 0 => {
                    damaged = Some(d);
                    break 'places;
                }
                _ => {
                    stored[at] ^= 0x20;
                    fs::write(pack, &stored).unwrap();
                }
            }
        }
    }
    let damaged = damaged.expect("a place inside a later chunk of big.bin");

    let got = get(&s, path);
    // Never a complete-looking answer with other bytes: what came is a true prefix, ending
    // before the damage, and the transfer is cut (curl: 18, partial file).
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.body.len() <= damaged,
        "{} bytes came, the damage is at {damaged}: {got:?}",
        got.body.len()
    );
    assert!(
        got.body == bytes[..got.body.len()],
        "wrong bytes were served (first {} bytes differ)",
        got.body.len()
    );
    assert_eq!(got.curl, 18, "a cut body must not look complete: {got:?}");
    // A range inside the damage: a clean error, no byte of it.
    let inside = curl(&["-r", &format!("{damaged}-")], &s.url(path));
    assert_eq!(inside.status, 502, "{inside:?}");
    assert!(
        inside.text().contains("damaged in the vault"),
        "{}",
        inside.text()
    );
    // A range before it is still served.
    let head = curl(&["-r", "0-999"], &s.url(path));
    assert_eq!(head.status, 206);
    assert!(head.body == bytes[..1000]);
    let said = s.stop();
    assert!(said.contains("(the transfer was cut)"), "{said}");
    eprintln!(
        "tampered chunk: damage found at byte {damaged}; a GET got status {} and {} true bytes, \
         then the cut (curl exit {})",
        got.status,
        got.body.len(),
        got.curl
    );
}

fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
        {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("headless Chromium is needed for the serve test: run scripts/install-test-deps (apt-get install chromium)");
}

/// The DOM Chromium builds for `url`, after its scripts (if any were allowed) ran.
fn chromium_dom(dir: &Path, url: &str) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chromium_shows_the_listing_the_check_page_and_a_hostile_file_as_text() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    let dir = f.vault.base.clone();

    let listing = chromium_dom(&dir, &s.url("/docs/2/gazette/"));
    assert!(listing.contains("Version 2 of docs"), "{listing}");
    assert!(listing.contains("<a href=\"2026/\">2026/</a>"), "{listing}");
    assert!(
        listing.contains("<a href=\"evil.html\">evil.html</a>"),
        "{listing}"
    );
    assert!(listing.contains("evil.html?check"), "{listing}");
    let seq = f.versions("docs")["versions"][1]["ledger_seq"].to_string();
    assert!(
        listing.contains(&format!("ledger entry {seq}")),
        "{listing}"
    );

    // The check page says how to check the file with the CLI; its commands work as written.
    let check = chromium_dom(&dir, &s.url("/docs/2/gazette/2026/act-1.txt?check"));
    for line in [
        "embassy --site SITE verify",
        "embassy --site SITE restore docs@2 --include gazette/2026/act-1.txt --to /tmp/check",
        "sha256sum act-1.txt /tmp/check/gazette/2026/act-1.txt",
    ] {
        assert!(check.contains(line), "{line}: {check}");
    }
    let to = dir.join("check");
    f.vault.ok(
        "m",
        &f.vault.key,
        &[
            "restore",
            "docs@2",
            "--include",
            "gazette/2026/act-1.txt",
            "--to",
            to.to_str().unwrap(),
        ],
        None,
    );
    let served = get(&s, "/docs/2/gazette/2026/act-1.txt").body;
    fs::write(dir.join("act-1.txt"), &served).unwrap();
    let sums = Command::new("sha256sum")
        .arg("act-1.txt")
        .arg(to.join("gazette/2026/act-1.txt"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sums.stdout);
    let hashes: Vec<&str> = text.lines().map(|l| &l[..64]).collect();
    assert_eq!(hashes.len(), 2, "{text}");
    assert_eq!(hashes[0], hashes[1], "{text}");

    // A hostile HTML file shown as text: its script is text, and never ran.
    let evil = chromium_dom(&dir, &s.url("/docs/2/gazette/evil.html?view=text"));
    assert!(evil.contains("&lt;script&gt;"), "{evil}");
    assert!(!evil.contains("RAN-42"), "the file's script ran: {evil}");
    s.stop();
}

/// Writes `len` pseudo-random bytes to `path` a MiB at a time; their BLAKE3.
fn write_large(path: &Path, len: usize) -> blake3::Hash {
    let mut file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut seed = 100u64;
    while left > 0 {
        let n = left.min(1 << 20);
        let block = random_bytes(n, seed);
        hasher.update(&block);
        file.write_all(&block).unwrap();
        left -= n;
        seed += 1;
    }
    file.flush().unwrap();
    hasher.finalize()
}

#[test]
fn a_large_file_is_served_with_bounded_memory() {
    const SIZE: usize = 200 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let want = write_large(&src.join("large.bin"), SIZE);
    vault.ok(
        "m",
        &vault.key,
        &["backup", "bulk", src.to_str().unwrap()],
        None,
    );
    fs::remove_dir_all(&src).unwrap();
    let s = Serving::start(&vault, &vault.key, &[]);
    // A first small request opens the version (its index is in memory from then on).
    assert_eq!(
        curl(&["-r", "0-0"], &s.url("/bulk/1/large.bin")).status,
        206
    );
    let before = s.peak_rss_kib();
    let mut child = Command::new("curl")
        .args(["-s", "-S", "--fail"])
        .arg(s.url("/bulk/1/large.bin"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let started = Instant::now();
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(child.wait().unwrap().success());
    assert_eq!(total, SIZE);
    assert_eq!(hasher.finalize(), want, "the served bytes differ");
    let after = s.peak_rss_kib();
    eprintln!(
        "200 MiB served in {secs:.1} s ({:.0} MiB/s); server peak RSS {} MiB before, {} MiB after",
        200.0 / secs,
        before / 1024,
        after / 1024
    );
    // One chunk at a time (chunks are at most a few MiB): far below the file's size.
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB serving a 200 MiB file"
    );
    s.stop();
}

#[test]
fn under_a_witness_quorum_only_witnessed_versions_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let embassy = Embassy::new(EXE, base);
    let witness_key = base.join("witness/witness.key");
    let w = embassy.ok(
        [
            "--json",
            "witness-key",
            "--out",
            witness_key.to_str().unwrap(),
        ],
        None,
    );
    let public = w.json()["public_key"].as_str().unwrap().to_string();
    let site = base.join("vault");
    let slow = base.join("keys/vault.slow");
    let init = embassy.ok(
        [
            "--json",
            "--site",
            site.to_str().unwrap(),
            "--key-file",
            slow.to_str().unwrap(),
            "--state-dir",
            base.join("state/init").to_str().unwrap(),
            "init",
            "--witness",
            &public,
            "--witness-quorum",
            "1",
        ],
        None,
    );
    assert_eq!(init.code, 0);
    let key = base.join("keys/vault.key");
    let vault_id = cheapen(&slow, &key);
    let vault = TestVault {
        embassy,
        base: base.to_path_buf(),
        site,
        key: key.clone(),
        vault_id,
    };
    vault.backup_bytes("m", "notices", b"first notice\n");
    vault.ok(
        "m",
        &witness_key,
        &["witness", "--witness-key", witness_key.to_str().unwrap()],
        None,
    );
    vault.backup_bytes("m", "notices", b"second notice, not yet witnessed\n");

    let s = Serving::start(&vault, &key, &[]);
    let listed = get(&s, "/notices/?format=json");
    let json: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    let numbers: Vec<u64> = json["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1], "{json}");
    let latest = get(&s, "/notices/latest/stream");
    assert_eq!(latest.body, b"first notice\n", "{latest:?}");
    assert_eq!(latest.header("Embassy-Version"), Some("1"));
    let newer = get(&s, "/notices/2/stream");
    assert_eq!(newer.status, 403, "{newer:?}");
    assert!(newer.text().contains("not yet covered"), "{}", newer.text());
    s.stop();
}

/// Red team 6, #6: slow clients cannot shut the server. Connections that trickle a request
/// head (one byte a second, under any per-read timeout), more of them than --max-connections,
/// leave the accept loop free: a normal client is answered at once; each slow connection is
/// closed when its head has not arrived within 5 s; a flood beyond every limit is answered 503
/// at once, never left waiting. And a version selector that is not one (`-1`) is the client's
/// error (400), not the server's (it was 500).
#[test]
fn slow_clients_cannot_block_the_others_and_a_bad_version_is_a_client_error() {
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = Fixture::new();
    let s = f.serve(&["docs", "--max-connections", "2"]);
    let addr = format!("127.0.0.1:{}", s.port);
    let slow: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"G").unwrap();
            c
        })
        .collect();
    let opened = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let socks: Vec<TcpStream> = slow.iter().map(|c| c.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                for mut c in &socks {
                    let _ = c.write_all(b"E");
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let got = curl(
        &["--max-time", "20"],
        &s.url("/docs/1/gazette/2026/act-1.txt"),
    );
    let waited = asked.elapsed();
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        waited < Duration::from_secs(2),
        "a normal client waited {waited:?} behind slow ones"
    );
    // Each slow connection is closed by the head's deadline, though it still trickles.
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let r = c.read(&mut buf);
        let after = opened.elapsed();
        assert!(
            matches!(r, Ok(0)) || r.is_err(),
            "a slow connection got an answer: {r:?}"
        );
        assert!(
            after < Duration::from_secs(9),
            "a slow connection was kept {after:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();

    // A flood of idle connections beyond every limit: the ones over it get 503 at once.
    let flood: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let started = Instant::now();
    let mut busy = 0;
    for mut c in flood.iter().rev().take(10) {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 503") {
            busy += 1;
        }
    }
    assert!(busy > 0, "no connection over the limit was refused");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(flood);
    // Once the flood's heads are past their deadline, the server answers again.
    let again = Instant::now();
    loop {
        let got = curl(
            &["--max-time", "20"],
            &s.url("/docs/1/gazette/2026/act-1.txt"),
        );
        if got.status == 200 {
            break;
        }
        assert!(again.elapsed() < Duration::from_secs(10), "{got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    for bad in ["/docs/-1/big.bin", "/docs/x/big.bin", "/docs/-1/"] {
        let got = get(&s, bad);
        assert_eq!(got.status, 400, "{bad}: {got:?}");
    }
    let said = s.stop();
    assert!(!said.contains("error:"), "{said}");
}
