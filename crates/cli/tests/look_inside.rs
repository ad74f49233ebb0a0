//! Looking inside versions through the `embassy` binary, on real trees: `ls`, `find`, `diff`,
//! `stats`, and a read-only FUSE `mount` (mounted for real: /dev/fuse must exist; the test
//! fails, never skips, where it does not).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::cli::TestVault;
use rand::{RngCore, SeedableRng};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// Version 1 of the tree; [`change`] makes version 2 of it.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("registry/2026")).unwrap();
    fs::create_dir_all(root.join("blobs")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("registry/2026/people.csv"), "id,name\n1,Ada\n").unwrap();
    fs::write(
        root.join("registry/2026/places.csv"),
        "id,place\n1,Tallinn\n",
    )
    .unwrap();
    fs::write(root.join("registry/readme.txt"), "the registry\n").unwrap();
    fs::write(root.join("blobs/big.bin"), random(1, 700_000)).unwrap();
    symlink("registry/readme.txt", root.join("readme")).unwrap();
}

/// Version 2: places.csv grows, big.bin goes, new.csv comes.
fn change(root: &Path) {
    fs::write(
        root.join("registry/2026/places.csv"),
        "id,place\n1,Tallinn\n2,Tartu\n",
    )
    .unwrap();
    fs::remove_file(root.join("blobs/big.bin")).unwrap();
    fs::write(root.join("registry/2026/new.csv"), "new\n").unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    vault: TestVault,
    /// Copies of the tree as versions 1 and 2 stored it.
    v1: PathBuf,
    v2: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let vault = TestVault::init(EXE, tmp.path(), "vault");
        let src = tmp.path().join("src");
        make_tree(&src);
        let v1 = tmp.path().join("v1");
        copy(&src, &v1);
        vault.ok(
            "m",
            &vault.key,
            &["backup", "records", src.to_str().unwrap()],
            None,
        );
        change(&src);
        let v2 = tmp.path().join("v2");
        copy(&src, &v2);
        vault.ok(
            "m",
            &vault.key,
            &["backup", "records", src.to_str().unwrap()],
            None,
        );
        Self {
            _tmp: tmp,
            vault,
            v1,
            v2,
        }
    }

    fn ok(&self, args: &[&str]) -> embassy_testkit::cli::Run {
        self.vault.ok("m", &self.vault.key, args, None)
    }

    fn run(&self, args: &[&str]) -> embassy_testkit::cli::Run {
        self.vault.run("m", &self.vault.key, args, None)
    }
}

fn copy(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ls_lists_a_version() {
    let f = Fixture::new();
    let top = f.ok(&["ls", "records@1"]);
    assert_eq!(top.stdout, "blobs/\nempty/\nreadme\nregistry/\n", "{top:?}");
    let deep = f.ok(&["ls", "-R", "records@latest", "registry"]);
    assert_eq!(
        deep.stdout,
        "registry/2026/\nregistry/2026/new.csv\nregistry/2026/people.csv\n\
         registry/2026/places.csv\nregistry/readme.txt\n",
        "{deep:?}"
    );
    let long = f.ok(&["ls", "-l", "records@1", "blobs"]);
    assert!(
        long.stdout.starts_with("-rw-r--r-- ") || long.stdout.starts_with("-rw-"),
        "{long:?}"
    );
    assert!(long.stdout.contains(" 700000  "), "{long:?}");
    assert!(
        long.stdout.trim_end().ends_with("blobs/big.bin"),
        "{long:?}"
    );
    let link = f.ok(&["ls", "-l", "records@1", "readme"]);
    assert!(link.stdout.starts_with('l'), "{link:?}");
    assert!(
        link.stdout.contains("readme -> registry/readme.txt"),
        "{link:?}"
    );
    // One file: the file itself.
    let json = f
        .ok(&["--json", "ls", "records@2", "registry/2026/places.csv"])
        .json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["version"], 2);
    assert_eq!(json["content"], "tree");
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!(entries[0]["path"], "registry/2026/places.csv");
    assert_eq!(entries[0]["kind"], "file");
    assert_eq!(entries[0]["size"], 27);
    assert!(entries[0]["mtime_ns"].as_i64().unwrap() > 0);
    assert_eq!(entries[0]["mode"].as_u64().unwrap() & 0o777, 0o644);
    // What is not there is an error.
    f.run(&["ls", "records@9"]).fails(1, &["no version 9"]);
    f.run(&["ls", "nosuch@1"]).fails(1, &["nosuch"]);
    f.run(&["ls", "records@1", "registry/nothere"])
        .fails(1, &["holds no registry/nothere"]);
    f.run(&["ls", "records@1", "readme/x"])
        .fails(1, &["readme is not a folder"]);
}

