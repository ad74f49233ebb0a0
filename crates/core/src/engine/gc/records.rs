//! The signed bookkeeping of garbage collection: condemnation records (`gc/<dataset>/...`) and
//! backup session markers (`sessions/<dataset>/...`), their paths, encoding and checked
//! loading, and the two calls a backup session makes ([`begin_session`], [`condemned`]).

use std::collections::HashSet;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::engine::vault::Vault;
use crate::error::{Error, ErrorKind, Problem, Result};
use crate::format::layout;
use crate::id::ObjectId;
use crate::site::Site;

pub(crate) const RECORD_MAGIC: &[u8; 8] = b"EMBCOND2";
pub(crate) const MARKER_MAGIC: &[u8; 8] = b"EMBSESS2";
const RECORD_LABEL: &[u8] = b"data-embassy condemnation v2";
const MARKER_LABEL: &[u8] = b"data-embassy session v2";
/// Prefix of all condemnation records.
pub const GC_ROOT: &str = "gc/";
/// Prefix of all session markers.
pub const SESSIONS_ROOT: &str = "sessions/";

/// A condemnation record: objects of one dataset that nothing referenced when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condemnation {
    /// The dataset.
    pub dataset: String,
    /// When it was made (ns since the epoch); also in its path.
    pub time_ns: i64,
    /// Paths of the condemned objects.
    pub objects: Vec<String>,
    /// The Ed25519 key that signed it: one allowed to delete (a key of `config.signers`).
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
}

/// A backup session's marker: it started at `started_at_ns` from ledger head `base_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMarker {
    /// The dataset.
    pub dataset: String,
    /// When the session started (before it read condemnation records or indexes).
    pub started_at_ns: i64,
    /// The sequence number of the dataset's head when it started (0: empty ledger).
    pub base_seq: u64,
    /// The host that ran it, for people.
    pub host: String,
    /// The Ed25519 key that signed it: the session's own signing key (an active signer of the
    /// dataset).
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
}

/// Path of a condemnation record.
pub fn record_path(dataset: &str, time_ns: i64, id: &ObjectId) -> String {
    format!("{GC_ROOT}{dataset}/{time_ns:020}-{id}")
}

/// Path of a session marker.
pub fn marker_path(dataset: &str, time_ns: i64, id: &ObjectId) -> String {
    format!("{SESSIONS_ROOT}{dataset}/{time_ns:020}-{id}")
}

/// The stored bytes of a condemnation record signed by `key` (its hash is the record's id).
pub fn encode_record(record: &Condemnation, key: &SigningKey) -> Vec<u8> {
    crate::format::framing::encode_signed(RECORD_MAGIC, RECORD_LABEL, record, key)
}

/// The stored bytes of a session marker signed by `key` (its hash is the marker's id).
pub fn encode_marker(marker: &SessionMarker, key: &SigningKey) -> Vec<u8> {
    crate::format::framing::encode_signed(MARKER_MAGIC, MARKER_LABEL, marker, key)
}

/// A signed bookkeeping object: its magic, signature label and the key it names.
pub(super) trait Signed: serde::de::DeserializeOwned {
    const MAGIC: &'static [u8; 8];
    const LABEL: &'static [u8];
    const WHAT: &'static str;
    fn signer(&self) -> [u8; 32];
    fn dataset(&self) -> &str;
    fn time_ns(&self) -> i64;
}

impl Signed for Condemnation {
    const MAGIC: &'static [u8; 8] = RECORD_MAGIC;
    const LABEL: &'static [u8] = RECORD_LABEL;
    const WHAT: &'static str = "a condemnation record";
    fn signer(&self) -> [u8; 32] {
        self.signer
    }
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
}

impl Signed for SessionMarker {
    const MAGIC: &'static [u8; 8] = MARKER_MAGIC;
    const LABEL: &'static [u8] = MARKER_LABEL;
    const WHAT: &'static str = "a session marker";
    fn signer(&self) -> [u8; 32] {
        self.signer
    }
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn time_ns(&self) -> i64 {
        self.started_at_ns
    }
}

/// Objects with their path and time, and problems found on the way.
pub(super) type Timed<T> = (Vec<(String, i64, T)>, Vec<Problem>);

