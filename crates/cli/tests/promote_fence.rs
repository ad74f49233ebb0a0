//! Issue 17, "going live is a decision": in a vault made with `--promotion-approvals K`,
//! `embassy promote` with an embassy's sealing credential refuses before it touches the server
//! until K distinct pinned approvers have approved a takeover on this host (`embassy approve
//! --promote HOST`), and says how to get them; approvals for another host, or too few, do not
//! count. Then the fence through the real commands: after an approved takeover, home's sealing
//! credential still "backs up", and `verify`, `versions` and `restore --latest` ignore it (the
//! promoted entry is written with the library, as `embassy promote` writes it once a server is
//! promoted; the rules themselves are proved in `core/tests/fence.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::approval;
use embassy_core::history::ledger::{self, Event};
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::Credential;
use embassy_core::site::Site;
use embassy_testkit::cli::{cheapen, passphrase_file, Embassy, Run, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const DS: &str = "registry";

struct Env {
    tmp: tempfile::TempDir,
    pass: PathBuf,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn run_with(&self, key: &str, args: &[&str]) -> Run {
        let mut all: Vec<String> = [
            "--site",
            self.path("site").to_str().unwrap(),
            "--key-file",
            self.path(key).to_str().unwrap(),
            "--passphrase-file",
            self.pass.to_str().unwrap(),
            "--state-dir",
            self.path("state").to_str().unwrap(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|a| a.to_string()));
        Embassy::new(EXE, self.tmp.path())
            .without_passphrase()
            .run(all, None)
    }

    fn ok(&self, args: &[&str]) -> Run {
        let out = self.run_with("vault.key", args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    /// `embassy promote` with the embassy's sealing credential.
    fn promote(&self) -> Run {
        let data = self.path("standby");
        self.run_with(
            "embassy.cred",
            &["promote", DS, "--data", data.to_str().unwrap()],
        )
    }

    /// `embassy approve --promote HOST --promoter KEY` for the embassy's credential's key.
    fn approve(&self, approver: &str, host: &str) {
        let out = self.approve_key(approver, host, &public_of(self, "embassy.cred"));
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// `embassy approve --promote HOST --promoter PROMOTER`.
    fn approve_key(&self, approver: &str, host: &str, promoter: &str) -> Run {
        let key = self.path(approver);
        self.run_with(
            "vault.key",
            &[
                "approve",
                "--approver-key",
                key.to_str().unwrap(),
                "--promote",
                host,
                "--promoter",
                promoter,
                DS,
            ],
        )
    }
}

fn public_key(out: &Run) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("public key printed")
        .trim()
        .to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A vault pinning approvers a, b, c with `--promotion-approvals 2`, one version of DS (by the
/// root key), and sealing credentials `embassy.cred` and `home.cred`.
fn setup() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        pass: passphrase_file(tmp.path()),
        tmp,
    };
    let approvers: Vec<String> = ["a.key", "b.key", "c.key"]
        .iter()
        .map(|k| {
            let p = env.path(k);
            public_key(&env.ok(&["approver-key", "--out", p.to_str().unwrap()]))
        })
        .collect();
    let mut init = vec!["init"];
    for a in &approvers {
        init.extend(["--approver", a.as_str()]);
    }
    init.extend(["--promotion-approvals", "2", "--min-age", "0"]);
    env.ok(&init);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("register.csv"), "row\n".repeat(100)).unwrap();
    env.ok(&["backup", DS, src.to_str().unwrap()]);
    for label in ["embassy", "home"] {
        let slow = env.path(&format!("{label}-slow.cred"));
        env.ok(&[
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            DS,
            "--label",
            label,
            "--out",
            slow.to_str().unwrap(),
        ]);
        cheapen(&slow, &env.path(&format!("{label}.cred")));
    }
    env
}

#[test]
fn promote_refuses_before_promoting_until_the_approvals_are_there() {
    let env = setup();
    let host = hostname();
    // A standby data directory (no server runs on it: a promote that got past the approvals
    // would fail on that instead).
    std::fs::create_dir_all(env.path("standby")).unwrap();
    std::fs::write(env.path("standby/standby.signal"), "").unwrap();

    let refused = |out: &Run, have: &str| {
        assert_ne!(out.code, 0, "{out:?}");
        assert!(
            out.stderr.contains("the server is not promoted")
                && out.stderr.contains("promotion policy")
                && out.stderr.contains(have),
            "{out:?}"
        );
        assert!(
            out.stderr.contains(&format!(
                "embassy approve --approver-key FILE --promote {host} --promoter {} {DS}",
                public_of(&env, "embassy.cred")
            )),
            "no way out named: {out:?}"
        );
        assert!(env.path("standby/standby.signal").exists());
    };
    refused(&env.promote(), "with 0 of the 2 approvals");
    // One approver; then a second approver, for another host.
    env.approve("a.key", &host);
    refused(&env.promote(), "with 1 of the 2 approvals");
    env.approve("b.key", "another-host");
    refused(&env.promote(), "with 1 of the 2 approvals");
    // The same approver again does not make two.
    env.approve("a.key", &host);
    refused(&env.promote(), "with 1 of the 2 approvals");
    // Two distinct approvers for this host: promote goes on to the server (none runs here).
    env.approve("c.key", &host);
    let out = env.promote();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("promotion policy"), "{out:?}");
    let history = env.ok(&["history", DS]);
    assert!(!history.stdout.contains("promoted"), "{history:?}");
}

/// The signing key of a credential file.
fn signing_key(env: &Env, name: &str) -> approval::SigningKey {
    let path = env.path(name);
    let payload = KeyFile::load(&path)
        .unwrap()
        .open_payload(PASS.as_bytes(), &path)
        .unwrap();
    Credential::from_bytes(&payload)
        .unwrap()
        .signing_key()
        .unwrap()
}

/// The public key (hex) of a credential file, as `keys issue` printed it.
fn public_of(env: &Env, name: &str) -> String {
    hex::encode(signing_key(env, name).verifying_key().to_bytes())
}

/// Red team 6: approvals name the key that promotes. Officials cannot approve home's writer
/// (it wrote the dataset); home's stolen credential, on a server with the embassy's host name
/// and the approvals at the site, is refused by `embassy promote` before the server is touched,
/// and a `promoted` entry it signs with them anyway (by hand) fences no one: the embassy keeps
/// writing, and after the embassy's own takeover home is fenced.
#[test]
fn approvals_for_the_embassy_do_not_promote_home() {
    let env = setup();
    let host = hostname();
    std::fs::create_dir_all(env.path("standby")).unwrap();
    std::fs::write(env.path("standby/standby.signal"), "").unwrap();
    let src = env.path("src");
    let backup_as = |key: &str, text: &str| {
        std::fs::write(src.join("register.csv"), text).unwrap();
        env.run_with(key, &["backup", DS, src.to_str().unwrap()])
    };
    assert_eq!(backup_as("home.cred", "home before\n").code, 0);
    let refused = env.approve_key("a.key", &host, &public_of(&env, "home.cred"));
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("current writer"), "{refused:?}");
    env.approve("a.key", &host);
    env.approve("c.key", &host);
    let home_promotes = env.run_with(
        "home.cred",
        &[
            "promote",
            DS,
            "--data",
            env.path("standby").to_str().unwrap(),
        ],
    );
    assert_ne!(home_promotes.code, 0, "{home_promotes:?}");
    assert!(
        home_promotes.stderr.contains("with 0 of the 2 approvals"),
        "{home_promotes:?}"
    );
    assert!(env.path("standby/standby.signal").exists());
    // Home signs the entry by hand with the embassy's approvals: information, no fence.
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(env.path("site")).unwrap());
    let vault = Vault::open(site.clone()).unwrap();
    let (found, _) = approval::list_signed(site.as_ref(), &vault.config().vault_id, DS).unwrap();
    let promoted = |key: &str| {
        let history = vault.history(DS).unwrap();
        ledger::append(
            site.as_ref(),
            &signing_key(&env, key),
            DS,
            history.last(),
            Event::Promoted {
                timeline: 2,
                lsn: 1 << 24,
                host: host.clone(),
                data_dir: "/srv/pg".into(),
                data_lost_to: None,
                approvals: found
                    .iter()
                    .map(|(_, _, b)| serde_bytes::ByteBuf::from(b.clone()))
                    .collect(),
                replayed: None,
            },
        )
        .unwrap();
    };
    promoted("home.cred");
    let history = env.ok(&["history", DS]);
    assert!(history.stdout.contains("not authoritative"), "{history:?}");
    // The embassy's real takeover, with the same approvals, fences home.
    promoted("embassy.cred");
    assert_eq!(backup_as("embassy.cred", "embassy live\n").code, 0);
    let _ = backup_as("home.cred", "home after the takeover\n");
    let to = env.path("restored");
    env.ok(&["restore", DS, "--to", to.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(to.join("register.csv")).unwrap(),
        "embassy live\n"
    );
}

