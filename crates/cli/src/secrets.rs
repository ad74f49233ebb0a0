//! Passphrases and key files for the CLI.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use embassy_core::config::VaultConfig;
use embassy_core::keyfile::{default_key_path, KeyFile};
use embassy_core::keys::Credential;
use embassy_core::keys::RootSecret;
use embassy_core::vault::Keyring;
use embassy_core::{Error, Result};
use zeroize::Zeroizing;

/// Where the passphrase comes from, in order: `--passphrase-file`, `EMBASSY_PASSPHRASE`, a
/// prompt when stdin is a terminal. Never prompts otherwise.
pub fn passphrase(file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = file {
        return embassy_core::keyfile::passphrase_from_file(path);
    }
    if let Some(value) = embassy_core::keyfile::passphrase_from_env("EMBASSY_PASSPHRASE")? {
        return Ok(value);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(
            "no passphrase given and standard input is not a terminal: set EMBASSY_PASSPHRASE or pass --passphrase-file FILE",
        ));
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
    if first.is_empty() {
        return Err(Error::invalid("the passphrase is empty"));
    }
    Ok(first)
}

/// The key file to use for a vault: the one given, or the default location.
pub fn key_path(given: Option<&Path>, vault_id: &str) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => default_key_path(vault_id).ok_or_else(|| {
            Error::invalid(
                "no key file given and no home directory to look in: pass --key-file FILE",
            )
        }),
    }
}

/// Opens the vault's keys with the passphrase.
pub fn unlock(
    config: &VaultConfig,
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Keyring> {
    let path = key_path(key_file, &config.vault_id)?;
    let file = KeyFile::load(&path)?;
    check_vault(&file, &path, config)?;
    if file.holds_credential() {
        let pass = passphrase(passphrase_file, false)?;
        let credential = Credential::from_bytes(&file.open_payload(pass.as_bytes(), &path)?)?;
        return Keyring::from_credential(credential, config);
    }
    let pass = passphrase(passphrase_file, false)?;
    let root: RootSecret = file.open(pass.as_bytes(), &path)?;
    Keyring::from_root(root, config)
}

/// Refuses a key file (root key or credential) made for another vault than the site's. The
/// vault id in a key file's header is bound to its sealed secret (it is authenticated data), and
/// a credential's own vault id is checked again when it is opened
/// ([`Keyring::from_credential`]).
fn check_vault(file: &KeyFile, path: &Path, config: &VaultConfig) -> Result<()> {
    if file.vault_id == config.vault_id {
        return Ok(());
    }
    let what = if file.holds_credential() {
        "this credential"
    } else {
        "this key file"
    };
    Err(Error::WrongKey(format!(
        "{what} belongs to vault {}, but the site holds vault {}: the wrong site, or a \
         substituted configuration (nothing was written; key file {})",
        file.vault_id,
        config.vault_id,
        path.display()
    )))
}

/// Every command that opens a vault, keyless ones too, refuses a key file given with
/// `--key-file` that belongs to another vault: the same check [`unlock`] makes, so that no
/// command reads one vault while its user believes they hold the keys of another. A key file
/// that cannot be read is left to the commands that need keys.
pub fn check_given_key_file(key_file: Option<&Path>, config: &VaultConfig) -> Result<()> {
    let Some(path) = key_file else {
        return Ok(());
    };
    match KeyFile::load(path) {
        // Witness and approver key files are checked by the commands that use them.
        Ok(file) if file.opens_a_vault() => check_vault(&file, path, config),
        _ => Ok(()),
    }
}
