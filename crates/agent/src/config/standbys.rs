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
        let mut taken: Vec<(String, Vec<PathBuf>)> = Vec::new();
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
            let folders = folders_of(&dir);
            if let Some(what) = overlaps(&folders, kept) {
                self.problem(
                    data_dir.span(),
                    &format!("{field}.data_dir"),
                    format!(
                        "{} (with its .wal-fetch and .run folders) would hold or be inside \
                         {what}: a standby's data directory is made again when it is rebuilt, \
                         so it must be a folder of its own, like \"/srv/embassy/{}\"",
                        dir.display(),
                        dataset.get_ref()
                    ),
                );
                continue;
            }
            // Nor another standby's folders, nested or through a link (a rebuild of one would
            // remove the other's data directory under its running server).
            if let Some((other, _)) = taken.iter().find(|(_, theirs)| {
                theirs
                    .iter()
                    .any(|t| folders.iter().any(|f| f.starts_with(t) || t.starts_with(f)))
            }) {
                self.problem(
                    data_dir.span(),
                    &format!("{field}.data_dir"),
                    format!(
                        "overlaps the standby of {other}'s data directory (the same folder, one \
                         inside the other, or their .wal-fetch/.run folders): give each standby \
                         a folder of its own"
                    ),
                );
                continue;
            }
            taken.push((dataset.get_ref().clone(), folders));
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

/// The folders a standby's data directory `dir` makes its own: itself, its fetch folder
/// (`<dir>.wal-fetch`) and its run folder (`<dir>.run`, handed to the server's owner), resolved.
fn folders_of(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![resolved(dir)];
    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        for suffix in [".wal-fetch", ".run"] {
            let mut n = name.to_os_string();
            n.push(suffix);
            out.push(resolved(&parent.join(n)));
        }
    }
    out
}

/// What of `kept` a standby's folders (`folders_of`) would overlap: a kept path equal to one
/// of them or inside one, or a site folder one of them is inside.
fn overlaps(folders: &[PathBuf], kept: &[(String, PathBuf)]) -> Option<String> {
    kept.iter().find_map(|(what, p)| {
        let p = resolved(p);
        let hit = folders
            .iter()
            .any(|f| p.starts_with(f) || (what.starts_with("site ") && f.starts_with(&p)));
        hit.then(|| format!("{what} ({})", p.display()))
    })
}

/// `p` resolved as the system would open it: component by component, each symbolic link
/// followed before a later `..` applies (so `lnk/../x` is the folder holding `lnk`'s target
/// joined with `x`), components that do not exist yet kept as written.
fn resolved(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
            }
        }
    }
    out
}
