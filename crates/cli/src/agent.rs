//! `embassy agent`, `embassy config check` and `embassy status --config`: thin wrappers over
//! the embassy-agent library.

use std::path::Path;
use std::process::ExitCode;

use embassy_agent::config::Config;
use embassy_agent::{Control, Options};
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
            ExitCode::from(2)
        }
    }
}

/// `embassy agent --config FILE [--once]`.
pub fn agent(file: &Path, once: bool) -> ExitCode {
    let control = match Control::from_signals() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match embassy_agent::run_agent(file, Options { once }, control) {
        Ok(()) => ExitCode::SUCCESS,
        Err(embassy_agent::AgentError::Config(e)) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", crate::output::escape(&e.to_string()));
            // As every command: damage or tampering exits 3 (core's error policy).
            ExitCode::from(if e.is_integrity() { 3 } else { 1 })
        }
    }
}

/// `embassy status --config FILE [--json]`: freshness of every dataset at every site, read
/// now (the same document the agent serves at /status.json). Exit 3 when a dataset is red.
pub fn status(file: &Path, as_json: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let report = match embassy_agent::agent::status_now(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", crate::output::escape(&e.to_string()));
            return ExitCode::from(1);
        }
    };
    if as_json {
        println!("{report}");
    } else {
        let sites: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        print!("{:<30}", "DATASET");
        for s in &sites {
            print!(" {s:<24}");
        }
        println!();
        for d in report["datasets"].as_array().into_iter().flatten() {
            print!("{:<30}", d["name"].as_str().unwrap_or_default());
            for c in d["sites"].as_array().into_iter().flatten() {
                let colour = c["colour"].as_str().unwrap_or("?").to_uppercase();
                let cell = match (c["newest_version"].as_u64(), c["lag_seconds"].as_f64()) {
                    (Some(v), Some(l)) => {
                        format!("{colour} v{v} {}", embassy_agent::status::human_seconds(l))
                    }
                    _ => format!("{colour} -"),
                };
                print!(" {cell:<24}");
            }
            println!();
        }
        for a in report["alarms"].as_array().into_iter().flatten() {
            println!(
                "ALARM since {}: {}",
                a["since"].as_str().unwrap_or_default(),
                crate::output::escape(a["message"].as_str().unwrap_or_default())
            );
        }
    }
    if report["ok"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
