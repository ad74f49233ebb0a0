//! A hostile or simply large source: `embassy sync` and `verify --deep` stream objects through a
//! fixed buffer (and a spool file on local disk) instead of holding each whole in memory, so a
//! site serving packs of hundreds of megabytes (up to the 4 GiB the format allows) cannot make
//! them hold cores x pack size. Measured on the real binary as a child process: its peak
//! resident set (`ru_maxrss` from `wait4`) stays far below the pack's size.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use embassy_core::format::spool::HashSink;
use embassy_testkit::cli::Embassy;
use embassy_testkit::moto::{moto, unique_bucket};
use embassy_testkit::s3::s3_config;

/// The planted pack: several hundred megabytes of incompressible bytes.
const PACK_MIB: u64 = 384;
/// What a streaming run may peak at: buffers per thread, the program itself and, for a deep
/// verification, the key file's Argon2 memory (64 MiB by default); far below
/// the pack (holding it whole takes at least `PACK_MIB`).
const PEAK_LIMIT_MIB: u64 = 128;

/// Runs `embassy` in `dir` with `args`; returns whether it succeeded, its stderr and its peak
/// resident set in MiB (from `wait4`'s rusage, so nothing between samples is missed).
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(dir: &Path, args: &[&str]) -> (bool, String, u64) {
    run_measured_with(dir, args, &[])
}

/// [`run_measured`] with more environment variables.
#[allow(clippy::zombie_processes)]
fn run_measured_with(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> (bool, String, u64) {
    // The test kit's command: a clean environment, its passphrase, home in the test's folder.
    let mut child = Embassy::new(env!("CARGO_BIN_EXE_embassy"), dir)
        .command()
        .envs(vars.iter().copied())
        .current_dir(dir)
        .args(["--quiet", "--key-file", "key", "--state-dir", "state"])
        .args(args)
        // Spools go to the test's folder (on disk), not a shared /tmp.
        .env("TMPDIR", dir.join("spool"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the embassy binary runs");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).expect("stderr reads");
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; status and usage are buffers we own.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as libc::pid_t, "wait4 failed");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let succeeded = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // ru_maxrss is in KiB on Linux.
    (succeeded, stderr, usage.ru_maxrss as u64 / 1024)
}

fn ok(dir: &Path, args: &[&str]) {
    let (succeeded, stderr, _) = run_measured(dir, args);
    assert!(succeeded, "{args:?}: {stderr}");
}

/// Writes `mib` MiB of pseudo-random bytes at `site`'s packs folder under the name of their
/// hash, as a hostile (or merely large) site would hold them; returns the object's path.
fn plant_pack(site: &Path, dataset: &str, mib: u64) -> String {
    let staging = site.join("planted.part");
    let mut file = std::fs::File::create(&staging).unwrap();
    let mut hash = HashSink::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift64: fast, incompressible enough, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).unwrap();
        hash.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    let id = hash.id().to_hex();
    let path = format!("packs/{dataset}/{}/{id}", &id[..2]);
    std::fs::create_dir_all(site.join(&path).parent().unwrap()).unwrap();
    std::fs::rename(&staging, site.join(&path)).unwrap();
    path
}

#[test]
fn sync_and_deep_verify_of_a_large_pack_hold_a_fixed_buffer_not_the_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("spool")).unwrap();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/register.csv"),
        "38001010000;Mari;Tamm\n".repeat(1000),
    )
    .unwrap();
    ok(dir, &["--site", "a", "init"]);
    ok(dir, &["--site", "a", "backup", "population", "src"]);
    let pack = plant_pack(&dir.join("a"), "population", PACK_MIB);

    let (succeeded, stderr, peak) =
        run_measured(dir, &["sync", "--seed", "--from", "a", "--to", "b"]);
    eprintln!("sync of a {PACK_MIB} MiB pack: peak RSS {peak} MiB");
    assert!(succeeded, "sync failed: {stderr}");
    // Checked by streaming: this process must stay small too, as `ru_maxrss` of a child
    // started with vfork counts the parent's peak from before the exec.
    let mut copied = HashSink::new();
    std::io::copy(
        &mut std::fs::File::open(dir.join("b").join(&pack)).unwrap(),
        &mut copied,
    )
    .unwrap();
    assert_eq!(copied.len(), PACK_MIB << 20, "the pack arrived whole");
    assert!(
        pack.ends_with(&copied.id().to_hex()),
        "the pack arrived intact"
    );
    assert!(
        peak < PEAK_LIMIT_MIB,
        "sync peaked at {peak} MiB for a {PACK_MIB} MiB pack: it held the object whole"
    );

    // Deep verification reads the pack too (here it is not a pack at all: reported, not held).
    let (_, stderr, peak) = run_measured(dir, &["--site", "b", "verify", "--deep"]);
    eprintln!("verify --deep with a {PACK_MIB} MiB pack: peak RSS {peak} MiB");
    assert!(
        peak < PEAK_LIMIT_MIB,
        "verify --deep peaked at {peak} MiB for a {PACK_MIB} MiB pack: {stderr}"
    );
    // No spool file is left behind.
    assert_eq!(std::fs::read_dir(dir.join("spool")).unwrap().count(), 0);
}