#[test]
fn ls_of_a_stream_shows_its_one_object() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    vault.backup_bytes("m", "dump", b"0123456789");
    let run = vault.ok("m", &vault.key, &["ls", "-l", "dump@1"], None);
    assert!(run.stdout.contains("  stream\n"), "{run:?}");
    assert!(run.stdout.contains(" 10  "), "{run:?}");
    assert!(run.stderr.contains("a stream dataset"), "{run:?}");
    let json = vault
        .ok("m", &vault.key, &["--json", "ls", "dump"], None)
        .json();
    assert_eq!(json["content"], "stream");
}

#[test]
fn find_names_the_versions_holding_each_match() {
    let f = Fixture::new();
    let run = f.ok(&["find", "records", "*.csv"]);
    assert_eq!(
        run.stdout,
        "registry/2026/new.csv  (4 B, in version 2)\n\
         registry/2026/people.csv  (14 B, in versions 1-2)\n\
         registry/2026/places.csv  (27 B, in versions 1-2)\n",
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("3 paths matching *.csv in 2 versions of records"),
        "{run:?}"
    );
    let json = f.ok(&["--json", "find", "records", "blobs/*"]).json();
    let matches = json["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{json}");
    assert_eq!(matches[0]["path"], "blobs/big.bin");
    assert_eq!(matches[0]["versions"], serde_json::json!([1]));
    assert_eq!(json["versions_searched"], serde_json::json!([1, 2]));
    let none = f.ok(&["find", "records", "*.xls"]);
    assert_eq!(none.stdout, "");
    f.run(&["find", "nosuch", "*"]).fails(1, &["nosuch"]);
}

