//! WAL in the vault: listing, writing and reading the log objects of `embassy_core::format::wal_log`,
//! assembling whole (or the newest, partial) segments, and keyless verification of names,
//! signatures and the hash chain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::wal_log::{self, LogHeader, LogKind, LogName, LogSpec};
use embassy_core::history::ledger::ReplayedWal;
use embassy_core::history::wal_authority::{Anchor, WalAuthority};
use embassy_core::history::wal_merge::Merger;
use embassy_core::history::wal_retention::WalCutoff;
use embassy_core::id::ObjectId;
use embassy_core::keys::DatasetKeys;
use embassy_core::site::Site;

use crate::error::{PgError, Result};
use crate::lsn::{Lsn, SEGMENT_SIZE};

/// A log object as listed (name parsed from its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// What the path says.
    pub name: LogName,
    /// The path.
    pub path: String,
    /// Stored size.
    pub size: u64,
}

/// A dataset's log objects, sorted by timeline and position.
#[derive(Debug, Clone, Default)]
pub struct WalListing {
    /// Pieces as streamed.
    pub pieces: Vec<WalObject>,
    /// Whole segments (compacted).
    pub segments: Vec<WalObject>,
    /// Timeline history files.
    pub histories: Vec<WalObject>,
    /// Paths under the prefix that are not log object names (reported by verify).
    pub strays: Vec<String>,
}

impl WalListing {
    /// The object (piece or segment) reaching furthest on the newest timeline: where a stream
    /// resumes.
    pub fn newest(&self) -> Option<&WalObject> {
        self.pieces
            .iter()
            .chain(self.segments.iter())
            .max_by_key(|o| (o.name.timeline, o.name.end, o.name.kind == LogKind::Piece))
    }

    /// Pieces and segments, the furthest-reaching first (the order [`WalListing::newest`] picks).
    pub fn newest_first(&self) -> Vec<&WalObject> {
        let mut all: Vec<&WalObject> = self.pieces.iter().chain(self.segments.iter()).collect();
        all.sort_by_key(|o| {
            std::cmp::Reverse((o.name.timeline, o.name.end, o.name.kind == LogKind::Piece))
        });
        all
    }

    /// Newest durable position per timeline.
    pub fn ends(&self) -> BTreeMap<u32, Lsn> {
        let mut out = BTreeMap::new();
        for o in self.pieces.iter().chain(self.segments.iter()) {
            let e: &mut Lsn = out.entry(o.name.timeline).or_default();
            *e = (*e).max(Lsn(o.name.end));
        }
        out
    }
}

/// Lists a dataset's log objects on `site`.
pub fn list(site: &dyn Site, dataset: &str) -> Result<WalListing> {
    list_prefixes(site, dataset, &[wal_log::prefix(dataset)])
}

/// Lists only what one segment needs: its segment object and the pieces that start inside it
/// (pieces never cross a segment boundary, and a segment's pieces share the first 10 hex digits
/// of their start), so `wal-fetch` costs one small listing per segment however long the
/// dataset's history is.
pub fn list_segment(
    site: &dyn Site,
    dataset: &str,
    timeline: u32,
    segno: u64,
) -> Result<WalListing> {
    let start = format!("{:016x}", segno * SEGMENT_SIZE);
    let piece_prefix = format!(
        "{}{}",
        wal_log::kind_prefix(dataset, timeline, LogKind::Piece),
        &start[..10]
    );
    let segment_prefix = format!(
        "{}{start}-",
        wal_log::kind_prefix(dataset, timeline, LogKind::Segment)
    );
    list_prefixes(site, dataset, &[piece_prefix, segment_prefix])
}

/// Lists one timeline's history files.
pub fn list_histories(site: &dyn Site, dataset: &str, timeline: u32) -> Result<WalListing> {
    list_prefixes(
        site,
        dataset,
        &[wal_log::kind_prefix(dataset, timeline, LogKind::History)],
    )
}

fn list_prefixes(site: &dyn Site, dataset: &str, prefixes: &[String]) -> Result<WalListing> {
    let mut infos = Vec::new();
    for prefix in prefixes {
        infos.extend(site.list(prefix)?);
    }
    let mut listing = WalListing::default();
    for info in infos {
        match wal_log::parse_path(&info.path) {
            Some(name) if name.dataset == dataset => {
                let obj = WalObject {
                    name,
                    path: info.path,
                    size: info.size,
                };
                match obj.name.kind {
                    LogKind::Piece => listing.pieces.push(obj),
                    LogKind::Segment => listing.segments.push(obj),
                    LogKind::History => listing.histories.push(obj),
                }
            }
            _ => listing.strays.push(info.path),
        }
    }
    let key = |o: &WalObject| (o.name.timeline, o.name.start, std::cmp::Reverse(o.name.end));
    listing.pieces.sort_by_key(key);
    listing.segments.sort_by_key(key);
    listing.histories.sort_by_key(key);
    Ok(listing)
}

