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
use crate::error::{Error, Result};
use crate::format::layout;
use crate::id::ObjectId;
use crate::keys::crypto::{ObjectKey, ENCAPSULATED_LEN, TAG_LEN};
use crate::keys::{self, DatasetKeys};

/// Magic at the start of every WAL log object.
pub const MAGIC: &[u8; 8] = b"EMBWAL01";
const SIGNATURE_LABEL: &[u8] = b"data-embassy wal log v1";
const BODY_AAD: &[u8; 8] = b"EMBWALB1";
/// Largest payload one log object may hold ([`layout::MAX_LOG_PAYLOAD`]).
pub const MAX_PAYLOAD: u64 = layout::MAX_LOG_PAYLOAD;
/// Largest header accepted ([`layout::MAX_LOG_HEADER`]).
pub const MAX_HEADER: usize = layout::MAX_LOG_HEADER;

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
    crate::format::layout::check_dataset_name(&header.dataset).map_err(|e| bad(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSecret;

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
