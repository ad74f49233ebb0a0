//! What each site holds of each dataset, read from that site alone, with ONE rule for a
//! dataset's recovery point: the newest moment a restore can reach, which is the newest
//! version's capture time or, for a PostgreSQL dataset whose WAL is streamed, the capture time
//! of the newest durable WAL there, whichever is later. `embassy status --site`,
//! `embassy status --config` and the agent's status page, metrics and alarms all read it here.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use embassy_core::engine::vault::{versions_in, Histories, Vault};
use embassy_core::error::Problem;
use embassy_core::history::{checkpoint, History};
use embassy_core::site::Site;
use embassy_core::Error;
use serde::Serialize;

/// The newest streamed WAL one site holds of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalFacts {
    /// Newest timeline there.
    pub timeline: u32,
    /// End of the newest durable WAL there.
    #[serde(serialize_with = "lsn_text")]
    pub end: embassy_postgres::Lsn,
    /// When that WAL was received (Unix ns); None when its header does not say.
    pub captured_at_ns: Option<i64>,
}

fn lsn_text<S: serde::Serializer>(
    lsn: &embassy_postgres::Lsn,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(lsn)
}

/// What one site holds of one dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatasetFacts {
    /// The dataset.
    pub dataset: String,
    /// Ledger entries accepted.
    pub entries: u64,
    /// Versions held.
    pub versions: u64,
    /// Newest version number (per dataset, as `embassy versions` lists it), if any.
    pub newest_version: Option<u64>,
    /// The newest version's ledger sequence number, shown beside its number.
    pub newest_version_ledger_seq: Option<u64>,
    /// Capture time of the newest version (Unix ns).
    pub newest_version_ns: Option<i64>,
    /// The recovery point (Unix ns): see [`recovery_point`].
    pub recovery_point_ns: Option<i64>,
    /// Sum of the bytes the versions added to the vault.
    pub bytes_stored: u64,
    /// Streamed WAL, when the site holds some of this dataset.
    pub wal: Option<WalFacts>,
    /// Why the dataset's history (or its WAL) cannot be read at this site.
    pub error: Option<Problem>,
}

/// What one site holds, read from that site alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SiteFacts {
    /// The site's location.
    pub location: String,
    /// Why the site cannot be read at all.
    pub error: Option<Problem>,
    /// The site holds no vault at all (a missing or empty folder, bucket or prefix: most often
    /// a disk that is not mounted or a wrong path); `error` says so too.
    pub holds_no_vault: bool,
    /// Bytes of all objects it holds (when asked for: it lists the whole site).
    pub bytes_stored: Option<u64>,
    /// Per dataset, in name order.
    pub datasets: Vec<DatasetFacts>,
    /// When it was read (Unix ns).
    pub read_at_ns: i64,
}

/// How to read a site.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions<'a> {
    /// Datasets whose streamed WAL to look for even when the site's vault lists no ledger of
    /// them yet (the agent's continuous datasets); every listed dataset is looked at anyway.
    pub wal_datasets: &'a [String],
    /// Also add up the bytes of every object (lists the whole site).
    pub bytes: bool,
    /// A key file given explicitly: refused if it belongs to another vault.
    pub key_file: Option<&'a Path>,
    /// The state folder whose remembered heads (and catch-up queues) the site's histories are
    /// checked against: a site rolled back to an old copy is an integrity problem, never an
    /// older version shown as the newest. None: read as it stands.
    pub remembered: Option<&'a Path>,
}

/// A dataset's recovery point: the later of its newest version's capture time and the capture
/// time of its newest durable streamed WAL (a PostgreSQL restore replays WAL past the base
/// backup). Streamed WAL without a version has no recovery point: a restore needs a base
/// backup to replay it onto, however fresh the WAL is. The one rule every status view applies.
pub fn recovery_point(newest_version_ns: Option<i64>, wal: Option<&WalFacts>) -> Option<i64> {
    let version_ns = newest_version_ns?;
    let wal_ns = wal.and_then(|w| w.captured_at_ns);
    Some(wal_ns.map_or(version_ns, |w| version_ns.max(w)))
}

/// Reads one site on its own: its vault's datasets, their newest versions, their streamed WAL
/// and recovery points. Never fails: what cannot be read is named in the facts.
pub fn read_site(location: &str, options: &ReadOptions) -> SiteFacts {
    let mut facts = SiteFacts {
        location: location.to_string(),
        read_at_ns: embassy_core::format::config::now_unix_nanos(),
        ..SiteFacts::default()
    };
    if let Err(e) = read_into(&mut facts, location, options) {
        facts.holds_no_vault = matches!(e, Error::NoVault { .. } | Error::SiteWithoutVault { .. });
        facts.error = Some(e.into());
    }
    facts
}

