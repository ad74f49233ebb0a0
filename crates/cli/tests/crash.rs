//! Crash and full-disk tests of `embassy backup` (invariants 7 and 9): real processes, real
//! signals, a real full file system.
//!
//! * `killed_backups_leave_a_consistent_vault_and_resume`: a ~280 MB tree (many files, mixed
//!   random and compressible content), version 1, then a modified tree (~500 MB changed) whose
//!   backup takes a few seconds. Its backup is killed with SIGKILL 20 times at random moments
//!   within the calibrated duration of an uninterrupted run (interrupted runs accumulate in one
//!   vault, as in a crash loop, until one completes version 2), then right after the manifest
//!   appears (until a kill lands before the ledger entry). Also: SIGTERM and SIGINT mid-pack, and
//!   a kill with over half of the new data stored, after which the rerun must store only the
//!   rest. After every kill the vault verifies (leftovers allowed), version 1 restores
//!   byte-identically (content, mode, mtime), and the versions are 1, or 1 and a complete 2
//!   (which then restores too). A final rerun completes, restores the modified tree and passes
//!   `verify --deep`.
//! * `full_disk_fails_cleanly_and_recovers`: the vault on a small tmpfs (and a loop-mounted ext4
//!   when one can be made), filled up by a backup larger than the free space.
//!
//! Randomness (tree contents, kill moments) comes from one seed, printed at the start; set
//! EMBASSY_CRASH_SEED to reuse it (kill moments still depend on the machine's speed).
//! EMBASSY_CRASH_SCALE (default 1.0) scales the larger files, for slower or faster machines.
//! Both tests need Unix; the full-disk one needs root (to mount) and fails loudly without it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use embassy_testkit::cli::Embassy as Cli;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_embassy");
const DS: &str = "land-registry";
const MIB: usize = 1024 * 1024;
/// Random SIGKILLs of the version 2 backup.
const RANDOM_KILLS: usize = 20;

/// The tests measure backup durations and load both cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn seed() -> u64 {
    let seed = std::env::var("EMBASSY_CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (set EMBASSY_CRASH_SEED={seed} to reuse it)");
    seed
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// The CLI pointed at one vault.
#[derive(Clone)]
struct Embassy {
    site: PathBuf,
    key: PathBuf,
}

impl Embassy {
    fn at(&self, site: &Path) -> Embassy {
        Embassy {
            site: site.to_path_buf(),
            key: self.key.clone(),
        }
    }

    /// Where the CLI remembers what it has seen of this vault: one folder per vault folder (the
    /// test's vault copies share a vault id but are separate histories), next to the key file so
    /// that it is never on the file system being filled.
    fn state_dir(&self) -> PathBuf {
        let name = self.site.file_name().unwrap_or(OsStr::new("site"));
        self.key.with_file_name("state").join(name)
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // The test kit's command: a clean environment, its passphrase, output captured; the
        // home next to the key file, never on the file system being filled.
        let home = self.key.parent().unwrap_or(Path::new("."));
        let mut cmd = Cli::new(BIN, home)
            .env("EMBASSY_STATE_DIR", self.state_dir())
            .command();
        cmd.arg("--site")
            .arg(&self.site)
            .arg("--key-file")
            .arg(&self.key)
            .arg("--quiet")
            .args(args);
        // A shell runs background jobs with SIGINT ignored, and that disposition is inherited
        // across exec: give the child the default dispositions a terminal user's command has,
        // so the signal tests test embassy, not how the test runner was started.
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd
    }

    fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).output().expect("running embassy")
    }

    /// Runs a command that must succeed and print JSON.
    fn json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = vec![OsStr::new("--json").to_os_string()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "embassy {all:?} failed: {}",
            show(&out)
        );
        parse_json(&out)
    }

    fn spawn_backup(&self, tree: &Path) -> Child {
        self.command([OsStr::new("--json"), OsStr::new("backup"), OsStr::new(DS)])
            .arg(tree)
            .spawn()
            .expect("starting embassy backup")
    }

    /// `versions DS --json`.
    fn versions(&self) -> Vec<Value> {
        match self.json(["versions", DS])["versions"].take() {
            Value::Array(v) => v,
            other => panic!("versions printed {other}"),
        }
    }

    /// Restores `DS@version` into a new folder under `scratch` and compares it with `expected`.
    fn check_restore(&self, version: &str, expected: &Path, scratch: &Path) -> Result<(), String> {
        let to = scratch.join(format!("restore-{}", rand::random::<u64>()));
        let out = self.run([
            OsStr::new("--json"),
            OsStr::new("restore"),
            OsStr::new(&format!("{DS}@{version}")),
            OsStr::new("--to"),
            to.as_os_str(),
        ]);
        let result = if out.status.success() {
            diff_trees(expected, &to)
        } else {
            Err(format!("restore of {DS}@{version} failed: {}", show(&out)))
        };
        let _ = fs::remove_dir_all(&to);
        result
    }

    /// `verify` (or `verify --deep`) must exit 0; returns its report.
    fn verify_ok(&self, deep: bool) -> Value {
        let mut args = vec!["--json", "verify"];
        if deep {
            args.push("--deep");
        }
        let out = self.run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "verify{} of {} failed: {}",
            if deep { " --deep" } else { "" },
            self.site.display(),
            show(&out)
        );
        let report = parse_json(&out);
        assert_eq!(report["ok"], Value::Bool(true), "verify report: {report}");
        report
    }
}

