//! WAL log objects: small pieces of a database's write-ahead log (PostgreSQL WAL), sealed to the
//! dataset's reader like packs, with a plaintext signed header so a keyless verifier can check
//! names, signatures and the hash chain that links each object to the one before it.
//!
//! ```text
//! "EMBWAL01" | u32 LE header length | CBOR LogHeader
//!            | Ed25519 signature (64) by header.signer over "data-embassy wal log v1\0" | CBOR
//!            | body: ChaCha20-Poly1305(object key, nonce 0,
//!                    aad = "EMBWALB1" | BLAKE3(CBOR LogHeader), compression (1) | payload)
//! object key: HPKE (X25519, HKDF-SHA256, export-only) to the dataset's reader key, encapsulated
//!             key in the header; info = "data-embassy wal v1\0" | dataset | 0 | key id
//! path: wal/<dataset>/<timeline, 8 hex>/<kind p|s|h>/<start, 16 hex>-<end, 16 hex>-<object id>
//! ```
//!
//! A fresh key per object means a write-only sealing credential can stream WAL it cannot read
//! back. The header's `prev` names the previous object of the stream by id (the BLAKE3 hash of
//! its bytes), so the objects form a chain anchored in the ledger by `LogRangeAdded` entries.

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::crypto::{ObjectKey, ENCAPSULATED_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::keys::{self, DatasetKeys};

/// Magic at the start of every WAL log object.
pub const MAGIC: &[u8; 8] = b"EMBWAL01";
const SIGNATURE_LABEL: &[u8] = b"data-embassy wal log v1";
const BODY_AAD: &[u8; 8] = b"EMBWALB1";
/// Largest payload one log object may hold (a whole 16 MiB segment, with room for 64 MiB
/// segments); a larger claim is damage or an attack and is refused before any allocation.
pub const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;
/// Largest header accepted.
pub const MAX_HEADER: usize = 4096;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// What a log object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(into = "u8", try_from = "u8")]
pub enum LogKind {
    /// A piece of WAL as it streamed (sealed at least every second).
    Piece,
    /// A whole segment, written by compaction from pieces.
    Segment,
    /// A timeline history file (`00000002.history`); `start` and `end` are 0.
    History,
}

impl LogKind {
    /// The letter used in paths.
    pub fn letter(self) -> char {
        match self {
            LogKind::Piece => 'p',
            LogKind::Segment => 's',
            LogKind::History => 'h',
        }
    }
}

impl From<LogKind> for u8 {
    fn from(k: LogKind) -> u8 {
        match k {
            LogKind::Piece => 0,
            LogKind::Segment => 1,
            LogKind::History => 2,
        }
    }
}

impl TryFrom<u8> for LogKind {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            0 => Ok(LogKind::Piece),
            1 => Ok(LogKind::Segment),
            2 => Ok(LogKind::History),
            _ => Err(format!("unknown log object kind {v}")),
        }
    }
}

/// The plaintext, signed header of a log object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    /// The dataset.
    pub dataset: String,
    /// Piece, segment or history file.
    pub kind: LogKind,
    /// Timeline.
    pub timeline: u32,
    /// Position of the first byte (LSN).
    pub start: u64,
    /// Position just after the last byte.
    pub end: u64,
    /// The previous object of this stream (hash chain); None for the first after a gap-free
    /// start (a base backup or a slot creation).
    pub prev: Option<ObjectId>,
    /// When the newest byte was received, ns since the Unix epoch.
    pub captured_at_ns: i64,
    /// Ed25519 key that signed the header; must be an active signer of the dataset.
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
    /// Reader key id the body is sealed to.
    #[serde(with = "serde_bytes")]
    pub key_id: [u8; 8],
    /// HPKE encapsulated key of the body.
    #[serde(with = "serde_bytes")]
    pub encapsulated: [u8; ENCAPSULATED_LEN],
    /// Stored length of the body (ciphertext and tag).
    pub body_len: u64,
    /// The source's identity (PostgreSQL's system identifier), 0 if unknown: WAL of one
    /// dataset must come from one cluster.
    #[serde(default)]
    pub system_id: u64,
}

