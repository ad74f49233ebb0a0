//! The embassy node of `embassy.toml` (`[[standbys]]`): per PostgreSQL dataset the node serves,
//! the data directory of its hot standby, the port it listens on, `hot_standby`, and the lag
//! past which an alarm is raised. The datasets are the vault's, not `[[datasets]]` (an embassy
//! node follows what home streams; it backs nothing up itself).

use std::collections::HashSet;
use std::time::Duration;

use super::parse::{Fields, Parser};
use super::StandbyConfig;

/// The lag alarm threshold when none is given.
const DEFAULT_LAG_ALARM: Duration = Duration::from_secs(60);

impl Parser<'_> {
    pub(super) fn standbys(&mut self, top: &mut Fields<'_, '_>) -> Vec<StandbyConfig> {
        let items = self.array_of_tables(top, "standbys").unwrap_or_default();
        let mut out = Vec::new();
        let mut datasets: HashSet<String> = HashSet::new();
        let mut ports: HashSet<u32> = HashSet::new();
        let mut dirs: HashSet<std::path::PathBuf> = HashSet::new();
        for mut f in items {
            let field = f.path.clone();
            let dataset = self.required_string(
                &mut f,
                "dataset",
                "a PostgreSQL dataset name like \"population\"",
            );
            let data_dir = self.required_string(
                &mut f,
                "data_dir",
                "the standby's data directory, like \"/srv/embassy/population\"",
            );
            let port_present = f.map.contains_key("port");
            let port = self.count(&mut f, "port", 1);
            if !port_present {
                self.problem(
                    f.span.clone(),
                    &format!("{field}.port"),
                    "missing; expected the port the standby listens on, like 5433",
                );
            }
            let hot_standby = match self.take(&mut f, "hot_standby") {
                None => true,
                Some(v) => match v.get_ref().as_bool() {
                    Some(true) => true,
                    _ => {
                        self.problem(
                            v.span(),
                            &format!("{field}.hot_standby"),
                            "expected true: an embassy node's standby answers read-only queries \
                             (for a standby that only follows, use `embassy standby`)",
                        );
                        true
                    }
                },
            };
            let lag_alarm = self
                .duration(&mut f, "lag_alarm")
                .map(|d| d.into_inner())
                .unwrap_or(DEFAULT_LAG_ALARM);
            let owner = self.string(&mut f, "owner", "a user name like \"postgres\"");
            self.finish(
                f,
                &[
                    "dataset",
                    "data_dir",
                    "port",
                    "hot_standby",
                    "lag_alarm",
                    "owner",
                ],
            );
            let (Some(dataset), Some(data_dir), Some(port)) = (dataset, data_dir, port) else {
                continue;
            };
            if port > u32::from(u16::MAX) {
                self.problem(
                    dataset.span(),
                    &format!("{field}.port"),
                    "expected a port number up to 65535",
                );
                continue;
            }
            let dir = self.path(data_dir.get_ref());
            if !datasets.insert(dataset.get_ref().clone()) {
                self.problem(
                    dataset.span(),
                    &format!("{field}.dataset"),
                    format!(
                        "dataset \"{}\" has a standby already: one per dataset",
                        dataset.get_ref()
                    ),
                );
                continue;
            }
            if !ports.insert(port) {
                self.problem(
                    dataset.span(),
                    &format!("{field}.port"),
                    format!("port {port} is another standby's already"),
                );
                continue;
            }
            if !dirs.insert(dir.clone()) {
                self.problem(
                    data_dir.span(),
                    &format!("{field}.data_dir"),
                    "another standby uses this data directory already",
                );
                continue;
            }
            out.push(StandbyConfig {
                dataset: dataset.into_inner(),
                data_dir: dir,
                port: port as u16,
                hot_standby,
                lag_alarm,
                owner: owner.map(|o| o.into_inner()),
            });
        }
        out
    }
}
