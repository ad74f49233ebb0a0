//! Backup and restore selection on real trees with the real binary: excludes (patterns, exclude
//! files, CACHEDIR.TAG caches), one file system, dry runs and the changed list; restore
//! include/exclude, `--delete`, and files already identical at the target left alone.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use embassy_testkit::cli::{exec, TestVault};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

fn vault(tmp: &Path) -> TestVault {
    TestVault::init(EXE, tmp, "vault")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Every path under `root` (folders end in `/`), relative, links not followed.
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The site's objects and their sizes: a dry run must change none.
fn site_listing(site: &Path) -> BTreeSet<(PathBuf, u64)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![site.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert((p, m.len()));
            }
        }
    }
    out
}

const CACHE_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

#[test]
fn backup_leaves_out_patterns_exclude_files_and_tagged_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    write(&src, "a.txt", b"a");
    write(&src, "x.tmp", b"scratch");
    write(&src, "deep/er/y.tmp", b"scratch");
    write(&src, "keep/z.tmp", b"kept by a ! pattern");
    write(&src, "build/out.o", b"object");
    write(&src, "src/build/notes.txt", b"not the root's build");
    write(&src, "cache/CACHEDIR.TAG", CACHE_TAG);
    write(&src, "cache/blob", b"cached");
    write(&src, "fake/CACHEDIR.TAG", b"Signature: not the right one");
    write(&src, "fake/blob", b"not a cache");
    let excludes = tmp.path().join("excludes");
    fs::write(&excludes, "# build output\n\n/build\n").unwrap();
    v.ok(
        "m",
        &v.key,
        &[
            "backup",
            "docs",
            s(&src),
            "--exclude",
            "*.tmp",
            "--exclude",
            "!keep/*.tmp",
            "--exclude-file",
            s(&excludes),
            "--exclude-caches",
        ],
        None,
    );
    let out = tmp.path().join("out");
    v.ok("m", &v.key, &["restore", "docs", "--to", s(&out)], None);
    assert_eq!(
        listing(&out),
        set(&[
            "a.txt",
            "cache/",
            "cache/CACHEDIR.TAG",
            "deep/",
            "deep/er/",
            "fake/",
            "fake/CACHEDIR.TAG",
            "fake/blob",
            "keep/",
            "keep/z.tmp",
            "src/",
            "src/build/",
            "src/build/notes.txt",
        ])
    );

    // A bad pattern, or an exclude file that is not there, stops the backup before anything.
    let bad = v.run(
        "m",
        &v.key,
        &["backup", "docs", s(&src), "--exclude", "data[0-9"],
        None,
    );
    bad.fails(1, &["data[0-9", "no closing ']'"]);
    let missing = v.run(
        "m",
        &v.key,
        &[
            "backup",
            "docs",
            s(&src),
            "--exclude-file",
            "/nonexistent/excludes",
        ],
        None,
    );
    missing.fails(1, &["/nonexistent/excludes"]);
    let versions = v.ok("m", &v.key, &["--json", "versions", "docs"], None);
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(1),
        "{versions:?}"
    );
}

/// Runs `embassy ARGS` in a new user and mount namespace where `mnt` (a folder of the source)
/// has a tmpfs mounted on it holding `mnt/f`: a mount point without privileges.
fn in_mount_namespace(v: &TestVault, mnt: &Path, runs: &[Vec<String>]) {
    let inner = v.embassy.command();
    let mut script = String::from("set -e; mount -t tmpfs embassy-test \"$1\"; echo on-tmpfs > \"$1/f\"; shift; exe=\"$1\"; shift\n");
    let mut args: Vec<String> = Vec::new();
    for run in runs {
        let start = args.len() + 1;
        script.push_str("\"$exe\"");
        for i in 0..run.len() {
            script.push_str(&format!(" \"${{{}}}\"", start + i));
        }
        script.push('\n');
        args.extend(run.iter().cloned());
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(mnt)
    .arg(inner.get_program())
    .args(&args)
    .env_clear();
    for (k, val) in inner.get_envs() {
        if let Some(val) = val {
            cmd.env(k, val);
        }
    }
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let run = exec(cmd, None);
    assert_eq!(
        run.code, 0,
        "this test needs unprivileged user and mount namespaces (util-linux `unshare -rm`, \
         kernel.unprivileged_userns_clone=1): {run:?}"
    );
}

#[test]
fn one_file_system_stores_a_mount_point_as_an_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    write(&src, "a.txt", b"a");
    fs::create_dir_all(src.join("mnt")).unwrap();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--site",
            s(&v.site),
            "--quiet",
            "--key-file",
            s(&v.key),
            "--state-dir",
            s(&v.state("m")),
            "backup",
            "docs",
            s(&src),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    in_mount_namespace(
        &v,
        &src.join("mnt"),
        &[common(&[]), common(&["--one-file-system"])],
    );
    let crossed = tmp.path().join("crossed");
    v.ok(
        "m",
        &v.key,
        &["restore", "docs@1", "--to", s(&crossed)],
        None,
    );
    assert_eq!(listing(&crossed), set(&["a.txt", "mnt/", "mnt/f"]));
    let kept = tmp.path().join("kept");
    v.ok("m", &v.key, &["restore", "docs@2", "--to", s(&kept)], None);
    assert_eq!(listing(&kept), set(&["a.txt", "mnt/"]));
}