fn parse_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(out)))
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn send_signal(child: &Child, signal: libc::c_int) {
    // The child is not reaped before we wait for it, so its pid cannot have been reused.
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

fn backup_number(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Making, copying and comparing trees.

#[derive(Clone, Copy)]
enum Kind {
    /// Incompressible.
    Random,
    /// Words: compresses several-fold.
    Text,
    /// Mostly zeros with random islands.
    Sparse,
}

/// Seeded content generator.
struct Gen {
    rng: StdRng,
    words: Vec<Vec<u8>>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        const SYLLABLES: [&str; 16] = [
            "ka", "ro", "ti", "len", "mar", "vo", "se", "ul", "pri", "da", "ne", "gor", "shi",
            "ta", "bel", "o",
        ];
        let words = (0..1024)
            .map(|_| {
                let n = rng.gen_range(1..=4);
                (0..n)
                    .flat_map(|_| SYLLABLES[rng.gen_range(0..16)].bytes())
                    .collect()
            })
            .collect();
        Self { rng, words }
    }

    fn content(&mut self, kind: Kind, len: usize) -> Vec<u8> {
        match kind {
            Kind::Random => {
                let mut v = vec![0u8; len];
                self.rng.fill_bytes(&mut v);
                v
            }
            Kind::Text => {
                let mut v = Vec::with_capacity(len + 64);
                while v.len() < len {
                    let r = self.rng.next_u64();
                    for k in 0..4 {
                        let bits = (r >> (16 * k)) as usize;
                        v.extend_from_slice(&self.words[bits & 1023]);
                        v.push(if bits & 0xf000 == 0 { b'\n' } else { b' ' });
                    }
                }
                v.truncate(len);
                v
            }
            Kind::Sparse => {
                let mut v = vec![0u8; len];
                let mut at = 0;
                while at < len {
                    let island = self.rng.gen_range(512..8192).min(len - at);
                    self.rng.fill_bytes(&mut v[at..at + island]);
                    at += island + self.rng.gen_range(16 * 1024..96 * 1024);
                }
                v
            }
        }
    }

    fn kind(&mut self) -> Kind {
        match self.rng.gen_range(0..10) {
            0..=4 => Kind::Random,
            5..=8 => Kind::Text,
            _ => Kind::Sparse,
        }
    }

    /// A past modification time with nanoseconds.
    fn mtime(&mut self) -> i64 {
        (1_500_000_000 + self.rng.gen_range(0..200_000_000i64)) * 1_000_000_000
            + self.rng.gen_range(0..1_000_000_000i64)
    }

    fn file_mode(&mut self) -> u32 {
        [0o644, 0o600, 0o640, 0o755, 0o444, 0o664][self.rng.gen_range(0..6)]
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// Sets atime and mtime, not following a final symlink.
fn set_mtime(path: &Path, ns: i64) {
    let ts = libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    let times = [ts, ts];
    let c = c_path(path);
    // SAFETY: valid path and two valid timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn mtime_ns(meta: &fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn mkfifo(path: &Path) {
    let c = c_path(path);
    // SAFETY: valid path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o640) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Writes a file with this content, mode and mtime (replacing its content if it exists).
fn write_file(path: &Path, data: &[u8], mode: u32, mtime: i64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("creating folder");
    }
    if let Ok(meta) = fs::metadata(path) {
        // Root ignores modes, but a non-root run must still be able to rewrite 0444 files.
        let mut p = meta.permissions();
        p.set_mode(0o600);
        fs::set_permissions(path, p).expect("chmod");
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(path, mtime);
}

/// Sets the mtimes of every folder below `root` (deepest first), as a tree's last step.
fn settle_dir_times(gen: &mut Gen, root: &Path) {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("listing") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
                dirs.push(e.path());
            }
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        set_mtime(&d, gen.mtime());
    }
}

/// What a generated tree holds.
#[derive(Default, Debug)]
struct TreeStats {
    files: u64,
    bytes: u64,
}

/// The version 1 tree: a few big files, many medium ones, hundreds of small ones, symlinks, a
/// fifo and an empty folder; mixed compressible and random content; varied modes and mtimes.
fn build_tree(gen: &mut Gen, root: &Path, scale: f64) -> TreeStats {
    let mut stats = TreeStats::default();
    let mut file = |gen: &mut Gen, path: PathBuf, len: usize| {
        let kind = gen.kind();
        let data = gen.content(kind, len);
        let (mode, mtime) = (gen.file_mode(), gen.mtime());
        write_file(&path, &data, mode, mtime);
        stats.files += 1;
        stats.bytes += len as u64;
    };
    let scaled = |n: usize| ((n as f64) * scale) as usize;
    for i in 0..6 {
        let len = gen.rng.gen_range(scaled(16 * MIB)..scaled(32 * MIB));
        file(gen, root.join(format!("big/archive-{i}.bin")), len);
    }
    for d in 0..8 {
        for m in 0..5 {
            let len = gen.rng.gen_range(scaled(MIB / 2)..scaled(4 * MIB));
            file(gen, root.join(format!("data/d{d:02}/m-{m}.dat")), len);
        }
    }
    for s in 0..20 {
        for f in 0..30 {
            let len = gen.rng.gen_range(0..96 * 1024);
            file(gen, root.join(format!("small/s{s:02}/f-{f:03}.txt")), len);
        }
    }
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    symlink("../big/archive-0.bin", root.join("small/link-to-big")).expect("symlink");
    symlink("does/not/exist", root.join("small/dangling")).expect("symlink");
    mkfifo(&root.join("small/pipe"));
    for p in ["small/link-to-big", "small/dangling", "small/pipe"] {
        set_mtime(&root.join(p), gen.mtime());
    }
    settle_dir_times(gen, root);
    stats
}

/// Turns the version 1 tree into the version 2 tree: rewritten, partly overwritten, appended,
/// truncated, renamed, deleted and new files, metadata-only changes, a retargeted symlink.
fn modify_tree(gen: &mut Gen, root: &Path, scale: f64) {
    let scaled = |n: usize| ((n as f64) * scale) as usize;
    let rewrite = |gen: &mut Gen, path: &Path, kind: Kind| {
        let len = fs::metadata(path).expect("stat").len() as usize;
        let data = gen.content(kind, len);
        let (mode, mtime) = (gen.file_mode(), gen.mtime());
        write_file(path, &data, mode, mtime);
    };
    // Whole files rewritten.
    rewrite(gen, &root.join("big/archive-0.bin"), Kind::Random);
    rewrite(gen, &root.join("big/archive-1.bin"), Kind::Text);
    rewrite(gen, &root.join("big/archive-5.bin"), Kind::Random);
    // 2 MiB overwritten in the middle, in place.
    {
        let path = root.join("big/archive-2.bin");
        let patch = gen.content(Kind::Random, 2 * MIB);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(10 * MIB as u64)).expect("seek");
        f.write_all(&patch).expect("patch");
    }
    // Appended.
    {
        let path = root.join("big/archive-3.bin");
        let more = gen.content(Kind::Text, 8 * MIB);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&more).expect("append");
    }
    // Truncated to half.
    {
        let path = root.join("big/archive-4.bin");
        let len = fs::metadata(&path).expect("stat").len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
    }
    // A folder deleted, a file renamed, medium files rewritten.
    fs::remove_dir_all(root.join("data/d03")).expect("rm");
    fs::rename(
        root.join("data/d01/m-0.dat"),
        root.join("data/d01/m-0.renamed"),
    )
    .expect("rename");
    for d in [0, 2, 5] {
        let kind = gen.kind();
        rewrite(gen, &root.join(format!("data/d{d:02}/m-1.dat")), kind);
    }
    // New data.
    for i in 0..60 {
        let len = gen.rng.gen_range(scaled(2 * MIB)..scaled(7 * MIB));
        let kind = gen.kind();
        let data = gen.content(kind, len);
        let (mode, mtime) = (gen.file_mode(), gen.mtime());
        write_file(
            &root.join(format!("incoming/batch-{}/n-{i}.dat", i % 6)),
            &data,
            mode,
            mtime,
        );
    }
    {
        let data = gen.content(Kind::Random, scaled(64 * MIB));
        let mtime = gen.mtime();
        write_file(&root.join("incoming/dump.bin"), &data, 0o600, mtime);
    }
    for f in 0..50 {
        let len = gen.rng.gen_range(0..64 * 1024);
        let data = gen.content(Kind::Text, len);
        let mtime = gen.mtime();
        write_file(
            &root.join(format!("small/s05/new-{f:03}.txt")),
            &data,
            0o644,
            mtime,
        );
    }
    // Metadata only.
    for s in 0..10 {
        let path = root.join(format!("small/s{s:02}/f-007.txt"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod");
        set_mtime(&root.join(format!("small/s{s:02}/f-011.txt")), gen.mtime());
    }
    // A retargeted symlink, a file replaced by a symlink.
    fs::remove_file(root.join("small/link-to-big")).expect("rm link");
    symlink("../big/archive-5.bin", root.join("small/link-to-big")).expect("symlink");
    fs::remove_file(root.join("small/s19/f-000.txt")).expect("rm");
    symlink("f-001.txt", root.join("small/s19/f-000.txt")).expect("symlink");
    for p in ["small/link-to-big", "small/s19/f-000.txt"] {
        set_mtime(&root.join(p), gen.mtime());
    }
    settle_dir_times(gen, root);
}

/// A copy of `src` in `dst` with the same content, modes and mtimes (the reference to compare
/// restores with).
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    let mut dirs = Vec::new();
    copy_dir(src, dst, &mut dirs);
    for (d, mtime) in dirs.into_iter().rev() {
        set_mtime(&d, mtime);
    }
}

fn copy_dir(src: &Path, dst: &Path, dirs: &mut Vec<(PathBuf, i64)>) {
    for e in fs::read_dir(src).expect("listing") {
        let e = e.expect("entry");
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = fs::symlink_metadata(&from).expect("stat");
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).expect("mkdir");
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .expect("chmod");
            dirs.push((to.clone(), mtime_ns(&meta)));
            copy_dir(&from, &to, dirs);
        } else if ft.is_file() {
            fs::copy(&from, &to).expect("copy");
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .expect("chmod");
            set_mtime(&to, mtime_ns(&meta));
        } else if ft.is_symlink() {
            symlink(fs::read_link(&from).expect("readlink"), &to).expect("symlink");
            set_mtime(&to, mtime_ns(&meta));
        } else if ft.is_fifo() {
            mkfifo(&to);
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .expect("chmod");
            set_mtime(&to, mtime_ns(&meta));
        }
    }
}

