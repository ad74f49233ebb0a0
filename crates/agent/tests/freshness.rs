//! The agent's judgements as library calls: configuration problems with their positions, the
//! colour of a cell against its RPO, alarms raised and cleared once, the example config.

use std::collections::BTreeMap;
use std::path::Path;

use embassy_agent::alarms;
use embassy_agent::config::{Config, Mode, Source};
use embassy_agent::error::Problem;
use embassy_agent::metrics::metrics;
use embassy_agent::report::report;
use embassy_agent::schedule::Schedule;
use embassy_agent::state::AgentState;
use embassy_agent::state::VerifyState;
use embassy_agent::status::{self, CellFacts, Colour, SiteSnapshot};
use embassy_core::ErrorKind;
use embassy_ops::status::DatasetFacts;

const NS: i64 = 1_000_000_000;

fn parse(text: &str) -> Result<Config, embassy_agent::ConfigError> {
    Config::parse(text, Path::new("/etc/embassy/embassy.toml"))
}

const BASE: &str = r#"[keys]
file = "vault.key"
passphrase_env = "PASS"

[[sites]]
name = "lux"
path = "/srv/lux"

[[sites]]
name = "hel"
path = "/srv/hel"
"#;

#[test]
fn the_estonian_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/estonia/embassy.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sites.len(), 2);
    assert_eq!(config.datasets.len(), 10);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let gazette = config.dataset("state-gazette").unwrap();
    assert_eq!(
        gazette.mode,
        Mode::Periodic(Schedule::Daily { hour: 2, minute: 0 })
    );
    assert_eq!(
        config.dataset("pension-register").unwrap().sites,
        ["luxembourg"]
    );
    assert!(matches!(
        &config.dataset("business-register").unwrap().source,
        Source::Command { command, .. } if command == "cat data/business.csv"
    ));
    // Relative paths are taken from the file's folder.
    assert!(config.agent.state_dir.ends_with("examples/estonia/state"));
}

