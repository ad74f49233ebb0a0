//! What `embassy config check` can check beyond the file's syntax without running a backup
//! (issue 15, item 8): that the key file and the passphrase are there, that every source folder
//! exists, that every local site folder exists and holds a vault, that the key file can read
//! the embassy node's standbys' datasets. Each finding names the
//! setting at fault and the fix. (A PostgreSQL connection string is checked when the file is
//! parsed; an S3 site is not contacted here.)

use std::path::Path;

use crate::config::{Config, PassphraseSource, Source};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The agent would fail (to start, or every run of a dataset).
    Error,
    /// The agent may fail, depending on what this check cannot see (its own environment).
    Warning,
}

/// One thing found wrong, with the setting it concerns and the way to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The setting at fault (`keys.file`, `datasets.NAME.source`, `sites.NAME`).
    pub setting: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{what}: {}: {}", self.setting, self.message)
    }
}

/// Checks what can be checked without a backup: files readable, the passphrase variable set,
/// source folders and site folders there, site folders holding a vault.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut error = |setting: String, message: String| {
        found.push(Finding {
            severity: Severity::Error,
            setting,
            message,
        })
    };
    // The key file.
    let key = &config.keys.file;
    if let Err(why) = readable_file(key) {
        error(
            "keys.file".into(),
            format!(
                "the key file {} {why}: set `file` under [keys] to the vault's key file (or a \
                 sealing credential)",
                key.display()
            ),
        );
    }
    // The passphrase.
    let mut warnings = Vec::new();
    match &config.keys.passphrase {
        PassphraseSource::File(path) => {
            if let Err(why) = readable_file(path) {
                error(
                    "keys.passphrase_file".into(),
                    format!(
                        "the passphrase file {} {why}: create it (mode 0600) or set \
                         `passphrase_file` under [keys] to the right file",
                        path.display()
                    ),
                );
            } else if std::fs::read(path).is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace)) {
                error(
                    "keys.passphrase_file".into(),
                    format!(
                        "the passphrase file {} is empty: write the key file's passphrase in it",
                        path.display()
                    ),
                );
            }
        }
        PassphraseSource::Env(name) => {
            if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
                warnings.push(Finding {
                    severity: Severity::Warning,
                    setting: "keys.passphrase_env".into(),
                    message: format!(
                        "the passphrase variable {name} is not set here: the agent needs it in \
                         its environment (for systemd, an EnvironmentFile=), or set \
                         `passphrase_file` under [keys] instead"
                    ),
                });
            }
        }
    }
    // The sources.
    for d in &config.datasets {
        if let Source::Files(paths) = &d.source {
            for path in paths {
                if let Err(e) = std::fs::symlink_metadata(path) {
                    error(
                        format!("datasets.{}.source", d.name),
                        format!(
                            "{} cannot be read ({}): fix the path in `files`, or mount what \
                             holds it; every backup of {} fails until then",
                            path.display(),
                            io_reason(&e),
                            d.name
                        ),
                    );
                }
            }
        }
    }
    // The sites: a local folder must exist and hold a vault. The agent never creates or fills
    // one that does not: it leaves it out (a warning) while another site holds the vault, and
    // refuses to start when none does (an error).
    let mut without = Vec::new();
    let mut holding = 0;
    for s in &config.sites {
        if s.location.contains("://") && !s.location.starts_with("file://") {
            holding += 1; // not checked here: counted as holding, so its peers only warn
            continue;
        }
        let folder = Path::new(s.location.strip_prefix("file://").unwrap_or(&s.location));
        let why = if !folder.is_dir() {
            "does not exist"
        } else if !folder.join(embassy_core::format::layout::CONFIG).is_file() {
            "holds no vault"
        } else {
            holding += 1;
            continue;
        };
        without.push((s, folder.display().to_string(), why));
    }
    for (s, folder, why) in without {
        let (severity, consequence) = if holding > 0 {
            (
                Severity::Warning,
                "the agent leaves it out and never fills it until it holds the vault",
            )
        } else {
            (
                Severity::Error,
                "no site holds the vault, so the agent does not start",
            )
        };
        found.push(Finding {
            severity,
            setting: format!("sites.{}", s.name),
            message: format!(
                "the site folder {folder} {why}: {consequence}; mount its disk or fix `path`; a \
                 new site is created with `embassy init` (the first) or seeded with `embassy \
                 sync --seed --from ANOTHER-SITE --to {}`",
                s.location
            ),
        });
    }
    standby_credential(config, &mut found);
    found.extend(warnings);
    found
}

/// The embassy node reads its standbys' datasets (a standby is made from a base backup and
/// follows the WAL with a reader credential the agent narrows from its own): a key file that
/// cannot read a standby's dataset (a sealing credential, a reader credential of other
/// datasets) is an error. A reader credential is opened with the configured passphrase to
/// list its datasets; when the passphrase is not at hand here, it is not checked.
fn standby_credential(config: &Config, found: &mut Vec<Finding>) {
    use embassy_core::keys::keyfile::{self, KeyFile};
    if config.standbys.is_empty() {
        return;
    }
    let Ok(file) = KeyFile::load(&config.keys.file) else {
        return; // reported above
    };
    let readable: Option<Vec<String>> = match file.purpose.as_str() {
        keyfile::PURPOSE_ROOT => return,
        keyfile::PURPOSE_READER => {
            let pass = match &config.keys.passphrase {
                PassphraseSource::File(path) => keyfile::passphrase_from_file(path).ok(),
                PassphraseSource::Env(name) => std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(zeroize::Zeroizing::new),
            };
            let Some(pass) = pass else {
                return;
            };
            match file
                .open_payload(pass.as_bytes(), &config.keys.file)
                .and_then(|p| embassy_core::keys::Credential::from_bytes(&p))
            {
                Ok(c) => Some(
                    c.datasets
                        .iter()
                        .filter(|d| d.reader_seed.is_some())
                        .map(|d| d.name.clone())
                        .collect(),
                ),
                Err(e) => {
                    found.push(Finding {
                        severity: Severity::Error,
                        setting: "keys.file".into(),
                        message: format!(
                            "{} cannot be opened with the configured passphrase: {e}",
                            config.keys.file.display()
                        ),
                    });
                    return;
                }
            }
        }
        _ => None,
    };
    for s in &config.standbys {
        if readable.as_ref().is_some_and(|r| r.contains(&s.dataset)) {
            continue;
        }
        found.push(Finding {
            severity: Severity::Error,
            setting: format!("standbys.{}", s.dataset),
            message: format!(
                "the key file {} ({}) cannot read dataset {}: the standby cannot be made or \
                 rebuilt from the vault; set `file` under [keys] to a reader credential of {} \
                 (the root issues it) or to the vault's key file",
                config.keys.file.display(),
                file.purpose,
                s.dataset,
                s.dataset
            ),
        });
    }
}

/// Ok when `path` is a file this process can open for reading; otherwise why not.
fn readable_file(path: &Path) -> Result<(), String> {
    match std::fs::File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err("is not a file".into()),
            Err(e) => Err(format!("cannot be read ({})", io_reason(&e))),
        },
        Err(e) => Err(format!("cannot be read ({})", io_reason(&e))),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