impl LogHeader {
    /// Plaintext length the body must decrypt to.
    pub fn payload_len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// A log object whose header and signature checked out (without keys).
#[derive(Debug, Clone)]
pub struct ParsedLog {
    /// The header.
    pub header: LogHeader,
    /// Where the body starts in the object's bytes.
    pub body_offset: usize,
    /// BLAKE3 of the header's CBOR (bound into the body's AAD).
    pub header_hash: [u8; 32],
}

fn hpke_info(dataset: &str, key_id: &[u8; 8]) -> Vec<u8> {
    let mut info = b"data-embassy wal v1\0".to_vec();
    info.extend_from_slice(dataset.as_bytes());
    info.push(0);
    info.extend_from_slice(key_id);
    info
}

fn body_aad(header_hash: &[u8; 32]) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..8].copy_from_slice(BODY_AAD);
    aad[8..].copy_from_slice(header_hash);
    aad
}

/// What a new log object covers (everything in the header but the crypto fields).
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// Piece, segment or history.
    pub kind: LogKind,
    /// Timeline.
    pub timeline: u32,
    /// First position.
    pub start: u64,
    /// Position after the last byte (`start + payload.len()` for WAL, 0 for history).
    pub end: u64,
    /// Previous object of the chain.
    pub prev: Option<ObjectId>,
    /// Capture time of the newest byte.
    pub captured_at_ns: i64,
    /// The source's identity (PostgreSQL's system identifier), 0 if unknown.
    pub system_id: u64,
}

/// Seals `payload` into a log object: compressed with zstd (when it helps), encrypted under a
/// fresh key sealed to `keys`' reader, header signed by `signer`. Returns the bytes and id.
pub fn seal(
    keys: &DatasetKeys,
    signer: &ed25519_dalek::SigningKey,
    spec: &LogSpec,
    payload: &[u8],
) -> Result<(Vec<u8>, ObjectId)> {
    let expected = match spec.kind {
        LogKind::History => payload.len() as u64,
        _ => spec.end.checked_sub(spec.start).ok_or_else(|| {
            Error::invalid(format!(
                "log range {:X}..{:X} runs backwards",
                spec.start, spec.end
            ))
        })?,
    };
    if expected != payload.len() as u64 || expected > MAX_PAYLOAD {
        return Err(Error::invalid(format!(
            "log object payload of {} bytes does not match its range {:X}..{:X} (or exceeds {MAX_PAYLOAD})",
            payload.len(),
            spec.start,
            spec.end
        )));
    }
    let key_id = keys.key_id();
    let (key, encapsulated) =
        ObjectKey::seal_to(&keys.reader_public, &hpke_info(&keys.dataset, &key_id));
    let mut plain = Vec::with_capacity(payload.len() / 2 + 16);
    let compressed = zstd::bulk::compress(payload, 1)
        .ok()
        .filter(|c| c.len() < payload.len() * 97 / 100);
    match compressed {
        Some(c) => {
            plain.push(COMPRESSION_ZSTD);
            plain.extend_from_slice(&c);
        }
        None => {
            plain.push(COMPRESSION_NONE);
            plain.extend_from_slice(payload);
        }
    }
    let header = LogHeader {
        dataset: keys.dataset.clone(),
        kind: spec.kind,
        timeline: spec.timeline,
        start: spec.start,
        end: if spec.kind == LogKind::History {
            payload.len() as u64
        } else {
            spec.end
        },
        prev: spec.prev,
        captured_at_ns: spec.captured_at_ns,
        signer: signer.verifying_key().to_bytes(),
        key_id,
        encapsulated,
        body_len: (plain.len() + TAG_LEN) as u64,
        system_id: spec.system_id,
    };
    let header = if spec.kind == LogKind::History {
        LogHeader { start: 0, ..header }
    } else {
        header
    };
    let body = cbor::to_vec(&header);
    let header_hash: [u8; 32] = blake3::hash(&body).into();
    let tag = key.encrypt_in_place(0, &body_aad(&header_hash), &mut plain);
    let signature = keys::sign(signer, SIGNATURE_LABEL, &body);
    let mut out = Vec::with_capacity(12 + body.len() + 64 + plain.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&signature);
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    let id = ObjectId::of(&out);
    Ok((out, id))
}