#[test]
fn dry_run_lists_new_and_changed_files_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    write(&src, "same.txt", b"unchanged");
    write(&src, "grow.txt", b"short");
    write(&src, "junk.tmp", b"excluded");
    v.ok("m", &v.key, &["backup", "docs", s(&src)], None);
    write(&src, "grow.txt", b"longer than before");
    write(&src, "sub/new.txt", b"brand new");
    write(&src, "sub/new.tmp", b"excluded too");
    let before = site_listing(&v.site);

    let run = v.ok(
        "m",
        &v.key,
        &[
            "--json",
            "backup",
            "docs",
            s(&src),
            "--dry-run",
            "--exclude",
            "*.tmp",
        ],
        None,
    );
    let plan = run.json();
    assert_eq!(plan["dry_run"], true, "{plan}");
    let changed: Vec<(String, u64, bool)> = plan["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["size"].as_u64().unwrap(),
                c["new"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        vec![
            (s(&src.join("grow.txt")).to_string(), 18, false),
            (s(&src.join("sub/new.txt")).to_string(), 9, true),
        ]
    );
    assert_eq!(plan["changed_bytes"], 27);
    assert_eq!(plan["files"], 3);
    assert_eq!(plan["bytes"], 9 + 18 + 9);
    assert_eq!(site_listing(&v.site), before, "a dry run wrote to the site");
    let versions = v.ok("m", &v.key, &["--json", "versions", "docs"], None);
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(1)
    );

    // The text form lists them too.
    let text = v.ok("m", &v.key, &["backup", "docs", s(&src), "--dry-run"], None);
    assert!(
        text.stdout.contains("changed") && text.stdout.contains("grow.txt"),
        "{text:?}"
    );
    assert!(text.stdout.contains("dry run, nothing stored"), "{text:?}");
    assert!(!text.stdout.contains("same.txt"), "{text:?}");

    // A real backup with --verbose lists what it read, and only that.
    let real = v.ok(
        "m",
        &v.key,
        &["backup", "docs", s(&src), "--verbose", "--exclude", "*.tmp"],
        None,
    );
    let lines: Vec<&str> = real.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("changed") && l.ends_with("/grow.txt")),
        "{real:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("new") && l.ends_with("/sub/new.txt")),
        "{real:?}"
    );
    assert!(!real.stdout.contains("same.txt"), "{real:?}");
    assert!(!real.stdout.contains("new.tmp"), "{real:?}");
}

fn tree_version(tmp: &Path) -> (TestVault, PathBuf) {
    let v = vault(tmp);
    let src = tmp.join("src");
    write(&src, "report.csv", b"1,2,3");
    write(&src, "notes.txt", b"notes");
    write(&src, "data/2026/jan.csv", b"jan");
    write(&src, "data/2026/feb.csv", b"feb");
    write(&src, "data/readme.txt", b"readme");
    write(&src, "old/archive.csv", b"old");
    v.ok("m", &v.key, &["backup", "docs", s(&src)], None);
    (v, src)
}

