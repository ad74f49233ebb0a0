//! Where each kind of object lives in a vault. Every path but `config` and `config.sig` ends in
//! the object's id, the BLAKE3 hash of its bytes.

use crate::error::{Error, Result};
use crate::id::ObjectId;

/// The vault configuration (JSON).
pub const CONFIG: &str = "config";
/// The root key's signature over the exact bytes of [`CONFIG`].
pub const CONFIG_SIGNATURE: &str = "config.sig";

/// Checks a dataset name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_dataset_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{name}' is not a valid dataset name: use 1 to 64 characters a-z, 0-9, '.', '_' or '-', \
             starting with a letter or digit (for example population-registry)"
        )))
    }
}

/// Prefix of a dataset's packs.
pub fn packs_prefix(dataset: &str) -> String {
    format!("packs/{dataset}/")
}

/// A pack.
pub fn pack(dataset: &str, id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("packs/{dataset}/{}/{hex}", &hex[..2])
}

/// Prefix of a dataset's index objects.
pub fn index_prefix(dataset: &str) -> String {
    format!("index/{dataset}/")
}

/// An index object.
pub fn index(dataset: &str, id: &ObjectId) -> String {
    format!("index/{dataset}/{id}")
}

/// A manifest.
pub fn manifest(dataset: &str, id: &ObjectId) -> String {
    format!("manifests/{dataset}/{id}")
}

/// Prefix of all ledgers.
pub const LEDGER_ROOT: &str = "ledger/";

/// Prefix of a dataset's ledger.
pub fn ledger_prefix(dataset: &str) -> String {
    format!("ledger/{dataset}/")
}

/// What a consistency group's ledger name starts with: `group.<name>` (format 3).
pub const GROUP_LEDGER_PREFIX: &str = "group.";

/// The ledger a consistency group's `group_point` entries are appended to: `group.<name>`,
/// named like a dataset (it holds no versions) so the ledger rules, checkpoints and witnesses
/// cover it unchanged.
pub fn group_ledger(group: &str) -> String {
    format!("{GROUP_LEDGER_PREFIX}{group}")
}

/// A ledger entry: sequence number first so listings sort by history.
pub fn ledger_entry(dataset: &str, seq: u64, id: &ObjectId) -> String {
    format!("ledger/{dataset}/{seq:016}-{id}")
}

/// The id at the end of a path, if the path ends in 64 hex digits.
pub fn id_in_path(path: &str) -> Option<ObjectId> {
    let name = path.rsplit('/').next()?;
    let hex = name.rsplit('-').next()?;
    if hex.len() != 64 {
        return None;
    }
    ObjectId::from_hex(hex).ok()
}

/// Splits a ledger path into (dataset, seq, id).
pub fn parse_ledger_path(path: &str) -> Option<(String, u64, ObjectId)> {
    let rest = path.strip_prefix(LEDGER_ROOT)?;
    let (dataset, name) = rest.split_once('/')?;
    let (seq, hex) = name.split_once('-')?;
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        dataset.to_string(),
        seq.parse().ok()?,
        ObjectId::from_hex(hex).ok()?,
    ))
}

const MIB: u64 = 1024 * 1024;

/// Largest `config` or `config.sig` (a JSON document of keys and settings; a hex signature).
pub const MAX_CONFIG_SIZE: u64 = MIB;
/// Largest signed record: a ledger entry, checkpoint, cosignature, approval, session marker or
/// withdrawal.
pub const MAX_RECORD_SIZE: u64 = 16 * MIB;
/// Largest index object, manifest or condemnation record (lists of ids or paths).
pub const MAX_LIST_SIZE: u64 = 256 * MIB;
/// Largest payload one log object may hold (a whole 16 MiB segment, with room for 64 MiB
/// segments); a larger claim is damage or an attack and is refused before any allocation.
pub const MAX_LOG_PAYLOAD: u64 = 64 * MIB;
/// Largest log object header accepted.
pub const MAX_LOG_HEADER: usize = 4096;
/// Largest log object: magic, header length, header, signature, and a body of one compression
/// byte, at most [`MAX_LOG_PAYLOAD`] bytes (zstd is kept only when it is smaller) and the
/// 16-byte tag.
pub const MAX_LOG_OBJECT_SIZE: u64 = 8 + 4 + MAX_LOG_HEADER as u64 + 64 + 1 + MAX_LOG_PAYLOAD + 16;
/// Largest pack: blob offsets and lengths are 32-bit, so every blob lies in the first 4 GiB;
/// writers close a pack at its target (at most 1 GiB) plus one blob, and its directory (about
/// 51 bytes per blob) keeps the whole well below this.
pub const MAX_PACK_SIZE: u64 = 4 * 1024 * MIB;
/// Largest object of a kind this version does not name (copied by sync as opaque bytes).
pub const MAX_OTHER_SIZE: u64 = 256 * MIB;

/// The largest an object at `path` may be, by its kind (the first path component). Sites refuse
/// to read more than this, whatever a server announces, so a hostile site cannot make a reader
/// hold more than the format allows.
pub fn max_object_size(path: &str) -> u64 {
    match path.split('/').next().unwrap_or_default() {
        CONFIG | CONFIG_SIGNATURE => MAX_CONFIG_SIZE,
        "ledger" | "checkpoints" | "cosignatures" | "approvals" | "sessions" | "withdrawals" => {
            MAX_RECORD_SIZE
        }
        "index" | "manifests" | "gc" => MAX_LIST_SIZE,
        "wal" => MAX_LOG_OBJECT_SIZE,
        "packs" => MAX_PACK_SIZE,
        _ => MAX_OTHER_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names() {
        for good in ["a", "population-registry", "land.cadastre_2", "0x"] {
            assert!(check_dataset_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a/b", "..", ".x", "a b", &"x".repeat(65)] {
            assert!(check_dataset_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ledger_paths_round_trip() {
        let id = ObjectId::of(b"x");
        let path = ledger_entry("ds", 42, &id);
        assert_eq!(parse_ledger_path(&path), Some(("ds".into(), 42, id)));
        assert_eq!(id_in_path(&path), Some(id));
        assert_eq!(parse_ledger_path("ledger/ds/12-ab"), None);
    }

    #[test]
    fn every_kind_has_a_size_cap() {
        let id = ObjectId::of(b"x");
        assert_eq!(max_object_size(CONFIG), MAX_CONFIG_SIZE);
        assert_eq!(max_object_size(CONFIG_SIGNATURE), MAX_CONFIG_SIZE);
        assert_eq!(
            max_object_size(&ledger_entry("ds", 1, &id)),
            MAX_RECORD_SIZE
        );
        assert_eq!(max_object_size(&index("ds", &id)), MAX_LIST_SIZE);
        assert_eq!(max_object_size(&manifest("ds", &id)), MAX_LIST_SIZE);
        assert_eq!(max_object_size(&pack("ds", &id)), MAX_PACK_SIZE);
        assert_eq!(max_object_size("wal/ds/00000001/s/x"), MAX_LOG_OBJECT_SIZE);
        assert_eq!(max_object_size("checkpoints/x"), MAX_RECORD_SIZE);
        assert_eq!(max_object_size("unknown/x"), MAX_OTHER_SIZE);
        // A log object of the largest payload fits its cap.
        const { assert!(MAX_LOG_OBJECT_SIZE > MAX_LOG_PAYLOAD) };
    }
}
