//! Garbage collection: removes packs, indexes and manifests that no remaining version needs, in
//! two phases, without a lock and without keys, while backups run.
//!
//! - **Condemn**: objects of a dataset that no live version references (followed through the
//!   plaintext headers of manifests and indexes) are listed in a *condemnation record*
//!   `gc/<dataset>/<time_ns, 20 digits>-<id>`; nothing is deleted.
//! - **Delete**, in a later run, once a record is older than the grace period: each object it
//!   lists is deleted only if it is *still* unreferenced, and only if no backup session that may
//!   have learned of the object before the record existed can still add a version.
//!
//! Backup sessions cooperate in two small ways (see [`begin_session`], [`condemned`]): at start a
//! session stores a *session marker* `sessions/<dataset>/<time_ns>-<id>` (its start time and the
//! ledger head it started from), then reads the dataset's condemnation records and never
//! deduplicates against a condemned object (it stores such chunks again). A marker is *live* until
//! an accepted `version_added` entry with a higher sequence number exists (after which that
//! session either has added its version, or can no longer add any: a second version at the same
//! place is refused as a concurrent writer), or until it is older than the session expiry.
//! The race analysis is in `docs/design.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::engine::vault::{versions_in, Vault};
use crate::error::{Error, ErrorKind, Problem, Result};
use crate::format::layout;
use crate::format::wal_log::{self, LogKind};
use crate::history::ledger::{Event, Record};
use crate::id::ObjectId;
use crate::site::Site;
pub use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

mod records;
mod repack;
mod wal;

pub use records::{
    begin_session, condemned, deleters, encode_marker, encode_record, marker_path, record_path,
    Condemnation, SessionMarker, GC_ROOT, SESSIONS_ROOT,
};
use records::{dataset_of, load_timed};
pub(crate) use records::{MARKER_MAGIC, RECORD_MAGIC};
use wal::wal_collectable;
pub use wal::wal_pieces_covered;

const NS: i64 = 1_000_000_000;

/// The default of [`GcOptions::max_unused_percent`] (restic's `--max-unused` default is 5 %;
/// ours is 10 %, since every repack rewrites live data that sites must store and copy again).
pub const DEFAULT_MAX_UNUSED_PERCENT: u8 = 10;

/// How a garbage collection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// How long an object stays condemned before it may be deleted (seconds).
    pub grace_secs: u64,
    /// Report what would be condemned and deleted; write and delete nothing.
    pub dry_run: bool,
    /// A session marker older than this no longer protects anything (seconds): a session that
    /// crashed and was never rerun must not block collection forever.
    pub session_expiry_secs: u64,
    /// How far the clocks of backup hosts and this host may disagree, plus the time a record
    /// takes to be stored (seconds). The grace period must be at least this.
    pub clock_skew_secs: u64,
    /// Repacking: how much unused space (dead blobs in packs that still hold live ones) a
    /// dataset may keep, in percent of its stored pack bytes; above it, the packs with the
    /// largest dead share are rewritten until it is below. 100 never repacks. Repacking needs
    /// the dataset's reader key (see [`Collector::with_keyring`]).
    pub max_unused_percent: u8,
    /// Also rewrite packs smaller than this many bytes that hold live blobs (merging them),
    /// when at least two of them exist; 0 never does.
    pub repack_small_bytes: u64,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace_secs: 86_400,
            dry_run: false,
            session_expiry_secs: 7 * 86_400,
            clock_skew_secs: 600,
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            repack_small_bytes: 0,
        }
    }
}

impl GcOptions {
    /// The defaults with this grace period (at least 1 s); the allowed clock skew is lowered to
    /// the grace period when that is shorter than 10 minutes (collection refuses a grace period
    /// shorter than the skew). For tests and small setups on one clock; keep the grace period
    /// well above the clock differences of the hosts involved.
    pub fn with_grace(grace_secs: u64) -> Self {
        let grace_secs = grace_secs.max(1);
        let default = Self::default();
        Self {
            grace_secs,
            clock_skew_secs: default.clock_skew_secs.min(grace_secs),
            ..default
        }
    }
}