/// Who may have signed a dataset's WAL objects: the keys active at the head, and every key for
/// the objects an anchor covers at whose sequence number it was active (format.md §9b). Chains
/// are walked lazily, only for objects whose signer is no longer active, and remembered.
#[derive(Debug)]
pub struct WalSigners {
    authority: WalAuthority,
    dataset: String,
    /// `prev` of the objects whose header was read, by id.
    prevs: Mutex<HashMap<ObjectId, Option<ObjectId>>>,
    /// Pieces and segments of a timeline by id, listed when a chain must be walked there.
    names: Mutex<HashMap<u32, HashMap<ObjectId, WalObject>>>,
    /// The dataset's WAL retention cut-off: anchored WAL below it was collected on purpose.
    cutoff: WalCutoff,
}

/// How many anchors after an object are tried when looking for the one whose chain covers it.
const ANCHOR_CANDIDATES: usize = 4;

impl WalSigners {
    /// The signers of `dataset`'s WAL according to `authority`.
    pub fn new(authority: WalAuthority, dataset: &str) -> Self {
        Self {
            authority,
            dataset: dataset.to_string(),
            prevs: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            cutoff: WalCutoff::none(),
        }
    }

    /// These signers, knowing the dataset's WAL retention cut-off.
    pub fn with_cutoff(mut self, cutoff: WalCutoff) -> Self {
        self.cutoff = cutoff;
        self
    }

    /// The dataset's WAL retention cut-off (none unless given, see [`dataset_signers`]).
    pub fn cutoff(&self) -> &WalCutoff {
        &self.cutoff
    }

    /// The authority (signer intervals and anchors) this judges by.
    pub fn authority(&self) -> &WalAuthority {
        &self.authority
    }

    /// True when `signer` may have signed `obj`: active at the head, or active at the sequence
    /// number of the anchor that covers `obj`.
    /// A writer fenced by a promotion keeps only the WAL anchored before it and the WAL the
    /// promoted server replayed (the `promoted` entry's anchor).
    pub fn allows(&self, site: &dyn Site, obj: &WalObject, signer: &[u8; 32]) -> bool {
        if self.authority.active_at_head(signer) {
            return true;
        }
        let anchored = self.anchored_at(site, obj);
        self.authority.allows(signer, anchored)
    }

    /// The sequence number of the accepted anchor covering `obj` (naming it, or reaching it
    /// through the `prev` chain before the previous anchored object), if one is found.
    pub fn anchored_at(&self, site: &dyn Site, obj: &WalObject) -> Option<u64> {
        if let Some(seq) = self.authority.direct_anchor(&obj.name.id) {
            return Some(seq);
        }
        let names = self.timeline_names(site, obj.name.timeline)?;
        let mut candidates: Vec<&Anchor> = self
            .authority
            .anchors()
            .iter()
            .filter(|a| a.timeline == obj.name.timeline && a.end >= obj.name.end)
            .filter(|a| {
                names
                    .get(&a.id)
                    .is_some_and(|o| o.name.kind == obj.name.kind)
            })
            .collect();
        candidates.sort_by_key(|a| (a.end, a.seq));
        for a in candidates.into_iter().take(ANCHOR_CANDIDATES) {
            let mut cur = a.id;
            for _ in 0..=names.len() {
                if cur == obj.name.id {
                    return Some(a.seq);
                }
                if cur != a.id
                    && self
                        .authority
                        .direct_anchor(&cur)
                        .is_some_and(|s| s < a.seq)
                {
                    break; // an earlier anchor's range
                }
                let Some(o) = names.get(&cur) else { break };
                if o.name.end <= obj.name.start {
                    break; // walked past it
                }
                match self.prev_of(site, o) {
                    Some(p) => cur = p,
                    None => break,
                }
            }
        }
        None
    }

    fn timeline_names(
        &self,
        site: &dyn Site,
        timeline: u32,
    ) -> Option<HashMap<ObjectId, WalObject>> {
        let mut cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = cache.get(&timeline) {
            return Some(n.clone());
        }
        let listing = list_prefixes(
            site,
            &self.dataset,
            &[
                wal_log::kind_prefix(&self.dataset, timeline, LogKind::Piece),
                wal_log::kind_prefix(&self.dataset, timeline, LogKind::Segment),
            ],
        )
        .ok()?;
        let map: HashMap<ObjectId, WalObject> = listing
            .pieces
            .into_iter()
            .chain(listing.segments)
            .map(|o| (o.name.id, o))
            .collect();
        cache.insert(timeline, map.clone());
        Some(map)
    }

    /// The `prev` of a stored object, from its parsed (keyless) header; None when it has none
    /// or cannot be read.
    fn prev_of(&self, site: &dyn Site, obj: &WalObject) -> Option<ObjectId> {
        if let Some(p) = self
            .prevs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&obj.name.id)
        {
            return *p;
        }
        let bytes = site.get(&obj.path).ok()?;
        if ObjectId::of(&bytes) != obj.name.id {
            return None;
        }
        let parsed = wal_log::parse(&obj.path, &bytes).ok()?;
        if !obj.name.matches(&parsed.header) {
            return None;
        }
        self.learn(obj.name.id, parsed.header.prev);
        parsed.header.prev
    }

    fn learn(&self, id: ObjectId, prev: Option<ObjectId>) {
        self.prevs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, prev);
    }
}

