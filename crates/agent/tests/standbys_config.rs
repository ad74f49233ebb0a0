//! `[[standbys]]` in embassy.toml (the embassy node): each names a dataset of the vault, a data
//! directory and a port; `hot_standby` is on; the lag alarm threshold defaults to a minute; a
//! mistake is refused with its position.

use std::path::Path;
use std::time::Duration;

use embassy_agent::config::{Config, ConfigError};

fn parse(standbys: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "[keys]\nfile = \"vault.key\"\npassphrase_env = \"PASS\"\n\n[[sites]]\nname = \"lux\"\n\
         path = \"/srv/lux\"\n\n{standbys}"
    );
    Config::parse(&text, Path::new("/etc/embassy/embassy.toml"))
}

#[test]
fn an_embassy_node_is_read_with_its_standbys() {
    let config = parse(
        "[[standbys]]\ndataset = \"population\"\ndata_dir = \"standby/population\"\nport = 5433\n\
         hot_standby = true\nlag_alarm = \"30s\"\nowner = \"postgres\"\n\n\
         [[standbys]]\ndataset = \"companies\"\ndata_dir = \"/srv/companies\"\nport = 5434\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.datasets.is_empty());
    assert_eq!(config.standbys.len(), 2);
    let s = &config.standbys[0];
    assert_eq!(s.dataset, "population");
    assert_eq!(s.data_dir, Path::new("/etc/embassy/standby/population"));
    assert_eq!((s.port, s.hot_standby), (5433, true));
    assert_eq!(s.lag_alarm, Duration::from_secs(30));
    assert_eq!(s.owner.as_deref(), Some("postgres"));
    assert_eq!(config.standbys[1].lag_alarm, Duration::from_secs(60));
    assert!(config.summary().contains("standby of population"));
}

#[test]
fn a_standby_mistake_is_refused_with_its_position() {
    let e = parse("[[standbys]]\ndataset = \"population\"\ndata_dir = \"/srv/p\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("standbys[0].port: missing"), "{e}");
    let e = parse(
        "[[standbys]]\ndataset = \"population\"\ndata_dir = \"/srv/p\"\nport = 5433\nhot_standby = false\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("standbys[0].hot_standby: expected true"), "{e}");
    let e = parse(
        "[[standbys]]\ndataset = \"population\"\ndata_dir = \"/srv/p\"\nport = 5433\n\
         [[standbys]]\ndataset = \"population\"\ndata_dir = \"/srv/q\"\nport = 5434\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("standbys[1].dataset") && e.contains("one per dataset"),
        "{e}"
    );
    let e = parse(
        "[[standbys]]\ndataset = \"population\"\ndata_dir = \"/srv/p\"\nport = 5433\nlag = \"1m\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("standbys[0].lag: unknown field"), "{e}");
}

/// Red team 8: a data directory naming the vault's own site folder, or `"."` (the folder of the
/// configuration, its key and passphrase files), made the node remove them when it rebuilt the
/// "incomplete" standby. The node no longer removes a folder that is not a standby's, but the
/// mistake is refused up front too: a data directory that is or holds the configuration file,
/// the state folder, the key or passphrase file, or a site's folder, or that lies inside a
/// site's folder (through `..` or a symbolic link too), is an error naming what it overlaps.
#[test]
fn a_data_directory_overlapping_what_the_agent_keeps_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    let site = tmp.path().join("lux");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&site).unwrap();
    std::os::unix::fs::symlink(&site, tmp.path().join("alias")).unwrap();
    let parse = |data_dir: &str| {
        let text = format!(
            "[agent]\nstate_dir = \"state\"\n\n[keys]\nfile = \"keys/vault.key\"\n\
             passphrase_file = \"/run/secrets/pass\"\n\n[[sites]]\nname = \"lux\"\n\
             path = \"{}\"\n\n[[standbys]]\ndataset = \"population\"\ndata_dir = \"{data_dir}\"\n\
             port = 5433\n",
            site.display()
        );
        Config::parse(&text, &etc.join("embassy.toml"))
    };
    let site_dir = site.display().to_string();
    let refused = [
        (".", "this configuration file"),
        ("state", "the agent's state_dir"),
        ("keys", "the key file"),
        ("/run", "the passphrase file"),
        (site_dir.as_str(), "site lux's folder"),
        (&format!("{site_dir}/population"), "site lux's folder"),
        ("../lux", "site lux's folder"),
        ("../alias/population", "site lux's folder"),
        ("..", "this configuration file"),
    ];
    for (data_dir, what) in refused {
        let e = parse(data_dir)
            .err()
            .unwrap_or_else(|| panic!("data_dir {data_dir:?} was taken"))
            .to_string();
        assert!(
            e.contains("standbys[0].data_dir") && e.contains(what),
            "{data_dir}: {e}"
        );
    }
    // A folder of its own beside them is fine.
    for data_dir in ["population", "../standbys/population", "state-of-the-art"] {
        parse(data_dir).unwrap_or_else(|e| panic!("{data_dir}: {e}"));
    }
}

/// Red team 9: a data directory's fetch and run folders (`<data_dir>.wal-fetch`, `<data_dir>.run`)
/// are the node's too (a site folder named like the fetch folder was emptied by the first
/// make), a key file reached through `lnk/../` where `lnk` points into the data directory is
/// inside it, and two standbys' data directories must not nest or alias through a link.
#[test]
fn a_standbys_own_folders_links_and_other_standbys_are_checked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("data/pop/sub")).unwrap();
    std::fs::create_dir_all(root.join("lux")).unwrap();
    // `lnk/../k.key` opens `data/pop/k.key`: the link is followed before `..` applies.
    std::os::unix::fs::symlink(etc.join("data/pop/sub"), etc.join("lnk")).unwrap();
    std::os::unix::fs::symlink(etc.join("data/pop"), etc.join("alias")).unwrap();
    let parse = |site: &str, state: &str, key: &str, standbys: &[&str]| {
        let mut text = format!(
            "[agent]\nstate_dir = \"{state}\"\n\n[keys]\nfile = \"{key}\"\n\
             passphrase_env = \"PASS\"\n\n[[sites]]\nname = \"lux\"\npath = \"{site}\"\n"
        );
        for (i, d) in standbys.iter().enumerate() {
            text.push_str(&format!(
                "\n[[standbys]]\ndataset = \"ds{i}\"\ndata_dir = \"{d}\"\nport = {}\n",
                5433 + i
            ));
        }
        Config::parse(&text, &etc.join("embassy.toml"))
    };
    let lux = root.join("lux").display().to_string();
    let refused = |site: &str, state: &str, key: &str, standbys: &[&str], what: &str| {
        let e = parse(site, state, key, standbys)
            .err()
            .unwrap_or_else(|| panic!("{site} {state} {key} {standbys:?} was taken"))
            .to_string();
        assert!(e.contains(what), "{site} {state} {key} {standbys:?}: {e}");
    };
    let pop = etc.join("data/pop").display().to_string();
    refused(
        &format!("{pop}.wal-fetch"),
        "state",
        "k.key",
        &["data/pop"],
        "site lux's folder",
    );
    refused(
        &lux,
        "data/pop.run",
        "k.key",
        &["data/pop"],
        "the agent's state_dir",
    );
    refused(&lux, "state", "lnk/../k.key", &["data/pop"], "the key file");
    refused(
        &lux,
        "state",
        "k.key",
        &["data/pop", "data/pop/nested"],
        "overlaps the standby of ds0",
    );
    refused(
        &lux,
        "state",
        "k.key",
        &["data/pop", "alias"],
        "overlaps the standby of ds0",
    );
    refused(
        &lux,
        "state",
        "k.key",
        &["data/pop", "data/pop.run"],
        "overlaps the standby of ds0",
    );
    // Folders of their own, side by side: fine.
    parse(
        &lux,
        "state",
        "k.key",
        &["data/pop", "data/pop2", "data/other"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
