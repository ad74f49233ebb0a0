//! The witness's memory: what one witness verified of one vault at one site, so its next
//! cosign reads only what is new and refuses a history that does not extend the one it
//! cosigned. One JSON file per (vault, site, witness key) under the state folder, private
//! (0600) and replaced atomically, with a format version. A missing, damaged, unknown or
//! foreign file is never trusted: the run is a full one and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use embassy_core::engine::verify::Known;
use embassy_core::id::ObjectId;
use embassy_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The memory file's format version; another version is read as unusable (a full run).
pub const FORMAT: u32 = 1;

/// The folder under the state folder that holds witness memories.
pub const FOLDER: &str = "witness";

/// One ledger head the witness verified when it cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// Entry id (hex).
    pub id: String,
}

/// The checkpoint the witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosigned {
    /// Checkpoint id (hex).
    pub id: String,
    /// Its own time (ns since the epoch).
    pub time_ns: i64,
}

/// What one witness remembers of one vault at one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// [`FORMAT`].
    pub format: u32,
    /// The vault.
    pub vault_id: String,
    /// The site's location.
    pub site: String,
    /// The witness's public key (hex).
    pub witness: String,
    /// When the last full check (every object read) ended in a cosign, ns since the epoch.
    pub last_full_ns: i64,
    /// Cosigns since then that read only what was new.
    pub runs_since_full: u32,
    /// Per dataset, the head of the history verified at the last cosign.
    pub heads: BTreeMap<String, Head>,
    /// The checkpoint last cosigned.
    pub checkpoint: Option<Cosigned>,
    /// Objects and references checked in full.
    pub known: Known,
}

/// A memory as found on disk.
#[derive(Debug)]
pub enum Loaded {
    /// Readable, of this vault, site and witness.
    Usable(Box<Memory>),
    /// No memory yet (the first run of this witness on this vault and site).
    Missing,
    /// There but not to be trusted: why.
    Unusable(String),
}

/// Where the memory of `witness` for `vault_id` at `site` lives under `state_dir`.
pub fn path(state_dir: &Path, vault_id: &str, site: &str, witness: &str) -> PathBuf {
    let tag = ObjectId::of(format!("{site}\n{witness}").as_bytes()).to_hex();
    state_dir
        .join(FOLDER)
        .join(format!("{vault_id}-{}.json", &tag[..16]))
}

/// Reads the memory at `file`, judging it against the vault, site and witness of this run.
pub fn load(file: &Path, vault_id: &str, site: &str, witness: &str) -> Loaded {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unusable(format!("it cannot be read: {e}")),
    };
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    match serde_json::from_slice::<Version>(&bytes) {
        Ok(v) if v.format != FORMAT => {
            return Loaded::Unusable(format!(
                "it is of format {}, this program reads format {FORMAT}",
                v.format
            ))
        }
        Ok(_) => {}
        Err(e) => return Loaded::Unusable(format!("it is damaged ({e})")),
    }
    let memory: Memory = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return Loaded::Unusable(format!("it is damaged ({e})")),
    };
    if memory.vault_id != vault_id || memory.site != site || memory.witness != witness {
        return Loaded::Unusable(format!(
            "it is the memory of vault {} at {} (witness {}), not of vault {vault_id} at {site} \
             (witness {})",
            memory.vault_id,
            memory.site,
            memory.witness.get(..16).unwrap_or(&memory.witness),
            witness.get(..16).unwrap_or(witness)
        ));
    }
    Loaded::Usable(Box::new(memory))
}

/// Writes `memory` to `file` atomically, readable by its owner only.
pub fn store(file: &Path, memory: &Memory) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let json = serde_json::to_vec(memory).map_err(|e| Error::invalid(e.to_string()))?;
    embassy_core::fsutil::write_atomic(file, &json)
        .map_err(|e| Error::io(format!("writing witness memory {}", file.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Memory {
        Memory {
            format: FORMAT,
            vault_id: "v".into(),
            site: "/s".into(),
            witness: "w".repeat(64),
            last_full_ns: 1,
            runs_since_full: 0,
            heads: BTreeMap::new(),
            checkpoint: None,
            known: Known::default(),
        }
    }

    #[test]
    fn only_a_sound_memory_of_this_vault_site_and_witness_is_usable() {
        let dir = tempfile::tempdir().unwrap();
        let w = "w".repeat(64);
        let file = path(dir.path(), "v", "/s", &w);
        assert!(matches!(load(&file, "v", "/s", &w), Loaded::Missing));
        store(&file, &memory()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(load(&file, "v", "/s", &w), Loaded::Usable(_)));
        assert!(
            matches!(load(&file, "other", "/s", &w), Loaded::Unusable(m) if m.contains("vault v"))
        );
        assert!(matches!(load(&file, "v", "/t", &w), Loaded::Unusable(_)));
        std::fs::write(&file, b"{\"format\": 1, \"vault").unwrap();
        assert!(matches!(load(&file, "v", "/s", &w), Loaded::Unusable(m) if m.contains("damaged")));
        std::fs::write(&file, b"{\"format\": 9}").unwrap();
        assert!(
            matches!(load(&file, "v", "/s", &w), Loaded::Unusable(m) if m.contains("format 9"))
        );
    }
}