/// What a garbage collection found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Objects newly condemned in this run (deleted in a later run after the grace period).
    pub condemned: Vec<String>,
    /// Their stored bytes.
    pub condemned_bytes: u64,
    /// Objects deleted (or that would be, in a dry run).
    pub deleted: Vec<String>,
    /// Their stored bytes.
    pub deleted_bytes: u64,
    /// Condemned objects that a version references again: kept.
    pub rescued: Vec<String>,
    /// Condemned objects still within their grace period.
    pub waiting: usize,
    /// Records whose deletion waits for a backup that may still use their objects.
    pub deferred: Vec<String>,
    /// Deletions the site refused (Object Lock retention, permissions): retried next run.
    pub refused: Vec<String>,
    /// Datasets left alone this run, with why (a history or reference that does not verify,
    /// or could not be read): each of the kind of the error that stopped it.
    pub skipped: Vec<Problem>,
    /// Damaged bookkeeping objects and other problems that did not stop the run, each typed:
    /// [`ErrorKind::Integrity`] for damage or forgery, [`ErrorKind::Outage`] for what could
    /// not be listed or read this time.
    pub problems: Vec<Problem>,
    /// Packs whose live blobs were copied into new packs this run (the old ones are condemned
    /// with the rest and deleted after the grace period).
    pub repacked: Vec<String>,
    /// Stored bytes of the repacked packs.
    pub repacked_bytes: u64,
    /// Of those, bytes of dead blobs (freed once the old packs are deleted).
    pub repacked_unused_bytes: u64,
    /// New packs and repack indexes written, and their bytes.
    pub repack_written: Vec<String>,
    /// Their stored bytes.
    pub repack_written_bytes: u64,
    /// Why repacking was not done for a dataset (no reader key, a stream of log ranges).
    pub repack_notes: Vec<String>,
}

/// The objects of a dataset that its live versions (and log ranges) need, followed keylessly
/// through manifest and index headers, and past repacked packs through the repack indexes (read
/// from the listed indexes no manifest names, and `extra`) signed by a key that may delete. An
/// error names what could not be followed.
fn references(
    site: &dyn Site,
    dataset: &str,
    history: &[Record],
    listed: &HashMap<&str, u64>,
    deleters: &[[u8; 32]],
    extra: &[ObjectId],
) -> Result<HashSet<String>> {
    // (manifest, sequence number of the entry that names it)
    let mut manifests: Vec<(ObjectId, u64)> = versions_in(dataset, history)
        .iter()
        .map(|v| (v.manifest, v.seq))
        .collect();
    for r in history {
        // A log range names either a manifest or (PostgreSQL WAL) a `wal/` log object, which
        // the WAL rules judge (`wal::wal_collectable`): follow it only when it is a stored
        // manifest.
        if let Event::LogRangeAdded { manifest, .. } = &r.entry.event {
            if listed.contains_key(layout::manifest(dataset, manifest).as_str()) {
                manifests.push((*manifest, r.entry.seq));
            }
        }
    }
    let mut out = HashSet::new();
    let mut named: Vec<(ObjectId, u64)> = Vec::new();
    for (m, seq) in manifests {
        let path = layout::manifest(dataset, &m);
        out.insert(path.clone());
        let bytes = crate::format::object::get_checked(site, &path, &m, "a live version")?;
        let (header, _) = crate::format::manifest::decode_header(&path, &bytes)?;
        named.extend(header.indexes.into_iter().map(|i| (i, seq)));
    }
    let named_ids: HashSet<ObjectId> = named.iter().map(|(i, _)| *i).collect();
    let index_prefix = layout::index_prefix(dataset);
    let candidates: Vec<ObjectId> = listed
        .keys()
        .filter(|p| p.starts_with(index_prefix.as_str()))
        .filter_map(|p| layout::id_in_path(p))
        .filter(|id| !named_ids.contains(id))
        .chain(extra.iter().copied())
        .collect();
    // Indexes that cannot be read or are not trusted stand in for nothing (`verify` reports
    // them); what they would replace stays referenced.
    let (mut replacements, _ignored) =
        crate::format::index::Replacements::load(site, dataset, candidates, &|k| {
            deleters.contains(k)
        });
    // A repack index stands in only while the site lists every pack it names (or this run
    // wrote it, after its packs): the old packs stay referenced until the new ones are there
    // (a lost or withheld new pack never makes the only copy left look unneeded).
    replacements.retain_complete(extra, &|pack| {
        listed.contains_key(layout::pack(dataset, pack).as_str())
    });
    let mut followed: HashSet<ObjectId> = HashSet::new();
    for (named_index, seq) in named {
        for index in replacements.needed(&named_index, seq) {
            if !followed.insert(index) {
                continue;
            }
            let ipath = layout::index(dataset, &index);
            out.insert(ipath.clone());
            let bytes = crate::format::object::get_checked(site, &ipath, &index, "a live version")?;
            let (header, _) = crate::format::index::decode_header(&ipath, &bytes)?;
            for pack in header.packs {
                out.insert(layout::pack(dataset, &pack));
            }
        }
    }
    Ok(out)
}