/// Compares two trees below their roots: names, types, modes, mtimes (ns), file content and
/// link targets. The roots' own metadata is not compared (a restore target keeps its own).
fn diff_trees(expected: &Path, actual: &Path) -> Result<(), String> {
    let names = |dir: &Path| -> Result<BTreeSet<Vec<u8>>, String> {
        fs::read_dir(dir)
            .map_err(|e| format!("listing {}: {e}", dir.display()))?
            .map(|e| {
                e.map(|e| e.file_name().as_bytes().to_vec())
                    .map_err(|e| e.to_string())
            })
            .collect()
    };
    let (want, got) = (names(expected)?, names(actual)?);
    if want != got {
        let missing: Vec<_> = want
            .difference(&got)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let extra: Vec<_> = got
            .difference(&want)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        return Err(format!(
            "{}: missing {missing:?}, unexpected {extra:?}",
            actual.display()
        ));
    }
    for name in want {
        let name = OsStr::from_bytes(&name);
        let (e, a) = (expected.join(name), actual.join(name));
        let em = fs::symlink_metadata(&e).map_err(|x| format!("{}: {x}", e.display()))?;
        let am = fs::symlink_metadata(&a).map_err(|x| format!("{}: {x}", a.display()))?;
        let (et, at) = (em.file_type(), am.file_type());
        let same_type = (et.is_dir(), et.is_file(), et.is_symlink(), et.is_fifo())
            == (at.is_dir(), at.is_file(), at.is_symlink(), at.is_fifo());
        if !same_type {
            return Err(format!("{}: type {:?}, expected {:?}", a.display(), at, et));
        }
        if !et.is_symlink() && em.mode() & 0o7777 != am.mode() & 0o7777 {
            return Err(format!(
                "{}: mode {:o}, expected {:o}",
                a.display(),
                am.mode() & 0o7777,
                em.mode() & 0o7777
            ));
        }
        if mtime_ns(&em) != mtime_ns(&am) {
            return Err(format!(
                "{}: mtime {} ns, expected {} ns",
                a.display(),
                mtime_ns(&am),
                mtime_ns(&em)
            ));
        }
        if et.is_symlink() {
            let (lt, la) = (fs::read_link(&e), fs::read_link(&a));
            if lt.as_ref().ok() != la.as_ref().ok() {
                return Err(format!("{}: link to {la:?}, expected {lt:?}", a.display()));
            }
        } else if et.is_file() {
            same_content(&e, &a)?;
        } else if et.is_dir() {
            diff_trees(&e, &a)?;
        }
    }
    Ok(())
}

