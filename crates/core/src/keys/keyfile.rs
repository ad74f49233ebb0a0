//! Passphrase-protected key files: the root secret wrapped with XChaCha20-Poly1305 under a key
//! stretched from the passphrase by Argon2id. The parameters are stored in the file, so they can
//! be raised later without breaking old files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::crypto;
use crate::keys::RootSecret;

/// File format tag.
pub const KEY_FILE_FORMAT: &str = "data-embassy-key-v1";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (OWASP's second recommended Argon2id setting).
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    fn check(&self) -> std::result::Result<(), String> {
        if self.memory_kib < 8 * 1024 || self.memory_kib > 4 * 1024 * 1024 {
            return Err(format!(
                "Argon2 memory {} KiB is outside 8 MiB..4 GiB",
                self.memory_kib
            ));
        }
        if self.iterations == 0 || self.iterations > 100 {
            return Err(format!(
                "Argon2 iterations {} is outside 1..100",
                self.iterations
            ));
        }
        if self.parallelism == 0 || self.parallelism > 64 {
            return Err(format!(
                "Argon2 parallelism {} is outside 1..64",
                self.parallelism
            ));
        }
        Ok(())
    }
}

/// The stored form of a key file (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Always [`KEY_FILE_FORMAT`].
    pub format: String,
    /// The vault this key belongs to (hex), or `witness` for a witness key.
    pub vault_id: String,
    /// What the file holds: one of the `PURPOSE_*` constants below ([`PURPOSES`]).
    #[serde(default = "purpose_root")]
    pub purpose: String,
    /// `argon2id`.
    pub kdf: String,
    /// Argon2id parameters.
    pub kdf_params: KdfParams,
    /// Argon2 salt (hex, 16 bytes).
    pub salt: String,
    /// `nonce || ciphertext` of the secret payload (hex).
    pub sealed_secret: String,
}

fn purpose_root() -> String {
    PURPOSE_ROOT.to_string()
}

/// A key file holding a vault's root secret.
pub const PURPOSE_ROOT: &str = "root";
/// A key file holding a sealing credential.
pub const PURPOSE_SEALING: &str = "sealing-credential";
/// A key file holding a reader credential.
pub const PURPOSE_READER: &str = "reader-credential";
/// A key file holding a witness key.
pub const PURPOSE_WITNESS: &str = "witness";
/// A key file holding a deletion approver's signing seed (`embassy prune --approver`).
pub const PURPOSE_APPROVER: &str = "approver";
/// Every purpose a key file can have: the one list of what Data Embassy seals in key files.
pub const PURPOSES: [&str; 5] = [
    PURPOSE_ROOT,
    PURPOSE_SEALING,
    PURPOSE_READER,
    PURPOSE_WITNESS,
    PURPOSE_APPROVER,
];

fn stretch(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    params.check().map_err(Error::invalid)?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|e| Error::invalid(format!("Argon2 parameters: {e}")))?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| Error::invalid(format!("Argon2: {e}")))?;
    Ok(out)
}

fn aad(vault_id: &str, purpose: &str, params: &KdfParams) -> Vec<u8> {
    format!(
        "{KEY_FILE_FORMAT}|{vault_id}|{purpose}|argon2id|{}|{}|{}",
        params.memory_kib, params.iterations, params.parallelism
    )
    .into_bytes()
}

