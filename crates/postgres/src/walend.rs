//! The end of a dataset's durable WAL as a recovery target: the start of the last complete WAL
//! record the vault holds. A `--latest` restore pins recovery there (`recovery_target_lsn`,
//! inclusive), so PostgreSQL refuses to open for writes short of it ("recovery ended before
//! configured recovery target was reached") whatever `wal-fetch` answers.
//!
//! PostgreSQL needs a record that starts at or after an LSN target to know it is reached, so the
//! durable end itself (where the next, not yet written record would start) cannot be the target:
//! the last record is found by walking the record headers (`xl_tot_len`) of the newest segments.

use std::collections::HashSet;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::id::ObjectId;

use crate::error::Result;
use crate::lsn::{Lsn, SEGMENT_SIZE};
use crate::wal;

/// Size of a WAL page header at a segment's start (`SizeOfXLogLongPHD`).
const LONG_HEADER: u64 = 40;
/// Size of any other page's header (`SizeOfXLogShortPHD`).
const SHORT_HEADER: u64 = 24;
/// Size of a record header (`SizeOfXLogRecord`).
const RECORD_HEADER: u64 = 24;
/// `xlp_info` flag: the page starts with the rest of a record begun on an earlier page.
const FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info` flag: the record begun before this page was cut off by a crash, and the page's
/// first record (`XLOG_OVERWRITE_CONTRECORD`) was written after it.
const FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0004;
/// `xl_rmid` of the XLOG resource manager and `xl_info` of its segment switch record.
pub(crate) const RM_XLOG: u8 = 0;
pub(crate) const XLOG_SWITCH: u8 = 0x40;
/// `xl_rmid` of the transaction resource manager, the mask of its record kinds in `xl_info`,
/// and the kinds that make a transaction durable: commit, prepare, commit of a prepared one.
pub(crate) const RM_XACT: u8 = 1;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XACT_DURABLE: [u8; 3] = [0x00, 0x10, 0x30];

/// The start of the last complete record in `bytes`, WAL from `start` (a segment start) up to
/// the durable end `end` (records ending after it are not complete). None when no record starts
/// and ends inside it (or the bytes are not WAL).
pub fn last_record_start(bytes: &[u8], start: u64, end: u64) -> Option<u64> {
    walk(bytes, start, end)?.last_start
}

/// Where the last complete record that makes a transaction durable ends in `bytes` (WAL from
/// `start`, a segment start, up to `end`): a commit, a prepare or the commit of a prepared
/// transaction. A server that stopped before the end of the last one lost nothing anybody was
/// told was stored: other records past it belong to transactions that had not committed (a
/// crash failover drops them by design: red team 14), or carry no data at all (checkpoints,
/// segment switches, running transactions: a primary shut down after its standby was promoted
/// writes its shutdown checkpoint past the switch point, red team 13). `Ok(None)` when no such record starts and
/// ends inside it; [`NotWal`] when the bytes are not WAL.
pub fn last_data_end(
    bytes: &[u8],
    start: u64,
    end: u64,
) -> std::result::Result<Option<u64>, NotWal> {
    walk(bytes, start, end).map(|w| w.data_end).ok_or(NotWal)
}

/// Bytes that do not start like WAL (no valid page size in the first long page header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWal;

/// What walking the record headers of some WAL found.
struct Walked {
    /// Start of the last complete record.
    last_start: Option<u64>,
    /// End of the last complete commit, prepare or commit-prepared record.
    data_end: Option<u64>,
}

/// Walks the records of `bytes`, WAL from `start` (a segment start) up to `end`, the way
/// PostgreSQL reads them, stopping at the first record that is not whole and valid: each page
/// header must name its own address (a recycled segment's old pages name another); a record
/// crossing pages must find each next page marked as its continuation with the bytes it still
/// needs, and one cut off by a crash (the next page marked as overwriting it,
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`) is passed over, the walk going on at that page's first
/// record (red team 16: the aborted record taken as whole hid the WAL after the crash); each
/// record's `xl_prev` must name the record before it and its CRC-32C must match (red team 16:
/// a forged header after the last real record). None when the bytes are not WAL (no valid page
/// size in the first long header, or a first page that names another address).
fn walk(bytes: &[u8], start: u64, end: u64) -> Option<Walked> {
    if !start.is_multiple_of(SEGMENT_SIZE) || end <= start {
        return None;
    }
    let limit = (end - start).min(bytes.len() as u64);
    let at = |off: u64, n: usize| -> Option<&[u8]> {
        let from = usize::try_from(off).ok()?;
        bytes.get(from..from.checked_add(n)?)
    };
    let u16_at = |off: u64| at(off, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |off: u64| at(off, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |off: u64| {
        at(off, 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    // The page size, from the long header of the first segment (xlp_xlog_blcksz).
    let page = u64::from(u32_at(36)?);
    if !page.is_power_of_two() || !(1024..=65536).contains(&page) {
        return None;
    }
    let header = |off: u64| {
        if (start + off).is_multiple_of(SEGMENT_SIZE) {
            LONG_HEADER
        } else {
            SHORT_HEADER
        }
    };
    // A page header at `off` (a page start) that names its own address: its xlp_info and
    // xlp_rem_len.
    let page_header = |off: u64| -> Option<(u16, u64)> {
        if off + header(off) > limit || u64_at(off + 8)? != start + off {
            return None;
        }
        Some((u16_at(off + 2)?, u64::from(u32_at(off + 16)?)))
    };
    let (first_info, first_rem) = page_header(0)?;
    let mut cur = header(0);
    // The rest of a record begun before `start` (its pages are not checked: it is not walked).
    if first_info & FIRST_IS_CONTRECORD != 0 {
        let mut n = first_rem;
        while n > 0 {
            if cur.is_multiple_of(page) {
                cur += header(cur);
            }
            let take = (page - cur % page).min(n);
            cur += take;
            n -= take;
        }
    }
    let mut walked = Walked {
        last_start: None,
        data_end: None,
    };
    // Where the record before began (unknown for the first one walked, and after a record a
    // crash cut off).
    let mut prev: Option<u64> = None;
    let mut record = Vec::new();
    'records: loop {
        cur = cur.checked_add(7)? & !7; // records are MAXALIGNed
        if cur.is_multiple_of(page) {
            match page_header(cur) {
                Some((info, _)) if info & FIRST_IS_CONTRECORD == 0 => cur += header(cur),
                _ => break,
            }
        }
        if cur + 4 > limit {
            break;
        }
        let total = u64::from(u32_at(cur)?);
        if total < RECORD_HEADER {
            break; // zeros: the end of the WAL written so far
        }
        // The record's bytes, page by page.
        record.clear();
        let mut pos = cur;
        let mut need = total;
        loop {
            let take = (page - pos % page).min(need);
            if pos + take > limit {
                break 'records; // not whole yet
            }
            record.extend_from_slice(at(pos, take as usize)?);
            pos += take;
            need -= take;
            if need == 0 {
                break;
            }
            match page_header(pos) {
                Some((info, rem)) if info & FIRST_IS_CONTRECORD != 0 && rem == need => {
                    pos += header(pos);
                }
                Some((info, _)) if info & FIRST_IS_OVERWRITE_CONTRECORD != 0 => {
                    // A crash cut this record off; what was written after it starts here.
                    cur = pos + header(pos);
                    prev = None;
                    continue 'records;
                }
                _ => break 'records,
            }
        }
        if !valid_record(&record, prev) {
            break;
        }
        let record_end = pos;
        walked.last_start = Some(start + cur);
        prev = Some(start + cur);
        let (info, rmid) = (record[16], record[17]);
        let switch = rmid == RM_XLOG && info & 0xF0 == XLOG_SWITCH;
        if rmid == RM_XACT && XACT_DURABLE.contains(&(info & XLOG_XACT_OPMASK)) {
            walked.data_end = Some(start + record_end);
        }
        cur = if switch {
            // The rest of the segment is padding: the next record starts the next segment.
            (start + record_end).div_ceil(SEGMENT_SIZE) * SEGMENT_SIZE - start
        } else {
            record_end
        };
    }
    Some(walked)
}

/// Whether `record` (a whole record, header first) is one PostgreSQL would replay after the
/// record that began at `prev` (when known): `xl_prev` names it, and the CRC-32C over the data
/// and then the header up to `xl_crc` matches.
fn valid_record(record: &[u8], prev: Option<u64>) -> bool {
    let Some(header) = record.get(..RECORD_HEADER as usize) else {
        return false;
    };
    let field = |from: usize, n: usize| header[from..from + n].to_vec();
    let xl_prev = u64::from_le_bytes(field(8, 8).try_into().unwrap_or([0; 8]));
    let xl_crc = u32::from_le_bytes(field(20, 4).try_into().unwrap_or([0; 4]));
    if prev.is_some_and(|p| p != xl_prev) {
        return false;
    }
    let crc = crc32c(crc32c(!0, &record[RECORD_HEADER as usize..]), &header[..20]);
    !crc == xl_crc
}

/// CRC-32C (Castagnoli, reflected), as PostgreSQL's `COMP_CRC32C`: `state` starts at `!0` and
/// the result is complemented at the end.
fn crc32c(mut state: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    for &b in bytes {
        state = TABLE[((state ^ u32::from(b)) & 0xFF) as usize] ^ (state >> 8);
    }
    state
}

/// The start of the last complete record of `dataset`'s WAL in the vault, with its timeline:
/// the newest object on the newest timeline gives the durable end; its segment (and the one
/// before, for a record that began there) is assembled and walked. None when the vault holds
/// no streamed WAL of the dataset or no complete record could be found.
pub fn last_durable_record(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
) -> Result<Option<(u32, Lsn)>> {
    last_durable_record_on(vault, keyring, dataset, None)
}

/// [`last_durable_record`] of the WAL of `timeline` only (None: the newest timeline), for a
/// restore that follows a timeline the operator named.
pub fn last_durable_record_on(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    timeline: Option<u32>,
) -> Result<Option<(u32, Lsn)>> {
    let site = vault.site().as_ref();
    let listing = wal::list(site, dataset)?;
    let signers = wal::dataset_signers(vault, dataset)?;
    let Some(newest) = newest_checked(site, &listing, &signers, timeline)? else {
        return Ok(None);
    };
    let (timeline, end) = (newest.name.timeline, newest.name.end);
    Ok(
        last_record_before(vault, keyring, &listing, &signers, timeline, Lsn(end))?
            .map(|lsn| (timeline, lsn)),
    )
}

/// The newest object of `listing` (of `timeline` only, when named) that checks out by
/// `signers`: noise a hostile site added, named further, is passed over.
pub fn newest_checked<'a>(
    site: &dyn embassy_core::site::Site,
    listing: &'a wal::WalListing,
    signers: &wal::WalSigners,
    timeline: Option<u32>,
) -> Result<Option<&'a wal::WalObject>> {
    for candidate in listing
        .newest_first()
        .into_iter()
        .filter(|o| timeline.is_none_or(|t| o.name.timeline == t))
    {
        match wal::read_checked(site, candidate, signers) {
            Ok(_) => return Ok(Some(candidate)),
            Err(e) if wal::is_noise(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The start of the last complete record of the WAL of `timeline` that ends at `end` (the
/// record cut there, if any, is not complete): the segment holding the byte before `end`, and
/// the one before it for a record that began there, assembled from `listing` and walked. None
/// when no complete record could be found there.
pub fn last_record_before(
    vault: &Vault,
    keyring: &Keyring,
    listing: &wal::WalListing,
    signers: &wal::WalSigners,
    timeline: u32,
    end: Lsn,
) -> Result<Option<Lsn>> {
    let site = vault.site().as_ref();
    let end = end.0;
    if end == 0 {
        return Ok(None);
    }
    let last_segno = (end - 1) / SEGMENT_SIZE;
    let first_segno = last_segno.saturating_sub(1);
    let mut bytes = Vec::new();
    let mut from = first_segno * SEGMENT_SIZE;
    for segno in first_segno..=last_segno {
        match wal::assemble_segment(site, keyring, listing, timeline, segno, signers)? {
            Some(a) if a.complete || segno == last_segno => bytes.extend_from_slice(&a.bytes),
            _ if segno < last_segno => {
                // The segment before is not there whole: walk the newest one alone.
                bytes.clear();
                from = last_segno * SEGMENT_SIZE;
            }
            _ => return Ok(None),
        }
    }
    Ok(last_record_start(&bytes, from, end).map(Lsn))
}

/// The WAL of a dataset the sites hold durably, judged the way `wal-fetch` and `verify` read
/// it: the streamer anchors its tail in the ledger only every minute (and at each whole
/// segment), so WAL acknowledged to PostgreSQL may be stored, signed, and newer than any anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableWal {
    /// The timeline the contiguous WAL ends on.
    pub timeline: u32,
    /// Where the WAL the sites serve without a gap ends: valid, signed pieces and segments,
    /// each starting at or before the end of the one before, from the segment of the ledger's
    /// last anchor (or from the oldest stored WAL when nothing is anchored yet).
    pub reachable: Lsn,
    /// The furthest WAL known to be stored, with its timeline: the ledger's last anchor or the
    /// newest valid object, whichever reaches further. Past `reachable` when WAL before it is
    /// missing at the sites (withheld or lost).
    pub known: (u32, Lsn),
}

impl DurableWal {
    /// True when WAL known to be stored is missing before its end (the sites serve less).
    pub fn has_gap(&self) -> bool {
        self.known > (self.timeline, self.reachable)
    }
}

/// The durable WAL of `dataset` at the sites ([`DurableWal`]), starting from the ledger's last
/// anchor `anchored` (timeline, end). `valid` remembers the ids of objects that checked out, so
/// asking again while a standby catches up reads only what is new. None when the vault holds
/// no WAL of the dataset and the ledger anchors none.
pub fn durable_wal(
    vault: &Vault,
    dataset: &str,
    anchored: Option<(u32, Lsn)>,
    valid: &mut HashSet<ObjectId>,
) -> Result<Option<DurableWal>> {
    let site = vault.site().as_ref();
    let listing = wal::list(site, dataset)?;
    let signers = wal::dataset_signers(vault, dataset)?;
    let mut checks = |obj: &wal::WalObject| -> Result<bool> {
        if valid.contains(&obj.name.id) {
            return Ok(true);
        }
        match wal::read_checked(site, obj, &signers) {
            Ok(_) => {
                valid.insert(obj.name.id);
                Ok(true)
            }
            Err(e) if wal::is_noise(&e) => Ok(false),
            Err(e) => Err(e),
        }
    };
    let mut objects: Vec<&wal::WalObject> = listing
        .pieces
        .iter()
        .chain(listing.segments.iter())
        .collect();
    objects.sort_by_key(|o| (o.name.timeline, o.name.start, std::cmp::Reverse(o.name.end)));
    let mut newest = None;
    for candidate in listing.newest_first() {
        if checks(candidate)? {
            newest = Some((candidate.name.timeline, Lsn(candidate.name.end)));
            break;
        }
    }
    // Where the walk starts: the segment holding the anchor's last byte (the anchored WAL
    // must be served too), or the oldest valid object.
    let (mut timeline, mut reach) = match anchored {
        Some((tl, end)) => (tl, Lsn(end.0.saturating_sub(1)).segment_start()),
        None => {
            let mut first = None;
            for o in &objects {
                if checks(o)? {
                    first = Some((o.name.timeline, Lsn(o.name.start)));
                    break;
                }
            }
            match first {
                Some(f) => f,
                None => return Ok(None),
            }
        }
    };
    // Forward from there: the valid object covering `reach` on the newest timeline (a new
    // timeline's first segment holds the old timeline's bytes before its switch point), the
    // furthest-reaching first.
    loop {
        let mut options: Vec<&&wal::WalObject> = objects
            .iter()
            .filter(|o| {
                o.name.timeline >= timeline && o.name.start <= reach.0 && o.name.end > reach.0
            })
            .collect();
        options.sort_by_key(|o| std::cmp::Reverse((o.name.timeline, o.name.end)));
        let mut advanced = false;
        for o in options {
            if checks(o)? {
                timeline = o.name.timeline;
                reach = Lsn(o.name.end);
                advanced = true;
                break;
            }
        }
        if !advanced {
            break;
        }
    }
    let known = [anchored, newest, Some((timeline, reach))]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or((timeline, reach));
    Ok(Some(DurableWal {
        timeline,
        reachable: reach,
        known,
    }))
}

/// WAL as PostgreSQL writes it, built for tests and fuzz seeds (not for reading real WAL).
#[doc(hidden)]
pub mod synthetic {
    use super::crc32c;

    /// The page size of the WAL built here.
    pub const PAGE: usize = 8192;

    /// A segment's first bytes as PostgreSQL writes them at `start` (a segment start): page
    /// headers naming their addresses, and records of the given total lengths, `xl_info` and
    /// `xl_rmid`, each naming the one before (`xl_prev`) and with its CRC-32C (the first `cont`
    /// bytes, within the first page, continue a record from the segment before); and where
    /// each record starts, relative to `start`.
    pub fn segment(start: u64, cont: u32, records: &[(u32, u8, u8)]) -> (Vec<u8>, Vec<u64>) {
        let mut b: Vec<u8> = Vec::new();
        let header = |b: &mut Vec<u8>, rem: u32| {
            let off = b.len();
            let mut h = vec![0u8; if off == 0 { 40 } else { 24 }];
            let info: u16 = if off == 0 { 2 } else { 0 } | u16::from(rem > 0);
            h[..2].copy_from_slice(&0xD110u16.to_le_bytes());
            h[2..4].copy_from_slice(&info.to_le_bytes());
            h[8..16].copy_from_slice(&(start + off as u64).to_le_bytes());
            h[16..20].copy_from_slice(&rem.to_le_bytes());
            if off == 0 {
                h[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            b.extend_from_slice(&h);
        };
        header(&mut b, cont);
        b.resize(b.len() + cont as usize, 0);
        let mut starts = Vec::new();
        let mut prev = 0u64;
        for &(total, info, rmid) in records {
            b.resize(b.len().div_ceil(8) * 8, 0);
            if b.len().is_multiple_of(PAGE) {
                header(&mut b, 0);
            }
            starts.push(b.len() as u64);
            let rec = record(total, info, rmid, prev);
            prev = start + b.len() as u64;
            for (k, byte) in rec.iter().enumerate() {
                if b.len().is_multiple_of(PAGE) {
                    header(&mut b, total - k as u32);
                }
                b.push(*byte);
            }
        }
        (b, starts)
    }

    /// One record as PostgreSQL writes it: `total` bytes (at least 24), `xl_info`, `xl_rmid`,
    /// `xl_prev`, and its CRC-32C.
    pub fn record(total: u32, info: u8, rmid: u8, prev: u64) -> Vec<u8> {
        let mut rec: Vec<u8> = (0..total.max(24)).map(|i| (i % 251) as u8).collect();
        rec[..24].fill(0);
        rec[..4].copy_from_slice(&total.max(24).to_le_bytes());
        rec[8..16].copy_from_slice(&prev.to_le_bytes());
        rec[16] = info;
        rec[17] = rmid;
        let crc = !crc32c(crc32c(!0, &rec[24..]), &rec[..20]);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        rec
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const PAGE: usize = synthetic::PAGE;
    /// `xl_rmid` of the heap (rows), for synthetic WAL.
    pub(crate) const RM_HEAP: u8 = 10;

    pub(crate) use super::synthetic::{record, segment as wal_at};

    /// [`wal_at`] the first segment.
    pub(crate) fn wal(cont: u32, records: &[(u32, u8, u8)]) -> (Vec<u8>, Vec<u64>) {
        wal_at(0, cont, records)
    }

    #[test]
    fn the_last_complete_record_is_found_across_pages() {
        let (bytes, starts) = wal(0, &[(100, 0, 10), (9000, 0, 10), (50, 0, 10)]);
        let end = bytes.len() as u64;
        assert_eq!(last_record_start(&bytes, 0, end), Some(starts[2]));
        // A durable end inside the last record: the one before it.
        assert_eq!(last_record_start(&bytes, 0, end - 1), Some(starts[1]));
        // Inside the long record that crosses a page: the first.
        assert_eq!(
            last_record_start(&bytes, 0, starts[1] + 8500),
            Some(starts[0])
        );
        // At a later segment's start: the same bytes name other page addresses there.
        let s = 5 * SEGMENT_SIZE;
        assert_eq!(last_record_start(&bytes, s, s + end), None);
        let (later, starts) = wal_at(s, 0, &[(100, 0, 10), (9000, 0, 10), (50, 0, 10)]);
        assert_eq!(last_record_start(&later, s, s + end), Some(s + starts[2]));
    }

    #[test]
    fn a_continued_record_and_a_switch_are_stepped_over() {
        let (bytes, starts) = wal(3000, &[(64, 0, 10), (200, 0, 10)]);
        assert_eq!(starts[0], 3040);
        assert_eq!(
            last_record_start(&bytes, 0, bytes.len() as u64),
            Some(starts[1])
        );
        // Only continuation: no record.
        assert_eq!(last_record_start(&bytes, 0, 2000), None);
        // A switch record: what follows in its segment is padding.
        let (mut bytes, starts) = wal(0, &[(64, 0, 10), (32, XLOG_SWITCH, RM_XLOG)]);
        let switched = bytes.len() as u64;
        bytes.resize(bytes.len() + 100, 0xAA);
        assert_eq!(
            last_record_start(&bytes, 0, switched + 100),
            Some(starts[1])
        );
        // Not WAL at all.
        assert_eq!(last_record_start(&[0u8; 100], 0, 100), None);
        assert_eq!(last_record_start(&bytes, 3, 100), None);
    }

    /// Where a server must have replayed to lose no commit: the end of the last complete
    /// commit, prepare or commit-prepared record (unaligned), never past a record cut at the
    /// durable end; other records (rows of transactions that did not commit, checkpoints,
    /// switches, running transactions) do not move it.
    #[test]
    fn the_data_end_is_the_end_of_the_last_complete_commit() {
        // Lengths that are multiples of 8: each record starts where the one before ended.
        let (bytes, starts) = wal(0, &[(104, 0, 1), (9000, 0x30, 1), (56, 0x10, 1)]);
        let end = bytes.len() as u64;
        assert_eq!(last_data_end(&bytes, 0, end), Ok(Some(starts[2] + 56)));
        assert_eq!(last_data_end(&bytes, 0, end - 1), Ok(Some(starts[2])));
        let s = 3 * SEGMENT_SIZE;
        let (later, starts) = wal_at(s, 0, &[(104, 0, 1), (9000, 0x30, 1), (56, 0x10, 1)]);
        assert_eq!(
            last_data_end(&later, s, s + 300),
            Ok(Some(s + starts[0] + 104))
        );
        assert_eq!(last_data_end(&bytes, s, s + 300), Err(NotWal));
        let (bytes, starts) = wal(0, &[(64, 0, 1), (32, XLOG_SWITCH, RM_XLOG)]);
        assert_eq!(
            last_data_end(&bytes, 0, bytes.len() as u64),
            Ok(Some(starts[0] + 64))
        );
        // After a commit: rows of a transaction that never commits (heap, rmid 10), its abort
        // (0x20), a shutdown checkpoint (XLOG, 0x00), running transactions (standby, 8).
        let (bytes, starts) = wal(
            0,
            &[
                (64, 0, 1),
                (96, 0, 10),
                (40, 0x20, 1),
                (120, 0, RM_XLOG),
                (48, 0x10, 8),
            ],
        );
        assert_eq!(
            last_data_end(&bytes, 0, bytes.len() as u64),
            Ok(Some(starts[0] + 64))
        );
        let (bytes, _) = wal(3000, &[]);
        assert_eq!(last_data_end(&bytes, 0, bytes.len() as u64), Ok(None));
        assert_eq!(last_data_end(&[0u8; 100], 0, 100), Err(NotWal));
    }

    /// Only records PostgreSQL would replay count (red team 16): one whose CRC does not match,
    /// or whose `xl_prev` does not name the record before (a forged segment switch header
    /// written after the last real record, `xl_prev` 0), ends the walk; so does a page that
    /// names another address (a recycled segment's old page).
    #[test]
    fn a_record_with_a_wrong_crc_or_prev_link_or_page_address_ends_the_walk() {
        let (bytes, starts) = wal(0, &[(64, 0, 1), (48, 0x10, 1), (56, 0, 10)]);
        let end = bytes.len() as u64;
        assert_eq!(last_record_start(&bytes, 0, end), Some(starts[2]));
        let mut bad_crc = bytes.clone();
        bad_crc[starts[1] as usize + 30] ^= 1;
        assert_eq!(last_record_start(&bad_crc, 0, end), Some(starts[0]));
        assert_eq!(last_data_end(&bad_crc, 0, end), Ok(Some(starts[0] + 64)));

        // A switch record after the real ones, as a thief forges it: a valid CRC, xl_prev 0.
        let mut forged = bytes.clone();
        let at = (forged.len() + 7) & !7;
        forged.resize(at, 0);
        forged.extend_from_slice(&record(24, XLOG_SWITCH, RM_XLOG, 0));
        let forged_end = forged.len() as u64;
        assert_eq!(last_record_start(&forged, 0, forged_end), Some(starts[2]));
        // With the right link it is a record like any other.
        let mut linked = bytes.clone();
        linked.resize(at, 0);
        linked.extend_from_slice(&record(24, XLOG_SWITCH, RM_XLOG, starts[2]));
        assert_eq!(
            last_record_start(&linked, 0, linked.len() as u64),
            Some(at as u64)
        );

        // Records on a second page whose header names another address.
        let (bytes, starts) = wal(0, &[(64, 0, 1), (8200, 0, 10), (64, 0, 1)]);
        let end = bytes.len() as u64;
        assert_eq!(last_record_start(&bytes, 0, end), Some(starts[2]));
        let mut recycled = bytes.clone();
        recycled[PAGE + 8..PAGE + 16].copy_from_slice(&(7 * SEGMENT_SIZE).to_le_bytes());
        assert_eq!(last_record_start(&recycled, 0, end), Some(starts[0]));
    }

    /// A crash while PostgreSQL wrote a record that crosses pages: after recovery the page
    /// where its rest should be is marked as overwriting it and starts with a new record. The
    /// cut record is not complete, and what follows is walked (red team 16: it was taken as
    /// whole, the walk jumped over the WAL written after the crash and a latest restore stopped
    /// at the crash, without the commits streamed after it).
    #[test]
    fn a_record_cut_off_by_a_crash_is_passed_over_and_the_wal_after_it_walked() {
        let (full, starts) = wal(0, &[(64, 0, 1), (9000, 0, 10)]);
        // Only the cut record's first page survived.
        let mut bytes = full[..PAGE].to_vec();
        let mut page = vec![0u8; 24];
        page[..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
        page[8..16].copy_from_slice(&(PAGE as u64).to_le_bytes());
        bytes.extend_from_slice(&page);
        let overwrite = bytes.len() as u64;
        bytes.extend_from_slice(&record(40, 0xD0, RM_XLOG, starts[1]));
        let commit = (bytes.len() as u64 + 7) & !7;
        bytes.resize(commit as usize, 0);
        bytes.extend_from_slice(&record(48, 0, RM_XACT, overwrite));
        let end = bytes.len() as u64;
        assert_eq!(last_record_start(&bytes, 0, end), Some(commit));
        assert_eq!(last_data_end(&bytes, 0, end), Ok(Some(end)));
        // Without the mark the page is no continuation: the walk ends at the first record.
        let mut unmarked = bytes.clone();
        unmarked[PAGE + 2..PAGE + 4].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(last_record_start(&unmarked, 0, end), Some(starts[0]));
    }

    /// PostgreSQL's CRC-32C (the check value of the Castagnoli polynomial).
    #[test]
    fn crc32c_is_castagnolis() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    /// Damaged or hostile bytes (every byte of a valid piece of WAL changed in turn, and every
    /// length cut) never panic the walk, and what it finds lies inside the bytes given.
    #[test]
    fn damaged_wal_never_panics_and_stays_inside_its_bytes() {
        let s = 2 * SEGMENT_SIZE;
        let (bytes, _) = wal_at(
            s,
            100,
            &[(64, 0, 1), (9000, 0x10, 1), (48, 0x40, 0), (56, 0, 1)],
        );
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            damaged[i] ^= (x as u8) | 1;
            let cut = (x as usize >> 8) % (bytes.len() + 1);
            for b in [&damaged[..], &bytes[..cut]] {
                let end = s + b.len() as u64 + 1;
                if let Some(at) = last_record_start(b, s, end) {
                    assert!(at >= s && at < s + b.len() as u64, "{i}: {at}");
                }
                if let Ok(Some(at)) = last_data_end(b, s, end) {
                    assert!(at > s && at <= s + b.len() as u64, "{i}: {at}");
                }
            }
        }
    }
}
