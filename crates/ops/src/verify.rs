//! Verification of a vault: every object against its name, every ledger's chain and
//! signatures, every version's references (deep: every chunk decrypted), and the streamed WAL
//! of PostgreSQL datasets. `embassy verify` and the agent's scheduled verification both run
//! [`verify`], so a site that withholds or damages streamed WAL fails both.

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::verify::VerifyReport;
use embassy_core::progress::{Progress, Silent};
use embassy_core::{Error, Result};
use embassy_postgres::wal::WalVerifyReport;

/// What a verification found: the vault's objects and ledgers, and the streamed WAL.
#[derive(Debug)]
pub struct Verification {
    /// Objects, ledgers, versions (and chunks, when deep).
    pub vault: VerifyReport,
    /// Per dataset that holds WAL or whose ledger anchors some: the keyless WAL check.
    pub wal: Vec<(String, WalVerifyReport)>,
    /// Whether chunks were decrypted and checked.
    pub deep: bool,
}

impl Verification {
    /// True when nothing is wrong (noise and notes are not wrong).
    pub fn is_ok(&self) -> bool {
        self.vault.is_ok() && self.wal.iter().all(|(_, r)| r.is_ok())
    }

    /// True when damage or tampering was found, in the objects or the streamed WAL (not merely
    /// something that could not be read this time).
    pub fn found_damage(&self) -> bool {
        self.vault.found_damage() || self.wal.iter().any(|(_, r)| !r.is_ok())
    }

    /// WAL problems and gaps, counted.
    pub fn wal_problem_count(&self) -> usize {
        self.wal
            .iter()
            .map(|(_, r)| r.problems.len() + r.gaps.len())
            .sum()
    }

    /// Every problem, objects and WAL, counted.
    pub fn problem_count(&self) -> usize {
        self.vault.problems.len() + self.wal_problem_count()
    }

    /// Every problem, one line each: the vault's, then each dataset's WAL problems and gaps.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.vault.problems.clone();
        for (dataset, r) in &self.wal {
            out.extend(
                r.problems
                    .iter()
                    .map(|p| format!("dataset {dataset}: WAL: {p}")),
            );
            out.extend(r.gaps.iter().map(|(tl, a, b)| {
                format!("dataset {dataset}: WAL: timeline {tl}: {a} .. {b} missing")
            }));
        }
        out
    }

    /// One line for a status page: what was verified, or how many problems and the first.
    pub fn summary(&self) -> String {
        if self.is_ok() {
            let wal_objects: usize = self.wal.iter().map(|(_, r)| r.objects_ok).sum();
            format!(
                "{} ({}), {} verified{}",
                embassy_core::text::count(self.vault.objects_checked, "object", "objects"),
                embassy_core::text::size(self.vault.bytes_checked),
                embassy_core::text::count(self.vault.datasets.len() as u64, "dataset", "datasets"),
                if self.wal.is_empty() {
                    String::new()
                } else {
                    format!(", {wal_objects} WAL objects")
                }
            )
        } else if !self.found_damage() {
            format!(
                "{} objects could not be read or checked this time, first: {}",
                self.vault.unreadable.len(),
                self.vault
                    .unreadable
                    .first()
                    .map(String::as_str)
                    .unwrap_or("")
            )
        } else {
            let problems = self.problems();
            format!(
                "{} problems, first: {}",
                problems.len(),
                problems.first().map(String::as_str).unwrap_or("")
            )
        }
    }
}

/// Verifies the vault; with `keys`, also decrypts and checks every chunk. The streamed WAL of
/// every dataset that holds some (or whose ledger anchors some) is checked too, without keys.
pub fn verify(
    vault: &Vault,
    keys: Option<&Keyring>,
    progress: &dyn Progress,
) -> Result<Verification> {
    let report = embassy_core::engine::verify::verify(vault, keys, progress)?;
    let wal = verify_wal_of(vault, keys, report.datasets.iter().map(|d| d.name.as_str()))?;
    Ok(Verification {
        vault: report,
        wal,
        deep: keys.is_some(),
    })
}

/// Verifies without keys as [`verify`] does, taking on trust what `known` (a witness's memory)
/// says was read in full before while the site lists it unchanged: only new objects are read.
pub fn verify_known(
    vault: &Vault,
    known: Option<&embassy_core::engine::verify::Known>,
    progress: &dyn Progress,
) -> Result<Verification> {
    let report = embassy_core::engine::verify::verify_with(vault, None, progress, known)?;
    let wal = verify_wal_of(vault, None, report.datasets.iter().map(|d| d.name.as_str()))?;
    Ok(Verification {
        vault: report,
        wal,
        deep: false,
    })
}

/// Verifies, without keys, the vault at one site read on its own (the agent's scheduled check
/// of each site), opened as `options` say (the state folder, the remembered heads): against
/// the heads this machine remembers, unless the site's catch-up queue holds every entry it
/// lacks ([`crate::catchup::as_it_stands`]). A site rolled back to an old copy of itself is
/// damaged here, as in `embassy verify`. Returns the verification and whether it is behind.
pub fn verify_site(
    options: &crate::open::OpenOptions,
    location: &str,
) -> Result<(Verification, Option<crate::catchup::Behind>)> {
    let vault = crate::open::open_vault(&crate::open::OpenOptions {
        locations: vec![location.to_string()],
        min_sites: None,
        ..options.clone()
    })?;
    let behind = crate::catchup::behind(&options.state_dir, location)
        .ok()
        .flatten();
    let (vault, behind) = crate::catchup::as_it_stands(vault, behind)?;
    Ok((verify(&vault, None, &Silent)?, behind))
}