/// Checks a log object without keys: magic, lengths, header, signature by the key the header
/// names, and range sanity. Whether that key may sign is the caller's check (the dataset's
/// active signers).
pub fn parse(path: &str, bytes: &[u8]) -> Result<ParsedLog> {
    let bad = |p: String| Error::corrupt(path, format!("WAL log object: {p}"));
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad("bad magic or too short".into()));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    if len > MAX_HEADER {
        return Err(bad(format!(
            "header of {len} bytes is larger than {MAX_HEADER}"
        )));
    }
    let sig_end = 12 + len + 64;
    if bytes.len() < sig_end {
        return Err(bad("header length out of range".into()));
    }
    let body = &bytes[12..12 + len];
    let header: LogHeader = cbor::from_slice(body).map_err(bad)?;
    if !keys::verify_signature(
        &header.signer,
        SIGNATURE_LABEL,
        body,
        &bytes[12 + len..sig_end],
    ) {
        return Err(bad("header signature does not verify".into()));
    }
    if header.body_len != (bytes.len() - sig_end) as u64 || (header.body_len as usize) < TAG_LEN + 1
    {
        return Err(bad(format!(
            "body is {} bytes but the header says {}",
            bytes.len() - sig_end,
            header.body_len
        )));
    }
    if header.end < header.start || header.payload_len() > MAX_PAYLOAD {
        return Err(bad(format!(
            "range {:X}..{:X} is backwards or larger than {MAX_PAYLOAD} bytes",
            header.start, header.end
        )));
    }
    if header.kind == LogKind::Segment && !header.start.is_multiple_of(16 * 1024 * 1024) {
        return Err(bad(
            "a segment object does not start on a segment boundary".into()
        ));
    }
    crate::layout::check_dataset_name(&header.dataset).map_err(|e| bad(e.to_string()))?;
    Ok(ParsedLog {
        header,
        body_offset: sig_end,
        header_hash: blake3::hash(body).into(),
    })
}

/// Parses, decrypts and checks a log object with the dataset's reader key: returns the header
/// and the payload (exactly `end - start` bytes of WAL, or the history file).
pub fn open(keys: &DatasetKeys, path: &str, bytes: &[u8]) -> Result<(LogHeader, Vec<u8>)> {
    let parsed = parse(path, bytes)?;
    let h = &parsed.header;
    let bad = |p: String| Error::corrupt(path, format!("WAL log object: {p}"));
    if h.dataset != keys.dataset {
        return Err(bad(format!(
            "belongs to dataset {}, not {}",
            h.dataset, keys.dataset
        )));
    }
    if h.key_id != keys.key_id() {
        return Err(bad(format!(
            "sealed to reader key {} but these keys are {}",
            hex::encode(h.key_id),
            hex::encode(keys.key_id())
        )));
    }
    let key = ObjectKey::open_with(
        keys.reader()?,
        &h.encapsulated,
        &hpke_info(&h.dataset, &h.key_id),
    )
    .map_err(|_| bad("the body's key does not open with the reader key".into()))?;
    let mut sealed = bytes[parsed.body_offset..].to_vec();
    key.decrypt_in_place(0, &body_aad(&parsed.header_hash), &mut sealed)
        .map_err(|_| bad("body authentication failed: altered or moved".into()))?;
    let plain = &sealed[..sealed.len() - TAG_LEN];
    let want = h.payload_len();
    let payload = match plain.first() {
        Some(&COMPRESSION_NONE) => plain[1..].to_vec(),
        Some(&COMPRESSION_ZSTD) => {
            let mut out = Vec::with_capacity(want as usize);
            zstd::zstd_safe::decompress(&mut out, &plain[1..])
                .map_err(|_| bad("body does not decompress within its stated size".into()))?;
            out
        }
        _ => return Err(bad("unknown compression".into())),
    };
    if payload.len() as u64 != want {
        return Err(bad(format!(
            "holds {} bytes, the header says {want}",
            payload.len()
        )));
    }
    Ok((parsed.header, payload))
}

