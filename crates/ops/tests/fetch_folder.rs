//! Red team 9: a make of a standby removes the fetch folder left beside its data directory
//! (`<data_dir>.wal-fetch`) by an earlier one; a folder under that name that holds anything a
//! fetch folder does not (a site's folder named so by mistake) is refused and kept.

use embassy_ops::pgrestore::FetchFolder;

#[test]
fn only_a_fetch_folder_is_removed_beside_a_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pop");
    let fetch = tmp.path().join("pop.wal-fetch");
    // A site's folder under the fetch folder's name: kept, with an error naming it.
    std::fs::create_dir_all(fetch.join("ledger")).unwrap();
    std::fs::write(fetch.join("config"), b"vault").unwrap();
    let e = FetchFolder::remove_beside(&data).unwrap_err().to_string();
    assert!(e.contains("not the fetch folder"), "{e}");
    assert!(fetch.join("config").exists() && fetch.join("ledger").exists());
    // What a fetch folder holds: removed.
    std::fs::remove_dir_all(&fetch).unwrap();
    std::fs::create_dir_all(fetch.join("state")).unwrap();
    std::fs::write(fetch.join("reader.cred"), b"x").unwrap();
    std::fs::write(fetch.join("passphrase"), b"x").unwrap();
    FetchFolder::remove_beside(&data).unwrap();
    assert!(!fetch.exists());
    // None at all: nothing to do.
    FetchFolder::remove_beside(&data).unwrap();
}