/// True for objects garbage collection may remove: a dataset's packs, indexes and manifests,
/// and its WAL pieces and segments (`wal/<dataset>/<tl>/{p,s}/...`; a piece only when an
/// anchored segment object covers it, see [`wal_pieces_covered`], either only below the WAL
/// retention cut-off, see `wal::wal_collectable`). Anything else (ledger, checkpoints,
/// approvals, WAL timeline history files, objects of kinds this code does not know) is never
/// touched.
fn collectable(dataset: &str, path: &str) -> bool {
    if let Some(name) = wal_log::parse_path(path) {
        return name.dataset == dataset && name.kind != LogKind::History;
    }
    [
        layout::packs_prefix(dataset),
        layout::index_prefix(dataset),
        format!("manifests/{dataset}/"),
    ]
    .iter()
    .any(|p| path.starts_with(p.as_str()))
        && layout::id_in_path(path).is_some()
}

/// Deletion order: manifests, then indexes, then packs (the reverse of the write order).
fn delete_rank(path: &str) -> u8 {
    if path.starts_with("manifests/") {
        0
    } else if path.starts_with("index/") {
        1
    } else {
        2
    }
}

/// Who runs a garbage collection: the key that signs its condemnation records (one allowed to
/// delete, see [`deleters`]) and the local file where it remembers when it first saw each
/// record at each site. A record counts as condemned from the later of its signed time and
/// that first sighting, so a back-dated record, or one a site withheld and shows late, still
/// waits the whole grace period.
pub struct Collector {
    key: SigningKey,
    seen_path: PathBuf,
    /// Keys to read the datasets, for repacking (see [`Collector::with_keyring`]).
    keyring: Option<std::sync::Arc<crate::engine::vault::Keyring>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("public_key", &hex::encode(self.public_key()))
            .field("seen_path", &self.seen_path)
            .field("repacks", &self.keyring.is_some())
            .finish()
    }
}

/// When this collector first saw each record: `"<site location> <record path>"` to ns.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeenRecords {
    #[serde(default)]
    first_seen: BTreeMap<String, i64>,
}

impl Collector {
    /// A collector signing with `key`, remembering first sightings of the records of vault
    /// `vault_id` in `state_dir` (file `<vault_id>.gc-seen.json`; the folder of the state
    /// file, [`crate::history::state::StateStore::default_dir`]).
    pub fn new(key: SigningKey, state_dir: &Path, vault_id: &str) -> Self {
        Self {
            key,
            seen_path: state_dir.join(format!("{vault_id}.gc-seen.json")),
            keyring: None,
        }
    }