/// Reads and checks an object without keys: its bytes hash to the id in its name, the header
/// matches the name and its signer may have signed it (see [`WalSigners`]). Returns the header
/// and the bytes.
pub fn read_checked(
    site: &dyn Site,
    obj: &WalObject,
    signers: &WalSigners,
) -> Result<(LogHeader, Vec<u8>)> {
    let bytes = site.get(&obj.path)?;
    let corrupt = |p: &str| PgError::Vault(embassy_core::Error::corrupt(&obj.path, p));
    if ObjectId::of(&bytes) != obj.name.id {
        return Err(corrupt("the bytes do not hash to the id in the name"));
    }
    let parsed = wal_log::parse(&obj.path, &bytes)?;
    if !obj.name.matches(&parsed.header) {
        return Err(corrupt(
            "the header does not match the name (moved or renamed)",
        ));
    }
    signers.learn(obj.name.id, parsed.header.prev);
    if !signers.allows(site, obj, &parsed.header.signer) {
        return Err(corrupt(&format!(
            "signed by {}, which is not an active signer of this dataset and was not one when an \
             accepted ledger entry anchored this object (revoked or never added): ignored",
            hex::encode(&parsed.header.signer[..8])
        )));
    }
    Ok((parsed.header, bytes))
}

/// Reads, checks and decrypts an object: header and payload.
pub fn read_payload(
    site: &dyn Site,
    keyring: &Keyring,
    obj: &WalObject,
    signers: &WalSigners,
) -> Result<(LogHeader, Vec<u8>)> {
    let (header, bytes) = read_checked(site, obj, signers)?;
    let keys = keyring.dataset_for_key_id(&header.dataset, header.key_id)?;
    Ok(wal_log::open(&keys, &obj.path, &bytes)?)
}

/// Seals and stores one log object; returns its id and path. Durable on the sites the vault's
/// policy requires when it returns Ok.
pub fn put(
    site: &dyn Site,
    keys: &DatasetKeys,
    signer: &ed25519_dalek::SigningKey,
    spec: &LogSpec,
    payload: &[u8],
) -> Result<(ObjectId, String)> {
    let (bytes, id) = wal_log::seal(keys, signer, spec, payload)?;
    let header = wal_log::parse("new", &bytes)?.header;
    let path = wal_log::path(&header, &id);
    site.put(&path, &bytes)?;
    Ok((id, path))
}

/// A segment assembled from the vault.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The bytes from the segment's start (at most [`SEGMENT_SIZE`]).
    pub bytes: Vec<u8>,
    /// True when the whole segment is there.
    pub complete: bool,
}

/// True for an object that is noise to a reader: damaged, or signed by no valid signer. A
/// hostile site can add such objects, so they are passed over like absent ones (the ledger's
/// anchors and the later valid WAL tell whether something real was lost); a site that fails to
/// answer, or a key that cannot open a valid object, is never taken for absence.
pub fn is_noise(e: &PgError) -> bool {
    matches!(e, PgError::Vault(embassy_core::Error::Corrupt { .. }))
}

/// Assembles segment `segno` of `timeline` from every valid object holding WAL of it (a
/// compacted segment object, pieces), contiguous from the segment's start, when they all agree
/// where they overlap (format.md §9b, "Objects that overlap"): two that differ anywhere are a
/// fork inside the timeline and the segment is refused as damage naming both and their
/// signers; neither is served. None when nothing of it is stored (noise passed over). An
/// error, never a shorter segment, when a stored object could not be read (site failure, key)
/// or when valid WAL of the segment follows a gap.
pub fn assemble_segment(
    site: &dyn Site,
    keyring: &Keyring,
    listing: &WalListing,
    timeline: u32,
    segno: u64,
    signers: &WalSigners,
) -> Result<Option<Assembled>> {
    let seg_start = segno * SEGMENT_SIZE;
    let seg_end = seg_start + SEGMENT_SIZE;
    let candidates: Vec<&WalObject> = listing
        .segments
        .iter()
        .chain(&listing.pieces)
        .filter(|o| o.name.timeline == timeline && o.name.start < seg_end && o.name.end > seg_start)
        .collect();
    // Signers of the objects read, by index into `candidates` (one object's bytes held at once).
    let mut signer: Vec<Option<[u8; 32]>> = vec![None; candidates.len()];
    let mut merger = Merger::new((seg_start, seg_end));
    for (i, obj) in candidates.iter().enumerate() {
        let (h, payload) = match read_payload(site, keyring, obj, signers) {
            Ok(read) => read,
            Err(e) if is_noise(&e) => continue,
            // Unread, it could be the copy that disagrees: nothing is served without it.
            Err(e) => return Err(e),
        };
        signer[i] = Some(h.signer);
        if let Err(d) = merger.add(i, h.start, &payload) {
            let key = |i: usize| signer[i].map_or(String::new(), |k| hex::encode(&k[..8]));
            return Err(PgError::Vault(embassy_core::Error::corrupt(
                &obj.path,
                format!(
                    "two valid WAL objects of timeline {timeline} hold different bytes at {}: a \
                     fork inside the timeline, written by a key that signs this dataset's WAL \
                     (this object's signer: {}; the other, {}, signed by {}); neither is served. \
                     Find who signed what (`embassy history`) and revoke the key that is not \
                     yours (`embassy keys revoke`): its unanchored objects then count as noise. \
                     Until then, or if it anchored them, restore to a point before {} \
                     (`--lsn`, `--time`)",
                    Lsn(d.at),
                    key(d.other),
                    candidates[d.kept].path,
                    key(d.kept),
                    Lsn(seg_start),
                ),
            )));
        }
    }
    let merged = merger.finish();
    if let Some((past, from)) = merged.beyond {
        return Err(PgError::Vault(embassy_core::Error::corrupt(
            &candidates[past].path,
            format!(
                "the WAL before it, from {}, is missing or damaged on the site: a gap in segment \
                 {segno:X} of timeline {timeline}",
                Lsn(from)
            ),
        )));
    }
    if merged.bytes.is_empty() {
        return Ok(None);
    }
    let complete = merged.bytes.len() as u64 == SEGMENT_SIZE;
    Ok(Some(Assembled {
        bytes: merged.bytes,
        complete,
    }))
}