#[test]
fn diff_lists_added_removed_and_changed_paths() {
    let f = Fixture::new();
    let run = f.ok(&["diff", "records@1", "records@2"]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.contains(&"- blobs/big.bin  683.6 KiB"), "{run:?}");
    assert!(lines.contains(&"+ registry/2026/new.csv  4 B"), "{run:?}");
    assert!(
        lines.contains(&"M registry/2026/places.csv  19 B -> 27 B (+8 B)"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("people.csv"), "{run:?}");
    assert!(!run.stdout.contains("readme"), "{run:?}");
    assert_eq!(
        lines.last().unwrap(),
        &"records@1 -> records@2: 1 added (4 B), 1 removed (683.6 KiB), 1 changed; size -683.6 KiB"
    );
    let json = f
        .ok(&["--json", "diff", "records@1", "records@latest"])
        .json();
    assert_eq!(json["summary"]["added"], 1);
    assert_eq!(json["summary"]["removed"], 1);
    assert_eq!(json["summary"]["changed"], 1);
    assert_eq!(json["summary"]["size_delta"], 4 - 700_000 + 8);
    let changed = json["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["change"] == "changed")
        .unwrap();
    assert_eq!(changed["path"], "registry/2026/places.csv");
    assert_eq!(changed["old_size"], 19);
    assert_eq!(changed["new_size"], 27);
    assert_eq!(changed["size_delta"], 8);
    // A version against itself: nothing.
    let same = f.ok(&["diff", "records@2", "records@2"]);
    assert_eq!(
        same.stdout,
        "records@2 -> records@2: 0 added (0 B), 0 removed (0 B), 0 changed; size +0 B\n"
    );
    f.run(&["diff", "records@1", "records@7"])
        .fails(1, &["no version 7"]);
}

/// After a key rotation the same bytes have other chunk ids: files are compared by reading them,
/// never reported changed because their ids differ.
#[test]
fn diff_across_a_key_rotation_compares_bytes() {
    let f = Fixture::new();
    f.ok(&["keys", "rotate", "--dataset", "records"]);
    let src = f._tmp.path().join("src");
    f.ok(&["backup", "records", src.to_str().unwrap()]);
    let same = f.ok(&["diff", "records@2", "records@3"]);
    assert_eq!(
        same.stdout,
        "records@2 -> records@3: 0 added (0 B), 0 removed (0 B), 0 changed; size +0 B\n",
        "{same:?}"
    );
    fs::write(src.join("registry/2026/people.csv"), "id,name\n1,Bob\n").unwrap();
    let filetime = fs::metadata(f.v2.join("registry/2026/people.csv"))
        .unwrap()
        .modified()
        .unwrap();
    fs::File::options()
        .write(true)
        .open(src.join("registry/2026/people.csv"))
        .unwrap()
        .set_modified(filetime)
        .unwrap();
    f.ok(&["backup", "records", src.to_str().unwrap()]);
    let changed = f.ok(&["diff", "records@1", "records@4"]);
    assert!(
        changed
            .stdout
            .contains("M registry/2026/people.csv  14 B -> 14 B (+0 B)\n"),
        "{changed:?}"
    );
}

#[test]
fn stats_counts_logical_and_stored_bytes() {
    let f = Fixture::new();
    let json = f.ok(&["--json", "stats", "records"]).json();
    let s = &json["datasets"][0];
    assert_eq!(s["dataset"], "records");
    assert_eq!(s["versions"], 2);
    let v1 = 700_000 + 14 + 19 + 13;
    let v2 = 14 + 27 + 13 + 4;
    assert_eq!(s["logical_bytes"], v1 + v2);
    // Unchanged files are stored once: unique content is less than the versions added up.
    let unique = s["blobs"]["unique_bytes"].as_u64().unwrap();
    assert_eq!(unique, v1 + 27 + 4, "{s}");
    assert!(s["dedup_ratio"].as_f64().unwrap() > 1.0, "{s}");
    assert!(s["blobs"]["data"].as_u64().unwrap() >= 5, "{s}");
    assert!(s["blobs"]["trees"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["packs"]["objects"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["manifests"]["objects"], 2);
    // What the site folder holds under the dataset's packs, indexes and manifests.
    let on_disk: u64 = ["packs/records", "index/records", "manifests/records"]
        .iter()
        .map(|p| du(&f.vault.site.join(p)))
        .sum();
    assert_eq!(s["stored_bytes"], on_disk);
    let text = f.ok(&["stats"]);
    assert!(text.stdout.starts_with("records\n"), "{text:?}");
    assert!(text.stdout.contains("  versions        2\n"), "{text:?}");
    assert!(text.stdout.contains("dedup ratio"), "{text:?}");
    f.run(&["stats", "nosuch"]).fails(1, &["nosuch"]);
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// `embassy mount` running in the background, killed (and the mount undone) if the test fails.
struct Mounted {
    child: Child,
    at: PathBuf,
}

impl Mounted {
    fn start(vault: &TestVault, dataset: &str, at: &Path) -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the mount test needs FUSE (modprobe fuse; in a container \
             --device /dev/fuse)"
        );
        fs::create_dir_all(at).unwrap();
        let mut cmd = vault.embassy.command();
        cmd.arg("--site")
            .arg(&vault.site)
            .arg("--key-file")
            .arg(&vault.key)
            .arg("--state-dir")
            .arg(vault.state("m"))
            .arg("mount")
            .arg(dataset)
            .arg(at)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let mut mounted = Self {
            child,
            at: at.to_path_buf(),
        };
        let start = Instant::now();
        while !at.join("latest").exists() {
            if let Some(status) = mounted.child.try_wait().unwrap() {
                let mut err = String::new();
                mounted
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("embassy mount ended ({status}): {err}");
            }
            assert!(start.elapsed() < Duration::from_secs(60), "not mounted");
            std::thread::sleep(Duration::from_millis(50));
        }
        mounted
    }

    /// SIGTERM, then the exit and the mount gone.
    fn stop(mut self) -> String {
        let pid = self.child.id() as i32;
        // SAFETY: kill takes integers; the child is ours and still running.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "{status}: {err}");
        assert!(!is_mounted(&self.at), "still mounted after SIGTERM: {err}");
        err
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.at) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.at)
                .status();
        }
    }
}

fn is_mounted(at: &Path) -> bool {
    let at = fs::canonicalize(at).unwrap_or_else(|_| at.to_path_buf());
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
}