/// Prefix of a dataset's WAL log objects.
pub fn prefix(dataset: &str) -> String {
    format!("wal/{dataset}/")
}

/// Prefix of one timeline's objects of one kind: listing it gives them in LSN order.
pub fn kind_prefix(dataset: &str, timeline: u32, kind: LogKind) -> String {
    format!("wal/{dataset}/{timeline:08x}/{}/", kind.letter())
}

/// The path of a log object.
pub fn path(h: &LogHeader, id: &ObjectId) -> String {
    format!(
        "{}{:016x}-{:016x}-{id}",
        kind_prefix(&h.dataset, h.timeline, h.kind),
        h.start,
        h.end
    )
}

/// What a log object's path says: dataset, timeline, kind, start, end, id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogName {
    /// The dataset.
    pub dataset: String,
    /// Timeline.
    pub timeline: u32,
    /// Kind.
    pub kind: LogKind,
    /// Start position.
    pub start: u64,
    /// End position.
    pub end: u64,
    /// Object id (hash of the bytes).
    pub id: ObjectId,
}

impl LogName {
    /// True when a parsed header matches this name.
    pub fn matches(&self, h: &LogHeader) -> bool {
        self.dataset == h.dataset
            && self.timeline == h.timeline
            && self.kind == h.kind
            && self.start == h.start
            && self.end == h.end
    }
}

/// Parses a log object path; None for anything else.
pub fn parse_path(path: &str) -> Option<LogName> {
    let mut parts = path.split('/');
    if parts.next()? != "wal" {
        return None;
    }
    let dataset = parts.next()?.to_string();
    let tl = parts.next()?;
    let kind = match parts.next()? {
        "p" => LogKind::Piece,
        "s" => LogKind::Segment,
        "h" => LogKind::History,
        _ => return None,
    };
    let name = parts.next()?;
    if parts.next().is_some() || tl.len() != 8 || name.len() != 16 + 1 + 16 + 1 + 64 {
        return None;
    }
    let timeline = u32::from_str_radix(tl, 16).ok()?;
    let start = u64::from_str_radix(&name[..16], 16).ok()?;
    let end = u64::from_str_radix(&name[17..33], 16).ok()?;
    let id = ObjectId::from_hex(&name[34..]).ok()?;
    if &name[16..17] != "-" || &name[33..34] != "-" {
        return None;
    }
    Some(LogName {
        dataset,
        timeline,
        kind,
        start,
        end,
        id,
    })
}

/// One accepted `LogRangeAdded` entry of a dataset's history: it anchors WAL object `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the anchoring ledger entry.
    pub seq: u64,
    /// The anchored log object (the newest piece or a whole segment).
    pub id: ObjectId,
    /// Timeline of the anchored range.
    pub timeline: u32,
    /// Start of the range since the previous anchor (as the entry says).
    pub start: u64,
    /// End of the anchored range.
    pub end: u64,
}

