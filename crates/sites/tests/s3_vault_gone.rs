//! Red team 8: a wiped S3 bucket was refilled by writes. A local site refuses a write into a
//! folder without the vault's `config` once the process saw the config there (a streamer never
//! tells PostgreSQL that WAL is durable in an unmounted or emptied folder); an S3 site did not:
//! after every object of the bucket was deleted, a put still succeeded, so a streamer went on
//! acknowledging WAL stored where no vault is. Runs against the tests' real S3 server.

use std::time::Duration;

use embassy_core::format::config::VaultConfig;
use embassy_core::format::layout;
use embassy_core::keys::RootSecret;
use embassy_core::site::{Put, Site, SiteError};
use embassy_sites::s3::CONFIG_RECHECK;
use embassy_sites::S3Site;
use embassy_testkit::s3::*;

/// Deletes every object of the site's bucket prefix, as a wipe (or a lifecycle rule) would.
fn wipe(site: &S3Site) {
    let wiper = S3Site::new(site.config().clone()).unwrap();
    for info in wiper.list("").unwrap() {
        wiper.delete(&info.path).unwrap();
    }
    for path in [layout::CONFIG, layout::CONFIG_SIGNATURE] {
        wiper.delete(path).unwrap();
    }
    assert!(wiper.list("").unwrap().is_empty());
    assert!(matches!(
        wiper.get(layout::CONFIG),
        Err(SiteError::NotFound { .. })
    ));
}

fn refused_as_gone(result: Result<Put, SiteError>, site: &S3Site) {
    match result {
        Err(e @ SiteError::Permanent { .. }) => {
            let message = e.to_string();
            for needed in [
                "config is gone",
                "nothing is written here",
                "embassy sync --seed",
                site.location(),
            ] {
                assert!(message.contains(needed), "{needed:?} missing: {message}");
            }
        }
        other => panic!("a put into the wiped bucket was not refused: {other:?}"),
    }
}

#[test]
fn a_wiped_bucket_is_never_refilled_by_writes_of_a_process_that_saw_the_vault() {
    let init = s3_site("wiped", "vault", false);
    // A process that never saw a vault here (an `init` about to write one) writes unchecked.
    init.put("wal/one/0", b"before the vault").unwrap();
    init.delete("wal/one/0").unwrap();
    let secret = RootSecret::from_slice(&[4; 32]).unwrap();
    let config = VaultConfig::new(&secret);
    config.create(&init, &secret).unwrap();

    // A streamer opens the vault (reads its config), then writes.
    let streamer = S3Site::new(init.config().clone()).unwrap();
    VaultConfig::load(&streamer).unwrap();
    streamer.put("wal/one/a", b"one").unwrap();

    // 1. Wiped right after the config was read: the first write after it is checked.
    let streamer2 = S3Site::new(init.config().clone()).unwrap();
    VaultConfig::load(&streamer2).unwrap();
    wipe(&init);
    refused_as_gone(streamer2.put("wal/one/b", b"two"), &streamer2);
    assert!(
        init.list("").unwrap().is_empty(),
        "the wiped bucket was written to"
    );

    // 2. Wiped while the streamer writes on: at most CONFIG_RECHECK later its writes stop.
    config.create(&init, &secret).unwrap();
    streamer.put("wal/one/c", b"three").unwrap();
    std::thread::sleep(CONFIG_RECHECK + Duration::from_millis(200));
    wipe(&init);
    refused_as_gone(streamer.put("wal/one/d", b"four"), &streamer);
    // Multipart uploads too.
    let big = vec![7u8; 9 * 1024 * 1024];
    refused_as_gone(streamer.put("packs/one/00/big", &big), &streamer);
    assert!(
        init.list("").unwrap().is_empty(),
        "the wiped bucket was written to"
    );

    // 3. Init (or a repair, which writes the configuration first) is never refused, even by
    // the process that saw the vault; once the config is back, writes go on.
    config.create(&streamer, &secret).unwrap();
    assert_eq!(streamer.put("wal/one/d", b"four").unwrap(), Put::Created);
    assert_eq!(streamer2.put("wal/one/b", b"two").unwrap(), Put::Created);
    assert_eq!(init.get("wal/one/d").unwrap(), b"four");
}
