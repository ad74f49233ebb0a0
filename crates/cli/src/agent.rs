//! `embassy agent`, `embassy config check` and `embassy status --config`: thin wrappers over
//! the embassy-agent library.

use std::path::Path;
use std::process::ExitCode;

use embassy_agent::config::Config;
use embassy_agent::{Control, Options};
use embassy_core::ErrorKind;
use serde_json::json;

/// `embassy config check [FILE]`: the summary, or every problem with its position (exit 2).
pub fn config_check(file: &Path, as_json: bool) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            // Beyond the syntax: what can be checked without running a backup.
            let findings = embassy_agent::preflight::check(&config);
            let errors = findings
                .iter()
                .filter(|f| f.severity == embassy_agent::preflight::Severity::Error)
                .count();
            if as_json {
                println!(
                    "{}",
                    json!({
                        "ok": errors == 0,
                        "sites": config.sites.iter().map(|s| json!({"name": s.name, "location": s.location})).collect::<Vec<_>>(),
                        "datasets": config.datasets.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                        "groups": config.groups.iter().map(|g| json!({"name": g.name, "members": g.members, "interval_seconds": g.interval.as_secs()})).collect::<Vec<_>>(),
                        "warnings": config.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                        "findings": findings,
                    })
                );
            } else {
                print!("{}", config.summary());
                for w in &config.warnings {
                    eprintln!("warning: {w}");
                }
                for f in &findings {
                    eprintln!("{f}");
                }
                if errors == 0 {
                    println!("configuration OK");
                } else {
                    eprintln!(
                        "{errors} problem{} found; the agent would fail until {} fixed",
                        if errors == 1 { "" } else { "s" },
                        if errors == 1 { "it is" } else { "they are" }
                    );
                }
            }
            if errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            if as_json {
                println!(
                    "{}",
                    json!({"ok": false, "problems": e.problems.iter().map(|p| json!({
                        "file": p.file, "line": p.line, "column": p.column, "field": p.field, "message": p.message
                    })).collect::<Vec<_>>()})
                );
            }
            for p in &e.problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{} problem{} in {}; nothing was started",
                e.problems.len(),
                if e.problems.len() == 1 { "" } else { "s" },
                file.display()
            );
            crate::exit::code(crate::exit::USAGE)
        }
    }
}

/// `embassy agent --config FILE [--once]`.
pub fn agent(file: &Path, once: bool) -> ExitCode {
    let control = match Control::from_signals() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::code(crate::exit::FAILURE);
        }
    };
    match embassy_agent::run_agent(file, Options { once }, control) {
        Ok(()) => ExitCode::SUCCESS,
        Err(embassy_agent::AgentError::Config(e)) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            crate::exit::code(crate::exit::USAGE)
        }
        Err(e) if e.is_locked() => {
            eprintln!("error: {}", crate::output::escape(&e.to_string()));
            crate::exit::code(crate::exit::LOCKED)
        }
        Err(e) => {
            eprintln!("error: {}", crate::output::escape(&e.to_string()));
            // As every command: damage or tampering exits 3 (core's error policy).
            crate::exit::code(if e.is_integrity() {
                crate::exit::INTEGRITY
            } else {
                crate::exit::FAILURE
            })
        }
    }
}

/// `embassy status --config FILE [--json]`: freshness of every dataset at every site, read
/// now (the same document the agent serves at /status.json). Exit 4 when a dataset is red
/// (overdue), 3 when damage or tampering is among the reasons.
pub fn status(file: &Path, as_json: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            return crate::exit::code(crate::exit::USAGE);
        }
    };
    let report = match embassy_agent::agent::status_now(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", crate::output::escape(&e.to_string()));
            return crate::exit::code(crate::exit::FAILURE);
        }
    };
    if as_json {
        match serde_json::to_string(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: the status cannot be encoded as JSON: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let sites: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        print!("{:<30}", "DATASET");
        for s in &sites {
            print!(" {s:<24}");
        }
        println!();
        for d in &report.datasets {
            print!("{:<30}", crate::output::escape(&d.name));
            for c in &d.sites {
                let colour = c.colour.name().to_uppercase();
                let cell = match (c.newest_version, c.lag_seconds) {
                    (Some(v), Some(l)) => {
                        format!("{colour} v{v} {}", embassy_agent::status::human_seconds(l))
                    }
                    _ => format!("{colour} -"),
                };
                // What failed, in the words of its kind: damage is never shown as mere age.
                let cell = match c.problem_kind {
                    Some(ErrorKind::Integrity) => format!("{colour} DAMAGED OR TAMPERED WITH"),
                    Some(k) => format!("{cell} ({})", k.describe()),
                    None => cell,
                };
                print!(" {cell:<24}");
            }
            println!();
        }
        for a in &report.alarms {
            let kind = match a.problem_kind {
                Some(ErrorKind::Integrity) => " (DAMAGED OR TAMPERED WITH)".to_string(),
                Some(k) => format!(" ({})", k.describe()),
                None => String::new(),
            };
            println!(
                "ALARM{kind} since {}: {}",
                a.since,
                crate::output::escape(&a.message)
            );
        }
    }
    let damaged = report
        .problems
        .get(&ErrorKind::Integrity)
        .copied()
        .unwrap_or(0)
        > 0
        || report
            .datasets
            .iter()
            .flat_map(|d| &d.sites)
            .any(|c| c.problem_kind == Some(ErrorKind::Integrity));
    if report.ok {
        ExitCode::SUCCESS
    } else if damaged {
        crate::exit::code(crate::exit::INTEGRITY)
    } else {
        crate::exit::code(crate::exit::OVERDUE)
    }
}
