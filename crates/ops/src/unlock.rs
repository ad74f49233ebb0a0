//! Unlocking a vault's keys: where the passphrase comes from (one rule for the command line and
//! the agent), which key file, and that the key file belongs to the vault the sites hold.
//!
//! The rule: the sources are tried in the order given and the first that yields a passphrase
//! wins. A file is read whole (`embassy_core::keys::keyfile::passphrase_from_file`: the line breaks
//! at its end are dropped, every other byte counts, later lines too); a variable counts when it
//! is set; a prompt counts when there is someone to ask. The prompt itself stays with the front end (the command line
//! asks on its terminal; the agent has none) and is passed in as a closure.

use std::path::{Path, PathBuf};

use embassy_core::engine::vault::Keyring;
use embassy_core::format::config::VaultConfig;
use embassy_core::keys::keyfile::{default_key_path, KeyFile};
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::{Error, Result};
use zeroize::Zeroizing;

/// A front end's way of asking a person; `true` asks for a new passphrase (twice, and until it
/// meets [`check_new_passphrase`]). `Ok(None)` when there is nobody to ask (no terminal).
pub type Prompt<'a> = &'a dyn Fn(bool) -> Result<Option<Zeroizing<String>>>;

/// One place a passphrase may come from.
#[derive(Clone, Copy)]
pub enum PassphraseSource<'a> {
    /// A file, read whole (the line breaks at its end are dropped).
    File(&'a Path),
    /// An environment variable; passed over when unset.
    Env(&'a str),
    /// Ask a person; passed over when there is nobody to ask.
    Prompt(Prompt<'a>),
}

/// Where a passphrase comes from: the sources in order, and what to say when none yields one.
#[derive(Clone, Copy)]
pub struct Passphrase<'a> {
    /// Tried in order.
    pub sources: &'a [PassphraseSource<'a>],
    /// The error when no source yields a passphrase (names the ways to give one).
    pub missing: &'a str,
}

impl Passphrase<'_> {
    /// The passphrase from the first source that yields one. `new` reads the passphrase of a
    /// new key file: a prompt asks twice, and whatever its source it must meet
    /// [`check_new_passphrase`].
    pub fn read(&self, new: bool) -> Result<Zeroizing<String>> {
        let pass = self.first(new)?;
        if new {
            check_new_passphrase(&pass)?;
        }
        Ok(pass)
    }

    fn first(&self, new: bool) -> Result<Zeroizing<String>> {
        for source in self.sources {
            match source {
                PassphraseSource::File(path) => {
                    return embassy_core::keys::keyfile::passphrase_from_file(path)
                }
                PassphraseSource::Env(name) => {
                    if let Some(value) = embassy_core::keys::keyfile::passphrase_from_env(name)? {
                        return Ok(value);
                    }
                }
                PassphraseSource::Prompt(ask) => {
                    if let Some(value) = ask(new)? {
                        if value.is_empty() {
                            return Err(Error::invalid("the passphrase is empty"));
                        }
                        return Ok(value);
                    }
                }
            }
        }
        Err(Error::invalid(self.missing.to_string()))
    }
}

/// The fewest characters a new passphrase may have.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The fewest different characters a new passphrase may have.
pub const MIN_PASSPHRASE_DISTINCT: usize = 5;

