//! The embassy node of `embassy.toml` (`[[standbys]]`): per PostgreSQL dataset the node serves,
//! the data directory of its hot standby, the port it listens on, `hot_standby`, and the lag
//! past which an alarm is raised. The datasets are the vault's, not `[[datasets]]` (an embassy
//! node follows what home streams; it backs nothing up itself).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::parse::{Fields, Parser};
use super::StandbyConfig;

/// The lag alarm threshold when none is given.
const DEFAULT_LAG_ALARM: Duration = Duration::from_secs(60);

impl Parser<'_> {
    /// The `[[standbys]]`; `kept` names the paths a standby's data directory must never hold
    /// or be (a rebuild makes the data directory again: red team 8's `data_dir = "."` and a
    /// data directory naming the vault's own folder).
    pub(super) fn standbys(
        &mut self,
        top: &mut Fields<'_, '_>,
        kept: &[(String, PathBuf)],
    ) -> Vec<StandbyConfig> {
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
            if let Some(what) = overlaps(&dir, kept) {
                self.problem(
                    data_dir.span(),
                    &format!("{field}.data_dir"),
                    format!(
                        "{} would hold or be inside {what}: a standby's data directory is made \
                         again when it is rebuilt, so it must be a folder of its own, like \
                         \"/srv/embassy/{}\"",
                        dir.display(),
                        dataset.get_ref()
                    ),
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

/// What of `kept` the data directory `dir` would overlap: a kept path equal to it or inside it,
/// or a site folder it is inside. Paths are compared after resolving `.`, `..` and (where they
/// exist) symbolic links.
fn overlaps(dir: &Path, kept: &[(String, PathBuf)]) -> Option<String> {
    let dir = resolved(dir);
    kept.iter().find_map(|(what, p)| {
        let p = resolved(p);
        let inside_site = what.starts_with("site ") && dir.starts_with(&p);
        (p.starts_with(&dir) || inside_site).then(|| format!("{what} ({})", p.display()))
    })
}

/// `p` with `.` and `..` resolved lexically, then its longest existing ancestor canonicalised
/// (symbolic links followed) with the rest appended.
fn resolved(p: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}
