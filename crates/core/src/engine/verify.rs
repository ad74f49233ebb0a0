//! Verification. Without keys: every object hashes to its name, every ledger verifies (chain and
//! signatures), and every object a ledger entry, manifest or index references exists. With keys
//! (`deep`): also every blob of every pack decrypts and hashes to its chunk id, and every chunk
//! of every version's trees is indexed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::engine::vault::{Keyring, Vault};
use crate::error::{Error, Result};
use crate::format::index;
use crate::format::layout;
use crate::format::manifest;
use crate::format::pack;
use crate::format::spool::{FetchError, Held, Need};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::site::{ObjectInfo, SiteError};

pub mod known;
mod versions;

pub use known::{version_key, Known};

use versions::{check_references, deep_check_version, Findings, PackDirectories};

/// What a verification found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Objects whose bytes were checked against their names.
    pub objects_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Objects taken on trust from an earlier full check ([`Known`]): still listed at the
    /// same size, not read again.
    #[serde(skip_serializing_if = "is_zero")]
    pub objects_remembered: u64,
    /// Their bytes (listed sizes), not read.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_remembered: u64,
    /// Blobs decrypted and checked (deep only).
    pub blobs_checked: u64,
    /// Per dataset.
    pub datasets: Vec<DatasetSummary>,
    /// Objects nothing references (left by interrupted backups; harmless).
    pub unreferenced: Vec<String>,
    /// Everything wrong, one line each, naming the object: damage or tampering.
    pub problems: Vec<String>,
    /// What could not be read or checked this time (a site busy or down, a full `$TMPDIR`),
    /// one line each: not known to be damaged, so not a problem; verify again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// Objects a site holds that no valid signer made or that are not part of the accepted
    /// history (foreign, unparsable or rejected ledger objects), `path: why`, one each. Noise
    /// has no effect and is not an integrity failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub noise: Vec<String>,
    /// Things worth knowing that are not wrong (a deletion that lost a race to a version and
    /// has no effect).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What this run checked in full or found still standing from [`Known`] (keyless runs):
    /// what a witness remembers for its next run. Meaningful only when the run is ok.
    #[serde(skip)]
    pub learned: Known,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What was proved about one dataset.
#[derive(Debug, Serialize)]
pub struct DatasetSummary {
    /// The dataset.
    pub name: String,
    /// Ledger entries verified.
    pub entries: u64,
    /// Id of the newest entry.
    pub head: Option<String>,
    /// Versions whose references were all found.
    pub versions_complete: u64,
    /// The newest checkpoint this history is consistent with, for people.
    pub checkpoint: Option<String>,
}