#[test]
fn restore_includes_and_excludes_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, _) = tree_version(tmp.path());
    let out = tmp.path().join("out");
    v.ok(
        "m",
        &v.key,
        &[
            "restore",
            "docs",
            "--to",
            s(&out),
            "--include",
            "*.csv",
            "--exclude",
            "old/",
        ],
        None,
    );
    assert_eq!(
        listing(&out),
        set(&[
            "data/",
            "data/2026/",
            "data/2026/feb.csv",
            "data/2026/jan.csv",
            "report.csv"
        ])
    );
    // Anchored patterns, with --path: patterns are the version's paths.
    let part = tmp.path().join("part");
    v.ok(
        "m",
        &v.key,
        &[
            "restore",
            "docs",
            "--to",
            s(&part),
            "--path",
            "data",
            "--exclude",
            "/data/2026/jan.csv",
        ],
        None,
    );
    assert_eq!(
        listing(&part),
        set(&[
            "data/",
            "data/2026/",
            "data/2026/feb.csv",
            "data/readme.txt"
        ])
    );
    // Not for a stream.
    v.backup_bytes("m", "dump", b"bytes");
    let refused = v.run(
        "m",
        &v.key,
        &[
            "restore",
            "dump",
            "--to",
            s(&tmp.path().join("f")),
            "--include",
            "x",
        ],
        None,
    );
    refused.fails(1, &["not a file tree"]);
}

#[test]
fn restore_delete_removes_only_what_the_version_lacks_under_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, _) = tree_version(tmp.path());
    let out = tmp.path().join("out");
    v.ok("m", &v.key, &["restore", "docs", "--to", s(&out)], None);
    // Outside the target: must survive whatever links inside point at it.
    let outside = tmp.path().join("outside");
    write(&outside, "precious", b"not yours");
    write(&out, "extra.txt", b"stale");
    write(&out, "data/stale/deep.bin", b"stale");
    write(&out, "data/keep.log", b"excluded, so protected");
    symlink(&outside, out.join("link-to-outside")).unwrap();
    symlink(&outside, out.join("data/dirlink")).unwrap();
    // Where the version has a file, a folder; where it has a folder, a file.
    fs::remove_file(out.join("notes.txt")).unwrap();
    write(&out, "notes.txt/inner", b"in the way");
    fs::remove_dir_all(out.join("old")).unwrap();
    fs::write(out.join("old"), b"in the way").unwrap();

    let run = v.ok(
        "m",
        &v.key,
        &[
            "--json",
            "restore",
            "docs",
            "--to",
            s(&out),
            "--delete",
            "--exclude",
            "*.log",
        ],
        None,
    );
    let report = run.json();
    assert_eq!(report["deleted"], 6, "{report}");
    assert_eq!(
        listing(&out),
        set(&[
            "data/",
            "data/2026/",
            "data/2026/feb.csv",
            "data/2026/jan.csv",
            "data/keep.log",
            "data/readme.txt",
            "notes.txt",
            "old/",
            "old/archive.csv",
            "report.csv",
        ])
    );
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"not yours");
    assert_eq!(fs::read(out.join("notes.txt")).unwrap(), b"notes");

    // With --path, only the restored folder is cleaned.
    write(&out, "beside.txt", b"not under data/");
    write(&out, "data/stale.txt", b"stale");
    v.ok(
        "m",
        &v.key,
        &[
            "restore",
            "docs",
            "--to",
            s(&out),
            "--path",
            "data",
            "--delete",
        ],
        None,
    );
    assert!(out.join("beside.txt").exists());
    assert!(!out.join("data/stale.txt").exists());
    // Not excluded this time: the log goes.
    assert!(!out.join("data/keep.log").exists());
}