/// Who may have signed a dataset's WAL objects, judged at the time they were anchored (§9b of
/// `docs/format.md`): built from the *accepted* history only, it knows for each key the
/// sequence intervals in which it was an active signer, and which objects the ledger anchors.
///
/// A log object is valid when its signer is active at the head (the live tail, and anything the
/// current signers could write again anyway), or when an anchor covers it (names it, or reaches
/// it through the `prev` chain back to the previous anchored object) and its signer was active
/// at that anchor's sequence number. So revoking or rotating a streamer's key never invalidates
/// the WAL it streamed and anchored before, and a revoked key cannot add new WAL: nothing
/// accepted can anchor an object it signs after its revocation.
#[derive(Debug, Clone, Default)]
pub struct WalAuthority {
    /// Per key: half-open intervals `(after, until)` of sequence numbers `s` with
    /// `after < s < until` at which the key could sign (`until = u64::MAX`: still active).
    intervals: std::collections::HashMap<[u8; 32], Vec<(u64, u64)>>,
    /// Sequence number of the accepted head (0: empty history).
    head: u64,
    /// Accepted anchors, in sequence order.
    anchors: Vec<Anchor>,
    /// Earliest anchoring sequence number per directly anchored object.
    direct: std::collections::HashMap<ObjectId, u64>,
}

impl WalAuthority {
    /// Builds the authority from the signers' rights before the dataset's first entry
    /// (`start`, see [`crate::rights::Authority`]) and its accepted history (`Vault::history`):
    /// the rights rules are replayed entry by entry (one home for who may sign: revocations,
    /// re-grants without `stream_wal` and key rotations all end a key's WAL interval).
    pub fn new(start: crate::rights::Authority, history: &[crate::ledger::Record]) -> Self {
        use crate::ledger::Event;
        use crate::rights::Right;
        let mut out = WalAuthority::default();
        let mut authority = start;
        let mut active = authority.holders(Right::StreamWal);
        for key in &active {
            out.intervals.entry(*key).or_default().push((0, u64::MAX));
        }
        for r in history {
            let seq = r.entry.seq;
            out.head = out.head.max(seq);
            if r.refused.is_none() {
                authority.apply(&r.entry.event);
            }
            let now = authority.holders(Right::StreamWal);
            for key in now.iter().filter(|k| !active.contains(k)) {
                out.intervals.entry(*key).or_default().push((seq, u64::MAX));
            }
            for key in active.iter().filter(|k| !now.contains(k)) {
                if let Some(last) = out.intervals.get_mut(key).and_then(|v| v.last_mut()) {
                    last.1 = seq;
                }
            }
            active = now;
            if let Event::LogRangeAdded {
                manifest,
                timeline,
                start,
                end,
                ..
            } = &r.entry.event
            {
                out.anchors.push(Anchor {
                    seq,
                    id: *manifest,
                    timeline: *timeline,
                    start: *start,
                    end: *end,
                });
                out.direct.entry(*manifest).or_insert(seq);
            }
        }
        out
    }

    /// True when `key` could sign WAL at sequence number `seq` (it was added with the
    /// `stream_wal` right before `seq` and not revoked before it).
    pub fn active_at(&self, key: &[u8; 32], seq: u64) -> bool {
        self.intervals
            .get(key)
            .is_some_and(|v| v.iter().any(|&(after, until)| after < seq && seq < until))
    }

    /// True when `key` is an active signer at the head (may add WAL now).
    pub fn active_at_head(&self, key: &[u8; 32]) -> bool {
        self.active_at(key, self.head.saturating_add(1))
    }