fn same_content(expected: &Path, actual: &Path) -> Result<(), String> {
    let open = |p: &Path| fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let (mut ef, mut af) = (open(expected)?, open(actual)?);
    let (el, al) = (
        ef.metadata().map_err(|e| e.to_string())?.len(),
        af.metadata().map_err(|e| e.to_string())?.len(),
    );
    if el != al {
        return Err(format!("{}: {al} bytes, expected {el}", actual.display()));
    }
    let (mut eb, mut ab) = (vec![0u8; MIB], vec![0u8; MIB]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut ef, &mut eb).map_err(|e| e.to_string())?;
        let m = read_full(&mut af, &mut ab).map_err(|e| e.to_string())?;
        if n != m || eb[..n] != ab[..m] {
            return Err(format!(
                "{}: content differs in the MiB at offset {offset}",
                actual.display()
            ));
        }
        if n == 0 {
            return Ok(());
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Vault folders (looked at from outside, as an operator would).

/// A copy of a vault made of hard links. Safe because a local site never writes into an
/// existing file: objects are created once (temporary file, then link(2)) and never changed.
fn link_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for e in fs::read_dir(src).expect("listing") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            link_tree(&e.path(), &to);
        } else {
            fs::hard_link(e.path(), &to).expect("link");
        }
    }
}

/// The objects of the test dataset in a vault folder, and the temporary files in `tmp/`.
#[derive(Default, Clone, Debug)]
struct Listing {
    packs: BTreeMap<String, u64>,
    indexes: BTreeSet<String>,
    manifests: BTreeSet<String>,
    ledger: BTreeSet<String>,
    partial: usize,
}

fn files_below(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return; // not created yet, or removed while we looked
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => files_below(&e.path(), out),
            Ok(_) => {
                if let Ok(m) = e.metadata() {
                    out.push((e.path(), m.len()));
                }
            }
            Err(_) => {}
        }
    }
}

fn names_below(dir: &Path) -> BTreeMap<String, u64> {
    let mut files = Vec::new();
    files_below(dir, &mut files);
    files
        .into_iter()
        .map(|(p, len)| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), len)
        })
        .collect()
}

fn listing(site: &Path) -> Listing {
    let keys = |m: BTreeMap<String, u64>| m.into_keys().collect();
    Listing {
        packs: names_below(&site.join("packs").join(DS)),
        indexes: keys(names_below(&site.join("index").join(DS))),
        manifests: keys(names_below(&site.join("manifests").join(DS))),
        ledger: keys(names_below(&site.join("ledger").join(DS))),
        partial: names_below(&site.join("tmp")).len(),
    }
}

/// What one interrupted run left, compared with the vault before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// No new pack: killed while starting, scanning, or reading already-stored data.
    BeforeFirstPack,
    /// Packs stored, no manifest.
    DuringPacks,
    /// The manifest is stored but not the ledger entry: the version does not exist.
    ManifestNoLedger,
    /// The ledger entry is stored: version 2 exists.
    Complete,
}

struct Delta {
    stage: Stage,
    new_packs: usize,
    new_pack_bytes: u64,
    new_indexes: usize,
    partial: usize,
}

fn delta(before: &Listing, after: &Listing) -> Delta {
    let new_packs: Vec<u64> = after
        .packs
        .iter()
        .filter(|(k, _)| !before.packs.contains_key(*k))
        .map(|(_, v)| *v)
        .collect();
    let new_indexes = after.indexes.difference(&before.indexes).count();
    let new_manifest = after.manifests.difference(&before.manifests).count() > 0;
    let new_ledger = after.ledger.difference(&before.ledger).count() > 0;
    let stage = if new_ledger {
        Stage::Complete
    } else if new_manifest {
        Stage::ManifestNoLedger
    } else if new_packs.is_empty() {
        Stage::BeforeFirstPack
    } else {
        Stage::DuringPacks
    };
    Delta {
        stage,
        new_packs: new_packs.len(),
        new_pack_bytes: new_packs.iter().sum(),
        new_indexes,
        partial: after.partial,
    }
}

// ---------------------------------------------------------------------------------------------
// The kill test.

/// Everything fixed once version 1 exists.
struct Fixture {
    work: PathBuf,
    /// The tree, modified after version 1 (the source of every version 2 backup).
    tree: PathBuf,
    /// A copy of the tree as version 1 stored it.
    reference_v1: PathBuf,
    /// The vault with version 1 only; never written to (runs use hard-link copies).
    base: PathBuf,
    embassy: Embassy,
    v1_id: String,
    /// Duration of an uninterrupted version 2 backup (process start to exit).
    full_duration: Duration,
    /// Its new_bytes_stored.
    full_new_bytes: u64,
    files_v2: u64,
}

impl Fixture {
    /// A fresh copy of the version-1 vault.
    fn fresh_vault(&self, name: &str) -> Embassy {
        let site = self.work.join(name);
        link_tree(&self.base, &site);
        self.embassy.at(&site)
    }

