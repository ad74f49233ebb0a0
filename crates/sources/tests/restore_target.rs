//! How a restore treats its target folder: the backed-up folder's own metadata, and what is
//! already in the target when `overwrite` is allowed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::LocalSite;
use embassy_sources::files::{self, RestoreOptions};

struct TestVault {
    vault: Vault,
    keyring: Keyring,
}

fn new_vault(dir: &Path) -> TestVault {
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    TestVault { vault, keyring }
}

impl TestVault {
    fn backup(&self, dataset: &str, dir: &Path) -> Version {
        files::backup(
            &self.vault,
            &self.keyring,
            dataset,
            &[dir.to_path_buf()],
            &Silent,
        )
        .unwrap()
        .version
    }

    fn restore(&self, version: &Version, to: &Path, overwrite: bool) -> embassy_core::Result<()> {
        let reader = VersionReader::open(
            self.vault.site().clone(),
            self.keyring.dataset(&version.dataset).unwrap(),
            version,
        )
        .unwrap();
        let options = RestoreOptions {
            subpath: None,
            overwrite,
            ..Default::default()
        };
        files::restore(&reader, to, &options, &Silent).map(|_| ())
    }
}

/// A private folder (mode 0700, its own mtime) restores as a private folder: its own metadata is
/// part of the version like every folder inside it. Today only the folder's entries are stored,
/// so the restored root gets the default mode (0755 under the usual umask): data that was
/// readable only by its owner becomes listable by every local user after a restore.
#[test]
fn backed_up_folder_keeps_its_own_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("private");
    fs::create_dir(&src).unwrap();
    fs::create_dir(src.join("inner")).unwrap();
    fs::write(src.join("secret.txt"), b"for the owner only").unwrap();
    fs::set_permissions(src.join("inner"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).unwrap();
    let mtime = fs::File::open(&src).unwrap();
    mtime
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_890, 123))
        .unwrap();
    drop(mtime);
    let tv = new_vault(&tmp.path().join("vault"));
    let v = tv.backup("private", &src);
    let out = tmp.path().join("restored");
    tv.restore(&v, &out, false).unwrap();

    // Folders inside keep their mode (this works today) ...
    assert_eq!(
        fs::metadata(out.join("inner")).unwrap().mode() & 0o7777,
        0o700
    );
    // ... and so must the backed-up folder itself.
    let (a, b) = (fs::metadata(&src).unwrap(), fs::metadata(&out).unwrap());
    assert_eq!(
        b.mode() & 0o7777,
        a.mode() & 0o7777,
        "restored root folder mode {:o}, backed up {:o}",
        b.mode() & 0o7777,
        a.mode() & 0o7777
    );
    assert_eq!(
        (b.mtime(), b.mtime_nsec()),
        (a.mtime(), a.mtime_nsec()),
        "restored root folder mtime"
    );
}

/// With `overwrite`, a symlink already in the target where the version has a folder must not
/// lead the restore outside the target. (A compromised source host can store a version with
/// `sub -> /etc` and a later one with `sub/passwd`; restoring both into one folder with
/// --overwrite would otherwise write /etc/passwd.)
#[test]
fn overwrite_never_writes_through_a_symlinked_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();

    // Version 1: `sub` is a symlink to the outside folder.
    let src1 = tmp.path().join("v1");
    fs::create_dir(&src1).unwrap();
    std::os::unix::fs::symlink(&outside, src1.join("sub")).unwrap();
    let v1 = tv.backup("ds", &src1);
    // Version 2: `sub` is a folder holding `passwd`.
    let src2 = tmp.path().join("v2");
    fs::create_dir_all(src2.join("sub")).unwrap();
    fs::write(src2.join("sub/passwd"), b"attacker::0:0").unwrap();
    let v2 = tv.backup("ds", &src2);

    let target = tmp.path().join("target");
    tv.restore(&v1, &target, false).unwrap();
    assert!(fs::symlink_metadata(target.join("sub"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Either refused, or done inside the target: never through the link.
    let result = tv.restore(&v2, &target, true);
    assert_eq!(
        fs::read(outside.join("passwd")).unwrap(),
        b"root:x:0:0",
        "the restore wrote outside its target, through the symlink target/sub (result {result:?})"
    );
    if result.is_ok() {
        assert!(fs::symlink_metadata(target.join("sub")).unwrap().is_dir());
        assert_eq!(
            fs::read(target.join("sub/passwd")).unwrap(),
            b"attacker::0:0"
        );
    }
}

/// Overwriting replaces files, links and fifos of the same names, and leaves other entries.
#[test]
fn overwrite_replaces_entries_of_the_same_name() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("f"), b"new").unwrap();
    fs::write(src.join("d/g"), b"new g").unwrap();
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    let v = tv.backup("ds", &src);

    let target = tmp.path().join("target");
    fs::create_dir_all(target.join("d")).unwrap();
    fs::write(target.join("f"), b"old content, longer than the new").unwrap();
    fs::write(target.join("d/g"), b"old").unwrap();
    fs::write(target.join("keep"), b"unrelated").unwrap();
    std::os::unix::fs::symlink("elsewhere", target.join("l")).unwrap();
    assert!(
        tv.restore(&v, &target, false).is_err(),
        "not empty: refused"
    );
    tv.restore(&v, &target, true).unwrap();
    assert_eq!(fs::read(target.join("f")).unwrap(), b"new");
    assert_eq!(fs::read(target.join("d/g")).unwrap(), b"new g");
    assert_eq!(fs::read_link(target.join("l")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"unrelated");
}