/// Reads every object under `prefix` named `<dataset>/<time, 20 digits>-<id>`, checked against
/// its name: its bytes hash to the id, it carries a valid signature by the key it names, and
/// the dataset and time it signed are those of its path. Anything else (unsigned version-1
/// objects, forgeries, damage) is returned as a problem and never acted on. Whether its signer
/// may sign it is the caller's check.
pub(super) fn load_timed<T: Signed>(site: &dyn Site, prefix: &str) -> Result<Timed<T>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for info in site.list(prefix)? {
        let name = info.path.rsplit('/').next().unwrap_or_default();
        let parsed = name
            .split_once('-')
            .and_then(|(t, _)| (t.len() == 20).then(|| t.parse::<i64>().ok()).flatten());
        let (Some(time), Some(id), Some(dataset)) = (
            parsed,
            layout::id_in_path(&info.path),
            dataset_of(&info.path),
        ) else {
            problems.push(Problem::new(
                ErrorKind::Integrity,
                format!("{}: unexpected object: ignored", info.path),
            ));
            continue;
        };
        let loaded = crate::format::object::get_checked(site, &info.path, &id, "the listing")
            .and_then(|b| {
                crate::format::framing::decode_signed(
                    T::MAGIC,
                    T::LABEL,
                    T::WHAT,
                    &info.path,
                    &b,
                    |v: &T| v.signer(),
                )
            });
        match loaded {
            Ok(v) if v.dataset() != dataset || v.time_ns() != time => problems.push(Problem::new(
                ErrorKind::Integrity,
                format!(
                    "{}: {} whose signed dataset or time ({}, {}) is not that of its path: ignored",
                    info.path,
                    T::WHAT,
                    v.dataset(),
                    v.time_ns()
                ),
            )),
            Ok(v) => out.push((info.path, time, v)),
            // Removed since the listing by a collection that finished with it: a record goes
            // only after every object it lists, so nothing it protected is still there.
            Err(Error::Missing { .. }) => {}
            // Damage or forgery is integrity; a read that failed is an outage.
            Err(e) => problems.push(Problem::new(e.kind(), format!("{e}: ignored"))),
        }
    }
    out.sort_by_key(|(p, t, _)| (*t, p.clone()));
    Ok((out, problems))
}

/// The keys whose condemnation records garbage collection acts on: the root-derived writer
/// keys of `config.signers`. A credential granted `delete` deletes versions (ledger entries)
/// but does not collect garbage: records are vault-wide bookkeeping, kept to root-held keys.
pub fn deleters(vault: &Vault) -> Vec<[u8; 32]> {
    vault.config().signer_keys()
}

/// Stores a session marker for a backup of `dataset` starting now from head `base_seq`, signed
/// by the session's own key. Called by the writer's `BackupSession::begin` before it reads
/// condemnation records and indexes.
pub fn begin_session(
    site: &dyn Site,
    dataset: &str,
    base_seq: u64,
    host: &str,
    key: &SigningKey,
) -> Result<()> {
    let marker = SessionMarker {
        dataset: dataset.to_string(),
        started_at_ns: crate::format::config::now_unix_nanos(),
        base_seq,
        host: host.to_string(),
        signer: key.verifying_key().to_bytes(),
    };
    let bytes = encode_marker(&marker, key);
    let id = ObjectId::of(&bytes);
    site.put(&marker_path(dataset, marker.started_at_ns, &id), &bytes)?;
    Ok(())
}

/// Every object of `dataset` that a signed condemnation record lists: a backup must not
/// deduplicate against them. Records that do not verify are ignored (collection cannot act on
/// them either); records signed by any key count here, which only makes a backup store some
/// chunks again.
pub fn condemned(site: &dyn Site, dataset: &str) -> Result<HashSet<String>> {
    let (records, _) = load_timed::<Condemnation>(site, &format!("{GC_ROOT}{dataset}/"))?;
    Ok(records
        .into_iter()
        .flat_map(|(_, _, r)| r.objects)
        .collect())
}

/// The dataset an object path of a collectable kind names, if its name is valid.
pub(super) fn dataset_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    let kind = parts.next()?;
    matches!(
        kind,
        "packs" | "index" | "manifests" | "gc" | "sessions" | "wal"
    )
    .then(|| parts.next())
    .flatten()
    .filter(|d| layout::check_dataset_name(d).is_ok())
}