    /// The checks after an interrupted backup: the vault verifies (leftovers allowed), the
    /// versions are 1, or 1 and a complete 2, and version 1 (and 2 if there) restores
    /// byte-identically. Returns whether version 2 exists and the number of leftovers.
    fn check_after_interrupt(&self, e: &Embassy, what: &str) -> (bool, usize) {
        let report = e.verify_ok(false);
        let unreferenced = report["unreferenced"].as_array().map_or(0, Vec::len);
        let versions = e.versions();
        assert!(
            versions.len() == 1 || versions.len() == 2,
            "{what}: expected version 1 (and maybe 2), got {versions:?}"
        );
        assert_eq!(versions[0]["version"], 1, "{what}: {versions:?}");
        assert_eq!(
            versions[0]["id"].as_str(),
            Some(self.v1_id.as_str()),
            "{what}: version 1 changed"
        );
        if let Err(d) = e.check_restore("1", &self.reference_v1, &self.work) {
            panic!("{what}: version 1 no longer restores byte-identically: {d}");
        }
        let complete = versions.len() == 2;
        if complete {
            assert_eq!(versions[1]["version"], 2, "{what}: {versions:?}");
            assert_eq!(
                backup_number(&versions[1], "files"),
                self.files_v2,
                "{what}: {versions:?}"
            );
            if let Err(d) = e.check_restore("2", &self.tree, &self.work) {
                panic!("{what}: version 2 is listed but does not restore the tree: {d}");
            }
        }
        (complete, unreferenced)
    }
}

/// How a killed process ended: by the signal, or (if it finished first) successfully.
fn check_ended(what: &str, status: ExitStatus, signal: libc::c_int, stderr: &[u8]) -> bool {
    let stderr = String::from_utf8_lossy(stderr);
    assert!(
        !stderr.contains("panicked"),
        "{what}: the backup panicked: {stderr}"
    );
    if status.success() {
        return true;
    }
    // No handler today: the signal ends the process. A future handler that stops cleanly must
    // exit with a failure code, never with success.
    let by_signal = status.signal() == Some(signal);
    let clean_stop = matches!(status.code(), Some(1) | Some(130) | Some(143));
    assert!(
        by_signal || clean_stop,
        "{what}: unexpected end {status}, stderr: {stderr}"
    );
    false
}