#[test]
fn every_problem_has_its_position_field_and_expectation() {
    let text = format!(
        "{BASE}
[[datasets]]
name = \"a\"
source = {{ files = [\"/x\"] }}
interval = \"15min\"
rpo = 15

[[datasets]]
name = \"b\"
source = {{ files = [\"/x\"], command = \"cat\" }}
mode = \"sometimes\"
rpo = \"1h\"
retention = {{ min_age = \"30d\" }}

[[datasets]]
name = \"c\"
source = {{ postgres = {{ conninfo = \"host=/run/postgresql\" }} }}
mode = \"continuous\"
rpo = \"1min\"
owner = 7
"
    );
    let e = parse(&text).unwrap_err();
    let lines: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    let expected = [
        "/etc/embassy/embassy.toml:17:7: datasets[0].rpo: expected a duration like \"90s\", \"15min\", \"1h\", found an integer",
        "/etc/embassy/embassy.toml:21:10: datasets[1].source: give exactly one of files, command or postgres",
        "/etc/embassy/embassy.toml:22:8: datasets[1].mode: expected \"continuous\" or \"periodic\"",
        "/etc/embassy/embassy.toml:24:13: datasets[1].retention: expected at least one keep_last/keep_hourly/keep_daily/keep_weekly/keep_monthly/keep_yearly rule (without one, every version but the newest would be deleted); omit retention to keep every version",
        "/etc/embassy/embassy.toml:31:9: datasets[2].owner: expected a string naming who answers for the dataset, found an integer",
    ];
    for x in expected {
        assert!(lines.iter().any(|l| l == x), "missing {x:?} in {lines:#?}");
    }
    // Each problem once, in file order.
    let mut sorted = e.problems.clone();
    sorted.sort_by_key(|p| (p.line, p.column));
    assert_eq!(sorted, e.problems);
}

#[test]
fn cross_checks_and_refusals() {
    let e = parse(&format!(
        "{BASE}\n[agent]\nmin_sites = 3\n[keys.hsm]\nslot = 1\n"
    ))
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("agent.min_sites: expected at most the number of sites (2), found 3"),
        "{text}"
    );
    // [keys] appears twice above: a TOML error, reported with its position.
    assert!(text.contains("embassy.toml:"), "{text}");
    let e =
        parse("[keys]\nfile = \"k\"\nhsm = { slot = 1 }\n[[sites]]\nname = \"a\"\npath = \"/a\"\n")
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("3:7: keys.hsm: HSM keys are not supported yet"),
        "{e}"
    );
    let e = parse("[keys]\nfile = \"k\"\n[[sites]]\nname = \"a\"\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("sites[0]: missing `path = \"folder\"` or `url = \"s3://bucket/prefix\"`"),
        "{e}"
    );
    let ok = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"a\"\nsource = {{ command = \"true\" }}\nschedule = \"weekly sun 03:00\"\nrpo = \"1d\"\n"
    ))
    .unwrap();
    assert_eq!(ok.warnings.len(), 1);
    assert!(ok.warnings[0]
        .to_string()
        .contains("datasets[0].rpo: rpo 1d is shorter than the schedule (weekly sun 03:00 UTC)"));
    assert_eq!(ok.agent.min_sites, 2, "default: every site");
}

fn snap(name: &str, dataset: &str, version: Option<u64>, captured_ns: Option<i64>) -> SiteSnapshot {
    let mut datasets = BTreeMap::new();
    datasets.insert(
        dataset.to_string(),
        CellFacts {
            held: DatasetFacts {
                dataset: dataset.to_string(),
                newest_version: version,
                versions: version.unwrap_or(0),
                recovery_point_ns: captured_ns,
                ..DatasetFacts::default()
            },
            ..CellFacts::default()
        },
    );
    SiteSnapshot {
        name: name.into(),
        location: format!("/srv/{name}"),
        datasets,
        ..SiteSnapshot::default()
    }
}

#[test]
fn colours_against_the_rpo() {
    let now = 1_800_000_000 * NS;
    let rpo = 100.0;
    let judge = |age_s: i64, version: u64, newest: u64| {
        let s = snap("lux", "d", Some(version), Some(now - age_s * NS));
        status::judge(rpo, &s, "d", None, Some(newest), None, now).0
    };
    assert_eq!(judge(10, 3, 3), Colour::Green);
    assert_eq!(judge(75, 3, 3), Colour::Green);
    assert_eq!(judge(76, 3, 3), Colour::Amber);
    assert_eq!(judge(100, 3, 3), Colour::Amber);
    assert_eq!(judge(101, 3, 3), Colour::Red);
    assert_eq!(judge(10, 2, 3), Colour::Amber, "a site behind another");
    // No version: amber during the first RPO, red after it.
    let empty = snap("lux", "d", None, None);
    assert_eq!(
        status::judge(rpo, &empty, "d", Some(now / NS - 50), None, None, now).0,
        Colour::Amber
    );
    assert_eq!(
        status::judge(rpo, &empty, "d", Some(now / NS - 150), None, None, now).0,
        Colour::Red
    );
    // An unreadable site is red.
    let down = SiteSnapshot {
        name: "hel".into(),
        error: Some(Problem::new(ErrorKind::Outage, "connection refused")),
        ..SiteSnapshot::default()
    };
    let (c, why, _, _) = status::judge(rpo, &down, "d", None, None, None, now);
    assert_eq!(c, Colour::Red);
    assert!(why.contains("connection refused"));
    // ... unless its data was seen recently: then it stays amber until that data breaches.
    let seen = Some(now - 60 * NS);
    let (c, why, lag, _) = status::judge(rpo, &down, "d", None, None, seen, now);
    assert_eq!((c, lag), (Colour::Amber, Some(60.0)), "{why}");
    let seen = Some(now - 101 * NS);
    let (c, why, _, _) = status::judge(rpo, &down, "d", None, None, seen, now);
    assert_eq!(c, Colour::Red);
    assert!(
        why.starts_with("RPO breached: site cannot be read (unreachable): connection refused"),
        "{why}"
    );
}

#[test]
fn alarms_are_raised_once_and_cleared_once() {
    let config = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"d\"\nsource = {{ command = \"true\" }}\ninterval = \"1min\"\nrpo = \"100s\"\nsites = [\"lux\"]\n"
    ))
    .unwrap();
    let now = 1_800_000_000 * NS;
    let mut state = AgentState::default();
    let stale = [
        snap("lux", "d", Some(1), Some(now - 500 * NS)),
        snap("hel", "d", Some(1), Some(now - 500 * NS)),
    ];
    let rows = status::rows(&config, &stale, &state, now);
    let notices = alarms::evaluate(&rows, &state, now / NS);
    // Only the required site alarms.
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (notices[0].event, notices[0].site.as_str()),
        ("raised", "lux")
    );
    assert_eq!(notices[0].to_json()["rpo_seconds"], 100.0);
    alarms::mark_delivered(&mut state, &notices[0]);
    assert!(
        alarms::evaluate(&rows, &state, now / NS).is_empty(),
        "raised twice"
    );
    let fresh = [
        snap("lux", "d", Some(2), Some(now - 5 * NS)),
        snap("hel", "d", Some(2), Some(now - 5 * NS)),
    ];
    let rows = status::rows(&config, &fresh, &state, now);
    let notices = alarms::evaluate(&rows, &state, now / NS);
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].event, "cleared");
    alarms::mark_delivered(&mut state, &notices[0]);
    assert!(alarms::evaluate(&rows, &state, now / NS).is_empty());
    // The metrics say the same.
    let m = metrics(&report(&config, &fresh, &state, now));
    assert!(
        m.contains("embassy_dataset_status{dataset=\"d\",site=\"lux\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("embassy_dataset_lag_seconds{dataset=\"d\",site=\"hel\"} 5"),
        "{m}"
    );
    assert!(m.contains("embassy_alarms_raised 0"), "{m}");
}

#[test]
fn a_continuous_database_can_also_take_scheduled_base_backups() {
    let pg =
        r#"source = { postgres = { conninfo = "host=/run/postgresql user=embassy", slot = "s" } }"#;
    let streamed = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"db\"\n{pg}\nmode = \"continuous\"\nrpo = \"1min\"\n"
    ))
    .unwrap();
    assert_eq!(streamed.dataset("db").unwrap().mode, Mode::Continuous(None));
    let both = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"db\"\n{pg}\nmode = \"continuous\"\nschedule = \"daily 02:00\"\nrpo = \"1min\"\n"
    ))
    .unwrap();
    assert_eq!(
        both.dataset("db").unwrap().mode,
        Mode::Continuous(Some(Schedule::Daily { hour: 2, minute: 0 }))
    );
    // A continuous RPO far below the base backup period is the point: no warning.
    assert!(both.warnings.is_empty(), "{:?}", both.warnings);
    let e = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"db\"\n{pg}\nmode = \"continuous\"\nschedule = \"daily 25:00\"\nrpo = \"1min\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("datasets[0].schedule: expected"),
        "{e}"
    );
    let e = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"f\"\nsource = {{ files = [\"/srv\"] }}\nmode = \"continuous\"\ninterval = \"1h\"\nrpo = \"1h\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("continuous capture needs a postgres source"),
        "{e}"
    );
}