#[test]
fn after_an_approved_takeover_home_writes_are_ignored_by_every_reader() {
    let env = setup();
    let host = hostname();
    let src = env.path("src");
    let backup_as = |key: &str, text: &str| {
        std::fs::write(src.join("register.csv"), text).unwrap();
        env.run_with(key, &["backup", DS, src.to_str().unwrap()])
    };
    assert_eq!(backup_as("home.cred", "home before\n").code, 0);
    env.approve("a.key", &host);
    env.approve("c.key", &host);
    // The embassy's promotion, as `embassy promote` records it after pg_ctl promote.
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(env.path("site")).unwrap());
    let vault = Vault::open(site.clone()).unwrap();
    let (found, _) = approval::list_signed(site.as_ref(), &vault.config().vault_id, DS).unwrap();
    let history = vault.history(DS).unwrap();
    ledger::append(
        site.as_ref(),
        &signing_key(&env, "embassy.cred"),
        DS,
        history.last(),
        Event::Promoted {
            timeline: 2,
            lsn: 1 << 24,
            host: host.clone(),
            data_dir: "/srv/pg".into(),
            data_lost_to: None,
            approvals: found
                .into_iter()
                .map(|(_, _, b)| serde_bytes::ByteBuf::from(b))
                .collect(),
            replayed: None,
        },
    )
    .unwrap();
    assert_eq!(backup_as("embassy.cred", "embassy live\n").code, 0);
    // Home comes back with its old credential and backs up again; and a hacked client of
    // home's writes an entry after the embassy's by hand.
    let _ = backup_as("home.cred", "home after the takeover\n");
    let head = vault.history(DS).unwrap();
    ledger::append(
        site.as_ref(),
        &signing_key(&env, "home.cred"),
        DS,
        head.last(),
        Event::VersionAdded {
            manifest: embassy_core::id::ObjectId::of(b"home's diverging version"),
            kind: embassy_core::format::manifest::VersionKind::Tree,
            captured_at_ns: i64::MAX / 2,
            stats: Default::default(),
            wal_start: None,
        },
    )
    .unwrap();
    let verify = env.run_with("vault.key", &["verify"]);
    assert!(
        verify.stdout.contains("fenced by the takeover")
            || verify.stderr.contains("fenced by the takeover"),
        "{verify:?}"
    );
    let to = env.path("restored");
    env.ok(&["restore", DS, "--to", to.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(to.join("register.csv")).unwrap(),
        "embassy live\n"
    );
}