/// Every file, folder and link of `expected` is in `got` with the same bytes, and nothing more.
fn same_tree(expected: &Path, got: &Path) {
    let mut names: Vec<_> = fs::read_dir(expected)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut served: Vec<_> = fs::read_dir(got)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    served.sort();
    assert_eq!(names, served, "{}", got.display());
    for name in names {
        let (e, g) = (expected.join(&name), got.join(&name));
        let meta = fs::symlink_metadata(&e).unwrap();
        let served = fs::symlink_metadata(&g).unwrap();
        assert_eq!(meta.file_type(), served.file_type(), "{}", g.display());
        if meta.is_dir() {
            same_tree(&e, &g);
        } else if meta.file_type().is_symlink() {
            assert_eq!(fs::read_link(&e).unwrap(), fs::read_link(&g).unwrap());
        } else {
            assert_eq!(meta.len(), served.len(), "{}", g.display());
            assert!(
                fs::read(&e).unwrap() == fs::read(&g).unwrap(),
                "{}",
                g.display()
            );
        }
    }
}

#[test]
fn mount_serves_every_version_read_only() {
    let f = Fixture::new();
    let at = f._tmp.path().join("mnt");
    let mounted = Mounted::start(&f.vault, "records", &at);
    let mut top: Vec<_> = fs::read_dir(&at)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["1", "2", "latest"]);
    assert_eq!(fs::read_link(at.join("latest")).unwrap(), Path::new("2"));
    same_tree(&f.v1, &at.join("1"));
    same_tree(&f.v2, &at.join("2"));
    same_tree(&f.v2, &at.join("latest"));
    // A range: seek into the middle of the big file (several chunks), read across chunks.
    let expected = fs::read(f.v1.join("blobs/big.bin")).unwrap();
    let mut file = fs::File::open(at.join("1/blobs/big.bin")).unwrap();
    for (offset, len) in [(333_333usize, 100_000usize), (699_990, 10), (5, 1)] {
        file.seek(SeekFrom::Start(offset as u64)).unwrap();
        let mut got = vec![0u8; len];
        file.read_exact(&mut got).unwrap();
        assert!(got == expected[offset..offset + len], "range at {offset}");
    }
    // Read-only: nothing can be written, made or removed.
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        fs::write(at.join("2/registry/2026/people.csv"), "x").map(|_| ()),
        "overwrite a file",
    );
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(at.join("2/registry/readme.txt"))
            .map(|_| ()),
        "append to a file",
    );
    erofs(fs::write(at.join("2/new-file"), "x"), "create a file");
    erofs(fs::create_dir(at.join("2/new-dir")), "make a folder");
    erofs(
        fs::remove_file(at.join("2/registry/readme.txt")),
        "remove a file",
    );
    erofs(
        fs::rename(at.join("2/registry"), at.join("2/moved")),
        "rename",
    );
    let said = mounted.stop();
    assert!(said.contains("mounted records read-only"), "{said}");
    assert!(said.contains("unmounted"), "{said}");
    // The source of truth is untouched, and the mount point is an empty folder again.
    assert_eq!(fs::read_dir(&at).unwrap().count(), 0);
}

