//! The environment a command of the configuration runs in (a source command, an alarm
//! command): the caller's own, less every variable that may hold a secret — the vault's
//! passphrase, cloud and database credentials — unless the configuration passes it by name.
//!
//! A command line comes from a configuration file and runs third-party programs; it has no need
//! of the key file's passphrase or of the credentials the agent uses to reach its sites.

use std::ffi::OsStr;
use std::process::Command;

/// Prefixes of variables that carry credentials (compared without regard to case).
const SECRET_PREFIXES: &[&str] = &[
    "EMBASSY_",
    "AWS_",
    "AZURE_",
    "ARM_",
    "GOOGLE_",
    "GCLOUD_",
    "CLOUDSDK_",
    "GCP_",
];

/// Words whose presence in a name marks a secret (PGPASSWORD, GITHUB_TOKEN, ...).
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "API_KEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
];

/// True when a variable of this name may hold a secret and is withheld from commands unless
/// passed by name: names starting with `EMBASSY_`, `AWS_`, `AZURE_`, `ARM_`, `GOOGLE_`,
/// `GCLOUD_`, `CLOUDSDK_` or `GCP_`, and names containing `PASSWORD`, `PASSPHRASE`, `SECRET`,
/// `TOKEN`, `CREDENTIAL`, `API_KEY`, `ACCESS_KEY` or `PRIVATE_KEY` (so `PGPASSWORD` too).
pub fn is_secret(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    SECRET_PREFIXES.iter().any(|p| upper.starts_with(p))
        || SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Which variables of the caller's environment a command does not inherit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scrub {
    /// Further names to withhold whatever they are called (the variable the passphrase is
    /// read from, when the configuration names its own).
    pub withhold: Vec<String>,
    /// Names passed on although they look secret (the configuration's `pass_env`).
    pub pass: Vec<String>,
}

impl Scrub {
    /// True when `name` is withheld from the command.
    pub fn withholds(&self, name: &OsStr) -> bool {
        if self.pass.iter().any(|p| OsStr::new(p) == name) {
            return false;
        }
        is_secret(name) || self.withhold.iter().any(|w| OsStr::new(w) == name)
    }

    /// Removes from `command`'s environment every variable of this process's environment it
    /// withholds. Variables set on `command` afterwards are kept.
    pub fn apply(&self, command: &mut Command) {
        for (name, _) in std::env::vars_os() {
            if self.withholds(&name) {
                command.env_remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_secret_and_ordinary_variables_are_not() {
        for name in [
            "EMBASSY_PASSPHRASE",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "aws_session_token",
            "PGPASSWORD",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "AZURE_CLIENT_SECRET",
            "GITHUB_TOKEN",
            "B2_APPLICATION_KEY_SECRET",
            "OS_PASSWORD",
        ] {
            assert!(is_secret(OsStr::new(name)), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "PGHOST", "PGUSER", "TZ", "USER"] {
            assert!(!is_secret(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn passed_names_are_kept_and_withheld_names_are_removed() {
        let s = Scrub {
            withhold: vec!["VAULT_PASS".into()],
            pass: vec!["PGPASSWORD".into()],
        };
        assert!(!s.withholds(OsStr::new("PGPASSWORD")));
        assert!(s.withholds(OsStr::new("VAULT_PASS")));
        assert!(s.withholds(OsStr::new("AWS_SECRET_ACCESS_KEY")));
        assert!(!s.withholds(OsStr::new("PATH")));
    }
}
