//! `embassy gc`'s exit status tells damage from an outage, as `verify`'s does: a site whose
//! condemnation records cannot be listed is an outage (exit 1, the problem marked "outage"),
//! a damaged condemnation record is damage (exit 3, marked "integrity"). Real `embassy`
//! processes on a local-folder site.

use std::fs;

use embassy_testkit::cli::TestVault;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

#[test]
fn gc_exits_1_for_a_site_it_cannot_list_and_3_for_a_damaged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    vault.backup_bytes("m", "dump", b"gc kinds: version 1");
    vault.ok("m", &vault.key, &["gc", "--grace", "1s"], None);

    // The outage: the site's `gc/` folder cannot be listed (as root, a folder cannot be made
    // unreadable, so it is a link, which the local site refuses to list through: an I/O error).
    let gc = vault.site.join("gc");
    if gc.exists() {
        fs::remove_dir_all(&gc).unwrap();
    }
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &gc).unwrap();
    let run = vault.run("m", &vault.key, &["gc", "--grace", "1s"], None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("PROBLEM (outage)")
            && run
                .stdout
                .contains("its condemnation records cannot be listed"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("(integrity)"), "{run:?}");
    let json = vault
        .run("m", &vault.key, &["--json", "gc", "--grace", "1s"], None)
        .json();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["report"]["problems"][0]["kind"], "outage", "{json}");

    // The damage: a condemnation record whose bytes do not hash to its name.
    fs::remove_file(&gc).unwrap();
    let record = gc.join("dump").join(format!("{:020}-{}", 1, "ab".repeat(32)));
    fs::create_dir_all(record.parent().unwrap()).unwrap();
    fs::write(&record, b"not a condemnation record").unwrap();
    let run = vault.run("m", &vault.key, &["gc", "--grace", "1s"], None);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("PROBLEM (integrity)"), "{run:?}");
}