/// The log object a promoted server replayed last on the timeline it left (`timeline`, up to
/// the switch point `lsn`), for its `promoted` entry to anchor: among the valid pieces and
/// segments holding the WAL just before `lsn`, the one whose bytes before `lsn` are the ones
/// the promoted server copied into its new timeline's first segment (`new_segment`, read from
/// its `pg_wal`), else the one `wal-fetch` would serve (pieces first, furthest end). None when
/// no valid object holds that WAL.
pub fn replayed_object(
    site: &dyn Site,
    keyring: &Keyring,
    dataset: &str,
    signers: &WalSigners,
    (timeline, lsn): (u32, u64),
    new_segment: Option<&[u8]>,
) -> Result<Option<ReplayedWal>> {
    let Some(last) = lsn.checked_sub(1) else {
        return Ok(None);
    };
    let segno = last / SEGMENT_SIZE;
    let seg_start = segno * SEGMENT_SIZE;
    let listing = list_segment(site, dataset, timeline, segno)?;
    // Comparing needs the payloads, so the reader key (a sealing credential has none).
    let compare = new_segment.is_some() && keyring.can_read(dataset);
    let mut found: Vec<(bool, &WalObject)> = Vec::new();
    for obj in listing.pieces.iter().chain(listing.segments.iter()) {
        if !(obj.name.start <= last && last < obj.name.end) {
            continue;
        }
        let read = if compare {
            read_payload(site, keyring, obj, signers)
        } else {
            read_checked(site, obj, signers)
        };
        let (header, payload) = match read {
            Ok(read) => read,
            Err(e) if is_noise(&e) => continue,
            Err(e) => return Err(e),
        };
        // The bytes before `lsn` this object holds, against the copy the server made of them
        // (pieces never cross a segment boundary: `header.start >= seg_start`).
        let same = compare
            && new_segment.is_some_and(|copy| {
                let at = |base: u64, pos: u64| pos.saturating_sub(base) as usize;
                let mine = payload.get(at(header.start, header.start)..at(header.start, lsn));
                let theirs = copy.get(at(seg_start, header.start)..at(seg_start, lsn));
                mine.is_some() && mine == theirs
            });
        found.push((same, obj));
    }
    // The server's copy says which bytes it replayed: an object holding other bytes there is
    // not what it replayed, and none is named rather than a wrong one.
    if compare && new_segment.is_some() && !found.iter().any(|(same, _)| *same) {
        return Ok(None);
    }
    found.sort_by_key(|(same, o)| {
        (
            std::cmp::Reverse(*same),
            o.name.kind != LogKind::Piece,
            std::cmp::Reverse(o.name.end),
            o.path.clone(),
        )
    });
    Ok(found.first().map(|(_, o)| ReplayedWal {
        object: o.name.id,
        timeline,
        start: o.name.start,
        end: o.name.end,
    }))
}