#[test]
fn mount_answers_eio_for_a_tampered_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), random(7, 2_000_000)).unwrap();
    vault.ok(
        "m",
        &vault.key,
        &["backup", "data", src.to_str().unwrap()],
        None,
    );
    // Flip a byte in the middle of the largest pack: inside a chunk of big.bin (the one
    // folder's tree is a few hundred bytes).
    let mut packs: Vec<PathBuf> = walk_files(&vault.site.join("packs/data"));
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let largest = packs.last().unwrap();
    assert!(fs::metadata(largest).unwrap().len() > 500_000, "{packs:?}");
    let mut bytes = fs::read(largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(largest, &bytes).unwrap();
    let at = tmp.path().join("mnt");
    let mounted = Mounted::start(&vault, "data", &at);
    let read = fs::read(at.join("1/big.bin"));
    let e = read.expect_err("a tampered chunk must not be served");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let said = mounted.stop();
    assert!(said.contains("error: reading"), "{said}");
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

#[test]
fn mount_refuses_a_folder_that_is_not_empty_and_an_unknown_dataset() {
    let f = Fixture::new();
    let at = f._tmp.path().join("busy");
    fs::create_dir_all(&at).unwrap();
    fs::write(at.join("x"), "x").unwrap();
    f.run(&["mount", "records", at.to_str().unwrap()])
        .fails(1, &["is not empty"]);
    let empty = f._tmp.path().join("empty-mnt");
    fs::create_dir_all(&empty).unwrap();
    f.run(&["mount", "nosuch", empty.to_str().unwrap()])
        .fails(1, &["nosuch"]);
}

#[test]
fn ls_find_and_diff_of_a_postgresql_dataset_show_its_base_backups_files() {
    use embassy_testkit::pg::{PgOptions, PgServer};
    let pg = PgServer::start(PgOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    let conninfo = pg.conninfo();
    let backup = ["pg", "base-backup", "registry", "--conninfo", &conninfo];
    vault.ok("m", &vault.key, &backup, None);
    pg.psql("CREATE TABLE people (id int); INSERT INTO people SELECT generate_series(1, 1000); CHECKPOINT;");
    vault.ok("m", &vault.key, &backup, None);
    let run = vault.ok("m", &vault.key, &["ls", "registry@1"], None);
    for name in ["PG_VERSION\n", "base/\n", "global/\n", "backup_label\n"] {
        assert!(run.stdout.contains(name), "{name}: {run:?}");
    }
    assert!(run.stderr.contains("a PostgreSQL dataset"), "{run:?}");
    let json = vault
        .ok("m", &vault.key, &["--json", "ls", "registry@1"], None)
        .json();
    assert_eq!(json["content"], "postgres-base-backup");
    let found = vault.ok("m", &vault.key, &["find", "registry", "PG_VERSION"], None);
    assert!(
        found
            .stdout
            .starts_with("PG_VERSION  (3 B, in versions 1-2)"),
        "{found:?}"
    );
    // The new table is a new relation file under base/<database oid>/.
    let diff = vault
        .ok(
            "m",
            &vault.key,
            &["--json", "diff", "registry@1", "registry@2"],
            None,
        )
        .json();
    let added = diff["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["change"] == "added" && d["path"].as_str().unwrap().starts_with("base/"))
        .count();
    assert!(added >= 1, "{diff}");
}

/// Under a witness quorum, looking inside follows the rule restores follow: only versions a
/// witnessed checkpoint covers, unless `--unwitnessed`.
#[test]
fn under_a_witness_quorum_only_witnessed_versions_unless_asked() {
    use embassy_testkit::cli::{cheapen, Embassy};
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let embassy = Embassy::new(EXE, base);
    let witness_key = base.join("keys/witness.key");
    let public = embassy
        .ok(
            [
                "--json",
                "witness-key",
                "--out",
                witness_key.to_str().unwrap(),
            ],
            None,
        )
        .json()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let site = base.join("site");
    let slow = base.join("keys/slow.key");
    let site_arg = site.to_str().unwrap().to_string();
    embassy.ok(
        [
            "--site",
            &site_arg,
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
    let key = base.join("keys/root.key");
    cheapen(&slow, &key);
    let state = base.join("state/m");
    let run = |extra: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec![
            "--site",
            &site_arg,
            "--quiet",
            "--key-file",
            key.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        all.extend_from_slice(extra);
        embassy.run(all, stdin)
    };
    run(&["backup", "dump", "--stdin"], Some(b"first")).ok();
    run(
        &["witness", "--witness-key", witness_key.to_str().unwrap()],
        None,
    )
    .ok();
    run(&["backup", "dump", "--stdin"], Some(b"second!")).ok();
    // The newest witnessed version is version 1.
    let ls = run(&["--json", "ls", "dump"], None);
    ls.ok();
    assert_eq!(ls.json()["version"], 1);
    run(&["ls", "dump@2"], None).fails(1, &["not yet covered", "--unwitnessed"]);
    let json = run(&["--json", "ls", "dump@2", "--unwitnessed"], None).json();
    assert_eq!(json["entries"][0]["size"], 7);
    let found = run(&["--json", "find", "dump", "stream"], None).json();
    assert_eq!(found["versions_searched"], serde_json::json!([1]));
    let found = run(&["--json", "find", "dump", "stream", "--unwitnessed"], None).json();
    assert_eq!(found["versions_searched"], serde_json::json!([1, 2]));
    run(&["diff", "dump@1", "dump@2"], None).fails(1, &["not yet covered"]);
    let diff = run(&["diff", "dump@1", "dump@2", "--unwitnessed"], None);
    assert!(
        diff.stdout.contains("M stream  5 B -> 7 B (+2 B)"),
        "{diff:?}"
    );
}