#[test]
fn restore_skips_identical_files_and_catches_same_size_same_mtime_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    // Big enough for several chunks.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&src, "big.bin", &big);
    write(&src, "small.txt", b"small file");
    write(&src, "sub/other.txt", b"other file");
    v.ok("m", &v.key, &["backup", "docs", s(&src)], None);
    let out = tmp.path().join("out");
    v.ok("m", &v.key, &["restore", "docs", "--to", s(&out)], None);

    let again = v.ok(
        "m",
        &v.key,
        &["--json", "restore", "docs", "--to", s(&out), "--overwrite"],
        None,
    );
    let r = again.json();
    assert_eq!(r["skipped_files"], 3, "{r}");
    assert_eq!(r["skipped_bytes"], big.len() as u64 + 20, "{r}");
    assert_eq!(r["bytes"], 0, "{r}");

    // Same size, same mtime, other content (one byte deep inside the big file, and a small
    // file rewritten): found by the content check, restored.
    let mtime = fs::metadata(out.join("big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let mut changed = big.clone();
    changed[2_000_000] ^= 1;
    fs::write(out.join("big.bin"), &changed).unwrap();
    fs::write(out.join("small.txt"), b"SMALL FILE").unwrap();
    for f in ["big.bin", "small.txt"] {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(out.join(f))
            .unwrap();
        file.set_modified(mtime).unwrap();
    }
    // A link where a file was: replaced, never read through.
    fs::remove_file(out.join("sub/other.txt")).unwrap();
    symlink(src.join("sub/other.txt"), out.join("sub/other.txt")).unwrap();
    let fixed = v.ok(
        "m",
        &v.key,
        &["--json", "restore", "docs", "--to", s(&out), "--overwrite"],
        None,
    );
    let r = fixed.json();
    assert_eq!(r["skipped_files"], 0, "{r}");
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(out.join("small.txt")).unwrap(), b"small file");
    assert!(fs::symlink_metadata(out.join("sub/other.txt"))
        .unwrap()
        .is_file());
    // The version's mtime is put back on files kept as they were, too.
    let old = SystemTime::now() - Duration::from_secs(86_400);
    fs::OpenOptions::new()
        .write(true)
        .open(out.join("small.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let text = v.ok(
        "m",
        &v.key,
        &["restore", "docs", "--to", s(&out), "--overwrite"],
        None,
    );
    assert!(text.stderr.contains("3 files ("), "{text:?}");
    assert_eq!(
        fs::metadata(out.join("small.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(src.join("small.txt"))
            .unwrap()
            .modified()
            .unwrap()
    );
}

/// `embassy` in `dir` with its state, key file and passphrase file there (the agent's way).
fn in_dir(dir: &Path, args: &[&str]) -> embassy_testkit::cli::Run {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_PASSPHRASE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    exec(cmd, None)
}

#[test]
fn the_agent_applies_a_datasets_selection_from_embassy_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("passphrase"), "agent test passphrase\n").unwrap();
    in_dir(
        dir,
        &[
            "--site",
            "sites/a",
            "--passphrase-file",
            "passphrase",
            "init",
        ],
    )
    .ok();
    let data = dir.join("data");
    write(&data, "a.txt", b"a");
    write(&data, "b.tmp", b"scratch");
    write(&data, "build/out.o", b"object");
    write(&data, "cache/CACHEDIR.TAG", CACHE_TAG);
    write(&data, "cache/blob", b"cached");
    fs::write(dir.join("excludes"), "# from a file\n/build\n").unwrap();
    let config = |selection: &str| {
        format!(
            "[agent]\nstate_dir = \"state\"\n[keys]\nfile = \"vault.key\"\n\
             passphrase_file = \"passphrase\"\n[[sites]]\nname = \"a\"\npath = \"sites/a\"\n\
             [[datasets]]\nname = \"docs\"\n\
             source = {{ files = [\"data\"]{selection} }}\n\
             interval = \"1h\"\nrpo = \"2h\"\n"
        )
    };
    fs::write(
        dir.join("embassy.toml"),
        config(
            ", exclude = [\"*.tmp\"], exclude_file = \"excludes\", exclude_caches = true, \
             one_file_system = true",
        ),
    )
    .unwrap();
    in_dir(dir, &["config", "check", "embassy.toml"]).ok();
    in_dir(dir, &["agent", "--config", "embassy.toml", "--once"]).ok();
    in_dir(
        dir,
        &[
            "--site",
            "sites/a",
            "--passphrase-file",
            "passphrase",
            "restore",
            "docs",
            "--to",
            "restored",
        ],
    )
    .ok();
    assert_eq!(
        listing(&dir.join("restored")),
        set(&["a.txt", "cache/", "cache/CACHEDIR.TAG"])
    );

    // Mistakes are reported with their line and field, before anything runs.
    for (selection, words) in [
        (
            ", exclude = [\"data[0-9\"]",
            "source.exclude[0]: pattern \"data[0-9\"",
        ),
        (
            ", exclude = \"*.tmp\"",
            "source.exclude: expected a list of patterns",
        ),
        (
            ", exclude_file = \"no-such-file\"",
            "cannot read the exclude file",
        ),
        (
            ", exclude_caches = \"yes\"",
            "source.exclude_caches: expected true or false",
        ),
    ] {
        fs::write(dir.join("embassy.toml"), config(selection)).unwrap();
        let run = in_dir(dir, &["config", "check", "embassy.toml"]);
        run.fails(2, &["embassy.toml:11:", words]);
    }
    fs::write(
        dir.join("embassy.toml"),
        config("").replace(
            "files = [\"data\"]",
            "command = \"cat data/a.txt\", exclude = [\"x\"]",
        ),
    )
    .unwrap();
    in_dir(dir, &["config", "check", "embassy.toml"]).fails(2, &["apply to a files source only"]);
}

#[test]
fn a_restore_with_delete_that_fails_removes_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    // Incompressible (xorshift), so the pack holds a megabyte of it.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    write(&src, "big.bin", &big);
    write(&src, "small.txt", b"small");
    v.ok("m", &v.key, &["backup", "docs", s(&src)], None);
    let out = tmp.path().join("out");
    v.ok("m", &v.key, &["restore", "docs", "--to", s(&out)], None);
    write(&out, "extra.txt", b"mine, not the version's");
    fs::write(out.join("big.bin"), b"changed: must be fetched again").unwrap();
    // Damage the file's data in the pack (its trees are stored after it, at the end).
    let pack = site_listing(&v.site)
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .unwrap()
        .0;
    let mut bytes = fs::read(&pack).unwrap();
    assert!(bytes.len() > 500_000, "{}", pack.display());
    bytes[300_000] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    let run = v.run(
        "m",
        &v.key,
        &["restore", "docs", "--to", s(&out), "--delete"],
        None,
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        out.join("extra.txt").exists(),
        "a failed restore deleted extra.txt"
    );
}

