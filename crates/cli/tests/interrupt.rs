//! Ctrl-C (SIGINT) and SIGTERM during `embassy backup` (issue 15, item 4): the real binary,
//! a real signal sent once part of the data is stored. It must say that no version was
//! recorded, how much this run stored, and that a rerun reuses it; exit 130 (SIGINT) or 143
//! (SIGTERM); and a rerun must complete, storing less than the whole.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::cli::TestVault;
use embassy_testkit::random_bytes;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const MIB: usize = 1024 * 1024;
/// Three packs' worth (16 MiB each) of incompressible data.
const DATA: usize = 48 * MIB;

/// Packs stored under `dir` (files named by their id in a `packs` folder).
fn packs(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.components().any(|c| c.as_os_str() == "packs") && stored_name(&p) {
                count += 1;
            }
        }
    }
    count
}

/// A file named by its id (64 hex digits): stored, not a temporary file being written.
fn stored_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `embassy --json backup DATASET --stdin` started with stdin piped.
fn start_backup(vault: &TestVault, dataset: &str) -> Child {
    let mut cmd = vault.embassy.command();
    cmd.arg("--site")
        .arg(&vault.site)
        .arg("--key-file")
        .arg(&vault.key)
        .arg("--state-dir")
        .arg(vault.state("m"))
        .args(["--json", "backup", dataset, "--stdin"])
        .stdin(Stdio::piped());
    cmd.spawn().expect("start embassy backup")
}

/// Feeds `data` a mebibyte at a time until a pack is stored at the site, sends `signal`, feeds
/// the rest (the run stops at its next write), and returns exit code, stdout, stderr.
fn interrupt_after_a_pack(
    vault: &TestVault,
    dataset: &str,
    data: &[u8],
    signal: i32,
) -> (i32, String, String) {
    let mut child = start_backup(vault, dataset);
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut sent = 0;
    let mut signalled = false;
    for piece in data.chunks(MIB) {
        if stdin.write_all(piece).is_err() {
            break; // it stopped reading: interrupted
        }
        sent += piece.len();
        if !signalled && sent > 16 * MIB {
            // Give it a moment to store what it was sent, then look for a pack.
            let wait = Instant::now() + Duration::from_millis(300);
            while packs(&vault.site) == 0 && Instant::now() < wait {
                std::thread::sleep(Duration::from_millis(20));
            }
            if packs(&vault.site) > 0 {
                // SAFETY: kill(2) on the child we started.
                assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
                signalled = true;
            }
        }
    }
    assert!(signalled, "no pack was stored after {sent} bytes");
    drop(stdin);
    let out = child.wait_with_output().expect("embassy backup ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_during_a_backup_records_no_version_says_so_and_a_rerun_stores_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "site");
    let data = random_bytes(DATA, 154);

    let (code, stdout, stderr) = interrupt_after_a_pack(&vault, "reg", &data, libc::SIGINT);
    assert_eq!(code, 130, "stdout:\n{stdout}\nstderr:\n{stderr}");
    eprintln!("{stderr}");
    for words in [
        "no version of reg was recorded",
        "running the same backup again reuses",
        "This run stored",
        "of data",
    ] {
        assert!(stderr.contains(words), "stderr lacks {words:?}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["version_recorded"], false, "{report}");
    let stored = report["bytes_stored"].as_u64().unwrap();
    assert!(stored >= 16 * MIB as u64, "{report}");
    assert!(report["objects_stored"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["packs_stored"].as_u64().unwrap() >= 1, "{report}");

    // The rerun completes: it is the dataset's first version, and it stores only what the
    // interrupted run had not.
    let rerun = vault.ok(
        "m",
        &vault.key,
        &["--json", "backup", "reg", "--stdin"],
        Some(&data),
    );
    let version = rerun.json();
    assert_eq!(version["version"], 1, "{version}");
    let new = version["new_bytes_stored"].as_u64().unwrap();
    eprintln!(
        "interrupted run stored {stored} bytes ({} packs, {} objects); the rerun stored {new} of \
         {DATA}",
        report["packs_stored"], report["objects_stored"]
    );
    assert!(
        new + stored / 2 < DATA as u64,
        "the rerun stored {new} bytes of {DATA}, although the first attempt had stored {stored}"
    );
    let (_, restored) = vault.restore_bytes("m", &vault.key, "reg@1");
    assert!(restored == data, "the rerun's version restores other bytes");
}

#[test]
fn sigterm_during_a_backup_exits_143_with_the_same_message() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "site");
    let data = random_bytes(DATA, 155);
    let (code, stdout, stderr) = interrupt_after_a_pack(&vault, "logs", &data, libc::SIGTERM);
    assert_eq!(code, 143, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("no version of logs was recorded"),
        "{stderr}"
    );
    let versions = vault.run("m", &vault.key, &["--json", "versions", "logs"], None);
    assert!(
        !versions.stdout.contains("\"version\":1"),
        "a version was recorded: {versions:?}"
    );
}

/// A source that sends nothing more (stdin held open): no write comes to stop the run, so the
/// process ends by itself a few seconds after Ctrl-C, with the same message and no version.
#[test]
fn ctrl_c_while_the_source_sends_nothing_still_ends_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "site");
    let mut child = start_backup(&vault, "idle");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(&random_bytes(MIB, 156)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    // SAFETY: kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut code = None;
    while signalled.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait().unwrap() {
            code = Some(status.code().unwrap_or(-1));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if code.is_none() {
        let _ = child.kill();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        code,
        Some(130),
        "still running 30 s after Ctrl-C:\n{stderr}"
    );
    assert!(
        stderr.contains("no version of idle was recorded"),
        "{stderr}"
    );
    let versions = vault.run("m", &vault.key, &["--json", "versions", "idle"], None);
    assert!(
        !versions.stdout.contains("\"version\":1"),
        "a version was recorded: {versions:?}"
    );
}
