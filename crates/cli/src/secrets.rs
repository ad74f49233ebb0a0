//! Passphrases and key files for the CLI: the terminal prompt, and the CLI's order of sources
//! (`--passphrase-file`, else `EMBASSY_PASSPHRASE`, else a prompt on a terminal). How each
//! source is read, and the key checks, are embassy-ops's (the same as the agent's).

use std::io::IsTerminal;
use std::path::Path;

use embassy_core::engine::vault::Keyring;
use embassy_core::format::config::VaultConfig;
use embassy_core::{Error, Result};
use embassy_ops::unlock::{Passphrase, PassphraseSource};
use zeroize::Zeroizing;

pub use embassy_ops::unlock::{check_given_key_file, key_path};

/// What is said when no source gives a passphrase.
const MISSING: &str = "no passphrase given and standard input is not a terminal: set \
                       EMBASSY_PASSPHRASE or pass --passphrase-file FILE";

/// Asks on the terminal (twice when `confirm`); `None` when stdin is not a terminal.
fn prompt(confirm: bool) -> Result<Option<Zeroizing<String>>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("Vault passphrase: ")
            .map_err(|e| Error::io("reading the passphrase", e))?,
    );
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password("Repeat passphrase: ")
                .map_err(|e| Error::io("reading the passphrase", e))?,
        );
        if first.as_bytes() != second.as_bytes() {
            return Err(Error::invalid(
                "the two passphrases differ; nothing was created",
            ));
        }
    }
    Ok(Some(first))
}

/// Runs `f` with the CLI's passphrase rule: `--passphrase-file` when given, else
/// `EMBASSY_PASSPHRASE`, else a prompt when stdin is a terminal. Never prompts otherwise.
pub fn with_passphrase<T>(
    file: Option<&Path>,
    f: impl FnOnce(&Passphrase) -> Result<T>,
) -> Result<T> {
    with_rule(file, f)
}

fn with_rule<T>(file: Option<&Path>, f: impl FnOnce(&Passphrase) -> Result<T>) -> Result<T> {
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

/// The passphrase by the CLI's rule; `confirm` asks twice on a terminal (a new key file).
pub fn passphrase(file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    with_rule(file, |p| p.read(confirm))
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
