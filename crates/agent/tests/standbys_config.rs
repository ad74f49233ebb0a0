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
