//! `[[groups]]` in embassy.toml: members must be datasets of the file, PostgreSQL members
//! streamed continuously (a restore point is reached by replaying streamed WAL), and the
//! group's spec carries each PostgreSQL member's connection string.

use std::path::Path;

use embassy_agent::config::Config;
use embassy_ops::group::MemberSpec;

fn parse(pg_mode: &str, group: &str) -> Result<Config, embassy_agent::config::ConfigError> {
    let text = format!(
        "[keys]\nfile = \"vault.key\"\npassphrase_env = \"PASS\"\n\n[[sites]]\nname = \"lux\"\n\
         path = \"/srv/lux\"\n\n[[datasets]]\nname = \"people\"\n\
         source = {{ postgres = {{ conninfo = \"host=/run/postgresql user=embassy\" }} }}\n\
         mode = \"{pg_mode}\"\ninterval = \"1h\"\nrpo = \"1h\"\n\n[[datasets]]\nname = \"parcels\"\n\
         source = {{ files = [\"/srv/parcels\"] }}\ninterval = \"1h\"\nrpo = \"2h\"\n\n{group}"
    );
    Config::parse(&text, Path::new("/etc/embassy/embassy.toml"))
}

const GROUP: &str =
    "[[groups]]\nname = \"registries\"\nmembers = [\"people\", \"parcels\"]\ninterval = \"5min\"\n";

#[test]
fn a_group_of_existing_continuous_datasets_is_read_with_its_members() {
    let config = parse("continuous", GROUP).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.groups.len(), 1);
    assert_eq!(config.groups[0].interval.as_secs(), 300);
    let spec = config.group_spec("registries").unwrap();
    assert!(matches!(&spec.members[0],
        MemberSpec::Postgres { dataset, conninfo } if dataset == "people" && conninfo.contains("embassy")));
    assert!(matches!(&spec.members[1], MemberSpec::Version { dataset } if dataset == "parcels"));
}

#[test]
fn a_group_member_that_cannot_reach_a_point_is_refused_with_its_position() {
    let e = parse("periodic", GROUP).unwrap_err().to_string();
    assert!(
        e.contains("groups[0].members[0]") && e.contains("mode = \"continuous\""),
        "{e}"
    );
    let e = parse(
        "continuous",
        "[[groups]]\nname = \"registries\"\nmembers = [\"people\", \"land\"]\ninterval = \"5min\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("groups[0].members[1]: unknown dataset \"land\""),
        "{e}"
    );
    let e = parse(
        "continuous",
        "[[groups]]\nname = \"registries\"\nmembers = [\"people\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("groups[0].interval: missing"), "{e}");
}