/// The same through an S3 site (moto): uploads stream each part from the spool through a small
/// buffer, downloads write each batch of ranged pieces to the spool as it arrives.
#[test]
fn sync_to_and_from_s3_of_a_large_pack_holds_a_fixed_buffer_not_the_pack() {
    const S3_PACK_MIB: u64 = 256;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("spool")).unwrap();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/register.csv"),
        "38001010000;Mari;Tamm\n".repeat(1000),
    )
    .unwrap();
    ok(dir, &["--site", "a", "init"]);
    ok(dir, &["--site", "a", "backup", "population", "src"]);
    let pack = plant_pack(&dir.join("a"), "population", S3_PACK_MIB);

    let server = moto();
    let bucket = unique_bucket("large");
    let cfg = s3_config(&server.endpoint, &bucket, "vault");
    assert!(embassy_sites::S3Site::new(cfg)
        .unwrap()
        .create_bucket(false)
        .unwrap());
    let s3 = format!("s3://{bucket}/vault?endpoint={}", server.endpoint);
    let vars = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("EMBASSY_S3_PART_SIZE_MIB", "8"),
    ];
    for (from, to, what) in [("a", s3.as_str(), "to S3"), (s3.as_str(), "c", "from S3")] {
        let (succeeded, stderr, peak) =
            run_measured_with(dir, &["sync", "--seed", "--from", from, "--to", to], &vars);
        eprintln!("sync {what} of a {S3_PACK_MIB} MiB pack: peak RSS {peak} MiB");
        assert!(succeeded, "sync {what} failed: {stderr}");
        assert!(
            peak < PEAK_LIMIT_MIB,
            "sync {what} peaked at {peak} MiB for a {S3_PACK_MIB} MiB pack: it held the object whole"
        );
        // Uploads stream each part through a 1 MiB buffer (18 MiB measured; 43 MiB when each
        // worker held its 8 MiB part).
        assert!(
            what != "to S3" || peak < 30,
            "sync to S3 peaked at {peak} MiB: the upload held its parts whole"
        );
    }
    let mut copied = HashSink::new();
    std::io::copy(
        &mut std::fs::File::open(dir.join("c").join(&pack)).unwrap(),
        &mut copied,
    )
    .unwrap();
    assert_eq!(copied.len(), S3_PACK_MIB << 20, "the pack came back whole");
    assert!(
        pack.ends_with(&copied.id().to_hex()),
        "the pack came back intact"
    );
    assert_eq!(std::fs::read_dir(dir.join("spool")).unwrap().count(), 0);
}