fn read_into(
    facts: &mut SiteFacts,
    location: &str,
    options: &ReadOptions,
) -> embassy_core::Result<()> {
    let site: Arc<dyn Site> = embassy_sites::open(location)?;
    let mut vault = Vault::open(site.clone())?;
    if let Some(dir) = options.remembered {
        let state = embassy_core::history::state::StateStore::open(dir, &vault.config().vault_id)?
            .with_lagging_sites(crate::open::queued_for(dir, &[location.to_string()]));
        vault = vault.with_state(state);
    }
    crate::unlock::check_given_key_file(options.key_file, vault.config())?;
    if options.bytes {
        facts.bytes_stored = Some(site.list("")?.iter().map(|i| i.size).sum());
    }
    let mut names = vault.datasets()?;
    for d in options.wal_datasets {
        if !names.contains(d) {
            names.push(d.clone());
        }
    }
    names.sort();
    // Checkpoints listed before the histories are read: one stored meanwhile (a backup running)
    // may name entries stored after the histories were read (verify's rule).
    let listed_checkpoints: BTreeSet<String> = site
        .list(checkpoint::CHECKPOINTS)?
        .into_iter()
        .map(|i| i.path)
        .collect();
    let mut histories = Histories::new();
    let mut loaded = Vec::new();
    for dataset in names {
        let (dataset_facts, history) = read_dataset(location, &vault, site.as_ref(), &dataset);
        if let Some(h) = history {
            histories.insert(dataset.clone(), h.records.clone());
            loaded.push((dataset, h));
        }
        facts.datasets.push(dataset_facts);
    }
    check_checkpoints(facts, &vault, &histories, &loaded, &listed_checkpoints)
}

/// Every history read at the site must extend every valid checkpoint there (as `verify`
/// checks): a dataset whose ledger is shorter than a checkpoint says (a deleted or damaged
/// newest entry, a rollback) or that differs from it (a fork) is an integrity problem, never
/// an older version shown as the newest.
fn check_checkpoints(
    facts: &mut SiteFacts,
    vault: &Vault,
    histories: &Histories,
    loaded: &[(String, History)],
    listed: &BTreeSet<String>,
) -> embassy_core::Result<()> {
    // The newest valid checkpoint naming each dataset (a history that extends it extends the
    // older ones): reading every checkpoint at every look grew without end.
    let checkpoints = checkpoint::load_newest(
        vault.site().as_ref(),
        &vault.config().vault_id,
        &vault.checkpoint_signers()?,
        histories,
        listed,
    )?;
    let failed: Vec<String> = facts
        .datasets
        .iter()
        .filter(|d| d.error.is_some())
        .map(|d| d.dataset.clone())
        .collect();
    for cp in &checkpoints {
        for problem in checkpoint::check_against_except(cp, histories, &failed) {
            let named = problem.strip_prefix("dataset ").and_then(|p| {
                cp.checkpoint.heads.keys().find_map(|d| {
                    p.strip_prefix(d.as_str())
                        .and_then(|rest| rest.strip_prefix(": "))
                        .map(|why| (d.clone(), why.to_string()))
                })
            });
            let Some((dataset, why)) = named else {
                continue;
            };
            // What the site holds in the missing entry's place (a damaged copy), if anything.
            let in_place = loaded
                .iter()
                .find(|(d, _)| *d == dataset)
                .map(|(_, h)| h.in_place(h.records.len() as u64 + 1))
                .unwrap_or_default();
            let index = match facts.datasets.iter().position(|d| d.dataset == dataset) {
                Some(i) => i,
                None => {
                    // A dataset the checkpoint names that the site no longer lists at all.
                    facts.datasets.push(DatasetFacts {
                        dataset: dataset.clone(),
                        ..DatasetFacts::default()
                    });
                    facts.datasets.len() - 1
                }
            };
            let d = &mut facts.datasets[index];
            if d.error.is_none() {
                d.error = Some(unprovable(
                    &dataset,
                    &format!("{why}{in_place}"),
                    d.newest_version,
                ));
            }
        }
    }
    facts.datasets.sort_by(|a, b| a.dataset.cmp(&b.dataset));
    Ok(())
}