impl VerifyReport {
    /// True when everything was read and nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.unreadable.is_empty()
    }

    /// True when damage or tampering was found (not merely something that could not be read).
    pub fn found_damage(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// Verifies the whole vault; `keys` enables the deep check.
pub fn verify(
    vault: &Vault,
    keys: Option<&Keyring>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    verify_with(vault, keys, progress, None)
}

/// [`verify`], taking on trust what `known` says was checked in full before while the site
/// still lists it at the same size (keyless runs only; a deep run reads everything): those
/// objects are not read, and those versions' references are checked by listing. Ledgers,
/// checkpoints and everything new are checked as always.
pub fn verify_with(
    vault: &Vault,
    keys: Option<&Keyring>,
    progress: &dyn Progress,
    known: Option<&Known>,
) -> Result<VerifyReport> {
    let known = known.filter(|_| keys.is_none());
    let site = vault.site().as_ref();
    // Objects checked in full this run, or remembered and listed unchanged: path → size.
    let passed: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let listing = site.list("")?;
    let sizes: HashMap<&str, u64> = listing.iter().map(|i| (i.path.as_str(), i.size)).collect();
    let report = Mutex::new(VerifyReport::default());
    let problem = |p: String| {
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(p)
    };
    // What cannot be read now is an outage, not damage: kept apart, and the objects named, so
    // what depends on them is "not checked", never "missing".
    let unreadable_paths: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let unreadable = |p: String| {
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unreadable
            .push(p)
    };
    let judge_error = |e: Error| {
        // An object listed but not served is judged like damage (format.md §9), not an outage.
        let withheld = matches!(e, Error::Site(SiteError::NotFound { .. }));
        if withheld || e.kind() == crate::ErrorKind::Integrity {
            problem(e.to_string())
        } else {
            unreadable(e.to_string())
        }
    };
    // Checkpoints and cosignatures are statements beside the data: a damaged or stray one is
    // noise, never damage to accepted data.
    let noise_or_problem = |path: &str, p: String| {
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        if path.starts_with(crate::history::checkpoint::CHECKPOINTS)
            || path.starts_with(crate::history::checkpoint::COSIGNATURES)
        {
            r.noise.push(p);
        } else {
            r.problems.push(p);
        }
    };
    progress.set_total(listing.iter().map(|i| i.size).sum());

    // 1. Every object hashes to its name; deep: every blob of every pack opens.
    let objects: Vec<&ObjectInfo> = listing
        .iter()
        .filter(|i| !matches!(i.path.as_str(), layout::CONFIG | layout::CONFIG_SIGNATURE))
        .collect();
    // Ledger objects are judged with their history in step 2 (a damaged one is noise or
    // damage depending on whether the accepted history needs it).
    let hashed: Vec<&ObjectInfo> = objects
        .iter()
        .copied()
        .filter(|i| !i.path.starts_with(layout::LEDGER_ROOT))
        .collect();
    let dataset_keys: Mutex<HashMap<String, std::sync::Arc<crate::keys::DatasetKeys>>> =
        Mutex::new(HashMap::new());
    // Deep: each verified pack's directory (every entry's blob opened), by chunk id.
    let pack_blobs: Mutex<PackDirectories> = Mutex::new(HashMap::new());
    // Deep: each delta blob opened, with its keys and pack, to apply to its base after the packs.
    let deltas: Mutex<Vec<OpenedDelta>> = Mutex::new(Vec::new());
    // Every index object's header, signature checked (or why it does not parse).
    let index_headers: Mutex<HashMap<String, std::result::Result<index::IndexHeader, String>>> =
        Mutex::new(HashMap::new());
    // Objects whose bytes do not hash to their names (judged once references are known).
    let mismatched: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Objects not named by a hash, and objects that are not of their folder's kind.
    let unnamed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let unparsable: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    // One object per task: packs are few and heavy, so let idle threads steal them one by one.
    hashed.par_iter().with_max_len(1).for_each(|info| {
        progress.note(&info.path);
        if known.is_some_and(|k| k.holds_object(&info.path, info.size)) {
            progress.add(info.size);
            {
                let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                r.objects_remembered += 1;
                r.bytes_remembered += info.size;
            }
            return passed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((info.path.clone(), info.size));
        }
        let Some(id) = layout::id_in_path(&info.path) else {
            // Nothing names an object but by its hash: whatever else a site holds is noise
            // (checkpoints and cosignatures are named by their own loader).
            if !info.path.starts_with(crate::history::checkpoint::CHECKPOINTS)
                && !info.path.starts_with(crate::history::checkpoint::COSIGNATURES)
            {
                unnamed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.path.clone());
            }
            return;
        };
        // What the checks below need of the object, and no more: indexes and manifests are
        // parsed whole (held within their kind's cap); a deep pass reads packs by ranges from a
        // spool on local disk; everything else is only hashed as it streams. Memory per object
        // is a fixed buffer whatever a pack's size.
        let whole_kind = info.path.starts_with("index/") || info.path.starts_with("manifests/");
        let deep_pack = keys.is_some() && info.path.starts_with("packs/");
        let need = match (whole_kind, deep_pack) {
            (true, _) => Need::Whole,
            (_, true) => Need::Spool,
            _ => Need::Hash,
        };
        let held = match Held::read(site, &info.path, need) {
            Ok(h) => h,
            // Judged like a damaged copy once references are known.
            Err(FetchError::Site(SiteError::NotFound { .. })) => {
                return unparsable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((info.path.clone(), crate::site::LISTED_NOT_HELD.into()))
            }
            Err(FetchError::Site(e)) => {
                unreadable_paths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info.path.clone());
                return unreadable(format!("{}: cannot be read: {e}", info.path));
            }
            Err(FetchError::Local(e)) => {
                unreadable_paths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info.path.clone());
                return unreadable(format!("{}: cannot be checked: {e}", info.path));
            }
        };
        let (got, size) = held.id_and_len();
        progress.add(size);
        {
            let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
            r.objects_checked += 1;
            r.bytes_checked += size;
        }
        if got != id {
            if info.path.starts_with(crate::history::checkpoint::CHECKPOINTS)
                || info.path.starts_with(crate::history::checkpoint::COSIGNATURES)
            {
                return noise_or_problem(
                    &info.path,
                    format!(
                        "{}: bytes do not hash to the object's name (altered, truncated or substituted)",
                        info.path
                    ),
                );
            }
            // Damage when accepted data references it, noise otherwise: judged after step 2.
            mismatched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(info.path.clone());
            return;
        }
        let head = held.head();
        if let Some(why) = not_its_kind(&info.path, &head) {
            unparsable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((info.path.clone(), why));
            return;
        }
        if keys.is_none() && size == info.size {
            passed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((info.path.clone(), size));
        }
        if let Held::Whole(_, bytes) = &held {
            if info.path.starts_with("index/") {
                let parsed = index::decode_header(&info.path, bytes)
                    .map(|(h, _)| h)
                    .map_err(|e| e.to_string());
                index_headers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info.path.clone(), parsed);
            }
            return;
        }
        let (Some(keyring), Some(dataset), Held::Spooled(spool)) = (
            keys,
            info.path
                .strip_prefix("packs/")
                .and_then(|r| r.split('/').next()),
            &held,
        ) else {
            return;
        };
        let key_id: [u8; 8] = head
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default();
        let dk = {
            let mut cache = dataset_keys.lock().unwrap_or_else(|e| e.into_inner());
            let slot = format!("{dataset}/{}", hex::encode(key_id));
            match cache.get(&slot) {
                Some(k) => k.clone(),
                None => match keyring.dataset_for_key_id(dataset, key_id) {
                    Ok(k) => {
                        cache.insert(slot, k.clone());
                        k
                    }
                    Err(e) => return problem(format!("{}: {e}", info.path)),
                },
            }
        };
        match pack::check_blobs(&dk, &info.path, spool.len(), &mut |o, l| {
            spool
                .read_at(o, l)
                .map_err(|e| Error::io(format!("reading {} from its spool", info.path), e))
        }) {
            Ok(checked) => {
                report
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .blobs_checked += checked.count as u64;
                pack_blobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info.path.clone(), checked.ids);
                deltas.lock().unwrap_or_else(|e| e.into_inner()).extend(
                    checked.deltas.into_iter().map(|(entry, frame)| OpenedDelta {
                        keys: dk.clone(),
                        pack: info.path.clone(),
                        entry,
                        frame,
                    }),
                );
            }
            Err(e) => problem(e.to_string()),
        }
    });
    // Deep: every delta applied to its base (read again by range), checked against its id.
    {
        let deltas = deltas.into_inner().unwrap_or_else(|e| e.into_inner());
        let directories = pack_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let unread = unreadable_paths.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = check_deltas(site, deltas, &directories, &unread);
        drop((directories, unread));
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.problems.extend(outcome.problems);
        r.notes.extend(outcome.notes);
        r.unreadable.extend(outcome.unreadable);
    }

    // 2. Ledgers (checked against remembered heads) and what they reference.
    let listed_datasets = vault.datasets()?;
    let mut referenced: HashSet<String> = HashSet::new();
    let mut learned = Known::default();
    let (histories, failed, judged) = vault.histories_full()?;
    let mut noise: Vec<String> = Vec::new();
    for (dataset, h) in &judged {
        for r in &h.rejected {
            referenced.insert(r.path.clone());
            if r.reason.contains(crate::engine::prune::RACE_LOST) {
                report
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notes
                    .push(format!(
                        "dataset {dataset}: entry {} ({}) has no effect: {}",
                        r.seq,
                        r.id.short(),
                        r.reason
                    ));
                continue;
            }
            if h.displaced_ids.contains(&r.id) {
                // Left out by a fork in good faith: a problem (below), not noise.
                continue;
            }
            noise.push(format!(
                "{}: entry {} of {dataset} rejected: {}; the history is intact without it",
                r.path, r.seq, r.reason
            ));
        }
        for n in &h.noise {
            referenced.insert(n.path.clone());
            noise.push(format!("{}: {}", n.path, n.reason));
        }
        if let Some(c) = &h.conflict {
            for b in &c.branches {
                for r in &b.records {
                    referenced.insert(layout::ledger_entry(dataset, r.entry.seq, &r.id));
                }
            }
        }
        for p in h.problems(dataset) {
            problem(format!("dataset {dataset}: {p}"));
        }
    }
    // Objects in the ledger folder that name no dataset at all.
    for info in listing.iter().filter(|i| {
        i.path.starts_with(layout::LEDGER_ROOT) && layout::parse_ledger_path(&i.path).is_none()
    }) {
        if referenced.insert(info.path.clone()) {
            noise.push(format!("{}: not a ledger entry's name", info.path));
        }
    }
    // Refused policy entries (no-ops) and entries dated ahead of this clock: reported, never
    // part of acceptance (which reads no clock).
    {
        let now = crate::format::config::now_unix_nanos();
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        for (dataset, records) in &histories {
            for rec in records {
                if let Some(why) = &rec.refused {
                    r.notes.push(format!(
                        "dataset {dataset}: entry {} ({}) is a refused {}: it has no effect: {why}",
                        rec.entry.seq,
                        rec.id.short(),
                        rec.entry.event.name()
                    ));
                }
                if rec.entry.time_ns > now.saturating_add(crate::engine::prune::CLOCK_SKEW_NS) {
                    r.notes.push(format!(
                        "warning: dataset {dataset}: entry {} ({}) is dated {}, ahead of this \
                         machine's clock ({}): check the clocks of the signers (and this one)",
                        rec.entry.seq,
                        rec.id.short(),
                        crate::time::utc(rec.entry.time_ns),
                        crate::time::utc(now)
                    ));
                }
            }
        }
    }
    // Listed datasets whose history did not verify, whatever the reason (a damaged entry too):
    // their problem is reported above, not again as a rollback against the checkpoints.
    let failed_datasets: Vec<String> = listed_datasets
        .iter()
        .filter(|d| !histories.contains_key(*d))
        .chain(
            judged
                .iter()
                .filter(|(_, h)| h.is_truncated())
                .map(|(d, _)| d),
        )
        .cloned()
        .collect();
    for e in failed {
        problem(e.to_string());
    }
    // 3. Checkpoints: signed by the root or a pinned writer key, dated sanely, and every served
    // history must extend each of them. The others are noise.
    let (mut checkpoints, checkpoint_noise) = vault.checkpoints(&histories)?;
    // A checkpoint stored after the listing above may name entries stored after the histories
    // were read (a backup running meanwhile): the next run checks it. Every listed checkpoint
    // was stored after the entries it names, so the histories read since then hold them.
    checkpoints.retain(|cp| {
        sizes.contains_key(
            format!(
                "{}{:020}-{}",
                crate::history::checkpoint::CHECKPOINTS,
                cp.checkpoint.time_ns,
                cp.id
            )
            .as_str(),
        )
    });
    {
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.noise.extend(checkpoint_noise);
    }
    for cp in &checkpoints {
        referenced.insert(format!(
            "{}{:020}-{}",
            crate::history::checkpoint::CHECKPOINTS,
            cp.checkpoint.time_ns,
            cp.id
        ));
        for p in crate::history::checkpoint::check_against_except(cp, &histories, &failed_datasets)
        {
            // A rollback may be a damaged newest entry: name what the site holds in its place.
            let in_place = judged
                .iter()
                .find(|(d, _)| p.starts_with(&format!("dataset {d}: rollback")))
                .map(|(d, h)| h.in_place(histories.get(d).map_or(0, |r| r.len() as u64) + 1))
                .unwrap_or_default();
            problem(format!("{p}{in_place}"));
        }
    }
    if let Some(state) = vault.state() {
        if let Some(newest) = checkpoints.last() {
            if let Some(seen) =
                state.check_checkpoint(&newest.id.to_hex(), newest.checkpoint.time_ns)?
            {
                problem(format!(
                    "replay: the newest checkpoint at the site is {} of {}, but checkpoint {} of {} was verified here: \
                     the site hides newer checkpoints or was rolled back",
                    newest.id.short(),
                    crate::time::utc(newest.checkpoint.time_ns),
                    &seen.id[..8.min(seen.id.len())],
                    crate::time::utc(seen.time_ns)
                ));
            }
        } else if let Some(seen) = state.seen().checkpoint {
            problem(format!(
                "replay: the site holds no checkpoint, but checkpoint {} of {} was verified here",
                &seen.id[..8.min(seen.id.len())],
                crate::time::utc(seen.time_ns)
            ));
        }
    }
    let witnesses = vault.config().witness_keys();
    let pack_blobs = pack_blobs.into_inner().unwrap_or_else(|e| e.into_inner());
    let unreadable_paths = unreadable_paths
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    for (dataset, history) in &histories {
        let mut complete = 0;
        for record in history {
            referenced.insert(layout::ledger_entry(dataset, record.entry.seq, &record.id));
        }
        // Repack indexes count only when signed by a key allowed to delete.
        let deleters = crate::engine::gc::deleters(vault);
        let index_prefix = layout::index_prefix(dataset);
        let (replacements, _) = crate::format::index::Replacements::load(
            vault.site().as_ref(),
            dataset,
            sizes
                .keys()
                .filter(|p| p.starts_with(index_prefix.as_str()))
                .filter_map(|p| layout::id_in_path(p)),
            &|k| deleters.contains(k),
        );
        for version in crate::engine::vault::versions_in(dataset, history) {
            let version = &version;
            let key = version_key(dataset, version.seq, &version.ledger_id);
            let ok = match known.and_then(|k| Some((k, k.version_refs(&key, &sizes)?))) {
                // Followed in full before, and all of it still listed unchanged.
                Some((k, refs)) => {
                    for path in k.versions.get(&key).into_iter().flatten() {
                        if let Some(packs) = k.indexes.get(path) {
                            learned.indexes.insert(path.clone(), packs.clone());
                        }
                    }
                    if let Some(direct) = k.versions.get(&key) {
                        learned.versions.insert(key, direct.clone());
                    }
                    referenced.extend(refs);
                    true
                }
                None => check_references(
                    vault,
                    &sizes,
                    &replacements,
                    dataset,
                    version,
                    &mut referenced,
                    &mut learned,
                    &problem,
                    &judge_error,
                ),
            };
            // A version recorded after the listing (a backup running meanwhile) has packs the
            // deep pass did not open: its references are checked above, its blobs next run.
            let listed = sizes.contains_key(
                layout::ledger_entry(dataset, version.seq, &version.ledger_id).as_str(),
            );
            let deep_ok = ok
                && match keys {
                    Some(keyring) if listed => deep_check_version(
                        vault,
                        keyring,
                        version,
                        &pack_blobs,
                        &unreadable_paths,
                        &Findings {
                            problem: &problem,
                            unreadable: &unreadable,
                            failed: &judge_error,
                        },
                    ),
                    _ => true,
                };
            if deep_ok {
                complete += 1;
            }
        }
        let covering = checkpoints.iter().rev().find(|cp| {
            cp.checkpoint.heads.contains_key(dataset)
                && crate::history::checkpoint::check_against(cp, &histories).is_empty()
        });
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .datasets
            .push(DatasetSummary {
                name: dataset.clone(),
                entries: history.len() as u64,
                head: history.last().map(|r| r.id.to_hex()),
                versions_complete: complete,
                checkpoint: covering.map(|cp| {
                    let cosigned = cp
                        .cosigners
                        .iter()
                        .filter(|w| witnesses.contains(w))
                        .count();
                    format!(
                        "consistent with checkpoint {} of {}{}",
                        cp.id.short(),
                        crate::time::utc(cp.checkpoint.time_ns),
                        if cosigned > 0 {
                            format!(", cosigned by {cosigned} witnesses")
                        } else {
                            String::new()
                        }
                    )
                }),
            });
    }
    // A damaged object is damage when an accepted entry, manifest or index references it, and
    // noise otherwise (nothing can refer to it). WAL objects of a verified dataset are judged by
    // the WAL check, which knows the anchors and the hash chains.
    let judged_objects = mismatched
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|p| {
            let why = format!(
                "{p}: bytes do not hash to the object's name (altered, truncated or substituted)"
            );
            (p, why)
        })
        .chain(
            unparsable
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .into_iter()
                .map(|(p, why)| {
                    let why = format!("{p}: {why}");
                    (p, why)
                }),
        )
        .chain(
            unnamed
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .into_iter()
                .map(|p| {
                    let why = format!("{p}: not named by a hash");
                    (p, why)
                }),
        );
    for (path, why) in judged_objects {
        let wal_dataset = path.strip_prefix("wal/").and_then(|r| r.split('/').next());
        if wal_dataset.is_some_and(|d| histories.contains_key(d)) {
            continue;
        }
        if referenced.contains(&path) {
            problem(why);
        } else {
            noise.push(format!("{why}; referenced by no accepted data"));
            referenced.insert(path);
        }
    }
    // Cosignatures, approvals, withdrawals and garbage collection's bookkeeping (condemnation
    // records and backup session markers) are referenced by nothing, by design.
    for prefix in [
        crate::history::checkpoint::COSIGNATURES,
        crate::history::approval::APPROVALS,
        crate::history::withdrawal::WITHDRAWALS,
        crate::engine::gc::GC_ROOT,
        crate::engine::gc::SESSIONS_ROOT,
    ] {
        for info in listing.iter().filter(|i| i.path.starts_with(prefix)) {
            referenced.insert(info.path.clone());
        }
    }
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    if keys.is_none() {
        learned.objects = passed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .collect();
        report.learned = learned;
    }
    // Indexes no live version names: leftovers of interrupted backups when an active signer
    // made them; noise otherwise (unsigned, forged, foreign, or by a stranger or revoked key).
    let index_headers = index_headers
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut noise_paths = HashSet::new();
    // Keys that may add versions (and so write indexes) at each dataset's head.
    let active: HashMap<&str, Vec<[u8; 32]>> = histories
        .iter()
        .map(|(d, h)| {
            let may_add = vault
                .authority(d, h)
                .holders(crate::history::rights::Right::AddVersions);
            (d.as_str(), may_add)
        })
        .collect();
    for (path, parsed) in &index_headers {
        if referenced.contains(path) {
            continue;
        }
        let Some(dataset) = path
            .strip_prefix("index/")
            .and_then(|r| r.split('/').next())
        else {
            continue;
        };
        let Some(active) = active.get(dataset) else {
            continue; // no verified history: reported above, or a dataset without a ledger yet
        };
        let why = match parsed {
            Err(e) => Some(format!("unparsable: {e}")),
            Ok(h) if h.dataset != dataset => {
                Some(format!("an index of dataset {} (foreign)", h.dataset))
            }
            Ok(h) if !active.contains(&h.signer) => Some(format!(
                "signed by {}, which is not an active signer of dataset {dataset}, and named by \
                 no live version",
                hex::encode(&h.signer[..8])
            )),
            Ok(_) => None,
        };
        if let Some(why) = why {
            report
                .noise
                .push(format!("{path}: {why}; ignored by backups and restores"));
            noise_paths.insert(path.clone());
        }
    }
    report.noise.sort();
    report.unreferenced = objects
        .iter()
        .filter(|i| !referenced.contains(&i.path) && !noise_paths.contains(&i.path))
        .map(|i| i.path.clone())
        .collect();
    report.unreferenced.sort();
    report.problems.sort();
    report.noise.extend(noise);
    report.noise.sort();
    report.noise.dedup();
    // Noise is reported as noise, not again as unreferenced.
    let noisy = |path: &str| report.noise.iter().any(|n| n.contains(path));
    let unreferenced: Vec<String> = report
        .unreferenced
        .iter()
        .filter(|p| !noisy(p))
        .cloned()
        .collect();
    report.unreferenced = unreferenced;
    Ok(report)
}

