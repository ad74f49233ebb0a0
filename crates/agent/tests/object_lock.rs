//! Object Lock as a documented setting of an S3 site in embassy.toml (`object_lock =
//! "MODE:DAYS"`), equivalent to the URL's `object-lock=` option: checked when the configuration
//! is read (what `embassy config check` reports), and the site the agent opens from it locks
//! every object it creates, on moto with a bucket created with Object Lock.

use std::path::Path;

use embassy_agent::config::Config;
use embassy_core::site::{Put, Site};
use embassy_sites::s3::S3Config;
use embassy_sites::S3Site;
use embassy_testkit::s3;

fn config(site: &str) -> String {
    format!(
        "[agent]\nstate_dir = \"state\"\n[keys]\nfile = \"vault.key\"\n\
         passphrase_env = \"EMBASSY_PASSPHRASE\"\n[[sites]]\n{site}\n\
         [[datasets]]\nname = \"register\"\nsource = {{ files = [\"data\"] }}\n\
         interval = \"1h\"\nrpo = \"2h\"\n"
    )
}

fn parse(site: &str) -> Result<Config, String> {
    Config::parse(&config(site), Path::new("/etc/embassy/embassy.toml")).map_err(|e| e.to_string())
}

#[test]
fn object_lock_setting_locks_what_the_configured_site_writes() {
    // A bucket created with Object Lock, on the tests' S3 server.
    let made = s3::s3_site("agent-lock", "vault", true);
    let bucket = made.config().bucket.clone();
    let target = s3::s3_target();
    let site = format!(
        "name = \"lux\"\nurl = \"s3://{bucket}/vault\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
         path_style = true\nobject_lock = \"governance:2\"",
        target.endpoint, target.region
    );
    let config = parse(&site).unwrap();
    let location = &config.sites[0].location;
    assert!(location.contains("object-lock=governance:2"), "{location}");

    // The site opened from that location (as the agent opens it) locks what it creates.
    let env = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(target.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(target.secret_access_key.clone()),
        _ => None,
    };
    let cfg = S3Config::from_location_with(location, &env).unwrap();
    let lock = cfg.object_lock.expect("object lock configured");
    assert_eq!(lock.days, 2);
    let site = S3Site::new(cfg).unwrap();
    assert_eq!(site.put("obj/locked", b"kept").unwrap(), Put::Created);
    let retention = site.object_retention("obj/locked").unwrap();
    assert_eq!(
        retention.mode.as_deref(),
        Some("GOVERNANCE"),
        "{retention:?}"
    );
    assert!(retention.retain_until.is_some(), "{retention:?}");

    // The same as the URL's option: one of them, not both.
    let both = format!(
        "name = \"lux\"\nurl = \"s3://{bucket}/vault?object-lock=governance:2\"\n\
         object_lock = \"governance:2\""
    );
    let e = parse(&both).unwrap_err();
    assert!(e.contains("object_lock") && e.contains("keep one"), "{e}");
}

#[test]
fn object_lock_setting_is_checked() {
    for (value, needle) in [
        ("forever", "MODE:DAYS"),
        ("legal:3", "governance or compliance"),
        ("governance:0", "1 to 36500"),
    ] {
        let e = parse(&format!(
            "name = \"lux\"\nurl = \"s3://bucket/vault\"\nobject_lock = \"{value}\""
        ))
        .unwrap_err();
        assert!(
            e.contains("object_lock") && e.contains(needle),
            "{value}: {e}"
        );
    }
    let e = parse("name = \"lux\"\npath = \"/srv/vault\"\nobject_lock = \"governance:30\"")
        .unwrap_err();
    assert!(e.contains("object_lock") && e.contains("s3://"), "{e}");
    // Both modes, with or without the `d`.
    for value in ["governance:30", "compliance:365d"] {
        let config = parse(&format!(
            "name = \"lux\"\nurl = \"s3://bucket/vault\"\nobject_lock = \"{value}\""
        ))
        .unwrap();
        assert!(
            config.sites[0].location.contains("?object-lock="),
            "{value}"
        );
    }
}