/// The integrity problem of a dataset whose newer entries at a site cannot be proved.
fn unprovable(dataset: &str, why: &str, newest_version: Option<u64>) -> Problem {
    Error::History {
        dataset: dataset.to_string(),
        problem: format!(
            "newer entries exist that cannot be proved: {why}; the newest provable version here \
             is {}",
            newest_version.map_or("none".to_string(), |v| v.to_string())
        ),
    }
    .into()
}

/// What one site holds of one dataset, and its history when that was read without problems.
fn read_dataset(
    location: &str,
    vault: &Vault,
    site: &dyn Site,
    dataset: &str,
) -> (DatasetFacts, Option<History>) {
    let mut facts = DatasetFacts {
        dataset: dataset.to_string(),
        ..DatasetFacts::default()
    };
    let mut read = None;
    // The signers of its WAL, from the history read here: its WAL end is judged by checked
    // objects only (a hostile site's object named like later WAL is not taken for WAL).
    let mut signers = None;
    match vault.history_full(dataset) {
        Ok(full) => {
            signers = Some(
                embassy_postgres::wal::WalSigners::new(vault.wal_authority(&full.records), dataset)
                    .with_cutoff(vault.wal_cutoff(&full.records)),
            );
            let versions = versions_in(dataset, &full.records);
            let newest = versions.last();
            facts.entries = full.records.len() as u64;
            facts.versions = versions.len() as u64;
            facts.newest_version = newest.map(|v| v.number);
            facts.newest_version_ledger_seq = newest.map(|v| v.seq);
            facts.newest_version_ns = newest.map(|v| v.captured_at_ns);
            facts.bytes_stored = versions.iter().map(|v| v.stats.new_bytes_stored).sum();
            // Newer entries the site holds that cannot be proved (a gap, an unresolved fork):
            // the newest version shown would not be the newest stored, so the dataset at this
            // site is an integrity problem, never an older version in silence.
            let problems = full.problems(dataset);
            if problems.is_empty() {
                read = Some(full);
            } else {
                facts.error = Some(unprovable(
                    dataset,
                    &problems.join("; "),
                    facts.newest_version,
                ));
            }
        }
        Err(e) => facts.error = Some(e.into()),
    }
    let wal = match signers {
        // Anchors are judged by a history that was proved (else its problem is reported).
        Some(signers) => embassy_postgres::status::site_wal_with(
            location,
            site,
            dataset,
            &signers,
            read.as_ref().map_or(&[][..], |h| &h.records),
        ),
        // Its history cannot be read (the error says why): its WAL cannot be judged either.
        None => Ok((None, Vec::new())),
    };
    let wal = wal.map(|(newest, missing)| {
        if !missing.is_empty() {
            facts.error.get_or_insert_with(|| {
                Error::History {
                    dataset: dataset.to_string(),
                    problem: format!(
                        "its streamed WAL at this site cannot be restored whole: {}{}",
                        missing.join("; "),
                        if missing.iter().any(|m| m.contains("not stored")) {
                            "; a restore from this site cannot replay past the first missing \
                             piece: repair this site from another (embassy sync --repair \
                             --from <good site> --to <this site>)"
                        } else {
                            ""
                        }
                    ),
                }
                .into()
            });
        }
        newest
    });
    match wal {
        Ok(Some(w)) => {
            facts.wal = Some(WalFacts {
                timeline: w.timeline,
                end: w.durable,
                captured_at_ns: (w.captured_at_ns > 0).then_some(w.captured_at_ns),
            })
        }
        Ok(None) => {}
        Err(e) => {
            facts.error.get_or_insert_with(|| e.into());
        }
    }
    facts.recovery_point_ns = recovery_point(facts.newest_version_ns, facts.wal.as_ref());
    // Data dated ahead of this clock cannot be judged fresh: a signer with a wrong or hostile
    // clock (a stolen credential) would otherwise hold the dataset green, and its RPO alarm
    // silent, for as long as it dated ahead (red team 5, #1c).
    let now = embassy_core::format::config::now_unix_nanos();
    if let Some(at) = facts
        .recovery_point_ns
        .filter(|at| *at > now.saturating_add(embassy_core::engine::prune::CLOCK_SKEW_NS))
    {
        facts.error.get_or_insert_with(|| {
            Error::History {
                dataset: dataset.to_string(),
                problem: format!(
                    "its newest data is dated {}, ahead of this machine's clock ({}): its \
                     freshness cannot be judged; a signer's clock is wrong or hostile (a stolen \
                     credential can date entries ahead to hide that the data is old): check the \
                     clocks of the signers and revoke a signer that is not yours",
                    embassy_core::time::utc(at),
                    embassy_core::time::utc(now)
                ),
            }
            .into()
        });
    }
    (facts, read)
}

