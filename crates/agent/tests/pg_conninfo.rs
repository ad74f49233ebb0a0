//! The PostgreSQL connection string of a dataset is checked when embassy.toml is read: a TLS
//! setting the streamer would refuse, or a relative CA file, is reported with its position.

use std::path::Path;

use embassy_agent::config::{Config, Source};

fn parse(conninfo: &str) -> Result<Config, embassy_agent::ConfigError> {
    let text = format!(
        "[keys]\nfile = \"vault.key\"\npassphrase_env = \"PASS\"\n\n[[sites]]\nname = \"lux\"\n\
         path = \"/srv/lux\"\n\n[[datasets]]\nname = \"registry\"\n\
         source = {{ postgres = {{ conninfo = \"{conninfo}\", slot = \"embassy\" }} }}\n\
         mode = \"continuous\"\nrpo = \"1min\"\n"
    );
    Config::parse(&text, Path::new("/etc/embassy/embassy.toml"))
}

#[test]
fn tls_settings_in_the_conninfo_are_checked_when_the_config_is_read() {
    let ok = parse("host=db1 user=embassy sslmode=verify-full sslrootcert=/etc/embassy/pg-ca.pem")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        &ok.dataset("registry").unwrap().source,
        Source::Postgres { conninfo, .. } if conninfo.contains("verify-full")
    ));
    let e = parse("host=db1 user=embassy sslmode=verify-everything").unwrap_err();
    assert!(
        e.to_string()
            .contains("11:36: datasets[0].source.postgres.conninfo: connection string: sslmode=verify-everything is not a mode"),
        "{e}"
    );
    let e = parse("host=db1 sslmode=verify-full sslrootcert=pg-ca.pem").unwrap_err();
    assert!(
        e.to_string()
            .contains("sslrootcert must be an absolute path"),
        "{e}"
    );
}