    /// The keys active at the head.
    pub fn head_signers(&self) -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = self
            .intervals
            .keys()
            .filter(|k| self.active_at_head(k))
            .copied()
            .collect();
        out.sort();
        out
    }

    /// The sequence number of the earliest accepted entry that names object `id`, if any.
    pub fn direct_anchor(&self, id: &ObjectId) -> Option<u64> {
        self.direct.get(id).copied()
    }

    /// Accepted anchors, in sequence order.
    pub fn anchors(&self) -> &[Anchor] {
        &self.anchors
    }

    /// Whether a log object signed by `signer` is valid, given the sequence number of the
    /// anchor that covers it (None: no anchor covers it, the live tail).
    pub fn allows(&self, signer: &[u8; 32], anchored_at: Option<u64>) -> bool {
        self.active_at_head(signer) || anchored_at.is_some_and(|s| self.active_at(signer, s))
    }

    /// Which anchor covers each object, given every known object's `prev` (by id): walking
    /// anchors in sequence order, an anchor covers the object it names and the objects its
    /// `prev` chain reaches before an object an earlier anchor covers (or the chain ends, or
    /// an object is not known). Returns the anchoring sequence number per covered object.
    pub fn coverage(
        &self,
        prevs: &std::collections::HashMap<ObjectId, Option<ObjectId>>,
    ) -> std::collections::HashMap<ObjectId, u64> {
        let mut out = std::collections::HashMap::new();
        for a in &self.anchors {
            let mut cur = Some(a.id);
            let mut steps = 0usize;
            while let Some(id) = cur {
                if out.contains_key(&id) || steps > prevs.len() {
                    break;
                }
                out.insert(id, a.seq);
                steps += 1;
                cur = prevs.get(&id).copied().flatten();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSecret;

    #[test]
    fn wal_signers_are_judged_when_anchored() {
        use crate::ledger::{Entry, Event, Record};
        use std::collections::HashMap;
        let (k0, a, b) = ([0u8; 32], [1u8; 32], [2u8; 32]);
        let id = |t: &[u8]| ObjectId::of(t);
        let rec = |seq: u64, event: Event| {
            Record::new(
                id(&seq.to_le_bytes()),
                Entry {
                    dataset: "db".into(),
                    seq,
                    prev: None,
                    time_ns: 0,
                    signer: k0,
                    event,
                },
            )
        };
        let anchor = |seq: u64, obj: ObjectId| {
            rec(
                seq,
                Event::LogRangeAdded {
                    manifest: obj,
                    timeline: 1,
                    start: 0,
                    end: seq,
                    captured_at_ns: 0,
                },
            )
        };
        let added = |seq, key| {
            rec(
                seq,
                Event::SignerAdded {
                    key,
                    role: "x".into(),
                    rights: crate::rights::Right::sealing(false),
                },
            )
        };
        let revoked = |seq, key| {
            rec(
                seq,
                Event::SignerRevoked {
                    key,
                    reason: "x".into(),
                },
            )
        };
        // A streams p1 <- p2 <- p3 (anchored at 3), then p4 (anchored at 5); B is added at 4,
        // A revoked at 6; B streams p5 (prev p4) anchored at 7; p6 by A after that: unanchored.
        let history = vec![
            added(1, a),
            rec(
                2,
                Event::SignerRevoked {
                    key: [9; 32],
                    reason: "never added".into(),
                },
            ),
            anchor(3, id(b"p3")),
            added(4, b),
            anchor(5, id(b"p4")),
            revoked(6, a),
            anchor(7, id(b"p5")),
        ];
        let auth = WalAuthority::new(crate::rights::Authority::pinned(k0, &[k0]), &history);
        assert!(auth.active_at(&k0, 1) && auth.active_at_head(&k0));
        assert!(!auth.active_at(&a, 1) && auth.active_at(&a, 2) && auth.active_at(&a, 5));
        assert!(!auth.active_at(&a, 6) && !auth.active_at(&a, 7) && !auth.active_at_head(&a));
        assert!(!auth.active_at(&b, 4) && auth.active_at(&b, 5) && auth.active_at_head(&b));
        assert_eq!(auth.head_signers(), vec![k0, b]);
        let prevs: HashMap<ObjectId, Option<ObjectId>> = [
            (id(b"p1"), None),
            (id(b"p2"), Some(id(b"p1"))),
            (id(b"p3"), Some(id(b"p2"))),
            (id(b"p4"), Some(id(b"p3"))),
            (id(b"p5"), Some(id(b"p4"))),
            (id(b"p6"), Some(id(b"p5"))),
        ]
        .into_iter()
        .collect();
        let cov = auth.coverage(&prevs);
        assert_eq!(cov.get(&id(b"p1")), Some(&3));
        assert_eq!(cov.get(&id(b"p3")), Some(&3));
        assert_eq!(cov.get(&id(b"p4")), Some(&5));
        assert_eq!(cov.get(&id(b"p5")), Some(&7));
        assert_eq!(cov.get(&id(b"p6")), None);
        // A's anchored WAL stays valid after A's revocation; A's later WAL does not.
        assert!(auth.allows(&a, cov.get(&id(b"p1")).copied()));
        assert!(auth.allows(&a, cov.get(&id(b"p4")).copied()));
        assert!(!auth.allows(&a, cov.get(&id(b"p6")).copied()));
        // An object by A that B's post-revocation anchor covers is not A's to sign.
        assert!(!auth.allows(&a, Some(7)));
        // B's objects: valid at the head; a key never added: never.
        assert!(auth.allows(&b, None));
        assert!(!auth.allows(&[9; 32], Some(3)));
        assert_eq!(auth.direct_anchor(&id(b"p4")), Some(5));
    }

    #[test]
    fn seal_parse_open_round_trip_and_tamper() {
        let root = RootSecret::from_bytes(&[9u8; 32]);
        let keys = root.dataset_keys("db", 0);
        let signer = root.writer_signing_key(0);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let spec = LogSpec {
            kind: LogKind::Piece,
            timeline: 1,
            start: 0x100_0000,
            end: 0x100_0000 + payload.len() as u64,
            prev: None,
            captured_at_ns: 5,
            system_id: 7,
        };
        let (bytes, id) = seal(&keys, &signer, &spec, &payload).unwrap();
        assert_eq!(id, ObjectId::of(&bytes));
        let parsed = parse("x", &bytes).unwrap();
        let p = path(&parsed.header, &id);
        let name = parse_path(&p).unwrap();
        assert!(name.matches(&parsed.header));
        assert_eq!(name.id, id);
        let (h, back) = open(&keys, &p, &bytes).unwrap();
        assert_eq!(back, payload);
        assert_eq!(h.timeline, 1);
        for at in [3usize, 20, bytes.len() - 70, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(open(&keys, "x", &bad).is_err(), "flip at {at}");
        }
        assert!(open(&root.dataset_keys("other", 0), "x", &bytes).is_err());
        assert!(seal(
            &keys,
            &signer,
            &LogSpec {
                end: spec.end + 1,
                ..spec.clone()
            },
            &payload
        )
        .is_err());
    }

    /// Invariant 5 for WAL: a write-only sealing credential streams WAL it cannot read back,
    /// and the dataset's reader opens what it sealed.
    #[test]
    fn a_sealing_credential_seals_wal_it_cannot_open() {
        let root = RootSecret::from_bytes(&[9u8; 32]);
        let datasets = vec!["db".to_string()];
        let sealing = crate::keys::Credential::sealing(&root, "vault", "db-host", &datasets);
        let keys = sealing.dataset_keys("db").unwrap();
        let signer = sealing.signing_key().unwrap();
        let payload = vec![42u8; 8192];
        let spec = LogSpec {
            kind: LogKind::Piece,
            timeline: 1,
            start: 0,
            end: payload.len() as u64,
            prev: None,
            captured_at_ns: 1,
            system_id: 7,
        };
        let (bytes, id) = seal(&keys, &signer, &spec, &payload).unwrap();
        let p = path(&parse("x", &bytes).unwrap().header, &id);
        assert!(
            open(&keys, &p, &bytes).is_err(),
            "the writer read its own WAL"
        );
        let (_, back) = open(&root.dataset_keys("db", 0), &p, &bytes).unwrap();
        assert_eq!(back, payload);
    }
}