impl KeyFile {
    /// Wraps `root` under `passphrase`.
    pub fn seal(
        root: &RootSecret,
        vault_id: &str,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Self> {
        Self::seal_payload(root.expose(), PURPOSE_ROOT, vault_id, passphrase, params)
    }

    /// Wraps any secret payload under `passphrase`.
    pub fn seal_payload(
        payload: &[u8],
        purpose: &str,
        vault_id: &str,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::invalid(
                "the passphrase is empty; choose a long passphrase",
            ));
        }
        let salt = &crypto::random_32()[..16];
        let kek = stretch(passphrase, salt, params)?;
        let sealed = crypto::seal_symmetric(&kek, &aad(vault_id, purpose, &params), payload);
        Ok(Self {
            format: KEY_FILE_FORMAT.to_string(),
            vault_id: vault_id.to_string(),
            purpose: purpose.to_string(),
            kdf: "argon2id".to_string(),
            kdf_params: params,
            salt: hex::encode(salt),
            sealed_secret: hex::encode(sealed),
        })
    }

    /// Unwraps the root secret; `path` is only used in messages.
    pub fn open(&self, passphrase: &[u8], path: &Path) -> Result<RootSecret> {
        self.expect_purpose(PURPOSE_ROOT, path)?;
        let plain = self.open_payload(passphrase, path)?;
        RootSecret::from_slice(&plain).ok_or_else(|| Error::KeyFile {
            path: path.to_path_buf(),
            problem: "the wrapped secret has the wrong length".into(),
        })
    }

    /// True if the file holds a credential (sealing or reader) rather than a root key.
    pub fn holds_credential(&self) -> bool {
        self.purpose == PURPOSE_SEALING || self.purpose == PURPOSE_READER
    }

    /// True if the file opens a vault (a root key or a credential), as opposed to a witness's
    /// or an approver's signing key: such files name the vault they belong to.
    pub fn opens_a_vault(&self) -> bool {
        self.purpose == PURPOSE_ROOT || self.holds_credential()
    }

    /// Checks what the file holds.
    pub fn expect_purpose(&self, purpose: &str, path: &Path) -> Result<()> {
        if self.purpose == purpose {
            Ok(())
        } else {
            Err(Error::KeyFile {
                path: path.to_path_buf(),
                problem: format!(
                    "it holds a {} key, but a {purpose} key is needed here",
                    self.purpose
                ),
            })
        }
    }

    /// Unwraps the secret payload.
    pub fn open_payload(&self, passphrase: &[u8], path: &Path) -> Result<Zeroizing<Vec<u8>>> {
        let bad = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        if self.format != KEY_FILE_FORMAT || self.kdf != "argon2id" {
            return Err(bad(format!(
                "unknown format '{}' / kdf '{}': this is not a Data Embassy key file, or one from a newer version",
                self.format, self.kdf
            )));
        }
        self.kdf_params.check().map_err(bad)?;
        let salt = hex::decode(&self.salt).map_err(|_| bad("salt is not hex".into()))?;
        let sealed =
            hex::decode(&self.sealed_secret).map_err(|_| bad("sealed_secret is not hex".into()))?;
        let kek = stretch(passphrase, &salt, self.kdf_params)?;
        crypto::open_symmetric(
            &kek,
            &aad(&self.vault_id, &self.purpose, &self.kdf_params),
            &sealed,
        )
        .map_err(|_| Error::WrongPassphrase {
            path: path.to_path_buf(),
        })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NoKeyFile {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io(format!("reading key file {}", path.display()), e)
            }
        })?;
        serde_json::from_slice(&text).map_err(|e| Error::KeyFile {
            path: path.to_path_buf(),
            problem: format!("not a valid key file: {e}"),
        })
    }

    /// Writes the key file with mode 0600, refusing to replace an existing file.
    pub fn store(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
        }
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("encoding key file: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::io(
                    format!(
                        "creating key file {} (an existing key file is never overwritten)",
                        path.display()
                    ),
                    e,
                )
            })?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
    }

    /// Replaces the key file at `path` with this one, atomically: written whole to a temporary
    /// file (mode 0600) beside it, synced, then renamed over it, so that a crash leaves either
    /// the old file or the new one, never half of either (`keys passwd`).
    pub fn replace(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} names no file", path.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".new-{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        // A temporary file left by a crash of an earlier run with the same process id.
        let _ = std::fs::remove_file(&temp);
        if let Err(e) = self.store(&temp) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::io(
                format!("replacing key file {}", path.display()),
                e,
            ));
        }
        // The rename itself made durable.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing folder {}", dir.display()), e))
    }
}

/// Text read as a passphrase, zeroized on every path: bytes that are not UTF-8 are wiped before
/// the error is returned.
fn passphrase_text(mut bytes: Zeroizing<Vec<u8>>, what: &str) -> Result<Zeroizing<String>> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(Error::invalid(format!("{what} is not UTF-8 text")))
        }
    }
}

