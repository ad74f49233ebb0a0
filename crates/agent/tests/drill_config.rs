//! A PostgreSQL dataset's drill settings in embassy.toml: `drill_checks` (SQL that must return
//! true on the restored server) and `drill_database` (where they run), read into the dataset's
//! config; a check that is not a non-empty string is refused with its position.

use std::path::Path;

use embassy_agent::config::Config;

fn parse(drill: &str) -> Result<Config, embassy_agent::config::ConfigError> {
    let text = format!(
        "[keys]\nfile = \"vault.key\"\npassphrase_env = \"PASS\"\n\n[[sites]]\nname = \"lux\"\n\
         path = \"/srv/lux\"\n\n[[datasets]]\nname = \"people\"\n\
         source = {{ postgres = {{ conninfo = \"host=/run/postgresql user=embassy\" }} }}\n\
         mode = \"continuous\"\ninterval = \"1h\"\nrpo = \"1h\"\ndrill = \"7d\"\n{drill}"
    );
    Config::parse(&text, Path::new("/etc/embassy/embassy.toml"))
}

#[test]
fn drill_checks_and_their_database_are_read() {
    let config = parse(
        "drill_checks = [\"select count(*) > 0 from persons\", \"select true\"]\n\
         drill_database = \"registry\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let d = &config.datasets[0];
    assert_eq!(
        d.drill_checks,
        ["select count(*) > 0 from persons", "select true"]
    );
    assert_eq!(d.drill_database.as_deref(), Some("registry"));
    let config = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert!(config.datasets[0].drill_checks.is_empty());
    assert_eq!(config.datasets[0].drill_database, None);
}

#[test]
fn a_drill_check_that_is_not_sql_text_is_refused_with_its_position() {
    let e = parse("drill_checks = [\"select true\", \"\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("datasets[0].drill_checks[1]"), "{e}");
    let e = parse("drill_checks = \"select true\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("datasets[0].drill_checks"), "{e}");
}
