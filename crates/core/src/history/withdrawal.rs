//! Withdrawals (format 6): a writer that lost the race for a ledger sequence number to another
//! writer signs that its own entry there is withdrawn before it deletes the entry, so a site
//! that keeps the entry all the same (stale, or hostile) holds noise every reader recognises
//! instead of a fork (docs/format.md §9, *Withdrawn entries*). The acceptance rules
//! (`history::accept`) decide when a withdrawal counts; this module holds the record.
//!
//! ```text
//! withdrawals/<dataset>/<seq, 16 digits>-<id>:
//!   "EMBWDRW1" | u32 LE length | CBOR Withdrawal | Ed25519 signature over "data-embassy withdrawal v1\0" | CBOR
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::ObjectId;
use crate::site::{Site, SiteError};

/// Magic at the start of every withdrawal.
pub const MAGIC: &[u8; 8] = b"EMBWDRW1";
const LABEL: &[u8] = b"data-embassy withdrawal v1";
/// Prefix of all withdrawals.
pub const WITHDRAWALS: &str = "withdrawals/";
/// At most this many withdrawals are read at one sequence number: an honest race leaves one
/// per losing writer; a site listing more is hostile, and the rest is ignored.
const MAX_AT_ONE_PLACE: usize = 64;

/// A signer's statement that its own ledger entry `entry` at `seq` is withdrawn: it was never
/// acknowledged, because the entries `lost_to` took the sequence number too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// The dataset (ledger) of the entry.
    pub dataset: String,
    /// The entry's sequence number.
    pub seq: u64,
    /// The entry's id (the hash of its stored bytes): binds the withdrawal to exactly it.
    pub entry: ObjectId,
    /// The other entries the writer found at `seq` after its put (the race it lost).
    pub lost_to: Vec<ObjectId>,
    /// When it was signed, ns since the epoch.
    pub time_ns: i64,
    /// The Ed25519 public key that signed it: must be the entry's own signer.
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
}

/// Prefix of the withdrawals of entries at `seq` of a dataset's ledger.
pub fn prefix_at(dataset: &str, seq: u64) -> String {
    format!("{WITHDRAWALS}{dataset}/{seq:016}-")
}

/// Where a withdrawal with id `id` of an entry at `seq` is stored.
pub fn path(dataset: &str, seq: u64, id: &ObjectId) -> String {
    format!("{}{id}", prefix_at(dataset, seq))
}

/// Encodes and signs a withdrawal.
pub fn encode(w: &Withdrawal, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    crate::format::framing::encode_signed(MAGIC, LABEL, w, key)
}

/// Decodes a withdrawal and checks that it is signed by the key it names.
pub fn decode(path: &str, bytes: &[u8]) -> Result<Withdrawal> {
    crate::format::framing::decode_signed(
        MAGIC,
        LABEL,
        "a withdrawal",
        path,
        bytes,
        |w: &Withdrawal| w.signer,
    )
}

/// Signs and stores the withdrawal of this signer's entry `entry` at `seq`; returns its path.
pub fn write(
    site: &dyn Site,
    key: &ed25519_dalek::SigningKey,
    dataset: &str,
    seq: u64,
    entry: ObjectId,
    lost_to: Vec<ObjectId>,
) -> std::result::Result<String, SiteError> {
    let w = Withdrawal {
        dataset: dataset.to_string(),
        seq,
        entry,
        lost_to,
        time_ns: crate::format::config::now_unix_nanos(),
        signer: key.verifying_key().to_bytes(),
    };
    let bytes = encode(&w, key);
    let at = path(dataset, seq, &ObjectId::of(&bytes));
    site.put(&at, &bytes)?;
    Ok(at)
}

/// Withdrawals read at one place, with their paths, and the objects there that are none, as
/// `(path, why)`.
pub type Loaded = (Vec<(String, Withdrawal)>, Vec<(String, String)>);

/// The withdrawals a site holds for entries at `seq` of `dataset`: those that hash to their
/// names and are validly signed by the key they name, with their paths; and the others, as
/// `(path, why)`, to report as noise. A site that cannot be listed or read yields none (the
/// fork they would decide then stays, reported as such).
pub fn load_at(site: &dyn Site, dataset: &str, seq: u64) -> Loaded {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let Ok(mut listed) = site.list(&prefix_at(dataset, seq)) else {
        return (good, bad);
    };
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    for info in listed.into_iter().take(MAX_AT_ONE_PLACE) {
        let Some(id) = crate::format::layout::id_in_path(&info.path) else {
            bad.push((info.path, "not a withdrawal's name".into()));
            continue;
        };
        let Ok(bytes) = site.get(&info.path) else {
            continue;
        };
        if ObjectId::of(&bytes) != id {
            bad.push((
                info.path,
                "bytes do not hash to the object's name; ignored".into(),
            ));
            continue;
        }
        match decode(&info.path, &bytes) {
            Ok(w) => good.push((info.path, w)),
            Err(e) => bad.push((
                info.path,
                format!("not a validly signed withdrawal ({e}); ignored"),
            )),
        }
    }
    (good, bad)
}

/// Whether `w` withdraws the entry `id` at `seq` of `dataset` signed by `signer`, in a race
/// against one of `competing` (the other entries at that sequence number): `None` when it
/// does, else why not.
pub fn applies(
    w: &Withdrawal,
    dataset: &str,
    seq: u64,
    id: &ObjectId,
    signer: &[u8; 32],
    competing: &[ObjectId],
) -> Option<String> {
    if w.entry != *id {
        return Some(format!("it withdraws entry {}", w.entry.short()));
    }
    if w.dataset != dataset || w.seq != seq {
        return Some(format!(
            "it names entry {} of dataset {}, not entry {seq} of {dataset}",
            w.seq, w.dataset
        ));
    }
    if w.signer != *signer {
        return Some(format!(
            "it is signed by {}, not by the entry's signer {}",
            hex::encode(&w.signer[..8]),
            hex::encode(&signer[..8])
        ));
    }
    if !w.lost_to.iter().any(|o| o != id && competing.contains(o)) {
        return Some("none of the entries it lost to is held at that sequence number".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_round_trips_and_a_changed_byte_breaks_its_signature() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let w = Withdrawal {
            dataset: "ds".into(),
            seq: 2,
            entry: ObjectId::of(b"entry"),
            lost_to: vec![ObjectId::of(b"other")],
            time_ns: 5,
            signer: key.verifying_key().to_bytes(),
        };
        let bytes = encode(&w, &key);
        assert_eq!(decode("p", &bytes).unwrap(), w);
        let mut bad = bytes.clone();
        let n = bad.len() - 70;
        bad[n] ^= 1;
        assert!(decode("p", &bad).is_err());
    }
}