/// The stored timeline history file of `timeline`, if any: only one a ledger anchor names
/// (format 8, the streamer's first anchor on the timeline). PostgreSQL acts on a history file at
/// once and for good (a standby switches its target timeline, a promotion picks the next number),
/// so one a writer's key merely signed is never served: red team 10 planted one with home's
/// credential before a takeover, the embassy's standby followed it, and after the takeover it
/// was noise while PostgreSQL's choices stood (timelines that could not be streamed or restored).
pub fn history_file(
    site: &dyn Site,
    keyring: &Keyring,
    listing: &WalListing,
    timeline: u32,
    signers: &WalSigners,
) -> Result<Option<Vec<u8>>> {
    let mut last_err = None;
    for obj in listing
        .histories
        .iter()
        .filter(|o| o.name.timeline == timeline)
        .filter(|o| signers.authority().direct_anchor(&o.name.id).is_some())
    {
        match read_payload(site, keyring, obj, signers) {
            Ok((_, bytes)) => return Ok(Some(bytes)),
            Err(e) if is_noise(&e) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Who may have signed a dataset's WAL objects, from its verified ledger history (judged at
/// the time each object was anchored, see [`WalSigners`]).
pub fn dataset_signers(vault: &Vault, dataset: &str) -> Result<WalSigners> {
    let history = vault.history(dataset)?;
    Ok(WalSigners::new(vault.wal_authority(&history), dataset)
        .with_cutoff(vault.wal_cutoff(&history)))
}

/// What keyless WAL verification found.
#[derive(Debug, Clone, Default)]
pub struct WalVerifyReport {
    /// Objects whose name, hash and signature checked out.
    pub objects_ok: usize,
    /// Problems, one line each (empty when all is well).
    pub problems: Vec<String>,
    /// Noise: objects no valid signer made (a revoked or foreign key, with no accepted anchor
    /// covering them while their signer was active), one line each with the path; ignored by
    /// readers and not an integrity failure.
    pub noise: Vec<String>,
    /// Valid objects over WAL another valid object of their timeline holds, not both anchored
    /// as the streamer anchors: a write retried, or a fork a key that signs the dataset's WAL
    /// made. Keyless verification cannot compare sealed bytes: one line each, not a failure
    /// (readers refuse WAL whose objects disagree; `verify --deep` compares, see [`forks`]).
    pub overlapping: Vec<String>,
    /// Newest position per timeline.
    pub ends: BTreeMap<u32, Lsn>,
    /// Gaps found in the piece/segment coverage: (timeline, from, to).
    pub gaps: Vec<(u32, Lsn, Lsn)>,
    /// The WAL retention cut-off: WAL ending at or before it was collected on purpose, so its
    /// absence is not reported.
    pub cutoff: WalCutoff,
}

impl WalVerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.gaps.is_empty()
    }
}

/// Verifies a dataset's WAL without keys: every object's name, hash and signature; that each
/// object's `prev` exists (the hash chain, unless compaction made it unreferenced and it was
/// collected); that the ledger's `LogRangeAdded` anchors name stored objects; and that pieces
/// and segments cover each timeline without gaps.
pub fn verify(vault: &Vault, dataset: &str) -> Result<WalVerifyReport> {
    let site = vault.site().as_ref();
    let history = vault.history(dataset)?;
    let authority = vault.wal_authority(&history);
    let listing = list(site, dataset)?;
    let mut report = WalVerifyReport {
        cutoff: vault.wal_cutoff(&history),
        ..Default::default()
    };
    // Nothing refers to WAL objects but by the names of log objects: strays are noise.
    for s in &listing.strays {
        report
            .noise
            .push(format!("{s}: not a WAL log object name: ignored"));
    }
    // First every object's keyless checks, then who may have signed it: an anchor covers the
    // objects its `prev` chain reaches, so the chains are needed before the signers are judged.
    let mut parsed: Vec<(&WalObject, LogHeader)> = Vec::new();
    // Objects that do not hash to their names or do not parse: judged below.
    let mut damaged: Vec<(&WalObject, String)> = Vec::new();
    for obj in listing
        .pieces
        .iter()
        .chain(&listing.segments)
        .chain(&listing.histories)
    {
        let checked = site
            .get(&obj.path)
            .map_err(PgError::from)
            .and_then(|bytes| {
                if ObjectId::of(&bytes) != obj.name.id {
                    return Err(PgError::Vault(embassy_core::Error::corrupt(
                        &obj.path,
                        "the bytes do not hash to the id in the name",
                    )));
                }
                let parsed = wal_log::parse(&obj.path, &bytes)?;
                if !obj.name.matches(&parsed.header) {
                    return Err(PgError::Vault(embassy_core::Error::corrupt(
                        &obj.path,
                        "the header does not match the name (moved or renamed)",
                    )));
                }
                Ok(parsed.header)
            });
        match checked {
            Ok(h) => parsed.push((obj, h)),
            Err(e) => damaged.push((obj, e.to_string())),
        }
    }
    let prev_of: HashMap<ObjectId, Option<ObjectId>> =
        parsed.iter().map(|(o, h)| (o.name.id, h.prev)).collect();
    let coverage = authority.coverage(&prev_of);
    let mut ids = BTreeMap::new();
    let mut prevs = Vec::new();
    // Segment objects that checked out: (timeline, start, end). Garbage collection removes a
    // piece only when one of them covers it, so a missing piece they cover is not a gap.
    let mut segments_ok: Vec<(u32, u64, u64)> = Vec::new();
    let mut valid: Vec<&WalObject> = Vec::new();
    for (obj, h) in &parsed {
        // Through a chain, or directly (a history file an anchor names).
        let anchored = coverage
            .get(&obj.name.id)
            .copied()
            .or_else(|| authority.direct_anchor(&obj.name.id));
        if !authority.allows(&h.signer, anchored) {
            report.noise.push(format!(
                "{}: signed by {}, which is not an active signer of dataset {dataset}{}: ignored",
                obj.path,
                hex::encode(&h.signer[..8]),
                match anchored {
                    Some(seq) =>
                        format!(" and was not one at ledger entry {seq}, which anchors it"),
                    None => " and no accepted ledger entry anchors it".to_string(),
                }
            ));
            continue;
        }
        report.objects_ok += 1;
        valid.push(*obj);
        ids.insert(obj.name.id, obj.path.clone());
        if let Some(p) = h.prev {
            prevs.push((*obj, p));
        }
        if h.kind == LogKind::Segment {
            segments_ok.push((h.timeline, h.start, h.end));
        }
    }
    // A damaged object is damage when an accepted anchor names it or a valid object's chain
    // needs it, and noise otherwise (nothing accepted refers to it).
    for (obj, why) in damaged {
        let anchored = authority.direct_anchor(&obj.name.id).is_some();
        let needed = prevs.iter().any(|(_, p)| *p == obj.name.id);
        if anchored || needed {
            report.problems.push(why);
        } else {
            report.noise.push(format!(
                "{why}; neither anchored by an accepted ledger entry nor the previous object of \
                 a valid one: ignored"
            ));
        }
    }
    report.ends = BTreeMap::new();
    for o in valid.iter().filter(|o| o.name.kind != LogKind::History) {
        let e = report.ends.entry(o.name.timeline).or_default();
        *e = (*e).max(Lsn(o.name.end));
    }
    report.problems.extend(abandoned_anchored(
        &history,
        valid.iter().copied(),
        &report.cutoff,
    ));
    for (obj, prev) in &prevs {
        // A piece's predecessor ended where it starts, on its timeline or (at a timeline switch)
        // on an earlier one; collected after compaction when a segment covers it.
        // Below the retention cut-off, it was collected on purpose.
        let collected = report.cutoff.collects(obj.name.start)
            || obj.name.kind == LogKind::Piece
                && segments_ok.iter().any(|&(tl, s, e)| {
                    tl <= obj.name.timeline && s < obj.name.start && obj.name.start <= e
                });
        if !ids.contains_key(prev) && !collected {
            report.problems.push(format!(
                "{}: the previous object {} of its chain is missing",
                obj.path,
                prev.short()
            ));
        }
    }
    report.problems.extend(missing_anchored(
        &history,
        |id| ids.contains_key(id),
        &segments_ok,
        &report.cutoff,
    ));
    // A timeline after the first is followed through its history file: WAL of one whose
    // history file no site object validly holds cannot be restored past the switch (red team
    // 9: the history file of a fenced or revoked streamer turned to noise, and a planted name
    // kept the streamer from storing it; verify said OK, the restore failed).
    let with_history: std::collections::BTreeSet<u32> = valid
        .iter()
        .filter(|o| o.name.kind == LogKind::History)
        .map(|o| o.name.timeline)
        .collect();
    let with_wal: std::collections::BTreeSet<u32> = valid
        .iter()
        .filter(|o| o.name.kind != LogKind::History && o.name.timeline > 1)
        .map(|o| o.name.timeline)
        .collect();
    // Every timeline number up to the newest one the vault holds has its history file: a
    // missing one stops PostgreSQL's search for the newest timeline there (red team 10: timeline
    // 2's file turned to noise, timeline 3 could no longer be reached).
    let newest_timeline = valid.iter().map(|o| o.name.timeline).max().unwrap_or(1);
    for tl in
        (2..=newest_timeline).filter(|tl| !with_history.contains(tl) && !with_wal.contains(tl))
    {
        report.problems.push(format!(
            "timeline {tl} has no valid timeline history file ({tl:08X}.history) while timeline \
             {newest_timeline} is stored: a restore cannot reach the newer timelines; repair \
             this site from another site"
        ));
    }
    for tl in with_wal.difference(&with_history) {
        report.problems.push(format!(
            "timeline {tl} has WAL but no valid timeline history file ({tl:08X}.history): a \
             restore cannot follow it past the switch point; repair this site from another \
             site"
        ));
    }
    overlaps(&valid, &coverage, &authority, &mut report);
    // Coverage: per timeline, pieces and segments together must be contiguous from the first.
    let mut by_tl: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for o in valid.iter().filter(|o| o.name.kind != LogKind::History) {
        by_tl
            .entry(o.name.timeline)
            .or_default()
            .push((o.name.start, o.name.end));
    }
    for (tl, mut ranges) in by_tl {
        ranges.sort();
        let mut reach = ranges[0].1;
        for (s, e) in ranges.into_iter().skip(1) {
            // Below the retention cut-off WAL may be gone (collection deletes in any order).
            if s > reach && !report.cutoff.collects(s) {
                let from = reach.max(report.cutoff.lsn);
                report.gaps.push((tl, Lsn(from), Lsn(s)));
            }
            reach = reach.max(e);
        }
    }
    Ok(report)
}

/// Valid objects of one timeline and kind over the same WAL (history files apart). Honest
/// streaming writes each range once per kind (a compacted segment beside its pieces is another
/// kind), resumes after the newest object and compacts a segment once, so two valid segment
/// objects of one segment, or two anchored pieces over the same WAL, are a fork a key that
/// signs the dataset's WAL made (or a site that hid the newest piece from the streamer): a
/// problem. An unanchored object over another's WAL is also what a retried write leaves: one
/// line in [`WalVerifyReport::overlapping`]. A whole segment over pieces (or pieces over a
/// segment) is what compaction writes and is not judged here: only a reader key can tell its
/// bytes from a forged compaction's (see [`forks`]).
fn overlaps(
    valid: &[&WalObject],
    coverage: &HashMap<ObjectId, u64>,
    authority: &WalAuthority,
    report: &mut WalVerifyReport,
) {
    let anchored = |o: &WalObject| {
        coverage.contains_key(&o.name.id) || authority.direct_anchor(&o.name.id).is_some()
    };
    let mut groups: BTreeMap<(u32, bool), Vec<&WalObject>> = BTreeMap::new();
    for o in valid.iter().filter(|o| o.name.kind != LogKind::History) {
        groups
            .entry((o.name.timeline, o.name.kind == LogKind::Segment))
            .or_default()
            .push(o);
    }
    for ((timeline, segments), mut objects) in groups {
        objects.sort_by_key(|o| (o.name.start, std::cmp::Reverse(o.name.end)));
        // The object reaching furthest so far: each later one starting before its end overlaps it.
        let mut reach: Option<&WalObject> = None;
        for o in objects {
            let Some(r) = reach else {
                reach = Some(o);
                continue;
            };
            if o.name.start < r.name.end {
                let both = anchored(o) && anchored(r);
                if segments || both {
                    report.problems.push(format!(
                        "{} and {}: two valid {} of timeline {timeline} over the same WAL ({} to \
                         {}){}: a fork inside the timeline, written by a key that signs this \
                         dataset's WAL (or the streamer resumed before WAL a site hid from it). \
                         Readers refuse it if their bytes differ; `embassy verify --deep` with a \
                         reader key compares them. Revoke the key if it is not yours",
                        r.path,
                        o.path,
                        if segments {
                            "segment objects"
                        } else {
                            "pieces"
                        },
                        Lsn(o.name.start),
                        Lsn(o.name.end.min(r.name.end)),
                        if both { ", both anchored" } else { "" },
                    ));
                } else {
                    report.overlapping.push(format!(
                        "{}: over WAL {} holds ({} to {}), not both anchored: a write retried, \
                         or a fork a key that signs this dataset's WAL made; not compared \
                         without a reader key (`embassy verify --deep` compares)",
                        o.path,
                        r.path,
                        Lsn(o.name.start),
                        Lsn(o.name.end.min(r.name.end)),
                    ));
                }
            }
            if o.name.end > r.name.end {
                reach = Some(o);
            }
        }
    }
}

/// With a reader key: every segment of every timeline of `dataset` assembled as a restore
/// assembles it, one problem line per segment refused (valid objects that hold different bytes:
/// a fork inside the timeline; or a gap). What keyless verification cannot see: a compaction
/// forged over anchored pieces. An error only when the site or key fails.
pub fn forks(vault: &Vault, keyring: &Keyring, dataset: &str) -> Result<Vec<String>> {
    let site = vault.site().as_ref();
    let listing = list(site, dataset)?;
    let signers = dataset_signers(vault, dataset)?;
    let mut segments: std::collections::BTreeSet<(u32, u64)> = Default::default();
    // A valid object spans at most 64 MiB (four segments, `wal_log::parse` refuses more); a
    // longer name is noise, and a site's name must not make this loop long.
    for o in listing.pieces.iter().chain(&listing.segments) {
        if o.name.end > o.name.start {
            let first = o.name.start / SEGMENT_SIZE;
            let last = ((o.name.end - 1) / SEGMENT_SIZE).min(first + 3);
            segments.extend((first..=last).map(|segno| (o.name.timeline, segno)));
        }
    }
    let mut problems = Vec::new();
    for (timeline, segno) in segments {
        match assemble_segment(site, keyring, &listing, timeline, segno, &signers) {
            Ok(_) => {}
            Err(e) if is_noise(&e) => problems.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(problems)
}

/// The WAL the accepted `log_range_added` entries of `history` anchor that a site does not hold:
/// one problem line per anchored object (`manifest`, or a timeline `history` file) for which
/// `held` is false, unless a held segment on its timeline covers it (`segments`: timeline,
/// start, end; garbage collection removes a piece only then) or it ends at or before the
/// retention cut-off (collected on purpose; history files are never collected). The one rule
/// for keyless `verify` (`held`: objects that checked out) and a look at a site (`status`:
/// objects the site lists, so a lost or withheld segment in the middle of the WAL is damage at
/// once, not only at the next verification; red team 11).
pub fn missing_anchored(
    history: &[embassy_core::history::ledger::Record],
    held: impl Fn(&ObjectId) -> bool,
    segments: &[(u32, u64, u64)],
    cutoff: &WalCutoff,
) -> Vec<String> {
    use embassy_core::history::ledger::Event;
    let mut problems = Vec::new();
    for r in history {
        let Event::LogRangeAdded {
            manifest,
            timeline,
            end,
            history: anchored_history,
            ..
        } = &r.entry.event
        else {
            continue;
        };
        if let Some(h) = anchored_history {
            if !held(h) {
                problems.push(format!(
                    "ledger entry {} anchors timeline history file {} which is not stored (or \
                     not valid)",
                    r.entry.seq,
                    h.short()
                ));
            }
        }
        if !held(manifest) && !covered_piece(segments, *timeline, *end) && !cutoff.collects(*end) {
            problems.push(format!(
                "ledger entry {} anchors WAL object {} which is not stored (or not valid)",
                r.entry.seq,
                manifest.short()
            ));
        }
    }
    problems
}

/// Timelines whose WAL starts before where the ledger anchors their parent's WAL to, with no
/// takeover that decided it: one problem line each. A new timeline's WAL starts at the segment
/// holding its switch point, so when the parent's (the next lower timeline that has WAL)
/// anchored, acknowledged WAL reaches past that segment, the newest timeline leaves it out and a
/// restore of the latest state, which follows the newest timeline, loses it. An authoritative
/// `promoted` entry naming the timeline decided that (a takeover, `promote --accept-data-loss`);
/// anything else is a failover at home that dropped acknowledged commits, or a stolen but still
/// valid credential that forked the history from an older copy of the database (red team 11).
/// `objects`: the WAL objects judged (history files are passed over); the segment of the switch
/// point is not judged (a crashed primary's last record, cut there, is
/// lost to any failover). The one rule for keyless `verify` (valid objects) and a look at a site
/// (`status`, listed names).
pub fn abandoned_anchored<'a>(
    history: &[embassy_core::history::ledger::Record],
    objects: impl IntoIterator<Item = &'a WalObject>,
    cutoff: &WalCutoff,
) -> Vec<String> {
    use embassy_core::history::ledger::Event;
    // Per timeline, where its first piece or segment starts.
    let mut first_start: BTreeMap<u32, u64> = BTreeMap::new();
    for o in objects
        .into_iter()
        .filter(|o| o.name.kind != LogKind::History)
    {
        let s = first_start.entry(o.name.timeline).or_insert(o.name.start);
        *s = (*s).min(o.name.start);
    }
    let mut anchored_end: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut decided: Vec<u32> = Vec::new();
    for r in history {
        match &r.entry.event {
            Event::LogRangeAdded { timeline, end, .. } => {
                let e = anchored_end.entry(*timeline).or_insert((0, 0));
                if *end > e.0 {
                    *e = (*end, r.entry.seq);
                }
            }
            Event::Promoted { timeline, .. } if r.refused.is_none() => decided.push(*timeline),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    for (&timeline, &start) in first_start.range(2..) {
        if decided.contains(&timeline) || cutoff.collects(start) {
            continue;
        }
        let Some((&parent, _)) = first_start.range(..timeline).next_back() else {
            continue;
        };
        let Some(&(end, seq)) = anchored_end.get(&parent) else {
            continue;
        };
        let switch_segment_end = (start / crate::lsn::SEGMENT_SIZE + 1) * crate::lsn::SEGMENT_SIZE;
        if end > switch_segment_end {
            problems.push(format!(
                "timeline {timeline} starts at {} while ledger entry {seq} anchors timeline \
                 {parent}'s WAL up to {}: the newest timeline leaves out acknowledged WAL of \
                 timeline {parent}, and no takeover (an authoritative promotion) decided it. A \
                 restore of the latest state follows timeline {timeline} and loses those \
                 commits; timeline {parent}'s WAL stays stored. Either a failover at home \
                 dropped acknowledged commits, or a credential that signs this dataset's WAL \
                 forked the history from an older copy of the database: find out which, and \
                 revoke the credential if it is not yours (embassy keys revoke)",
                Lsn(start),
                Lsn(end)
            ));
        }
    }
    problems
}

/// True when a stored, checked segment object on `timeline` covers the piece that ended at
/// `end`: pieces never cross a segment boundary, so the segment holding the byte before `end`
/// holds the whole piece. A deleted segment covers nothing, so a missing anchored segment is
/// still reported.
fn covered_piece(segments: &[(u32, u64, u64)], timeline: u32, end: u64) -> bool {
    segments
        .iter()
        .any(|&(tl, s, e)| tl == timeline && s < end && end <= e)
}
