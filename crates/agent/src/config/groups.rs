//! Consistency groups of `embassy.toml` (`[[groups]]`): datasets restored to one instant, with
//! the interval of the agent's group points, checked against the datasets (each member an
//! existing dataset; a PostgreSQL member streamed continuously, so a restore point in its WAL
//! can be reached).

use std::collections::HashSet;

use toml::de::DeValue;

use super::parse::{describe, Fields, Parser};
use super::{DatasetConfig, GroupConfig, Mode, Source};

impl Parser<'_> {
    pub(super) fn groups(
        &mut self,
        top: &mut Fields<'_, '_>,
        datasets: &[DatasetConfig],
    ) -> Vec<GroupConfig> {
        let items = self.array_of_tables(top, "groups").unwrap_or_default();
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for mut f in items {
            let field = f.path.clone();
            let name = self.required_string(&mut f, "name", "a group name like \"registries\"");
            let interval = self.duration(&mut f, "interval");
            let mut members = Vec::new();
            match self.take(&mut f, "members") {
                None => self.problem(
                    f.span.clone(),
                    &format!("{field}.members"),
                    "missing; expected a list of dataset names like [\"population\", \"companies\"]",
                ),
                Some(v) => match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let at = format!("{field}.members[{i}]");
                            let Some(s) = item.get_ref().as_str() else {
                                self.problem(item.span(), &at, "expected a dataset name (a string)");
                                continue;
                            };
                            match datasets.iter().find(|d| d.name == s) {
                                None => self.problem(
                                    item.span(),
                                    &at,
                                    format!(
                                        "unknown dataset \"{s}\"; the datasets are: {}",
                                        datasets
                                            .iter()
                                            .map(|d| d.name.as_str())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    ),
                                ),
                                Some(d) if matches!(d.source, Source::Postgres { .. })
                                    && !matches!(d.mode, Mode::Continuous(_)) =>
                                {
                                    self.problem(
                                        item.span(),
                                        &at,
                                        format!(
                                            "dataset \"{s}\" is PostgreSQL with periodic base \
                                             backups only: a group restores it to a restore \
                                             point in its WAL, so set its mode = \"continuous\""
                                        ),
                                    )
                                }
                                Some(_) if members.iter().any(|m| m == s) => self.problem(
                                    item.span(),
                                    &at,
                                    format!("dataset \"{s}\" is listed twice"),
                                ),
                                Some(_) => members.push(s.to_string()),
                            }
                        }
                        if items.is_empty() {
                            self.problem(
                                v.span(),
                                &format!("{field}.members"),
                                "empty; a group names the datasets restored together",
                            );
                        }
                    }
                    other => self.problem(
                        v.span(),
                        &format!("{field}.members"),
                        format!("expected a list of dataset names, found {}", describe(other)),
                    ),
                },
            }
            if interval.is_none() && !f.map.contains_key("interval") {
                self.problem(
                    f.span.clone(),
                    &format!("{field}.interval"),
                    "missing; expected how often the agent takes a group point, like \"5min\"",
                );
            }
            self.finish(f, &["name", "members", "interval"]);
            let Some(name) = name else { continue };
            if let Err(why) = embassy_ops::group::check_group_name(name.get_ref()) {
                self.problem(name.span(), &format!("{field}.name"), why);
                continue;
            }
            let ledger = embassy_core::format::layout::group_ledger(name.get_ref());
            if datasets.iter().any(|d| d.name == ledger) {
                self.problem(
                    name.span(),
                    &format!("{field}.name"),
                    format!(
                        "the group's ledger is named \"{ledger}\", which a dataset already is: \
                         rename the group"
                    ),
                );
                continue;
            }
            if !seen.insert(name.get_ref().clone()) {
                self.problem(
                    name.span(),
                    &format!("{field}.name"),
                    format!("a group named \"{}\" is already declared", name.get_ref()),
                );
                continue;
            }
            if let Some(interval) = interval {
                out.push(GroupConfig {
                    name: name.into_inner(),
                    members,
                    interval: interval.into_inner(),
                });
            }
        }
        out
    }
}