/// A delta blob opened by the deep pass, still to be applied to its base.
struct OpenedDelta {
    keys: std::sync::Arc<crate::keys::DatasetKeys>,
    pack: String,
    entry: pack::BlobEntry,
    frame: Vec<u8>,
}

/// What applying the deltas to their bases found.
#[derive(Default)]
struct DeltaFindings {
    problems: Vec<String>,
    notes: Vec<String>,
    unreadable: Vec<String>,
}

/// Applies each delta to its base, a full data blob of the same dataset found in a verified
/// pack's directory and read again by range (its bytes checked against its own id), and checks
/// that the content it reconstructs hashes to the delta's id. A base in no verified pack is a
/// note here (a dead delta's base may be collected); a live version's delta whose base is
/// missing is damage found by the version check.
fn check_deltas(
    site: &dyn crate::site::Site,
    deltas: Vec<OpenedDelta>,
    directories: &PackDirectories,
    unread: &HashSet<String>,
) -> DeltaFindings {
    let mut by_base: HashMap<(String, ChunkId), Vec<OpenedDelta>> = HashMap::new();
    for d in deltas {
        let dataset = d.keys.dataset.clone();
        if let Some(base) = d.entry.base {
            by_base.entry((dataset, base)).or_default().push(d);
        }
    }
    let mut findings = DeltaFindings::default();
    // Each base found in a verified pack's directory, grouped by that pack.
    let mut by_pack: HashMap<String, Vec<BaseDeltas>> = HashMap::new();
    for ((dataset, base), group) in by_base {
        let prefix = layout::packs_prefix(&dataset);
        let found = directories
            .iter()
            .filter(|(path, _)| path.starts_with(prefix.as_str()))
            .find_map(|(path, ids)| {
                ids.get(&base)?
                    .iter()
                    .find(|e| e.kind == pack::BlobKind::Data)
                    .map(|e| (path.clone(), *e))
            });
        match found {
            Some((path, entry)) => by_pack.entry(path).or_default().push((entry, group)),
            None => {
                let any_unread = unread.iter().any(|p| p.starts_with(prefix.as_str()));
                for d in group {
                    let text = format!(
                        "{}: delta blob {} not checked: its base {} is in no {} pack",
                        d.pack,
                        d.entry.id.short(),
                        base.short(),
                        if any_unread { "readable" } else { "stored" }
                    );
                    if any_unread {
                        findings.unreadable.push(text)
                    } else {
                        findings.notes.push(text)
                    }
                }
            }
        }
    }
    // Per pack: its key opened once, its bases read again in runs of nearby blobs (not one
    // request and one key opening per base), each base checked against its id, then applied.
    let findings = Mutex::new(findings);
    let packs: Vec<(String, Vec<BaseDeltas>)> = by_pack.into_iter().collect();
    packs.par_iter().for_each(|(path, bases)| {
        let outcome = check_pack_bases(site, path, bases);
        let mut f = findings.lock().unwrap_or_else(|e| e.into_inner());
        for (group, result) in bases.iter().map(|(_, g)| g).zip(outcome) {
            match result {
                Ok(problems) => f.problems.extend(problems),
                Err(e) if e.kind() == crate::ErrorKind::Integrity => f.problems.push(e.to_string()),
                Err(e) => f.unreadable.push(format!(
                    "{path}: the base {} of {} deltas cannot be read: {e}",
                    group[0].entry.base.map(|b| b.short()).unwrap_or_default(),
                    group.len()
                )),
            }
        }
    });
    findings.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// A base's entry in its pack and the deltas that apply to it.
type BaseDeltas = (pack::BlobEntry, Vec<OpenedDelta>);

/// Largest gap between two bases of a pack read in one request by [`check_pack_bases`].
const BASE_RUN_GAP: u64 = 256 * 1024;

/// Reads the bases of one pack (runs of nearby blobs in one request, its key opened once) and
/// applies each base's deltas to it; per base, in order, the deltas' problems or why the base
/// could not be read.
fn check_pack_bases(
    site: &dyn crate::site::Site,
    path: &str,
    bases: &[BaseDeltas],
) -> Vec<Result<Vec<String>>> {
    let keys = &bases[0].1[0].keys;
    let key = match site
        .get_range(path, 0, pack::HEADER_LEN as u64)
        .map_err(Error::from)
        .and_then(|header| pack::open_key(keys, path, &header))
    {
        Ok(key) => key,
        Err(e) => {
            let text = e.to_string();
            let integrity = e.kind() == crate::ErrorKind::Integrity;
            return bases
                .iter()
                .map(|_| {
                    Err(if integrity {
                        Error::corrupt(path, text.clone())
                    } else {
                        Error::invalid(text.clone())
                    })
                })
                .collect();
        }
    };
    let mut order: Vec<usize> = (0..bases.len()).collect();
    order.sort_by_key(|&i| bases[i].0.offset);
    let mut results: Vec<Option<Result<Vec<String>>>> = bases.iter().map(|_| None).collect();
    let mut i = 0;
    while i < order.len() {
        let start = u64::from(bases[order[i]].0.offset);
        let mut end = start + u64::from(bases[order[i]].0.length);
        let mut j = i + 1;
        while j < order.len() {
            let e = &bases[order[j]].0;
            if u64::from(e.offset) > end + BASE_RUN_GAP {
                break;
            }
            end = end.max(u64::from(e.offset) + u64::from(e.length));
            j += 1;
        }
        let span = site
            .get_range(path, start, end - start)
            .map_err(Error::from);
        for &k in &order[i..j] {
            let (entry, group) = &bases[k];
            let at = (u64::from(entry.offset) - start) as usize;
            let plain = match &span {
                Ok(span) => span
                    .get(at..at + entry.length as usize)
                    .ok_or_else(|| Error::corrupt(path, "shorter than its index says"))
                    .and_then(|sealed| pack::open_blob(&key, keys, path, entry, sealed)),
                Err(e) => Err(Error::invalid(e.to_string())),
            };
            results[k] = Some(plain.map(|plain| {
                let mut out = Vec::new();
                group
                    .iter()
                    .filter_map(|d| {
                        pack::apply_delta(&d.keys, &d.pack, &d.entry, &d.frame, &plain, &mut out)
                            .err()
                            .map(|e| e.to_string())
                    })
                    .collect()
            }));
        }
        i = j;
    }
    results.into_iter().flatten().collect()
}

/// Why an object that hashes to its name is not of the kind its folder holds (its magic, or for
/// a manifest its header), if it is not; None for the kinds checked elsewhere.
fn not_its_kind(path: &str, bytes: &[u8]) -> Option<String> {
    let magic: &[u8; 8] = if path.starts_with("packs/") {
        pack::MAGIC
    } else if path.starts_with(crate::engine::gc::GC_ROOT) {
        crate::engine::gc::RECORD_MAGIC
    } else if path.starts_with(crate::engine::gc::SESSIONS_ROOT) {
        crate::engine::gc::MARKER_MAGIC
    } else if path.starts_with(crate::history::approval::APPROVALS) {
        crate::history::approval::MAGIC
    } else if path.starts_with(crate::history::withdrawal::WITHDRAWALS) {
        crate::history::withdrawal::MAGIC
    } else if path.starts_with("manifests/") {
        return manifest::decode_header(path, bytes)
            .err()
            .map(|e| format!("unparsable: {e}"));
    } else {
        return None;
    };
    (!bytes.starts_with(magic)).then(|| "unparsable (not an object of its folder's kind)".into())
}