/// Starts a backup, waits until `trigger` (given the time since the start) says so, and sends
/// `signal`. Returns the time from start to signal, the process's output, and whether it ended
/// by itself first (then it is not signalled).
fn interrupt_when(
    e: &Embassy,
    tree: &Path,
    signal: libc::c_int,
    deadline: Duration,
    mut trigger: impl FnMut(Duration) -> bool,
) -> (Duration, Output, bool) {
    let started = Instant::now();
    let mut child = e.spawn_backup(tree);
    let mut finished_first = false;
    loop {
        if trigger(started.elapsed()) {
            break;
        }
        // try_wait reaps an ended child: it must not be signalled after that.
        if child.try_wait().expect("try_wait").is_some() {
            finished_first = true;
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "the backup neither finished nor met the kill condition in {deadline:?}"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    let at = started.elapsed();
    if !finished_first {
        send_signal(&child, signal);
    }
    let out = child.wait_with_output().expect("waiting for embassy");
    (at, out, finished_first)
}

#[test]
fn killed_backups_leave_a_consistent_vault_and_resume() {
    let _serial = serial();
    let test_started = Instant::now();
    let seed = seed();
    let scale: f64 = std::env::var("EMBASSY_CRASH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let mut gen = Gen::new(seed);
    let mut kill_rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().to_path_buf();

    // Version 1.
    let t = Instant::now();
    let tree = work.join("tree");
    let stats = build_tree(&mut gen, &tree, scale);
    println!(
        "generated {} files, {:.0} MB in {:.1?}",
        stats.files,
        stats.bytes as f64 / 1e6,
        t.elapsed()
    );
    let base = work.join("vault-v1");
    let embassy = Embassy {
        site: base.clone(),
        key: work.join("vault.key"),
    };
    let out = embassy.run(["init"]);
    assert!(out.status.success(), "init: {}", show(&out));
    let t = Instant::now();
    let v1 = embassy.json([OsStr::new("backup"), OsStr::new(DS), tree.as_os_str()]);
    println!(
        "version 1: {:.1?}, {:.0} MB stored",
        t.elapsed(),
        backup_number(&v1, "new_bytes_stored") as f64 / 1e6
    );
    let v1_id = v1["id"].as_str().expect("id").to_string();
    let reference_v1 = work.join("reference-v1");
    copy_tree(&tree, &reference_v1);
    embassy
        .check_restore("1", &reference_v1, &work)
        .expect("version 1 restores before any crash");

    modify_tree(&mut gen, &tree, scale);

    let mut fx = Fixture {
        work: work.clone(),
        tree: tree.clone(),
        reference_v1,
        base,
        embassy,
        v1_id,
        full_duration: Duration::ZERO,
        full_new_bytes: 0,
        files_v2: 0,
    };
    // Calibration: uninterrupted version 2 backups on copies of the vault. Dirty pages of the
    // freshly written trees are flushed first (their writeback would slow the first run's
    // fsyncs); the faster of two runs is the expected duration.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    for run in 0..2 {
        let e = fx.fresh_vault(&format!("vault-calibration-{run}"));
        let t = Instant::now();
        let out = e.spawn_backup(&tree).wait_with_output().expect("backup");
        let took = t.elapsed();
        assert!(out.status.success(), "calibration backup: {}", show(&out));
        let v2 = parse_json(&out);
        let new_bytes = backup_number(&v2, "new_bytes_stored");
        // Same chunks; only pack framing (variable-length CBOR in pack directories) may differ.
        assert!(
            run == 0 || new_bytes.abs_diff(fx.full_new_bytes) < MIB as u64,
            "two uninterrupted backups of the same tree stored {new_bytes} and {} bytes",
            fx.full_new_bytes
        );
        if run == 0 || took < fx.full_duration {
            fx.full_duration = took;
        }
        fx.full_new_bytes = new_bytes;
        fx.files_v2 = backup_number(&v2, "files");
        println!(
            "uninterrupted version 2 backup: {took:.2?}, {:.0} MB read, {:.0} MB new stored, {} new chunks",
            backup_number(&v2, "bytes_read") as f64 / 1e6,
            new_bytes as f64 / 1e6,
            backup_number(&v2, "new_chunks")
        );
        fs::remove_dir_all(&e.site).expect("rm");
    }
    assert!(
        fx.full_new_bytes > 64 * MIB as u64,
        "the modified tree must need several packs"
    );
    let deadline = fx.full_duration * 10 + Duration::from_secs(30);

    // Resume: kill once more than half of the new data is stored in indexed packs; the rerun
    // must store only what is missing.
    {
        let e = fx.fresh_vault("vault-resume");
        let before = listing(&e.site);
        let mut indexed_bytes = 0u64;
        let half = fx.full_new_bytes / 2;
        let (at, out, finished) = interrupt_when(&e, &tree, libc::SIGKILL, deadline, |_| {
            // Packs, then indexes, then packs again: equal counts mean every pack seen has
            // its index (an index is written only after its pack).
            let d1 = delta(&before, &listing(&e.site));
            let indexes = delta(&before, &listing(&e.site)).new_indexes;
            let d2 = delta(&before, &listing(&e.site));
            let consistent = d1.new_packs == d2.new_packs && indexes == d2.new_packs;
            if consistent && d1.new_pack_bytes > half && d1.stage == Stage::DuringPacks {
                indexed_bytes = d1.new_pack_bytes;
                true
            } else {
                false
            }
        });
        assert!(
            !finished,
            "the backup finished before half of its data was stored: cannot test resume"
        );
        check_ended("resume kill", out.status, libc::SIGKILL, &out.stderr);
        let d = delta(&before, &listing(&e.site));
        let (complete, unreferenced) = fx.check_after_interrupt(&e, "after the resume kill");
        assert!(!complete, "killed mid-pack, yet version 2 exists");
        let rerun = e.spawn_backup(&tree).wait_with_output().expect("backup");
        assert!(rerun.status.success(), "rerun: {}", show(&rerun));
        let r = backup_number(&parse_json(&rerun), "new_bytes_stored");
        println!(
            "resume: killed at {at:.2?} with {} packs ({:.0} MB, {:.0} MB of it indexed when checked) stored, {} unreferenced objects; \
             the rerun stored {:.0} MB new, an uninterrupted backup {:.0} MB",
            d.new_packs,
            d.new_pack_bytes as f64 / 1e6,
            indexed_bytes as f64 / 1e6,
            unreferenced,
            r as f64 / 1e6,
            fx.full_new_bytes as f64 / 1e6
        );
        assert!(
            r < fx.full_new_bytes,
            "the rerun stored everything again ({r} bytes): packs of the interrupted run were not reused"
        );
        // Chunks are deterministic (same source, same keys, same compression), so what the
        // interrupted run stored in indexed packs is exactly what the rerun need not store,
        // up to per-pack overhead (header, directory): allow 1 MiB.
        assert!(
            r + indexed_bytes <= fx.full_new_bytes + MIB as u64,
            "the rerun stored {r} bytes although {indexed_bytes} of the {} needed were already in indexed packs",
            fx.full_new_bytes
        );
        let after_rerun = e.versions();
        assert_eq!(after_rerun.len(), 2, "{after_rerun:?}");
        e.verify_ok(false);
        fs::remove_dir_all(&e.site).expect("rm");
    }

    // SIGTERM and SIGINT mid-pack, each on a fresh copy.
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let name = signal_name(signal);
        let e = fx.fresh_vault(&format!("vault-{name}"));
        let before = listing(&e.site);
        let threshold = fx.full_new_bytes / 4 + kill_rng.gen_range(0..fx.full_new_bytes / 4);
        let (at, out, finished) = interrupt_when(&e, &tree, signal, deadline, |_| {
            delta(&before, &listing(&e.site)).new_pack_bytes > threshold
        });
        assert!(!finished, "{name}: the backup finished before the signal");
        let completed = check_ended(name, out.status, signal, &out.stderr);
        assert!(
            !completed,
            "{name}: backup completed although signalled mid-pack"
        );
        let d = delta(&before, &listing(&e.site));
        let (complete, unreferenced) = fx.check_after_interrupt(&e, name);
        assert!(
            !complete,
            "{name}: version 2 exists after a mid-pack signal"
        );
        println!(
            "{name} at {at:.2?}: ended by {}, {:?}, {} new packs ({:.0} MB), {} indexes, {} temporary files, {} unreferenced objects",
            out.status,
            d.stage,
            d.new_packs,
            d.new_pack_bytes as f64 / 1e6,
            d.new_indexes,
            d.partial,
            unreferenced
        );
        fs::remove_dir_all(&e.site).expect("rm");
    }

    // Random SIGKILLs. Interrupted runs accumulate in one vault (each run resumes the previous
    // ones), as after a crash loop; once a run completes version 2, the next one starts again
    // from the version 1 vault.
    let mut stages: BTreeMap<Stage, usize> = BTreeMap::new();
    let mut chain = 0;
    let mut e = fx.fresh_vault(&format!("vault-chain-{chain}"));
    let mut resumed = 0usize;
    let base_packs = listing(&fx.base).packs.len();
    // Then kills aimed at the moment the manifest appears (the ledger entry comes right after
    // it), until one lands between the two.
    const TARGETED_TRIES: usize = 5;
    let mut targeted_hit = false;
    for k in 0..RANDOM_KILLS + TARGETED_TRIES {
        let targeted = k >= RANDOM_KILLS;
        if targeted && targeted_hit {
            break;
        }
        let before = listing(&e.site);
        let delay = fx.full_duration.mul_f64(kill_rng.gen_range(0.0..1.0));
        let t = Instant::now();
        let (at, out, finished_first) = if targeted {
            interrupt_when(&e, &tree, libc::SIGKILL, deadline, |_| {
                fs::read_dir(e.site.join("manifests").join(DS))
                    .map(|d| d.count() > before.manifests.len())
                    .unwrap_or(false)
            })
        } else {
            interrupt_when(&e, &tree, libc::SIGKILL, deadline, |t| t >= delay)
        };
        let what = format!("kill {k} at {at:.3?} (seed {seed})");
        let exited_ok = check_ended(&what, out.status, libc::SIGKILL, &out.stderr);
        let d = delta(&before, &listing(&e.site));
        let (complete, unreferenced) = fx.check_after_interrupt(&e, &what);
        assert_eq!(
            complete,
            d.stage == Stage::Complete,
            "{what}: versions disagree with the vault's ledger folder"
        );
        if exited_ok {
            assert!(complete, "{what}: backup succeeded but no version 2");
        }
        let was_resumed = before.packs.len() > base_packs;
        if finished_first && !was_resumed && at < fx.full_duration {
            // A fresh run ended by itself sooner than calibrated: the machine got faster (the
            // calibration may have shared it with other work). Aim later kills accordingly.
            println!(
                "a full run took at most {at:.2?}: expected duration lowered from {:.2?}",
                fx.full_duration
            );
            fx.full_duration = at;
        }
        if targeted {
            targeted_hit |= d.stage == Stage::ManifestNoLedger;
        } else {
            resumed += usize::from(was_resumed);
            *stages.entry(d.stage).or_default() += 1;
        }
        println!(
            "{} {k:2} at {:6.3}s of ~{:.2}s{}: {:?}: {} new packs ({:.0} MB), {} new indexes{}, {} temporary files, {} unreferenced objects; checked in {:.1?}",
            if targeted { "targeted kill" } else { "kill" },
            at.as_secs_f64(),
            fx.full_duration.as_secs_f64(),
            if was_resumed { " (resumed run)" } else { "" },
            d.stage,
            d.new_packs,
            d.new_pack_bytes as f64 / 1e6,
            d.new_indexes,
            if d.new_packs > d.new_indexes {
                " (a pack without its index)"
            } else {
                ""
            },
            d.partial,
            unreferenced,
            t.elapsed() - at,
        );
        if complete {
            fs::remove_dir_all(&e.site).expect("rm");
            chain += 1;
            e = fx.fresh_vault(&format!("vault-chain-{chain}"));
        }
    }
    assert!(
        targeted_hit,
        "{TARGETED_TRIES} kills right after the manifest appeared never landed before the ledger entry"
    );
    println!("kill moments by stage: {stages:?}; {resumed} kills hit a resumed run");

    // The rerun completes and restores the modified tree; everything verifies deeply.
    let t = Instant::now();
    let out = e.spawn_backup(&tree).wait_with_output().expect("backup");
    assert!(out.status.success(), "final rerun: {}", show(&out));
    let last = parse_json(&out);
    println!(
        "final rerun: {:.2?}, {:.0} MB new stored (uninterrupted: {:.0} MB)",
        t.elapsed(),
        backup_number(&last, "new_bytes_stored") as f64 / 1e6,
        fx.full_new_bytes as f64 / 1e6
    );
    let latest = backup_number(&last, "version").to_string();
    if let Err(d) = e.check_restore(&latest, &tree, &work) {
        panic!("the completed backup does not restore the modified tree: {d}");
    }
    if let Err(d) = e.check_restore("1", &fx.reference_v1, &work) {
        panic!("version 1 after the final rerun: {d}");
    }
    let report = e.verify_ok(true);
    println!(
        "verify --deep: {} objects, {} chunks, {} unreferenced",
        report["objects_checked"],
        report["blobs_checked"],
        report["unreferenced"].as_array().map_or(0, Vec::len)
    );
    fx.embassy.verify_ok(false);
    println!("kill test took {:.1?}", test_started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Full disk.

/// A mounted file system, unmounted on drop (also when the test fails).
struct Mount {
    dir: PathBuf,
    kind: &'static str,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("umount {} failed; detaching it lazily", self.dir.display());
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn mount_tmpfs(dir: &Path, mib: usize) -> Result<Mount, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    run_quiet(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir),
    )?;
    Ok(Mount {
        dir: dir.to_path_buf(),
        kind: "tmpfs",
    })
}

fn mount_ext4(dir: &Path, image: &Path, mib: usize) -> Result<Mount, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    fs::File::create(image)
        .and_then(|f| f.set_len((mib * MIB) as u64))
        .map_err(|e| e.to_string())?;
    run_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image),
    )?;
    run_quiet(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir),
    )?;
    Ok(Mount {
        dir: dir.to_path_buf(),
        kind: "ext4 (loop)",
    })
}

