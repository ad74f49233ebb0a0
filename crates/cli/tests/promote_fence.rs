//! Issue 17, "going live is a decision": in a vault made with `--promotion-approvals K`,
//! `embassy promote` with an embassy's sealing credential refuses before it touches the server
//! until K distinct pinned approvers have approved a takeover on this host (`embassy approve
//! --promote HOST`), and says how to get them; approvals for another host, or too few, do not
//! count. (What an approved promotion does to the old writers, the fence, is proved on the
//! acceptance rules in `core/tests/fence.rs`.)

use std::path::PathBuf;

use embassy_testkit::cli::{cheapen, passphrase_file, Embassy, Run};

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

    fn approve(&self, approver: &str, host: &str) {
        let key = self.path(approver);
        self.ok(&[
            "approve",
            "--approver-key",
            key.to_str().unwrap(),
            "--promote",
            host,
            DS,
        ]);
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

#[test]
fn promote_refuses_before_promoting_until_the_approvals_are_there() {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        pass: passphrase_file(tmp.path()),
        tmp,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
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
    let slow = env.path("embassy-slow.cred");
    env.ok(&[
        "keys",
        "issue",
        "--sealing",
        "--dataset",
        DS,
        "--label",
        "embassy",
        "--out",
        slow.to_str().unwrap(),
    ]);
    cheapen(&slow, &env.path("embassy.cred"));
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
                "embassy approve --approver-key FILE --promote {host} {DS}"
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
