//! Red team 6, #5: a group restore never brings back part of the group in silence. A point that
//! names fewer members than ANY earlier point (not only the one just before it) is refused,
//! naming the members it lacks and the newest point that names them all; recording the partial
//! point twice does not make it acceptable. Only `SmallerGroup::Accept` restores it. File and
//! stream members over a memory site: no PostgreSQL needed (pg_group.rs covers those members).

use std::sync::Arc;
use std::time::Duration;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_ops::group::{
    choose, points, take_point, GroupError, GroupSpec, GroupTarget, MemberSpec, SmallerGroup,
};
use embassy_testkit::memory::MemorySite;

fn spec(members: &[&str]) -> GroupSpec {
    GroupSpec {
        name: "reg".into(),
        members: members
            .iter()
            .map(|d| MemberSpec::Version {
                dataset: d.to_string(),
            })
            .collect(),
    }
}

#[test]
fn a_point_lacking_a_member_of_any_earlier_point_is_refused_even_when_recorded_twice() {
    let root = RootSecret::from_bytes(&[5; 32]);
    let site = Arc::new(MemorySite::default());
    let vault = Vault::create(site, &RootSecret::from_bytes(&[5; 32])).unwrap();
    let keyring = Keyring::from_root(RootSecret::from_bytes(&[5; 32]), vault.config()).unwrap();
    let signer = root.writer_signing_key(0);
    let point = |members: &[&str]| {
        take_point(&vault, &signer, &spec(members), Duration::from_secs(1)).unwrap();
    };
    for (d, bytes) in [("people", &b"person 1"[..]), ("companies", b"company 1")] {
        embassy_sources::stream::backup_reader(&vault, &keyring, d, bytes, "t", &Silent).unwrap();
    }
    point(&["people", "companies"]); // 1: the whole group
    point(&["people"]); // 2: partial
    point(&["people"]); // 3: partial again (one interval later)

    let listed = points(&vault, "reg").unwrap();
    let lacking: Vec<&[String]> = listed.iter().map(|p| p.lacking.as_slice()).collect();
    assert_eq!(
        lacking,
        [
            &[][..],
            &["companies".to_string()],
            &["companies".to_string()]
        ]
    );

    let refused = choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Refuse).unwrap_err();
    let GroupError::FewerMembers {
        number,
        lacking,
        whole,
        ..
    } = &refused
    else {
        panic!("point 3 was not refused for its members: {refused}")
    };
    assert_eq!(*number, 3);
    assert_eq!(lacking, &["companies".to_string()]);
    assert_eq!(whole.as_ref().map(|(n, _)| *n), Some(1), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("point 3 names people but earlier points also named companies"),
        "{message}"
    );
    assert!(message.contains("point 1, was taken at"), "{message}");
    // Core's typed way out, so that the CLI can name its flag.
    let core: embassy_core::Error = refused.into();
    assert!(
        matches!(
            core,
            embassy_core::Error::Refused {
                way_out: embassy_core::error::WayOut::AcceptSmallerGroup { .. },
                ..
            }
        ),
        "{core:?}"
    );

    // Asked for a time after point 3 too: refused, never part of the group.
    let far = i64::MAX / 2;
    assert!(matches!(
        choose(&vault, "reg", GroupTarget::Time(far), SmallerGroup::Refuse),
        Err(GroupError::FewerMembers { number: 3, .. })
    ));
    // Accepted on purpose, point 3 is chosen.
    let accepted = choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Accept).unwrap();
    assert_eq!(accepted.point.number, 3);
    assert_eq!(accepted.lacking, ["companies".to_string()]);

    // The whole group again: restorable without accepting anything.
    point(&["companies", "people"]);
    let whole = choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Refuse).unwrap();
    assert_eq!(whole.point.number, 4);
    assert!(whole.lacking.is_empty());
}

/// Red team 12, break 4: a site withholding the group ledger's newest point brought a restore
/// of the newest point back to an older one in silence: a point wrote no checkpoint, and
/// `latest` was never held against the checkpoints. A point now checkpoints its head (with a
/// key that may), and `latest` refuses a group ledger that does not extend the site's newest
/// checkpoints, naming the rollback; a withheld member entry of the newest point makes that
/// point unrestorable, said so.
#[test]
fn a_withheld_newest_point_or_member_entry_is_a_rollback_not_an_older_point() {
    use embassy_core::site::Site;
    let root = RootSecret::from_bytes(&[6; 32]);
    let site = Arc::new(MemorySite::default());
    let vault = Vault::create(site.clone(), &RootSecret::from_bytes(&[6; 32])).unwrap();
    let keyring = Keyring::from_root(RootSecret::from_bytes(&[6; 32]), vault.config()).unwrap();
    let signer = root.writer_signing_key(0);
    let backup = |d: &str, bytes: &[u8]| {
        embassy_sources::stream::backup_reader(&vault, &keyring, d, bytes, "t", &Silent).unwrap();
    };
    let point = || {
        take_point(
            &vault,
            &signer,
            &spec(&["people", "companies"]),
            Duration::from_secs(1),
        )
        .unwrap();
    };
    backup("people", b"person 1");
    backup("companies", b"company 1");
    point();
    backup("people", b"person 2");
    point();
    assert_eq!(
        choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Refuse)
            .unwrap()
            .point
            .number,
        2
    );
    let ledger_of = |dataset: &str| {
        let mut paths: Vec<String> = site
            .list(&embassy_core::format::layout::ledger_prefix(dataset))
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        paths.sort();
        paths
    };
    // The site withholds the newest point.
    let group_ledger = embassy_core::format::layout::group_ledger("reg");
    let newest_point = ledger_of(&group_ledger).pop().unwrap();
    let kept = site.get(&newest_point).unwrap();
    site.delete(&newest_point).unwrap();
    let refused = choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Refuse).unwrap_err();
    assert!(refused.to_string().contains("rollback"), "{refused}");
    site.put(&newest_point, &kept).unwrap();
    // Or the member entry the newest point names: that point cannot be restored, said so.
    let newest_person = ledger_of("people").pop().unwrap();
    site.delete(&newest_person).unwrap();
    let refused = choose(&vault, "reg", GroupTarget::Latest, SmallerGroup::Refuse).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the newest group point that fits, point 2, cannot be restored"),
        "{refused}"
    );
}