/// Bytes a root process can still write on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = c_path(path);
    // SAFETY: statvfs fills the struct we pass; the path is valid.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
    s.f_bfree as u64 * s.f_frsize as u64
}

/// Fills the file system holding `path` with a ballast file of random bytes (so that no file
/// system can compress it) until `keep` bytes are left free.
fn fill_until(path: &Path, keep: u64, gen: &mut Gen) {
    let mut f = fs::File::create(path).expect("ballast");
    let block = gen.content(Kind::Random, MIB);
    loop {
        let free = free_bytes(path);
        if free <= keep {
            break;
        }
        let n = (free - keep).min(MIB as u64) as usize;
        match f.write_all(&block[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("writing ballast: {e}"),
        }
        f.sync_all().expect("sync ballast");
    }
}

fn small_tree(gen: &mut Gen, root: &Path, files: usize, max_len: usize, kind: Option<Kind>) {
    for i in 0..files {
        let kind = kind.unwrap_or_else(|| gen.kind());
        let len = gen.rng.gen_range(max_len / 2..max_len);
        let data = gen.content(kind, len);
        let (mode, mtime) = (gen.file_mode(), gen.mtime());
        write_file(&root.join(format!("d{}/f-{i}", i % 4)), &data, mode, mtime);
    }
    settle_dir_times(gen, root);
}

fn full_disk_scenario(mount: &Mount, work: &Path, gen: &mut Gen) {
    let kind = mount.kind;
    println!("full disk on {kind} at {}", mount.dir.display());
    let e = Embassy {
        site: mount.dir.join("vault"),
        key: work.join("vault.key"),
    };
    let out = e.run(["init"]);
    assert!(out.status.success(), "{kind}: init: {}", show(&out));

    let small = work.join("small");
    small_tree(gen, &small, 24, 256 * 1024, None);
    e.json([OsStr::new("backup"), OsStr::new(DS), small.as_os_str()]);

    // Leave 12 MiB free, then back up more incompressible data than that: once a tree whose
    // packs fail at the end of the backup, once a tree whose first pack fails while files are
    // still being read (the error must still be the site's, not a generic one).
    let ballast = mount.dir.join("ballast");
    fill_until(&ballast, 12 * MIB as u64, gen);
    let medium = work.join("medium");
    small_tree(gen, &medium, 8, 4 * MIB, Some(Kind::Random));
    let big = work.join("big");
    small_tree(gen, &big, 25, 5 * MIB, Some(Kind::Random));
    for (what, tree) in [("16-32 MiB", &medium), ("60-125 MiB", &big)] {
        let free = free_bytes(&mount.dir);
        let out = e.run([OsStr::new("backup"), OsStr::new(DS), tree.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!(
            "{kind}: backup of {what} with {:.1} MB free: {}; stderr: {}",
            free as f64 / 1e6,
            out.status,
            stderr.trim()
        );
        assert!(
            !stderr.contains("panicked"),
            "{kind}: panic: {}",
            show(&out)
        );
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", show(&out));
        let lower = stderr.to_lowercase();
        assert!(
            lower.contains("no space") || lower.contains("disk is full"),
            "{kind}: backing up {what}, the error does not say that the disk is full: {}",
            show(&out)
        );
        assert!(
            lower.contains("free space"),
            "{kind}: backing up {what}, the error does not say what to do: {}",
            show(&out)
        );
    }

    // The vault is intact and readable while the disk is still full.
    let check = |want_versions: usize, what: &str| {
        let report = e.verify_ok(false);
        let versions = e.versions();
        assert_eq!(versions.len(), want_versions, "{kind} {what}: {versions:?}");
        if let Err(d) = e.check_restore("1", &small, work) {
            panic!("{kind} {what}: version 1 does not restore: {d}");
        }
        report["unreferenced"].as_array().map_or(0, Vec::len)
    };
    let unreferenced = check(1, "after the failed backup");
    println!("{kind}: vault verifies with {unreferenced} unreferenced objects; version 1 restores");

    // A tiny backup on the still-full disk fails cleanly or succeeds; either way no damage.
    let tiny = work.join("tiny");
    small_tree(gen, &tiny, 2, 2048, Some(Kind::Text));
    let out = e.run([OsStr::new("backup"), OsStr::new(DS), tiny.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{kind}: panic: {}",
        show(&out)
    );
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{kind}: tiny backup on a full disk: {}",
        show(&out)
    );
    let tiny_stored = out.status.success();
    println!(
        "{kind}: tiny backup on the full disk: {} {}",
        out.status,
        stderr.trim()
    );
    check(1 + usize::from(tiny_stored), "after the tiny backup");

    // Free space: the same backup now succeeds and everything verifies deeply.
    fs::remove_file(&ballast).expect("rm ballast");
    let v = e.json([OsStr::new("backup"), OsStr::new(DS), big.as_os_str()]);
    let seq = backup_number(&v, "version");
    println!(
        "{kind}: after freeing space the backup stored version {seq} ({:.1} MB new)",
        backup_number(&v, "new_bytes_stored") as f64 / 1e6
    );
    if let Err(d) = e.check_restore(&seq.to_string(), &big, work) {
        panic!("{kind}: the backup after freeing space does not restore: {d}");
    }
    if tiny_stored {
        if let Err(d) = e.check_restore("2", &tiny, work) {
            panic!("{kind}: the tiny version does not restore: {d}");
        }
    }
    check(seq as usize, "at the end");
    e.verify_ok(true);
}

#[test]
fn full_disk_fails_cleanly_and_recovers() {
    let _serial = serial();
    let seed = seed();
    let mut gen = Gen::new(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ran = Vec::new();
    let mut failures = Vec::new();
    {
        let work = tmp.path().join("tmpfs-work");
        fs::create_dir_all(&work).expect("mkdir");
        match mount_tmpfs(&tmp.path().join("tmpfs"), 192) {
            Ok(mount) => {
                full_disk_scenario(&mount, &work, &mut gen);
                ran.push(mount.kind);
            }
            Err(e) => failures.push(format!("tmpfs: {e}")),
        }
    }
    {
        let work = tmp.path().join("ext4-work");
        fs::create_dir_all(&work).expect("mkdir");
        let image = tmp.path().join("ext4.img");
        match mount_ext4(&tmp.path().join("ext4"), &image, 192) {
            Ok(mount) => {
                full_disk_scenario(&mount, &work, &mut gen);
                ran.push(mount.kind);
            }
            Err(e) => failures.push(format!("loop-mounted ext4: {e}")),
        }
    }
    for f in &failures {
        println!("could not mount {f}");
    }
    assert!(
        !ran.is_empty(),
        "FULL-DISK TEST NOT RUN: neither a tmpfs nor a loop-mounted ext4 could be mounted \
         (this test needs root, or CAP_SYS_ADMIN): {failures:?}"
    );
    println!("full-disk scenario ran on: {ran:?}");
}