    /// The same collector, also repacking partly-dead packs (see [`GcOptions::max_unused_percent`])
    /// of the datasets `keyring` can read: their live blobs must be opened and sealed again into
    /// new packs, which needs the reader key (each blob is sealed with its pack's own key at its
    /// offset, so it cannot be moved without it). Without a keyring nothing is repacked.
    pub fn with_keyring(mut self, keyring: std::sync::Arc<crate::engine::vault::Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The public key records are signed with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    fn load(&self) -> Result<SeenRecords> {
        match std::fs::read(&self.seen_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!(
                    "garbage collection state {} is damaged ({e}); it records when this machine \
                     first saw each condemnation record: move it away to start over (every record \
                     then waits a whole grace period again)",
                    self.seen_path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeenRecords::default()),
            Err(e) => Err(Error::io(
                format!("reading {}", self.seen_path.display()),
                e,
            )),
        }
    }

    fn save(&self, seen: &SeenRecords) -> Result<()> {
        let io = |e| Error::io(format!("writing {}", self.seen_path.display()), e);
        if let Some(dir) = self.seen_path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec_pretty(seen).map_err(|e| Error::invalid(e.to_string()))?;
        crate::fsutil::write_atomic(&self.seen_path, &bytes).map_err(io)
    }
}

fn seen_key(site: &dyn Site, path: &str) -> String {
    format!("{} {path}", site.location())
}

/// Runs one garbage collection over every dataset of the vault: deletes what records older than
/// the grace period condemned and is still unreferenced and unprotected, then condemns what is
/// unreferenced now. Reads keylessly; signs its records with `collector`'s key, which must be
/// allowed to delete. With several sites, each site's objects are deleted only by the valid
/// records that site itself holds; references and session markers are the union over all
/// sites. Refused deletions (Object Lock) are reported and retried next run.
pub fn collect_garbage(
    vault: &Vault,
    collector: &Collector,
    options: &GcOptions,
    now_ns: i64,
) -> Result<GcReport> {
    if options.clock_skew_secs == 0 {
        return Err(Error::invalid(
            "the allowed clock skew must be at least 1 second: it also covers the time a \
             condemnation record takes to be stored, during which a starting backup cannot see it",
        ));
    }
    if options.grace_secs < options.clock_skew_secs {
        return Err(Error::invalid(format!(
            "a grace period of {} is shorter than the allowed clock skew of {}: a backup starting \
             on a host whose clock is behind could miss a condemnation; use a longer grace period",
            crate::duration::format_duration(options.grace_secs),
            crate::duration::format_duration(options.clock_skew_secs)
        )));
    }
    let allowed = deleters(vault);
    if !allowed.contains(&collector.public_key()) {
        return Err(Error::Refused {
            kind: crate::ErrorKind::Keys,
            problem: format!(
                "garbage collection signs its condemnation records with the vault's root key, \
                 and key {} is not the root's in vault {} (a credential's delete right covers \
                 pruning its datasets, not collecting the vault's objects)",
                hex::encode(&collector.public_key()[..8]),
                vault.config().vault_id
            ),
            way_out: crate::error::WayOut::Grant {
                dataset: String::new(),
                grant: crate::error::Grant::Collect,
            },
        });
    }
    let merged = vault.site().as_ref();
    let members = merged.members();
    let sites: Vec<std::sync::Arc<dyn Site>> = if members.is_empty() {
        vec![vault.site().clone()]
    } else {
        members
    };
    let mut report = GcReport::default();
    let mut seen = collector.load()?;
    let mut seen_now: HashSet<String> = HashSet::new();
    let mut listed_sites: HashSet<String> = HashSet::new();
    // Bookkeeping first, then the listing, then the ledgers: every object listed and every
    // version recorded before its ledger was read is accounted for (design.md, race analysis).
    // Records per site, each judged by what that site holds.
    let mut site_records: Vec<Vec<(String, i64, Condemnation)>> = Vec::new();
    for site in &sites {
        match load_timed::<Condemnation>(site.as_ref(), GC_ROOT) {
            Ok((records, problems)) => {
                listed_sites.insert(site.location().to_string());
                report.problems.extend(problems);
                let mut valid = Vec::new();
                for (path, time, record) in records {
                    if !allowed.contains(&record.signer) {
                        report.problems.push(Problem::new(
                            ErrorKind::Integrity,
                            format!(
                                "{path}: condemnation record signed by {}, which may not delete: \
                                 ignored",
                                hex::encode(&record.signer[..8])
                            ),
                        ));
                        continue;
                    }
                    let key = seen_key(site.as_ref(), &path);
                    seen.first_seen.entry(key.clone()).or_insert(now_ns);
                    seen_now.insert(key);
                    valid.push((path, time, record));
                }
                site_records.push(valid);
            }
            Err(e) => {
                report.problems.push(Problem::new(
                    e.kind(),
                    format!(
                        "{}: its condemnation records cannot be listed, so nothing is deleted \
                         there this run: {e}",
                        site.location()
                    ),
                ));
                site_records.push(Vec::new());
            }
        }
    }
    let (markers, problems) = load_timed::<SessionMarker>(merged, SESSIONS_ROOT)?;
    report.problems.extend(problems);
    let listing = merged.list("")?;
    let sizes: HashMap<&str, u64> = listing.iter().map(|i| (i.path.as_str(), i.size)).collect();
    // Each site's own listing (several sites): what a site may delete is judged by what that
    // site holds too. With the merged listing alone, an index a repack index stands in for was
    // deleted at every site while the repack index sat at one site only (a write that reached
    // min_sites, a delete that failed there), and the other sites could no longer restore the
    // versions naming it (issue 19's crash campaign, seed 1796643470424951416).
    let own_listings: Vec<Option<Vec<crate::site::ObjectInfo>>> = if sites.len() > 1 {
        sites
            .iter()
            .map(|site| match site.list("") {
                Ok(l) => Some(l),
                Err(e) => {
                    report.problems.push(Problem::new(
                        e.kind(),
                        format!(
                            "{}: cannot be listed, so nothing is deleted there this run: {e}",
                            site.location()
                        ),
                    ));
                    None
                }
            })
            .collect()
    } else {
        vec![Some(Vec::new())]
    };
    let mut datasets: BTreeSet<String> = vault.datasets()?.into_iter().collect();
    datasets.extend(
        listing
            .iter()
            .filter_map(|i| dataset_of(&i.path))
            .map(str::to_string),
    );
    let grace_ns = i64::try_from(options.grace_secs)
        .unwrap_or(i64::MAX / NS)
        .saturating_mul(NS);
    let skew_ns = i64::try_from(options.clock_skew_secs)
        .unwrap_or(i64::MAX / NS)
        .saturating_mul(NS);
    let expiry_ns = i64::try_from(options.session_expiry_secs)
        .unwrap_or(i64::MAX / NS)
        .saturating_mul(NS);
    let mut deleted_set: HashSet<String> = HashSet::new();
    let mut rescued_set: HashSet<String> = HashSet::new();
    for dataset in &datasets {
        // Entries beyond a gap or an unresolved fork, or on a branch a fork left out, may
        // reference anything: collect nothing of a dataset whose whole history cannot be proved.
        let (history, withdrawn) = match vault.history_full(dataset).and_then(|h| {
            h.check_collectable(dataset)
                .map(|()| (h.records, h.withdrawn))
        }) {
            Ok(h) => h,
            Err(e) => {
                report.skipped.push(Problem::new(
                    e.kind(),
                    format!(
                        "{dataset}: its history does not verify, so nothing of it is collected: {e}"
                    ),
                ));
                continue;
            }
        };
        // What the versions need, judged by a listing (the merged one, or one site's).
        let references_in = |listing: &[crate::site::ObjectInfo],
                             sizes: &HashMap<&str, u64>,
                             extra: &[ObjectId]| {
            references(merged, dataset, &history, sizes, &allowed, extra).map(|mut r| {
                // WAL pieces are kept unless an anchored, verified segment covers them.
                let authority = vault.wal_authority(&history);
                let cutoff = vault.wal_cutoff(&history);
                let wal_free = wal_collectable(
                    merged,
                    dataset,
                    &history,
                    &authority,
                    &cutoff,
                    listing,
                    collector.keyring.as_deref(),
                );
                r.extend(
                    listing
                        .iter()
                        .filter(|i| collectable(dataset, &i.path))
                        .filter(|i| i.path.starts_with("wal/") && !wal_free.contains(&i.path))
                        .map(|i| i.path.clone()),
                );
                r
            })
        };
        let dataset_references = |extra: &[ObjectId]| references_in(&listing, &sizes, extra);
        // What entries their own signer withdrew reference stays too: a withdrawal takes an
        // entry out of the history, never its data (a stolen credential that withdraws its
        // own acknowledged newest entry must not make garbage collection delete it).
        let withdrawn_references = || {
            withdrawn.iter().try_fold(HashSet::new(), |mut all, r| {
                all.extend(references(
                    merged,
                    dataset,
                    std::slice::from_ref(r),
                    &sizes,
                    &allowed,
                    &[],
                )?);
                Ok::<_, Error>(all)
            })
        };
        let mut referenced = match dataset_references(&[]).and_then(|mut r| {
            r.extend(withdrawn_references()?);
            Ok(r)
        }) {
            Ok(r) => r,
            Err(e) => {
                report.skipped.push(Problem::new(
                    e.kind(),
                    format!(
                        "{dataset}: a live version's objects cannot be followed, so nothing of it \
                         is collected (repair the site from another site first): {e}"
                    ),
                ));
                continue;
            }
        };
        // Per site (several sites): what that site alone needs to restore every version; None
        // when it cannot be judged (nothing is deleted there this run).
        let site_references: Vec<Option<HashSet<String>>> = if sites.len() > 1 {
            own_listings
                .iter()
                .map(|own| {
                    let own = own.as_ref()?;
                    // A site that lists everything the sites list together (the merged listing
                    // is their union) needs what they need: no second reading of the manifests
                    // and indexes (the common case, sites in step).
                    if own.len() == listing.len()
                        && own.iter().all(|i| sizes.contains_key(i.path.as_str()))
                    {
                        return Some(referenced.clone());
                    }
                    let own_sizes: HashMap<&str, u64> =
                        own.iter().map(|i| (i.path.as_str(), i.size)).collect();
                    references_in(own, &own_sizes, &[]).ok()
                })
                .collect()
        } else {
            vec![Some(HashSet::new())]
        };
        // Newest version entry: sessions that started from an older head are over.
        let newest_version_seq = history
            .iter()
            .filter(|r| matches!(r.entry.event, Event::VersionAdded { .. }))
            .map(|r| r.entry.seq)
            .max()
            .unwrap_or(0);
        // Markers count only when signed by an active signer of the dataset (the session's own
        // key); a forged one could only delay collection, so ignoring it is safe.
        let session_signers = vault.active_signers(&history);
        // Keys that were signers of the dataset once (granted in its history, or pinned): their
        // markers are a former writer's (a rotation, a revocation, a takeover's fence), stale and
        // ignored without a word; only a marker by a key that never was one is reported (red
        // team 12: every collection after a routine rotation failed with an integrity problem).
        let mut former_signers: HashSet<[u8; 32]> =
            vault.config().signer_keys().into_iter().collect();
        former_signers.extend(history.iter().filter_map(|r| match &r.entry.event {
            Event::SignerAdded { key, .. } => Some(*key),
            _ => None,
        }));
        let mut ds_markers: Vec<&(String, i64, SessionMarker)> = Vec::new();
        for m in markers.iter().filter(|(_, _, m)| &m.dataset == dataset) {
            if session_signers.contains(&m.2.signer) {
                ds_markers.push(m);
            } else if former_signers.contains(&m.2.signer) {
                continue;
            } else {
                report.problems.push(Problem::new(
                    ErrorKind::Integrity,
                    format!(
                        "{}: session marker signed by {}, which is not an active signer of \
                         {dataset}: ignored",
                        m.0,
                        hex::encode(&m.2.signer[..8])
                    ),
                ));
            }
        }
        let live = |m: &SessionMarker| {
            m.base_seq >= newest_version_seq && m.started_at_ns.saturating_add(expiry_ns) > now_ns
        };
        let mut pending: HashSet<String> = HashSet::new();
        let prefix = format!("{GC_ROOT}{dataset}/");
        let mut waiting: HashSet<&String> = HashSet::new();
        for ((site, records), own_needs) in sites.iter().zip(&site_records).zip(&site_references) {
            let site = site.as_ref();
            for (path, _, record) in records
                .iter()
                .filter(|(p, _, r)| &r.dataset == dataset && p.starts_with(&prefix))
            {
                pending.extend(record.objects.iter().cloned());
                let first_seen = seen
                    .first_seen
                    .get(&seen_key(site, path))
                    .copied()
                    .unwrap_or(now_ns);
                // Condemned from when it was made *and* seen here: a back-dated record, or one
                // a site withheld, waits the whole grace period from its first sighting; a
                // record dated in the future waits until then.
                let from = record.time_ns.max(first_seen);
                if from.saturating_add(grace_ns) > now_ns || record.time_ns > now_ns {
                    waiting.extend(
                        record
                            .objects
                            .iter()
                            .filter(|o| sizes.contains_key(o.as_str()) && !referenced.contains(*o)),
                    );
                    continue;
                }
                let blockers: Vec<&SessionMarker> = ds_markers
                    .iter()
                    .map(|(_, _, m)| m)
                    .filter(|m| live(m) && m.started_at_ns < from.saturating_add(skew_ns))
                    .collect();
                if let Some(b) = blockers.first() {
                    report.deferred.push(format!(
                        "{path}: a backup of {dataset} started at {} on {} may still use these objects; \
                         deletion waits until it records its version (or for {} after it started)",
                        crate::time::utc(b.started_at_ns),
                        if b.host.is_empty() { "?" } else { &b.host },
                        crate::duration::format_duration(options.session_expiry_secs)
                    ));
                    continue;
                }
                let mut objects: Vec<&String> = record.objects.iter().collect();
                objects.sort_by_key(|p| (delete_rank(p), p.as_str()));
                let mut complete = true;
                for object in objects {
                    if !collectable(dataset, object) {
                        report.problems.push(Problem::new(
                            ErrorKind::Integrity,
                            format!(
                                "{path}: names {object}, which is not a {dataset} pack, index or \
                                 manifest: ignored"
                            ),
                        ));
                        continue;
                    }
                    if referenced.contains(object) {
                        if rescued_set.insert(object.clone()) {
                            report.rescued.push(object.clone());
                        }
                        continue;
                    }
                    // Needed by this site alone (the stand-in for it is not here), or this
                    // site cannot be judged: kept here.
                    if own_needs.as_ref().is_none_or(|n| n.contains(object)) {
                        complete = false;
                        continue;
                    }
                    let Some(size) = sizes.get(object.as_str()).copied() else {
                        continue; // already gone
                    };
                    if options.dry_run {
                        if deleted_set.insert(object.clone()) {
                            report.deleted.push(object.clone());
                            report.deleted_bytes += size;
                        }
                        continue;
                    }
                    // Only at this site: another site's record cannot delete here.
                    match site.delete(object) {
                        Ok(()) => {
                            if deleted_set.insert(object.clone()) {
                                report.deleted.push(object.clone());
                                report.deleted_bytes += size;
                            }
                        }
                        Err(e) => {
                            complete = false;
                            report.refused.push(format!("{object}: {e}"));
                        }
                    }
                }
                if complete && !options.dry_run {
                    if let Err(e) = site.delete(path) {
                        report.refused.push(format!("{path}: {e}"));
                    }
                }
            }
        }
        report.waiting += waiting.len();
        // Rewrite the live chunks of packs that are mostly dead into new packs and a repack
        // index (written first, durably), so that the old packs become unreferenced and are
        // condemned below, then deleted by a later run like any other garbage.
        // Not while entries their signer withdrew are stored: repacking keeps only what the
        // accepted history's versions use, and theirs stay whole (above).
        if let Some(keyring) = collector.keyring.as_ref().filter(|_| withdrawn.is_empty()) {
            let plan = repack::Plan {
                vault,
                keyring,
                signer: &collector.key,
                dataset,
                history: &history,
                referenced: &referenced,
                pending: &pending,
                sizes: &sizes,
                options,
            };
            match repack::repack(&plan, &mut report) {
                Ok(written) if !written.is_empty() => match dataset_references(&written) {
                    Ok(r) => referenced = r,
                    Err(e) => {
                        report.skipped.push(Problem::new(
                            e.kind(),
                            format!(
                                "{dataset}: after repacking, a live version's objects cannot be \
                                 followed, so nothing of it is condemned this run: {e}"
                            ),
                        ));
                        continue;
                    }
                },
                Ok(_) => {}
                Err(e) => report.problems.push(Problem::new(
                    e.kind(),
                    format!(
                        "{dataset}: repacking stopped (nothing of it was lost; what was written \
                         is used or collected by a later run): {e}"
                    ),
                )),
            }
        }
        // Condemn what nothing references now and no record lists yet.
        let mut condemn: Vec<String> = listing
            .iter()
            .filter(|i| collectable(dataset, &i.path))
            .filter(|i| !referenced.contains(&i.path) && !pending.contains(&i.path))
            .filter(|i| !deleted_set.contains(&i.path))
            .map(|i| i.path.clone())
            .collect();
        condemn.sort();
        if !condemn.is_empty() {
            report.condemned_bytes += condemn
                .iter()
                .map(|p| sizes.get(p.as_str()).copied().unwrap_or(0))
                .sum::<u64>();
            if !options.dry_run {
                // Stamped with the clock just before the put, not with `now_ns`: a backup that
                // starts after this stamp plus the allowed skew is sure to see the record.
                let time_ns = crate::format::config::now_unix_nanos().max(now_ns);
                let record = Condemnation {
                    dataset: dataset.clone(),
                    time_ns,
                    objects: condemn.clone(),
                    signer: collector.public_key(),
                };
                let bytes = encode_record(&record, &collector.key);
                let id = ObjectId::of(&bytes);
                let path = record_path(dataset, time_ns, &id);
                merged.put(&path, &bytes)?;
                // This collector made it: seen from its own time at every site.
                for site in &sites {
                    let key = seen_key(site.as_ref(), &path);
                    seen.first_seen.insert(key.clone(), time_ns);
                    seen_now.insert(key);
                }
            }
            report.condemned.extend(condemn);
        }
        // Markers of sessions that are over, once past the grace period too.
        if !options.dry_run {
            for (path, _, m) in &ds_markers {
                if !live(m) && m.started_at_ns.saturating_add(grace_ns) <= now_ns {
                    if let Err(e) = merged.delete(path) {
                        report.refused.push(format!("{path}: {e}"));
                    }
                }
            }
        }
    }
    // Forget records no longer listed at a site that answered.
    seen.first_seen.retain(|k, _| {
        seen_now.contains(k)
            || !listed_sites
                .iter()
                .any(|loc| k.starts_with(&format!("{loc} ")))
    });
    collector.save(&seen)?;
    Ok(report)
}

/// Summary counts per dataset of a report, for people.
pub fn summary(report: &GcReport) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for p in &report.condemned {
        if let Some(d) = dataset_of(p) {
            out.entry(d.to_string()).or_default().0 += 1;
        }
    }
    for p in &report.deleted {
        if let Some(d) = dataset_of(p) {
            out.entry(d.to_string()).or_default().1 += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn wal_pieces_and_segments_are_collectable_and_histories_are_not() {
        let id = ObjectId::of(b"x");
        let p = format!("wal/db/00000001/p/{:016x}-{:016x}-{id}", SEG, SEG + 5);
        let s = format!("wal/db/00000001/s/{:016x}-{:016x}-{id}", SEG, 2 * SEG);
        let h = format!("wal/db/00000002/h/{:016x}-{:016x}-{id}", 0, 40);
        assert!(collectable("db", &p));
        assert!(!collectable("other", &p));
        assert!(collectable("db", &s));
        assert!(!collectable("db", &h));
        assert!(!collectable("db", "wal/db/00000001/p/garbage"));
        assert_eq!(dataset_of(&p), Some("db"));
    }
}