#[test]
fn damage_is_red_at_once_and_told_apart_from_an_outage() {
    let config = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"d\"\nsource = {{ command = \"true\" }}\ninterval = \"1min\"\nrpo = \"100s\"\nsites = [\"lux\", \"hel\"]\n"
    ))
    .unwrap();
    let now = 1_800_000_000 * NS;
    let mut state = AgentState::default();
    // Both sites held fresh data a minute ago.
    state.seen.insert("d@lux".into(), now - 60 * NS);
    state.seen.insert("d@hel".into(), now - 60 * NS);
    // Helsinki is down; Luxembourg serves a history that does not verify.
    let down = SiteSnapshot {
        name: "hel".into(),
        error: Some(Problem::new(ErrorKind::Outage, "connection refused")),
        ..SiteSnapshot::default()
    };
    let mut tampered = snap("lux", "d", None, None);
    tampered.datasets.get_mut("d").unwrap().held.error = Some(Problem::new(
        ErrorKind::Integrity,
        "dataset d: history does not verify: entry 2 is not signed",
    ));
    let snaps = [tampered, down];
    let rows = status::rows(&config, &snaps, &state, now);
    let lux = &rows[0].cells[0];
    let hel = &rows[0].cells[1];
    // Damage: red at once, whatever the RPO; an outage waits for the RPO (amber now).
    assert_eq!(
        (lux.colour, lux.problem),
        (Colour::Red, Some(ErrorKind::Integrity))
    );
    assert!(
        lux.reason.contains("damaged or tampered with"),
        "{}",
        lux.reason
    );
    assert_eq!(
        (hel.colour, hel.problem),
        (Colour::Amber, Some(ErrorKind::Outage))
    );
    assert!(hel.reason.contains("unreachable"), "{}", hel.reason);
    let notices = alarms::evaluate(&rows, &state, now / NS);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].kind, Some(ErrorKind::Integrity));
    assert_eq!(notices[0].to_json()["problem_kind"], "integrity");
    alarms::mark_delivered(&mut state, &notices[0]);
    // After the RPO the outage raises its own alarm, of its own kind.
    let later = now + 100 * NS;
    let rows = status::rows(&config, &snaps, &state, later);
    let notices = alarms::evaluate(&rows, &state, later / NS);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (notices[0].site.as_str(), notices[0].kind),
        ("hel", Some(ErrorKind::Outage))
    );
    assert!(
        notices[0].message.contains("unreachable"),
        "{}",
        notices[0].message
    );
    alarms::mark_delivered(&mut state, &notices[0]);
    // Helsinki comes back, but its keyless verification finds damage: the outage alarm is
    // raised again as an integrity alarm.
    let back = snap("hel", "d", Some(1), Some(later - 5 * NS));
    let fine = snap("lux", "d", Some(1), Some(later - 5 * NS));
    state.verify.insert(
        "hel".into(),
        VerifyState {
            at: later / NS,
            ok: false,
            summary: "1 problems found, first: packs/ab: bytes do not hash to its name".into(),
            kind: Some(ErrorKind::Integrity),
        },
    );
    let snaps = [fine, back];
    let rows = status::rows(&config, &snaps, &state, later);
    let notices = alarms::evaluate(&rows, &state, later / NS);
    let raised: Vec<_> = notices.iter().filter(|n| n.event == "raised").collect();
    assert_eq!(raised.len(), 1, "{notices:?}");
    assert_eq!(
        (raised[0].site.as_str(), raised[0].kind),
        ("hel", Some(ErrorKind::Integrity))
    );
    // /status.json and /metrics say the same.
    let typed = report(&config, &snaps, &state, later);
    let report = serde_json::to_value(&typed).unwrap();
    let hel_site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hel")
        .unwrap();
    assert_eq!(hel_site["problem_kind"], "integrity", "{report}");
    assert_eq!(
        hel_site["last_verify"]["problem_kind"], "integrity",
        "{report}"
    );
    assert_eq!(report["problems"]["integrity"], 1, "{report}");
    let m = metrics(&typed);
    assert!(m.contains("embassy_integrity_problems 1"), "{m}");
    assert!(
        m.contains("embassy_site_problem{site=\"hel\",kind=\"integrity\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("embassy_dataset_problem{dataset=\"d\",site=\"hel\",kind=\"integrity\"} 1"),
        "{m}"
    );
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

/// `/status.json` and `embassy status --config --json` keep the field set docs/operations.md
/// lists (fields may be added, with the docs; none renamed or removed), and the kinds of problem
/// are spelled as in core's error policy.
#[test]
fn the_status_document_keeps_its_documented_fields() {
    let config = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"d\"\nsource = {{ command = \"true\" }}\ninterval = \"1min\"\nrpo = \"100s\"\nsites = [\"lux\", \"hel\"]\n\
         [[standbys]]\ndataset = \"p\"\ndata_dir = \"/srv/p\"\nport = 5433\n"
    ))
    .unwrap();
    let now = 1_800_000_000 * NS;
    let mut state = AgentState::default();
    state.verify.insert(
        "hel".into(),
        embassy_agent::state::VerifyState {
            at: 1_800_000_000,
            ok: false,
            summary: "1 problem".into(),
            kind: Some(ErrorKind::Integrity),
        },
    );
    state.alarms.insert(
        "d@hel".into(),
        embassy_agent::state::RaisedAlarm {
            dataset: "d".into(),
            site: "hel".into(),
            since: 1_800_000_000,
            message: "d at hel: damaged".into(),
            kind: Some(ErrorKind::Integrity),
        },
    );
    let snaps = [
        snap("lux", "d", Some(3), Some(now - 10 * NS)),
        snap("hel", "d", Some(3), Some(now - 10 * NS)),
    ];
    let doc = serde_json::to_value(report(&config, &snaps, &state, now)).unwrap();
    assert_eq!(
        keys(&doc),
        sorted(&[
            "ok",
            "generated_at",
            "config",
            "sites",
            "datasets",
            "groups",
            "standbys",
            "alarms",
            "problems"
        ])
    );
    assert_eq!(
        keys(&doc["standbys"][0]),
        sorted(&[
            "dataset",
            "data_dir",
            "port",
            "phase",
            "since",
            "replay_lsn",
            "vault_lsn",
            "timeline",
            "vault_timeline",
            "lag_bytes",
            "lag_seconds",
            "lag_alarm_seconds",
            "checked_at",
            "restarts",
            "rebuilds",
            "last_rebuild_at",
            "last_rebuild_reason",
            "last_error",
            "alarm"
        ])
    );
    let site = &doc["sites"][1];
    assert_eq!(
        keys(site),
        sorted(&[
            "name",
            "location",
            "error",
            "problem_kind",
            "holds_no_vault",
            "bytes_stored",
            "catch_up_pending",
            "read_at",
            "last_verify"
        ])
    );
    assert_eq!(
        keys(&site["last_verify"]),
        sorted(&["at", "at_unix", "ok", "summary", "problem_kind"])
    );
    assert_eq!(site["problem_kind"], "integrity", "{doc}");
    let dataset = &doc["datasets"][0];
    assert_eq!(
        keys(dataset),
        sorted(&[
            "name",
            "colour",
            "rpo_seconds",
            "mode",
            "schedule",
            "source",
            "classification",
            "owner",
            "required_sites",
            "runs",
            "errors",
            "consecutive_failures",
            "last_success",
            "last_success_unix",
            "last_duration_seconds",
            "last_error",
            "last_error_kind",
            "last_error_at",
            "sites",
            "drill"
        ])
    );
    assert_eq!(
        keys(&dataset["sites"][0]),
        sorted(&[
            "site",
            "required",
            "colour",
            "reason",
            "lag_seconds",
            "newest_version",
            "newest_version_ledger_seq",
            "wal_end",
            "wal_lag_bytes",
            "caught_up",
            "versions",
            "recovery_point",
            "bytes_stored",
            "error",
            "problem_kind"
        ])
    );
    assert_eq!(dataset["sites"][0]["colour"], "green", "{doc}");
    assert_eq!(dataset["sites"][1]["colour"], "red", "{doc}");
    assert_eq!(dataset["sites"][1]["problem_kind"], "integrity", "{doc}");
    assert_eq!(
        keys(&doc["alarms"][0]),
        sorted(&["dataset", "site", "since", "message", "problem_kind"])
    );
    assert_eq!(
        keys(&doc["problems"]),
        sorted(&["integrity", "outage", "source", "config", "keys"])
    );
    assert_eq!(doc["problems"]["integrity"], 1, "{doc}");
    assert_eq!(doc["problems"]["outage"], 0, "{doc}");
}