/// The passphrase in a file: its content without the line end(s) at its end. Read into one
/// buffer sized from the file and zeroized after use.
pub fn passphrase_from_file(path: &Path) -> Result<Zeroizing<String>> {
    use std::io::Read;
    let what = || format!("reading passphrase file {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(what(), e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size.min(1 << 20) as usize + 1));
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(what(), e))?;
    passphrase_text(bytes, &format!("passphrase file {}", path.display()))
}

/// The passphrase in environment variable `name` (`None` when unset), its copy zeroized on every
/// path. The environment keeps its own copy (an agent reads it again on each run): keep it out
/// of the environment of other processes (see docs/keys.md).
pub fn passphrase_from_env(name: &str) -> Result<Option<Zeroizing<String>>> {
    use std::os::unix::ffi::OsStringExt;
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    passphrase_text(Zeroizing::new(value.into_vec()), name).map(Some)
}

/// Where a vault's key file lives when no path is given:
/// `$XDG_CONFIG_HOME/data-embassy/keys/<vault-id>.key` (or under `~/.config`).
pub fn default_key_path(vault_id: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(
        base.join("data-embassy")
            .join("keys")
            .join(format!("{vault_id}.key")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn passphrases_are_read_the_same_way_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, b"two words\r\n\n").unwrap();
        assert_eq!(passphrase_from_file(&file).unwrap().as_str(), "two words");
        std::fs::write(&file, b"\n").unwrap();
        assert!(passphrase_from_file(&file)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::write(&file, b"\xff\xfe").unwrap();
        assert!(passphrase_from_file(&file)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        assert!(passphrase_from_env("EMBASSY_TEST_SURELY_UNSET_PASSPHRASE")
            .unwrap()
            .is_none());
        assert!(RootSecret::from_slice(&[1; 31]).is_none());
        assert_eq!(RootSecret::from_slice(&[1; 32]).unwrap().expose(), &[1; 32]);
    }

    #[test]
    fn wrong_passphrase_is_named() {
        let root = RootSecret::generate();
        let file = KeyFile::seal(&root, "v1", b"right", FAST).unwrap();
        let path = Path::new("/k");
        assert_eq!(file.open(b"right", path).unwrap().expose(), root.expose());
        assert!(matches!(
            file.open(b"wrong", path),
            Err(Error::WrongPassphrase { .. })
        ));
        let mut other_vault = file.clone();
        other_vault.vault_id = "v2".into();
        assert!(matches!(
            other_vault.open(b"right", path),
            Err(Error::WrongPassphrase { .. })
        ));
    }

    #[test]
    fn each_purpose_is_classified_once() {
        let with = |purpose: &str| KeyFile {
            purpose: purpose.into(),
            ..KeyFile::seal_payload(&[7; 32], PURPOSE_ROOT, "v1", b"p", FAST).unwrap()
        };
        let classes: Vec<(bool, bool)> = PURPOSES
            .iter()
            .map(|p| (with(p).holds_credential(), with(p).opens_a_vault()))
            .collect();
        // root, sealing, reader, witness, approver
        let expected = [
            (false, true),
            (true, true),
            (true, true),
            (false, false),
            (false, false),
        ];
        assert_eq!(classes, expected);
        assert!(!with("bogus").opens_a_vault());
        let mut names = PURPOSES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PURPOSES.len());
    }

    #[test]
    fn a_key_file_is_replaced_whole_or_not_at_all() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let root = RootSecret::generate();
        let old = KeyFile::seal(&root, "v1", b"old", FAST).unwrap();
        old.store(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let new = KeyFile::seal(&root, "v1", b"new", FAST).unwrap();
        // The temporary file cannot be made (a folder stands in its place): the old key file
        // is left exactly as it was.
        let blocker = dir
            .path()
            .join(format!(".vault.key.new-{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        assert!(new.replace(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&blocker).unwrap();
        // Replaced: the new passphrase opens it, the old does not, mode 0600, nothing beside it.
        new.replace(&path).unwrap();
        let stored = KeyFile::load(&path).unwrap();
        assert_eq!(stored.open(b"new", &path).unwrap().expose(), root.expose());
        assert!(stored.open(b"old", &path).is_err());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
