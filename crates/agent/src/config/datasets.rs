//! Sites and datasets of `embassy.toml`: each site's location, each dataset's source, mode,
//! schedule and retention, checked against each other (unique names, known sites).

use std::collections::HashSet;

use toml::de::DeValue;
use toml::Spanned;

use super::parse::{describe, Fields, Parser};
use super::{DatasetConfig, FileSelection, Mode, Retention, SiteConfig, Source};
use crate::schedule::{format_duration, Schedule};

impl Parser<'_> {
    pub(super) fn sites(&mut self, top: &mut Fields<'_, '_>) -> Vec<SiteConfig> {
        let Some(items) = self.array_of_tables(top, "sites") else {
            self.problem(
                0..0,
                "sites",
                "no sites: add at least one [[sites]] with a name and a path or url",
            );
            return Vec::new();
        };
        let mut out: Vec<SiteConfig> = Vec::new();
        for mut f in items {
            let name = self.required_string(&mut f, "name", "a site name like \"luxembourg\"");
            let path = self.string(&mut f, "path", "a folder path");
            let url = self.string(&mut f, "url", "an s3://bucket/prefix URL");
            let endpoint = self.string(&mut f, "endpoint", "an http(s):// URL");
            let region = self.string(&mut f, "region", "a region name like \"eu-west-1\"");
            let path_style = self
                .take(&mut f, "path_style")
                .map(|v| v.get_ref().as_bool());
            let object_lock =
                self.string(&mut f, "object_lock", "MODE:DAYS, like \"governance:30\"");
            let field = f.path.clone();
            let location = match (path, url) {
                (Some(p), None) => {
                    if let Some(e) = endpoint.as_ref().or(region.as_ref()) {
                        self.problem(
                            e.span(),
                            &format!("{field}.endpoint"),
                            "endpoint and region apply to `url = \"s3://...\"` sites only",
                        );
                    }
                    if let Some(l) = &object_lock {
                        self.problem(
                            l.span(),
                            &format!("{field}.object_lock"),
                            "Object Lock applies to `url = \"s3://...\"` sites only (a folder \
                             site cannot keep its objects from deletion)",
                        );
                    }
                    Some(self.path(p.get_ref()).display().to_string())
                }
                (None, Some(u)) => {
                    if !u.get_ref().starts_with("s3://") || u.get_ref().len() <= 5 {
                        self.problem(
                            u.span(),
                            &format!("{field}.url"),
                            "expected an s3://bucket/prefix URL (for a folder, use `path`)",
                        );
                        None
                    } else {
                        let mut options = Vec::new();
                        if let Some(e) = endpoint {
                            options.push(format!("endpoint={}", e.get_ref()));
                        }
                        if let Some(r) = region {
                            options.push(format!("region={}", r.get_ref()));
                        }
                        match path_style {
                            Some(Some(b)) => options.push(format!("path-style={b}")),
                            Some(None) => self.problem(
                                u.span(),
                                &format!("{field}.path_style"),
                                "expected true or false",
                            ),
                            None => {}
                        }
                        if let Some(l) = object_lock {
                            let in_url = u.get_ref().contains("object-lock=");
                            match embassy_sites::s3::ObjectLock::parse(l.get_ref()) {
                                Err(why) => self.problem(
                                    l.span(),
                                    &format!("{field}.object_lock"),
                                    format!(
                                        "{why}: governance (the bucket's owner may still lift \
                                         it) or compliance (nobody can), and the days each \
                                         object is kept from deletion"
                                    ),
                                ),
                                Ok(_) if in_url => self.problem(
                                    l.span(),
                                    &format!("{field}.object_lock"),
                                    "the url sets object-lock too: keep one of them",
                                ),
                                Ok(lock) => {
                                    options.push(format!("object-lock={}:{}", lock.mode, lock.days))
                                }
                            }
                        }
                        let mut loc = u.into_inner();
                        if !options.is_empty() {
                            loc.push(if loc.contains('?') { '&' } else { '?' });
                            loc.push_str(&options.join("&"));
                        }
                        Some(loc)
                    }
                }
                (Some(p), Some(_)) => {
                    self.problem(
                        p.span(),
                        &format!("{field}.path"),
                        "give either `path` (a folder) or `url` (s3://...), not both",
                    );
                    None
                }
                (None, None) => {
                    self.problem(
                        f.span.clone(),
                        &field,
                        "missing `path = \"folder\"` or `url = \"s3://bucket/prefix\"`",
                    );
                    None
                }
            };
            self.finish(
                f,
                &[
                    "name",
                    "path",
                    "url",
                    "endpoint",
                    "region",
                    "path_style",
                    "object_lock",
                ],
            );
            if let Some(name) = &name {
                if let Err(why) = check_name(name.get_ref()) {
                    self.problem(name.span(), &format!("{field}.name"), why);
                    continue;
                }
                if out.iter().any(|s| s.name == *name.get_ref()) {
                    self.problem(
                        name.span(),
                        &format!("{field}.name"),
                        format!("a site named \"{}\" is already declared", name.get_ref()),
                    );
                    continue;
                }
            }
            if let (Some(name), Some(location)) = (name, location) {
                out.push(SiteConfig {
                    name: name.into_inner(),
                    location,
                });
            }
        }
        if out.is_empty() && self.problems.is_empty() {
            self.problem(0..0, "sites", "no sites: add at least one [[sites]]");
        }
        out
    }

    pub(super) fn datasets(
        &mut self,
        top: &mut Fields<'_, '_>,
        site_names: &[String],
    ) -> Option<Vec<DatasetConfig>> {
        let items = self.array_of_tables(top, "datasets").unwrap_or_default();
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for mut f in items {
            let field = f.path.clone();
            let name =
                self.required_string(&mut f, "name", "a dataset name (a-z, 0-9, '.', '_', '-')");
            if let Some(n) = &name {
                if let Err(e) = embassy_core::format::layout::check_dataset_name(n.get_ref()) {
                    self.problem(n.span(), &format!("{field}.name"), e.to_string());
                } else if !seen.insert(n.get_ref().clone()) {
                    self.problem(
                        n.span(),
                        &format!("{field}.name"),
                        format!(
                            "duplicate dataset name \"{}\": each dataset is declared once",
                            n.get_ref()
                        ),
                    );
                }
            }
            let (source, selection) = self.source(&mut f).unzip();
            let mode_text = self.string(&mut f, "mode", "\"continuous\" or \"periodic\"");
            let interval = self.duration(&mut f, "interval");
            let schedule_text = self.string(
                &mut f,
                "schedule",
                "a schedule like \"daily 02:00\", \"hourly :15\", \"weekly sun 03:00\"",
            );
            let rpo_present = f.map.contains_key("rpo");
            let rpo = self.duration(&mut f, "rpo");
            if !rpo_present {
                self.problem(
                    f.span.clone(),
                    &format!("{field}.rpo"),
                    "missing; expected a duration like \"90s\", \"15min\", \"1h\"",
                );
            }
            let retention = self.retention(&mut f);
            let mut sites = Vec::new();
            if let Some(v) = self.take(&mut f, "sites") {
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            match item.get_ref().as_str() {
                                Some(s) if site_names.iter().any(|n| n == s) => {
                                    sites.push(s.to_string())
                                }
                                Some(s) => self.problem(
                                    item.span(),
                                    &format!("{field}.sites[{i}]"),
                                    format!(
                                        "unknown site \"{s}\"; the sites are: {}",
                                        site_names.join(", ")
                                    ),
                                ),
                                None => self.problem(
                                    item.span(),
                                    &format!("{field}.sites[{i}]"),
                                    "expected a site name (a string)",
                                ),
                            }
                        }
                    }
                    other => self.problem(
                        v.span(),
                        &format!("{field}.sites"),
                        format!("expected a list of site names, found {}", describe(other)),
                    ),
                }
            } else {
                sites = site_names.to_vec();
            }
            let classification = self
                .string(&mut f, "classification", "a string like \"restricted\"")
                .map(Spanned::into_inner);
            let owner = self
                .string(
                    &mut f,
                    "owner",
                    "a string naming who answers for the dataset",
                )
                .map(Spanned::into_inner);
            // Restore drills: how often (none: never).
            let drill = self.duration(&mut f, "drill");
            if let Some(d) = &drill {
                if d.get_ref().is_zero() {
                    self.problem(
                        d.span(),
                        &format!("{field}.drill"),
                        "expected a duration of at least 1s, like \"7d\"",
                    );
                }
            }
            let drill = drill.map(Spanned::into_inner);
            // PostgreSQL drills: SQL checks that must return true, and their database.
            let drill_checks = self.strings(
                &mut f,
                "drill_checks",
                "a list of SQL queries returning true, like [\"select count(*) > 0 from persons\"]",
            );
            let drill_database = self
                .string(
                    &mut f,
                    "drill_database",
                    "a database name like \"registry\"",
                )
                .map(Spanned::into_inner);
            let span = f.span.clone();
            self.finish(
                f,
                &[
                    "name",
                    "source",
                    "mode",
                    "interval",
                    "schedule",
                    "rpo",
                    "retention",
                    "sites",
                    "classification",
                    "owner",
                    "drill",
                    "drill_checks",
                    "drill_database",
                ],
            );
            // The schedule: a periodic dataset's versions, or a continuous one's base backups.
            let schedule = match (&interval, &schedule_text) {
                (Some(i), None) => {
                    if i.get_ref().is_zero() {
                        self.problem(
                            i.span(),
                            &format!("{field}.interval"),
                            "expected a duration of at least 1s",
                        );
                    }
                    Some(Schedule::Every(*i.get_ref()))
                }
                (None, Some(s)) => match Schedule::parse_calendar(s.get_ref()) {
                    Some(sch) => Some(sch),
                    None => {
                        self.problem(
                            s.span(),
                            &format!("{field}.schedule"),
                            "expected \"hourly :MM\", \"daily HH:MM\" or \"weekly DAY HH:MM\" (UTC; DAY is mon..sun)",
                        );
                        None
                    }
                },
                (Some(i), Some(_)) => {
                    self.problem(
                        i.span(),
                        &format!("{field}.interval"),
                        "give either interval or schedule, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let mode = match mode_text.as_ref().map(|m| m.get_ref().as_str()) {
                Some("continuous") => {
                    if !matches!(source, Some(Source::Postgres { .. }) | None) {
                        self.problem(
                            mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                            &format!("{field}.mode"),
                            "continuous capture needs a postgres source; for files or a command use mode = \"periodic\" with a short interval",
                        );
                    }
                    Some(Mode::Continuous(schedule))
                }
                Some("periodic") | None => match schedule {
                    Some(s) => Some(Mode::Periodic(s)),
                    None => {
                        if interval.is_none() && schedule_text.is_none() {
                            self.problem(
                                mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                                &format!("{field}.interval"),
                                "missing; a periodic dataset needs `interval = \"15min\"` or `schedule = \"daily 02:00\"`",
                            );
                        }
                        None
                    }
                },
                Some(_) => {
                    self.problem(
                        mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                        &format!("{field}.mode"),
                        "expected \"continuous\" or \"periodic\"",
                    );
                    None
                }
            };
            if let (Some(Mode::Periodic(s)), Some(r)) = (&mode, &rpo) {
                if *r.get_ref() < s.period() {
                    self.warn(
                        r.span(),
                        &format!("{field}.rpo"),
                        format!(
                            "rpo {} is shorter than the schedule ({s}): the dataset will breach its RPO between runs",
                            format_duration(*r.get_ref())
                        ),
                    );
                }
            }
            if let (Some(name), Some(source), Some(mode), Some(rpo), Some(retention)) =
                (name, source, mode, rpo, retention)
            {
                out.push(DatasetConfig {
                    name: name.into_inner(),
                    source,
                    mode,
                    rpo: rpo.into_inner(),
                    retention,
                    sites,
                    classification,
                    owner,
                    selection: selection.unwrap_or_default(),
                    drill,
                    drill_checks,
                    drill_database,
                });
            }
        }
        Some(out)
    }

    pub(super) fn source(&mut self, f: &mut Fields<'_, '_>) -> Option<(Source, FileSelection)> {
        const EXPECTED: &str = "{ files = [\"path\", ...] }, { command = \"...\" } or { postgres = { conninfo = \"...\", slot = \"...\" } }";
        let field = Self::field_name(f, "source");
        let present = f.map.contains_key("source");
        let Some(mut s) = self.table(f, "source") else {
            if !present {
                self.problem(
                    f.span.clone(),
                    &field,
                    format!("missing; expected {EXPECTED}"),
                );
            }
            return None;
        };
        let span = s.span.clone();
        let mut found = Vec::new();
        if let Some(v) = self.take(&mut s, "files") {
            let mut paths = Vec::new();
            match v.get_ref() {
                DeValue::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref().as_str() {
                            Some(p) if !p.is_empty() => paths.push(self.path(p)),
                            _ => self.problem(
                                item.span(),
                                &format!("{field}.files[{i}]"),
                                "expected a path (a non-empty string)",
                            ),
                        }
                    }
                }
                _ => self.problem(
                    v.span(),
                    &format!("{field}.files"),
                    "expected a list of paths like [\"/srv/registry\"]",
                ),
            }
            found.push(Source::Files(paths));
        }
        let pass_span = s.map.get("pass_env").map(|(v, _)| v.span());
        let pass_env = self.env_names(&mut s, "pass_env");
        if let Some(c) = self.string(&mut s, "command", "a shell command") {
            if c.get_ref().trim().is_empty() {
                self.problem(
                    c.span(),
                    &format!("{field}.command"),
                    "expected a command, found an empty string",
                );
            }
            found.push(Source::Command {
                command: c.into_inner(),
                pass_env,
            });
        } else if let Some(span) = pass_span {
            self.problem(
                span,
                &format!("{field}.pass_env"),
                "pass_env applies to a command source only",
            );
        }
        if let Some(mut pg) = self.table(&mut s, "postgres") {
            let conninfo = self.required_string(
                &mut pg,
                "conninfo",
                "a connection string like \"host=/run/postgresql user=embassy\"",
            );
            let slot = self
                .string(&mut pg, "slot", "a replication slot name")
                .map(Spanned::into_inner);
            self.finish(pg, &["conninfo", "slot"]);
            if let Some(c) = &conninfo {
                // A connection string the streamer would refuse (an unknown key, a bad sslmode)
                // is reported here with its line; sslrootcert must not depend on the folder the
                // agent happens to run in.
                let at = format!("{field}.postgres.conninfo");
                match embassy_postgres::replication::ConnConfig::parse(c.get_ref()) {
                    Err(e) => self.problem(c.span(), &at, e.to_string()),
                    Ok(cc) if cc.sslrootcert.as_ref().is_some_and(|p| p.is_relative()) => self
                        .problem(
                            c.span(),
                            &at,
                            "sslrootcert must be an absolute path (like \
                             sslrootcert=/etc/embassy/pg-ca.pem)",
                        ),
                    Ok(_) => {}
                }
            }
            if let Some(c) = conninfo {
                found.push(Source::Postgres {
                    conninfo: c.into_inner(),
                    slot,
                });
            }
        }
        let files = matches!(found.as_slice(), [Source::Files(_)]);
        let selection = self.file_selection(&mut s, &field, files);
        let mut known = vec!["files", "command", "pass_env", "postgres"];
        known.extend(super::selection::FIELDS);
        self.finish(s, &known);
        match found.len() {
            1 => found.pop().map(|source| (source, selection)),
            0 => {
                self.problem(span, &field, format!("expected {EXPECTED}"));
                None
            }
            _ => {
                self.problem(
                    span,
                    &field,
                    "give exactly one of files, command or postgres",
                );
                None
            }
        }
    }

    pub(super) fn retention(&mut self, f: &mut Fields<'_, '_>) -> Option<Retention> {
        let mut r = Retention::default();
        let present = f.map.contains_key("retention");
        let Some(mut t) = self.table(f, "retention") else {
            return (!present).then_some(r);
        };
        r.keep_last = self.count(&mut t, "keep_last", 1);
        r.keep_hourly = self.count(&mut t, "keep_hourly", 0);
        r.keep_daily = self.count(&mut t, "keep_daily", 0);
        r.keep_weekly = self.count(&mut t, "keep_weekly", 0);
        r.keep_monthly = self.count(&mut t, "keep_monthly", 0);
        r.keep_yearly = self.count(&mut t, "keep_yearly", 0);
        r.min_age = self.duration(&mut t, "min_age").map(Spanned::into_inner);
        r.wal_keep = self.duration(&mut t, "wal_keep").map(Spanned::into_inner);
        let rules = [
            r.keep_last,
            r.keep_hourly,
            r.keep_daily,
            r.keep_weekly,
            r.keep_monthly,
            r.keep_yearly,
        ];
        if rules.iter().all(|k| k.unwrap_or(0) == 0) {
            let field = t.path.clone();
            self.problem(
                t.span.clone(),
                &field,
                "expected at least one keep_last/keep_hourly/keep_daily/keep_weekly/keep_monthly/keep_yearly rule (without one, every version but the newest would be deleted); omit retention to keep every version",
            );
        }
        self.finish(
            t,
            &[
                "keep_last",
                "keep_hourly",
                "keep_daily",
                "keep_weekly",
                "keep_monthly",
                "keep_yearly",
                "min_age",
                "wal_keep",
            ],
        );
        Some(r)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a site name of a-z, 0-9, '-', '_' (at most 64), found \"{name}\""
        ))
    }
}