/// The keyless WAL check of every dataset that holds WAL or whose ledger anchors some: a site
/// that deletes or damages streamed WAL fails the vault's verification, not only
/// `pg verify-wal`. With `keys` that read a dataset, its WAL is also assembled as a restore
/// assembles it and every fork inside a timeline is a problem (`wal::forks`: what keyless
/// verification cannot see). Datasets without WAL are left out.
pub fn verify_wal_of<'a>(
    vault: &Vault,
    keys: Option<&Keyring>,
    datasets: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, WalVerifyReport)>> {
    let mut out = Vec::new();
    for dataset in datasets {
        let mut report = embassy_postgres::wal::verify(vault, dataset).map_err(Error::from)?;
        if let Some(keys) = keys.filter(|k| k.can_read(dataset) && report.objects_ok > 0) {
            report
                .problems
                .extend(embassy_postgres::wal::forks(vault, keys, dataset).map_err(Error::from)?);
        }
        if report.objects_ok > 0 || !report.is_ok() || !report.noise.is_empty() {
            out.push((dataset.to_string(), report));
        }
    }
    Ok(out)
}

/// Sets aside the streamed WAL a site lacks only because writes to it are queued (`queued`: the
/// object paths its catch-up queue names): a gap covered end to end by queued WAL objects of
/// the dataset and timeline, and an object whose missing predecessor is a queued object ending
/// where it starts. A site that came back while the streamer wrote to the others holds the new
/// pieces but not those it missed, so without this a site that lags was called damaged ("the
/// previous object ... is missing", a GAP). Returns one line per gap set aside; what the queue
/// does not explain stays a problem.
///
/// With `full_sync` (the queue asks for a full comparison: a writer died mid-session, so the site
/// may lack any object it was writing and the queue cannot name them) every WAL gap and missing
/// predecessor is set aside the same way until that comparison has run.
pub fn set_aside_queued_wal(
    v: &mut Verification,
    queued: &[String],
    full_sync: bool,
) -> Vec<String> {
    let named: Vec<embassy_core::format::wal_log::LogName> = queued
        .iter()
        .filter_map(|p| embassy_core::format::wal_log::parse_path(p))
        .collect();
    let mut lines = Vec::new();
    for (dataset, report) in &mut v.wal {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let ranges_of = |timeline: u32, ranges: &mut Vec<(u64, u64)>| {
            ranges.clear();
            ranges.extend(
                named
                    .iter()
                    .filter(|n| n.dataset == *dataset && n.timeline == timeline)
                    .map(|n| (n.start, n.end)),
            );
            ranges.sort_unstable();
        };
        report.gaps.retain(|&(timeline, from, to)| {
            ranges_of(timeline, &mut ranges);
            // Covered when the queued ranges reach from `from` to `to` without a hole.
            let mut reached = from.0;
            for &(start, end) in &ranges {
                if start <= reached && end > reached {
                    reached = end;
                }
            }
            let covered = full_sync || reached >= to.0;
            if covered {
                lines.push(format!(
                    "dataset {dataset}: WAL {from} .. {to} of timeline {timeline} {}, not yet \
                     copied",
                    if reached >= to.0 {
                        "is queued for this site (missed while it was down)"
                    } else {
                        "may be what the pending full comparison brings (a writer stopped \
                         mid-session)"
                    }
                ));
            }
            !covered
        });
        report.problems.retain(|problem| {
            // An anchor naming a WAL object the site does not hold yet.
            if problem.contains(" anchors WAL object ")
                && problem.ends_with("is not stored (or not valid)")
            {
                let named_queued = named.iter().any(|n| {
                    n.dataset == *dataset && problem.contains(&format!(" {} ", n.id.short()))
                });
                return !(full_sync || named_queued);
            }
            let Some((path, why)) = problem.split_once(": ") else {
                return true;
            };
            let Some(name) = embassy_core::format::wal_log::parse_path(path) else {
                return true;
            };
            let queued_before = named.iter().any(|n| {
                n.dataset == *dataset && n.timeline <= name.timeline && n.end == name.start
            });
            !(why.starts_with("the previous object ") && (queued_before || full_sync))
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_gap_fails_the_verification_and_leads_its_summary() {
        let mut wal = WalVerifyReport {
            objects_ok: 3,
            ..WalVerifyReport::default()
        };
        let ok = Verification {
            vault: VerifyReport::default(),
            wal: vec![("reg".into(), wal.clone())],
            deep: false,
        };
        assert!(ok.is_ok(), "{}", ok.summary());
        assert!(ok.summary().contains("3 WAL objects"), "{}", ok.summary());
        wal.gaps.push((
            1,
            embassy_postgres::Lsn(0x100),
            embassy_postgres::Lsn(0x200),
        ));
        let gap = Verification {
            wal: vec![("reg".into(), wal)],
            ..ok
        };
        assert!(!gap.is_ok());
        assert_eq!(gap.problem_count(), 1);
        assert!(
            gap.summary()
                .starts_with("1 problems, first: dataset reg: WAL: timeline 1"),
            "{}",
            gap.summary()
        );
    }
}
