//! Group points need format 3: a version-2 vault is still read (it holds no group points), but
//! a group point is refused there (its version-2 readers would take the entry for damage); a
//! vault of a format newer than this program's is refused when opened.

use std::sync::Arc;
use std::time::Duration;

use embassy_core::engine::vault::Vault;
use embassy_core::format::config::{VaultConfig, FORMAT_VERSION};
use embassy_core::keys::RootSecret;
use embassy_ops::group::{take_point, GroupSpec, MemberSpec};
use embassy_testkit::memory::MemorySite;

fn vault_of_format(version: u32) -> (Arc<MemorySite>, RootSecret) {
    let root = RootSecret::generate();
    let site = Arc::new(MemorySite::default());
    let mut config = VaultConfig::new(&root);
    config.format_version = version;
    config.create(site.as_ref(), &root).unwrap();
    (site, root)
}

#[test]
fn a_version_2_vault_is_read_but_holds_no_group_point() {
    const { assert!(FORMAT_VERSION >= 3) };
    let (site, root) = vault_of_format(2);
    let vault = Vault::open(site).expect("a version-2 vault is still read");
    let spec = GroupSpec {
        name: "registries".into(),
        members: vec![MemberSpec::Version {
            dataset: "parcels".into(),
        }],
    };
    let e = take_point(
        &vault,
        &root.writer_signing_key(0),
        &spec,
        Duration::from_secs(1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("format version 2, which cannot hold group points"),
        "{e}"
    );
    assert!(embassy_ops::group::points(&vault, "registries")
        .unwrap()
        .is_empty());
}

#[test]
fn a_vault_of_a_newer_format_is_refused() {
    let (site, _) = vault_of_format(FORMAT_VERSION + 1);
    let Err(e) = Vault::open(site) else {
        panic!("a vault of a newer format was opened")
    };
    let e = e.to_string();
    assert!(e.contains("upgrade embassy"), "{e}");
}
