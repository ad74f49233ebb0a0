//! Checkpoints: signed statements of every ledger head of a vault, written after each change,
//! and witness cosignatures: a witness (another site's agent, an auditor) that has verified a
//! checkpoint against the ledgers signs it too. A checkpoint with enough cosignatures is what a
//! restore trusts by default; a site cannot forge one, and any later history must extend it.
//!
//! ```text
//! checkpoints/<time_ns, 20 digits>-<id>:
//!   "EMBCHKP1" | u32 LE length | CBOR Checkpoint | Ed25519 signature over "data-embassy checkpoint v1\0" | CBOR
//! cosignatures/<checkpoint id>/<witness key, 16 hex>-<id>:
//!   "EMBCOSG1" | u32 LE length | CBOR Cosignature | Ed25519 signature over "data-embassy cosignature v1\0" | CBOR
//! ```

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::history::ledger::Record;
use crate::id::ObjectId;
use crate::site::Site;

const CHECKPOINT_MAGIC: &[u8; 8] = b"EMBCHKP1";
const COSIGNATURE_MAGIC: &[u8; 8] = b"EMBCOSG1";
const CHECKPOINT_LABEL: &[u8] = b"data-embassy checkpoint v1";
const COSIGNATURE_LABEL: &[u8] = b"data-embassy cosignature v1";
/// Prefix of all checkpoints.
pub const CHECKPOINTS: &str = "checkpoints/";
/// Prefix of all cosignatures.
pub const COSIGNATURES: &str = "cosignatures/";

/// One dataset's head in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the newest entry.
    pub seq: u64,
    /// Its id.
    pub id: ObjectId,
}

/// A signed statement of all ledger heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The vault.
    pub vault_id: String,
    /// When it was made.
    pub time_ns: i64,
    /// Heads by dataset.
    pub heads: BTreeMap<String, Head>,
    /// Signer's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
}

/// A witness's signature over a checkpoint it verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosignature {
    /// The checkpoint's id.
    pub checkpoint: ObjectId,
    /// The witness's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub witness: [u8; 32],
    /// When the witness checked it.
    pub time_ns: i64,
}

/// A stored, signature-checked checkpoint.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    /// Its id.
    pub id: ObjectId,
    /// Its content.
    pub checkpoint: Checkpoint,
    /// Valid cosignatures by witness key.
    pub cosigners: Vec<[u8; 32]>,
}

/// A witness's signing key from the 32 secret bytes of its key file.
pub fn witness_signing_key(secret: &crate::keys::RootSecret) -> SigningKey {
    SigningKey::from_bytes(&blake3::derive_key(
        "data-embassy 2026 witness signing key v1",
        secret.expose(),
    ))
}

/// Writes a checkpoint of `heads`; returns its id and time.
pub fn write(
    site: &dyn Site,
    vault_id: &str,
    heads: BTreeMap<String, Head>,
    key: &SigningKey,
) -> Result<(ObjectId, i64)> {
    write_at(
        site,
        vault_id,
        heads,
        key,
        crate::format::config::now_unix_nanos(),
    )
}

/// [`write`] with a stated time (tools and tests; readers judge the time, see [`load_valid`]).
pub fn write_at(
    site: &dyn Site,
    vault_id: &str,
    heads: BTreeMap<String, Head>,
    key: &SigningKey,
    time_ns: i64,
) -> Result<(ObjectId, i64)> {
    let checkpoint = Checkpoint {
        vault_id: vault_id.to_string(),
        time_ns,
        heads,
        signer: key.verifying_key().to_bytes(),
    };
    let bytes =
        crate::format::framing::encode_signed(CHECKPOINT_MAGIC, CHECKPOINT_LABEL, &checkpoint, key);
    let id = ObjectId::of(&bytes);
    site.put(
        &format!("{CHECKPOINTS}{:020}-{id}", checkpoint.time_ns),
        &bytes,
    )?;
    Ok((id, checkpoint.time_ns))
}

/// Cosigns checkpoint `id` as a witness.
pub fn cosign(site: &dyn Site, id: &ObjectId, key: &SigningKey) -> Result<()> {
    let cosignature = Cosignature {
        checkpoint: *id,
        witness: key.verifying_key().to_bytes(),
        time_ns: crate::format::config::now_unix_nanos(),
    };
    let bytes = crate::format::framing::encode_signed(
        COSIGNATURE_MAGIC,
        COSIGNATURE_LABEL,
        &cosignature,
        key,
    );
    let path = format!(
        "{COSIGNATURES}{id}/{}-{}",
        hex::encode(&cosignature.witness[..8]),
        ObjectId::of(&bytes)
    );
    site.put(&path, &bytes)?;
    Ok(())
}

/// How far a checkpoint's `time_ns` may be ahead of the newest entry it names: 10 minutes.
/// A checkpoint dated further ahead is invalid (it would freeze witnessing and replay checks
/// until that time).
pub const MAX_AHEAD_NS: i64 = 10 * 60 * 1_000_000_000;