/// One row of `embassy status --site`: a dataset at a site, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StatusRow {
    /// What the site holds of the dataset.
    Dataset(DatasetRow),
    /// The site, or the dataset's history there, cannot be read.
    Error(ErrorRow),
}

/// A dataset at a site, as `embassy status --site --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetRow {
    /// The site's location.
    pub site: String,
    /// The dataset.
    pub dataset: String,
    /// Ledger entries accepted.
    pub entries: u64,
    /// Versions held.
    pub versions: u64,
    /// Newest version number.
    pub newest_version: Option<u64>,
    /// The newest version's ledger sequence number.
    pub newest_version_ledger_seq: Option<u64>,
    /// The recovery point, UTC ([`recovery_point`]).
    pub recovery_point: Option<String>,
    /// Its age in seconds.
    pub lag_seconds: Option<f64>,
    /// End of the newest durable streamed WAL (PostgreSQL datasets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_end: Option<String>,
}

/// A site or dataset that cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRow {
    /// The site's location.
    pub site: String,
    /// The dataset (None: the whole site).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Why.
    pub error: String,
    /// What kind of problem that is (integrity, outage, ...).
    pub kind: embassy_core::ErrorKind,
    /// True when the site holds no vault (exit 10 in the CLI).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_vault: bool,
}

impl StatusRow {
    /// True for a row that says something cannot be read.
    pub fn is_error(&self) -> bool {
        matches!(self, StatusRow::Error(_))
    }

    /// True for a row that says a site's copy is damaged or tampered with.
    pub fn is_integrity_problem(&self) -> bool {
        matches!(self, StatusRow::Error(e) if e.kind == embassy_core::ErrorKind::Integrity)
    }

    /// True for a row that says a site holds no vault.
    pub fn is_no_vault(&self) -> bool {
        matches!(self, StatusRow::Error(e) if e.no_vault)
    }
}

/// The rows of `embassy status --site`: every dataset at every site, each site read on its
/// own (so a site that lags shows it), at time `now_ns`.
pub fn site_rows(
    locations: &[String],
    key_file: Option<&Path>,
    remembered: Option<&Path>,
    now_ns: i64,
) -> Vec<StatusRow> {
    let mut rows = Vec::new();
    for location in locations {
        let options = ReadOptions {
            key_file,
            remembered,
            ..ReadOptions::default()
        };
        let facts = read_site(location, &options);
        if let Some(e) = facts.error {
            rows.push(StatusRow::Error(ErrorRow {
                site: location.clone(),
                dataset: None,
                error: e.message,
                kind: e.kind,
                no_vault: facts.holds_no_vault,
            }));
            continue;
        }
        for d in facts.datasets {
            rows.push(match d.error {
                Some(e) => StatusRow::Error(ErrorRow {
                    site: location.clone(),
                    dataset: Some(d.dataset),
                    error: e.message,
                    kind: e.kind,
                    no_vault: false,
                }),
                None => StatusRow::Dataset(DatasetRow {
                    site: location.clone(),
                    dataset: d.dataset,
                    entries: d.entries,
                    versions: d.versions,
                    newest_version: d.newest_version,
                    newest_version_ledger_seq: d.newest_version_ledger_seq,
                    recovery_point: d.recovery_point_ns.map(embassy_core::time::utc),
                    lag_seconds: d.recovery_point_ns.map(|t| (now_ns - t) as f64 / 1e9),
                    wal_end: d.wal.map(|w| w.end.to_string()),
                }),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_point_is_the_later_of_the_version_and_the_wal() {
        let wal = |ns| WalFacts {
            timeline: 1,
            end: embassy_postgres::Lsn(0x100),
            captured_at_ns: ns,
        };
        assert_eq!(recovery_point(Some(5), Some(&wal(Some(9)))), Some(9));
        assert_eq!(recovery_point(Some(9), Some(&wal(Some(5)))), Some(9));
        assert_eq!(recovery_point(None, Some(&wal(Some(5)))), None);
        assert_eq!(recovery_point(Some(5), Some(&wal(None))), Some(5));
        assert_eq!(recovery_point(None, None), None);
    }
}