/// Issue 15 item 7: a dataset that never had a version at a site is amber there during its
/// first RPO only while nobody was warned; once its alarm was raised (the site was down, say) it
/// stays red until a version is stored, so the alarm is not cleared and raised again.
#[test]
fn a_dataset_without_a_version_stays_red_once_its_alarm_was_raised() {
    let config = parse(&format!(
        "{BASE}\n[[datasets]]\nname = \"d\"\nsource = {{ command = \"true\" }}\ninterval = \"1min\"\nrpo = \"100s\"\nsites = [\"lux\", \"hel\"]\n"
    ))
    .unwrap();
    let now = 1_800_000_000 * NS;
    let mut state = AgentState::default();
    state.datasets.insert(
        "d".into(),
        embassy_agent::state::DatasetState {
            first_seen: now / NS - 10,
            ..Default::default()
        },
    );
    let snaps = [snap("lux", "d", None, None), snap("hel", "d", None, None)];
    state.alarms.insert(
        "d@hel".into(),
        embassy_agent::state::RaisedAlarm {
            dataset: "d".into(),
            site: "hel".into(),
            since: now / NS - 5,
            message: "d at hel: site cannot be read".into(),
            kind: Some(ErrorKind::Outage),
        },
    );
    let rows = status::rows(&config, &snaps, &state, now);
    assert_eq!(rows[0].cells[0].colour, Colour::Amber, "{rows:?}");
    assert_eq!(rows[0].cells[1].colour, Colour::Red, "{rows:?}");
    assert!(rows[0].cells[1].reason.contains("until one is stored"));
    let notices = embassy_agent::alarms::evaluate(&rows, &state, now / NS);
    assert!(notices.is_empty(), "{notices:?}");
    // A version arrives: green, and the alarm clears.
    let snaps = [
        snap("lux", "d", Some(1), Some(now - NS)),
        snap("hel", "d", Some(1), Some(now - NS)),
    ];
    let rows = status::rows(&config, &snaps, &state, now);
    assert_eq!(rows[0].cells[1].colour, Colour::Green, "{rows:?}");
    let notices = embassy_agent::alarms::evaluate(&rows, &state, now / NS);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].event, "cleared");
}
