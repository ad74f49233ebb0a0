//! Passphrases, shares and key files for the CLI: the terminal prompts, and the CLI's order of
//! sources (`--passphrase-file`, else `EMBASSY_PASSPHRASE`, else a prompt on a terminal). How
//! each source is read, the rule for a new passphrase, and the key checks are embassy-ops's (the
//! same as the agent's).

use std::io::IsTerminal;
use std::path::Path;

use embassy_core::engine::vault::Keyring;
use embassy_core::format::config::VaultConfig;
use embassy_core::{Error, Result};
use embassy_ops::unlock::{check_new_passphrase, Passphrase, PassphraseSource};
use zeroize::Zeroizing;

pub use embassy_ops::unlock::{check_given_key_file, key_path};

/// What is said when no source gives a passphrase.
const MISSING: &str = "no passphrase given and standard input is not a terminal: set \
                       EMBASSY_PASSPHRASE or pass --passphrase-file FILE";

/// How many times a person is asked again after a mistake (a weak new passphrase, two that
/// differ, a share with a typing mistake).
pub const TRIES: usize = 3;

/// Asks on the terminal without echo.
fn ask(label: &str) -> Result<Zeroizing<String>> {
    Ok(Zeroizing::new(
        rpassword::prompt_password(label).map_err(|e| Error::io("reading from the terminal", e))?,
    ))
}

/// Tells the person at the terminal (standard error).
fn tell(text: &str) {
    eprintln!("{text}");
}

/// Asks for a new passphrase on the terminal: it must meet the rule, and be typed twice alike;
/// a mistake is said and asked again, up to [`TRIES`] times.
fn ask_new() -> Result<Zeroizing<String>> {
    let mut last = Error::invalid("no new passphrase given");
    for _ in 0..TRIES {
        let first = ask("New passphrase: ")?;
        if let Err(e) = check_new_passphrase(&first) {
            tell(&e.to_string());
            last = e;
            continue;
        }
        let second = ask("Repeat the new passphrase: ")?;
        if first.as_bytes() == second.as_bytes() {
            return Ok(first);
        }
        last = Error::invalid("the two new passphrases differ; nothing was written");
        tell("the two passphrases differ; again");
    }
    Err(last)
}

/// Asks on the terminal (a new passphrase when `new`); `None` when stdin is not a terminal.
fn prompt(new: bool) -> Result<Option<Zeroizing<String>>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    if new {
        return ask_new().map(Some);
    }
    ask("Vault passphrase: ").map(Some)
}

/// Runs `f` with the CLI's passphrase rule: `--passphrase-file` when given, else
/// `EMBASSY_PASSPHRASE`, else a prompt when stdin is a terminal. Never prompts otherwise.
pub fn with_rule<T>(file: Option<&Path>, f: impl FnOnce(&Passphrase) -> Result<T>) -> Result<T> {
    let ask = prompt;
    let sources = match file {
        Some(path) => vec![PassphraseSource::File(path)],
        None => vec![
            PassphraseSource::Env("EMBASSY_PASSPHRASE"),
            PassphraseSource::Prompt(&ask),
        ],
    };
    f(&Passphrase {
        sources: &sources,
        missing: MISSING,
    })
}

/// Runs `f` with the current passphrase of the key file `key` (`keys passwd`): the CLI's rule,
/// the prompt naming the file.
pub fn with_current<T>(
    file: Option<&Path>,
    key: &Path,
    f: impl FnOnce(&Passphrase) -> Result<T>,
) -> Result<T> {
    let label = format!("Current passphrase of {}: ", key.display());
    let ask = |_: bool| {
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        ask(&label).map(Some)
    };
    let sources = match file {
        Some(path) => vec![PassphraseSource::File(path)],
        None => vec![
            PassphraseSource::Env("EMBASSY_PASSPHRASE"),
            PassphraseSource::Prompt(&ask),
        ],
    };
    f(&Passphrase {
        sources: &sources,
        missing: MISSING,
    })
}

/// Runs `f` with a new passphrase from `file` (`--new-passphrase-file`) or else asked twice on
/// the terminal; never from `EMBASSY_PASSPHRASE`, which holds the current one.
pub fn with_new<T>(file: Option<&Path>, f: impl FnOnce(&Passphrase) -> Result<T>) -> Result<T> {
    let ask = prompt;
    let sources = match file {
        Some(path) => vec![PassphraseSource::File(path)],
        None => vec![PassphraseSource::Prompt(&ask)],
    };
    f(&Passphrase {
        sources: &sources,
        missing: "no new passphrase given and standard input is not a terminal: pass \
                  --new-passphrase-file FILE",
    })
}

/// The passphrase by the CLI's rule; `new` asks twice on a terminal and holds it to the rule
/// for a new passphrase (a new key file).
pub fn passphrase(file: Option<&Path>, new: bool) -> Result<Zeroizing<String>> {
    with_rule(file, |p| p.read(new))
}

/// Custodian shares: on a terminal, asked one by one (without echo), each checked as it is
/// typed, saying how many are still needed; otherwise read from standard input, one a line.
pub fn shares() -> Result<Vec<Zeroizing<String>>> {
    use std::io::BufRead;
    if !std::io::stdin().is_terminal() {
        let mut out = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = Zeroizing::new(line.map_err(|e| Error::io("reading shares from stdin", e))?);
            if !line.trim().is_empty() {
                out.push(line);
            }
        }
        return Ok(out);
    }
    tell("Enter the custodian shares one at a time (typing is not shown).");
    let mut out: Vec<Zeroizing<String>> = Vec::new();
    let mut needed: Option<usize> = None;
    loop {
        let number = out.len() + 1;
        let label = match needed {
            None => format!("Share {number}: "),
            Some(k) => format!(
                "Share {number} of {k} ({} still needed): ",
                k.saturating_sub(out.len())
            ),
        };
        let mut tries = 0;
        let count = loop {
            let text = ask(&label)?;
            match embassy_ops::custody::check_share(&text, &format!("share {number}")) {
                Ok(count) => {
                    out.push(text);
                    break count;
                }
                Err(e) if tries + 1 < TRIES => {
                    tries += 1;
                    tell(&format!("{e}; type it again"));
                }
                Err(e) => return Err(e),
            }
        };
        let k = *needed.get_or_insert(usize::from(count.threshold));
        if out.len() >= k {
            tell(&format!(
                "{k} shares given: enough to recover the root key."
            ));
            return Ok(out);
        }
        tell(&format!(
            "this split needs {k} of its {} shares: {} still needed",
            count.count,
            k - out.len()
        ));
    }
}

/// Opens the vault's keys: the key file given (or the default one), the passphrase by the
/// CLI's rule, read once.
pub fn unlock(
    config: &VaultConfig,
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Keyring> {
    let path = key_path(key_file, &config.vault_id)?;
    with_rule(passphrase_file, |p| {
        embassy_ops::unlock::unlock(config, &path, p)
    })
}