/// Every checkpoint on the site, oldest first, with signatures checked (signer must be in
/// `signers`: the root key and the pinned writer keys) and its valid cosignatures. Damaged,
/// foreign, unparsable or wrongly signed ones are returned beside as noise, one line each
/// naming the object: never a reason to fail. See [`load_valid`] for the time check too.
pub fn load_all(
    site: &dyn Site,
    vault_id: &str,
    signers: &[[u8; 32]],
) -> Result<(Vec<StoredCheckpoint>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut cosigs: BTreeMap<ObjectId, Vec<[u8; 32]>> = BTreeMap::new();
    for info in site.list(COSIGNATURES)? {
        let Some(id) = crate::format::layout::id_in_path(&info.path) else {
            problems.push(format!("{}: unexpected object", info.path));
            continue;
        };
        let checked = crate::format::object::get_checked(site, &info.path, &id, "the listing")
            .and_then(|bytes| {
                crate::format::framing::decode_signed::<Cosignature>(
                    COSIGNATURE_MAGIC,
                    COSIGNATURE_LABEL,
                    "a cosignature",
                    &info.path,
                    &bytes,
                    |c| c.witness,
                )
            });
        match checked {
            Ok(c) => cosigs.entry(c.checkpoint).or_default().push(c.witness),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut listed = site.list(CHECKPOINTS)?;
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = Vec::new();
    for info in listed {
        let Some(id) = crate::format::layout::id_in_path(&info.path) else {
            problems.push(format!("{}: unexpected object", info.path));
            continue;
        };
        let checked = read_checkpoint(site, &info.path, &id, vault_id, signers);
        match checked {
            Ok(checkpoint) => {
                let mut cosigners = cosigs.remove(&id).unwrap_or_default();
                cosigners.sort();
                cosigners.dedup();
                out.push(StoredCheckpoint {
                    id,
                    checkpoint,
                    cosigners,
                })
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((out, problems))
}

/// Reads the checkpoint stored at `path` (named `id`) and checks it: its bytes hash to `id`,
/// it is a checkpoint of this vault signed by one of `signers`, stored under the time it
/// states.
fn read_checkpoint(
    site: &dyn Site,
    path: &str,
    id: &ObjectId,
    vault_id: &str,
    signers: &[[u8; 32]],
) -> Result<Checkpoint> {
    let bytes = crate::format::object::get_checked(site, path, id, "the listing")?;
    let cp = crate::format::framing::decode_signed::<Checkpoint>(
        CHECKPOINT_MAGIC,
        CHECKPOINT_LABEL,
        "a checkpoint",
        path,
        &bytes,
        |c| c.signer,
    )?;
    if cp.vault_id != vault_id {
        return Err(Error::corrupt(
            path,
            format!("checkpoint of vault {}, not this one", cp.vault_id),
        ));
    }
    if !signers.contains(&cp.signer) {
        return Err(Error::corrupt(
            path,
            "signed by a key that may not sign checkpoints (only the root key and the \
             writer keys pinned in the configuration may)",
        ));
    }
    // Exactly its own name: the time it states, then its id (a copy under a name that sorts
    // later must not pass for a newer checkpoint: red team 10).
    if path != format!("{CHECKPOINTS}{:020}-{id}", cp.time_ns) {
        return Err(Error::corrupt(
            path,
            "stored under another time or name than it states (its time, then its id)",
        ));
    }
    Ok(cp)
}

/// The newest valid checkpoint naming each dataset of `histories`, newest first, read from
/// the newest of the `listed` paths back until every dataset has one (or none is left): what a
/// look at a site (`status`, the agent's dashboard) checks the histories against. Checkpoints
/// are never collected and a writer stores one per backup, so reading all of them at every
/// look grew without end (issue 19's soak: most of an S3 site's requests); `verify` still reads
/// all ([`load_valid`]). A history that extends a dataset's newest checkpoint extends the older
/// ones too (their heads are on its hash chain). The newest valid checkpoint is always among
/// them, so a dataset it names that the site no longer lists at all is still judged.
/// Cosignatures are not read (empty).
pub fn load_newest(
    site: &dyn Site,
    vault_id: &str,
    signers: &[[u8; 32]],
    histories: &BTreeMap<String, Vec<Record>>,
    listed: &std::collections::BTreeSet<String>,
) -> Result<Vec<StoredCheckpoint>> {
    let mut uncovered: Vec<&String> = histories.keys().collect();
    let mut out = Vec::new();
    // Paths name the checkpoint's time first (`checkpoints/<time_ns, 20 digits>-<id>`).
    for path in listed.iter().rev() {
        if uncovered.is_empty() && !out.is_empty() {
            break;
        }
        let Some(id) = crate::format::layout::id_in_path(path) else {
            continue;
        };
        let Ok(checkpoint) = read_checkpoint(site, path, &id, vault_id, signers) else {
            continue;
        };
        let cp = StoredCheckpoint {
            id,
            checkpoint,
            cosigners: Vec::new(),
        };
        if time_problem(site, &cp, histories).is_some() {
            continue;
        }
        let before = uncovered.len();
        uncovered.retain(|d| !cp.checkpoint.heads.contains_key(*d));
        // The newest valid one is always kept: it names the datasets the site should hold,
        // a dataset whose whole history the site withholds included.
        if out.is_empty() || uncovered.len() < before {
            out.push(cp);
        }
    }
    Ok(out)
}

/// [`load_all`], then the time check: a checkpoint whose `time_ns` is more than
/// [`MAX_AHEAD_NS`] ahead of the newest entry it names is invalid, as is one that names no
/// entry. Entries are found in `histories` by sequence number and id, else read from the site
/// (their id authenticates their time, since the checkpoint's signer signed the id). Returns
/// the valid checkpoints, oldest first, and the noise.
pub fn load_valid(
    site: &dyn Site,
    vault_id: &str,
    signers: &[[u8; 32]],
    histories: &BTreeMap<String, Vec<Record>>,
) -> Result<(Vec<StoredCheckpoint>, Vec<String>)> {
    let (checkpoints, mut noise) = load_all(site, vault_id, signers)?;
    let mut valid = Vec::with_capacity(checkpoints.len());
    for cp in checkpoints {
        match time_problem(site, &cp, histories) {
            Some(problem) => noise.push(format!(
                "{CHECKPOINTS}{:020}-{}: {problem}",
                cp.checkpoint.time_ns, cp.id
            )),
            None => valid.push(cp),
        }
    }
    Ok((valid, noise))
}

/// Why a checkpoint's time is not acceptable (see [`load_valid`]), if it is not. A checkpoint
/// is judged only when every entry it names is found: its valid signature proves they existed,
/// so one the site does not serve is a rollback [`check_against`] reports, never a reason to
/// drop the checkpoint.
pub fn time_problem(
    site: &dyn Site,
    cp: &StoredCheckpoint,
    histories: &BTreeMap<String, Vec<Record>>,
) -> Option<String> {
    if cp.checkpoint.heads.is_empty() {
        return Some("names no ledger head, so its time cannot be checked".into());
    }
    let mut newest: Option<i64> = None;
    for (dataset, head) in &cp.checkpoint.heads {
        let served = histories
            .get(dataset)
            .and_then(|h| crate::history::ledger::entry_at(h, head.seq))
            .filter(|r| r.id == head.id)
            .map(|r| r.entry.time_ns);
        let time = served.or_else(|| {
            let path = crate::format::layout::ledger_entry(dataset, head.seq, &head.id);
            let bytes = site.get(&path).ok()?;
            (ObjectId::of(&bytes) == head.id)
                .then(|| crate::history::ledger::decode(&path, &bytes).ok())
                .flatten()
                .map(|e| e.time_ns)
        });
        match time {
            Some(t) => newest = Some(newest.map_or(t, |n| n.max(t))),
            // A named entry the site does not serve: the time cannot be judged (the missing
            // entry may be the newest it names), and the checkpoint stays, so that
            // [`check_against`] reports the rollback (red team 11: withholding exactly that
            // entry made the newest checkpoint look dated too far ahead, and readers fell back
            // to an older one the rolled-back history extends).
            None => return None,
        }
    }
    let newest = newest?;
    (cp.checkpoint.time_ns > newest.saturating_add(MAX_AHEAD_NS)).then(|| {
        format!(
            "dated {}, more than 10 minutes after the newest entry it names ({})",
            crate::time::utc(cp.checkpoint.time_ns),
            crate::time::utc(newest)
        )
    })
}

/// Checks that the served histories extend a checkpoint: for each dataset it names, the
/// entry at its head sequence exists and has the same id. Returns one problem per mismatch.
/// Datasets in `already_failed` (whose history did not verify for another reason) are skipped.
pub fn check_against_except(
    cp: &StoredCheckpoint,
    histories: &BTreeMap<String, Vec<Record>>,
    already_failed: &[String],
) -> Vec<String> {
    let when = crate::time::utc(cp.checkpoint.time_ns);
    let mut problems = Vec::new();
    for (dataset, head) in &cp.checkpoint.heads {
        if already_failed.contains(dataset) {
            continue;
        }
        let served = histories.get(dataset);
        match served.and_then(|h| crate::history::ledger::entry_at(h, head.seq)) {
            None => problems.push(format!(
                "dataset {dataset}: rollback: checkpoint {} of {when} says entry {} ({}) exists, but the site serves {}",
                cp.id.short(),
                head.seq,
                head.id.short(),
                match served.and_then(|h| h.last()) {
                    Some(last) => format!("only entries up to {} ({})", last.entry.seq, last.id.short()),
                    None => "no history for it".to_string(),
                }
            )),
            Some(record) if record.id != head.id => problems.push(format!(
                "dataset {dataset}: fork: checkpoint {} of {when} says entry {} is {}, but the site serves {}",
                cp.id.short(),
                head.seq,
                head.id.short(),
                record.id.short()
            )),
            Some(_) => {}
        }
    }
    problems
}

/// [`check_against_except`] with nothing skipped.
pub fn check_against(
    cp: &StoredCheckpoint,
    histories: &BTreeMap<String, Vec<Record>>,
) -> Vec<String> {
    check_against_except(cp, histories, &[])
}
