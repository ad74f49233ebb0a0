//! The exit codes of `embassy`, in one place: what each means, which error gets which, and the
//! text `embassy --help` and the README show. Like restic's, the codes above 9 name the common
//! reasons a command could not start (no vault, a lock, a wrong passphrase) so that scripts can
//! tell them apart without reading messages.

use std::process::ExitCode;

use embassy_core::Error;

/// A failure the message explains (an outage, a source that cannot be read, a refused request).
pub const FAILURE: u8 = 1;
/// Bad usage: arguments (clap) or a configuration file with problems.
pub const USAGE: u8 = 2;
/// Damage or tampering found: an integrity problem in the vault or at a site.
pub const INTEGRITY: u8 = 3;
/// `status --config`: a dataset is overdue (its recovery point is older than its RPO, or it has
/// no version yet) at a site, and nothing is damaged.
pub const OVERDUE: u8 = 4;
/// No vault at the site (or, among several sites, a site that holds none while others do).
pub const NO_VAULT: u8 = 10;
/// A lock held by another process (a dataset's ledger lock, the agent's state folder).
pub const LOCKED: u8 = 11;
/// The passphrase does not open the key file.
pub const WRONG_PASSPHRASE: u8 = 12;
/// A backup stopped by Ctrl-C (SIGINT) before its version was recorded (128 + 2, the shell's
/// convention).
pub const INTERRUPTED: u8 = 130;
/// A backup stopped by SIGTERM before its version was recorded (128 + 15).
pub const TERMINATED: u8 = 143;

/// The table of codes, for `embassy --help` (after the commands) and the README.
pub const HELP: &str = "\
Exit codes:
  0   success
  1   failure (the message names the problem and the way out)
  2   bad usage: arguments or a configuration file
  3   damage or tampering found (an integrity problem)
  4   a dataset is overdue: older than its RPO, or no version yet (status --config)
  10  no vault at the site (or a site without one among sites that hold it)
  11  locked: another process holds a lock (a dataset's ledger, the agent's state folder)
  12  wrong passphrase for the key file
  130 a backup stopped by Ctrl-C before its version was recorded (143: by SIGTERM)
  200 wal-fetch only: the vault could not be read (PostgreSQL stops recovery; 1 there means
      the vault proves the WAL file does not exist)";

/// The code of an error a command returned.
pub fn code_of(e: &Error) -> u8 {
    match e {
        Error::NoVault { .. } | Error::SiteWithoutVault { .. } => NO_VAULT,
        Error::Locked { .. } => LOCKED,
        Error::WrongPassphrase { .. } => WRONG_PASSPHRASE,
        e if e.is_integrity() => INTEGRITY,
        _ => FAILURE,
    }
}

/// [`code_of`] as the process's exit code.
pub fn for_error(e: &Error) -> ExitCode {
    ExitCode::from(code_of(e))
}

/// A code as the process's exit code.
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_the_help_lists_every_code() {
        assert_eq!(
            code_of(&Error::NoVault {
                site: "/srv/v".into()
            }),
            NO_VAULT
        );
        assert_eq!(
            code_of(&Error::WrongPassphrase {
                path: "k.key".into()
            }),
            WRONG_PASSPHRASE
        );
        assert_eq!(
            code_of(&Error::SiteWithoutVault {
                sites: vec!["/srv/b".into()],
                holding: vec!["/srv/a".into()],
            }),
            NO_VAULT
        );
        assert_eq!(code_of(&Error::corrupt("p", "bad")), INTEGRITY);
        assert_eq!(code_of(&Error::invalid("no")), FAILURE);
        assert!(HELP.contains(&format!("  {} ", crate::pg::WAL_FETCH_STOP_RECOVERY)));
        for c in [
            0,
            FAILURE,
            USAGE,
            INTEGRITY,
            OVERDUE,
            NO_VAULT,
            LOCKED,
            WRONG_PASSPHRASE,
            INTERRUPTED,
        ] {
            assert!(
                HELP.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{c} "))),
                "{c} missing from the help"
            );
        }
    }
}