/// A file at the target that is a hard link to a file outside it, with the version's bytes, is
/// not "already identical": it is replaced by a file of its own, and the outside file keeps its
/// mode, modification time and bytes (red team 4, break 3).
#[test]
fn restore_replaces_a_hard_link_to_an_outside_file_and_leaves_that_file_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let (v, _src) = tree_version(tmp.path());
    let out = tmp.path().join("out");
    v.ok("m", &v.key, &["restore", "docs", "--to", s(&out)], None);

    let outside = tmp.path().join("outside");
    write(&outside, "secret", b"notes");
    let secret = outside.join("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    fs::OpenOptions::new()
        .write(true)
        .open(&secret)
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::remove_file(out.join("notes.txt")).unwrap();
    fs::hard_link(&secret, out.join("notes.txt")).unwrap();

    for flag in ["--delete", "--overwrite"] {
        let run = v.ok(
            "m",
            &v.key,
            &["--json", "restore", "docs", "--to", s(&out), flag],
            None,
        );
        let r = run.json();
        let before = fs::metadata(&secret).unwrap();
        assert_eq!(
            before.mode() & 0o7777,
            0o600,
            "{flag}: outside mode changed"
        );
        assert_eq!(
            before.modified().unwrap(),
            old,
            "{flag}: outside mtime changed"
        );
        assert_eq!(before.nlink(), 1, "{flag}: still linked into the target");
        assert_eq!(fs::read(&secret).unwrap(), b"notes");
        let restored = fs::symlink_metadata(out.join("notes.txt")).unwrap();
        assert!(restored.is_file());
        assert_ne!(restored.ino(), before.ino(), "{flag}: same inode");
        assert_eq!(restored.nlink(), 1);
        assert_eq!(fs::read(out.join("notes.txt")).unwrap(), b"notes");
        // Writing the outside file does not change the restored one.
        fs::write(&secret, b"EVIL!").unwrap();
        assert_eq!(fs::read(out.join("notes.txt")).unwrap(), b"notes");
        fs::write(&secret, b"notes").unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&secret)
            .unwrap()
            .set_modified(old)
            .unwrap();
        if flag == "--delete" {
            assert_eq!(r["skipped_files"], 5, "{r}");
            // Link it again for the --overwrite round.
            fs::remove_file(out.join("notes.txt")).unwrap();
            fs::hard_link(&secret, out.join("notes.txt")).unwrap();
        }
    }
}