/// The one rule for a new passphrase (`init`, `keys passwd`, `keys recover`, `keys issue
/// --new-passphrase-file`, new witness and approver keys), for the command line and the agent
/// alike: at least [`MIN_PASSPHRASE_CHARS`] characters, of which at least
/// [`MIN_PASSPHRASE_DISTINCT`] differ. The key file's KDF (Argon2id) slows guessing but cannot
/// save a short passphrase; a few unrelated words are both long and easy to remember.
pub fn check_new_passphrase(pass: &str) -> Result<()> {
    let chars = pass.chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(Error::invalid(format!(
            "the new passphrase is too short: {chars} characters, and at least \
             {MIN_PASSPHRASE_CHARS} are required (a few unrelated words make a strong one that is \
             easy to remember); nothing was written"
        )));
    }
    let mut distinct: Zeroizing<Vec<char>> = Zeroizing::new(pass.chars().collect());
    distinct.sort_unstable();
    distinct.dedup();
    let different = distinct.len();
    if different < MIN_PASSPHRASE_DISTINCT {
        return Err(Error::invalid(format!(
            "the new passphrase is too weak: it uses {different} different characters, and at \
             least {MIN_PASSPHRASE_DISTINCT} different characters are required (a few unrelated \
             words make a strong one); nothing was written"
        )));
    }
    Ok(())
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

/// Opens the vault's keys (a root key file or a sealing/reader credential) with the
/// passphrase, read once. A key file of another vault is refused before the passphrase is
/// asked for.
pub fn unlock(config: &VaultConfig, key_file: &Path, passphrase: &Passphrase) -> Result<Keyring> {
    let file = KeyFile::load(key_file)?;
    check_vault(&file, key_file, config)?;
    let pass = passphrase.read(false)?;
    if file.holds_credential() {
        let credential = Credential::from_bytes(&file.open_payload(pass.as_bytes(), key_file)?)?;
        return Keyring::from_credential(credential, config);
    }
    let root: RootSecret = file.open(pass.as_bytes(), key_file)?;
    Keyring::from_root(root, config)
}

/// The vault's root secret from an unlocked keyring (a credential is refused).
pub fn root_of(keyring: &Keyring) -> Result<RootSecret> {
    keyring
        .root()
        .map(|r| RootSecret::from_bytes(r.expose()))
        .ok_or_else(|| {
            Error::WrongKey(
                "this needs the vault's root key file (or recovered custodian shares), not a \
                 credential"
                    .into(),
            )
        })
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

/// Every command that opens a vault, keyless ones too, refuses a key file given explicitly
/// that belongs to another vault: the same check [`unlock`] makes, so that no command reads one
/// vault while its user believes they hold the keys of another. A key file that cannot be read
/// is left to the commands that need keys.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_source_that_yields_wins_and_a_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "first line\nsecond line\n").unwrap();
        let ask = |_: bool| Ok(Some(Zeroizing::new("asked".to_string())));
        let sources = [
            PassphraseSource::Env("EMBASSY_OPS_TEST_UNSET_VARIABLE"),
            PassphraseSource::File(&file),
            PassphraseSource::Prompt(&ask),
        ];
        let p = Passphrase {
            sources: &sources,
            missing: "none",
        };
        assert_eq!(p.read(false).unwrap().as_str(), "first line\nsecond line");
        let nobody = |_: bool| Ok(None);
        let sources = [PassphraseSource::Prompt(&nobody)];
        let p = Passphrase {
            sources: &sources,
            missing: "nobody to ask",
        };
        assert!(p
            .read(false)
            .unwrap_err()
            .to_string()
            .contains("nobody to ask"));
    }

    #[test]
    fn a_new_passphrase_must_be_long_and_varied_whatever_its_source() {
        for weak in [
            "short pass",
            "12345678901",
            "aaaaaaaaaaaaaaaa",
            "abababababab",
        ] {
            let err = check_new_passphrase(weak).unwrap_err().to_string();
            assert!(err.contains("at least"), "{weak}: {err}");
        }
        check_new_passphrase("correct horse battery staple").unwrap();
        check_new_passphrase("Ünïcödé-wörd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "too short\n").unwrap();
        let sources = [PassphraseSource::File(&file)];
        let p = Passphrase {
            sources: &sources,
            missing: "none",
        };
        // An existing key file's passphrase is only read; a new one is held to the rule.
        assert_eq!(p.read(false).unwrap().as_str(), "too short");
        let err = p.read(true).unwrap_err().to_string();
        assert!(err.contains("at least 12"), "{err}");
    }
}
