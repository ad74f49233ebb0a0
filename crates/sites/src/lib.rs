//! Storage sites for Data Embassy vaults, all behind [`embassy_core::site::Site`]: a local folder
//! and S3-compatible buckets. [`check_capabilities`] tells `init` what a site guarantees. Every
//! site [`open`] returns is wrapped once in the one retry layer, [`RetryingSite`].

pub mod local;
pub mod queue;
pub mod replicated;
pub mod retry;
pub mod s3;

use std::sync::Arc;

use embassy_core::site::{Site, SiteError};

/// Most objects one listing may return (a vault of ten million objects holds some 80 TB in
/// 16 MiB packs): a site that lists without end is refused instead of filling memory.
pub(crate) const MAX_LISTED: usize = 10_000_000;
/// Bookkeeping counted for each listed entry on top of its path's bytes (see
/// [`s3::S3Config::listing_limit`], [`LocalSite::with_listing_limit`]).
pub(crate) const LISTED_ENTRY_COST: u64 =
    std::mem::size_of::<embassy_core::site::ObjectInfo>() as u64;

pub use local::LocalSite;
pub use queue::{drain, drain_all, drain_from_some, DrainReport, SiteQueue};
pub use replicated::ReplicatedSite;
pub use retry::{RetryPolicy, RetryingSite};
pub use s3::S3Site;

mod capabilities;
pub use capabilities::{check_capabilities, CreateOnly, Retention, SiteCapabilities};

/// Opens a site from a location: a folder path (or `file://` URL), or an
/// `s3://bucket/prefix[?option=value&...]` bucket (settings from the environment; see
/// `docs/sites.md`), wrapped in a [`RetryingSite`] with the default [`RetryPolicy`].
pub fn open(location: &str) -> Result<Arc<dyn Site>, SiteError> {
    open_with(location, &RetryPolicy::default())
}

/// [`open`], retrying as `policy` says (a cancellation switch, other bounds).
pub fn open_with(location: &str, policy: &RetryPolicy) -> Result<Arc<dyn Site>, SiteError> {
    Ok(Arc::new(RetryingSite::new(
        open_unretried(location)?,
        policy.clone(),
    )))
}

/// The site at `location` itself, without the retry layer.
fn open_unretried(location: &str) -> Result<Arc<dyn Site>, SiteError> {
    if location.trim().is_empty() {
        return Err(SiteError::Permanent {
            site: location.to_string(),
            operation: "open",
            path: String::new(),
            message: "empty site location: give --site PATH (or set EMBASSY_SITE)".into(),
        });
    }
    if location.starts_with("s3://") {
        return Ok(Arc::new(S3Site::open(location)?));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        if scheme != "file" {
            return Err(SiteError::Permanent {
                site: location.to_string(),
                operation: "open",
                path: String::new(),
                message: format!(
                    "'{scheme}://' sites are not supported; use a local folder path or \
                     s3://BUCKET/PREFIX"
                ),
            });
        }
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    Ok(Arc::new(LocalSite::new(path)?))
}

/// How long [`open_many`] waits for the slower sites once `min_sites` have answered.
pub const OPEN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads every site's `config` at once. Waits for all answers, except that once `min_sites`
/// sites have answered with a configuration, a site still silent [`OPEN_GRACE`] after the start
/// is given up on (`None`; its thread finishes on its own).
fn read_configs(
    sites: &[Arc<dyn Site>],
    min_sites: usize,
) -> Vec<Option<Result<Vec<u8>, SiteError>>> {
    let start = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, site) in sites.iter().enumerate() {
        let (site, tx) = (site.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((i, site.get(embassy_core::format::layout::CONFIG)));
        });
    }
    drop(tx);
    let mut answers: Vec<Option<Result<Vec<u8>, SiteError>>> = sites.iter().map(|_| None).collect();
    loop {
        let with_config = answers.iter().filter(|a| matches!(a, Some(Ok(_)))).count();
        let next = if with_config >= min_sites {
            rx.recv_timeout(OPEN_GRACE.saturating_sub(start.elapsed()))
                .ok()
        } else {
            rx.recv().ok()
        };
        match next {
            Some((i, answer)) => answers[i] = Some(answer),
            None => return answers,
        }
    }
}

pub(crate) use embassy_core::site::valid_object_path;

/// Opens several sites as one vault: writes go to all, and succeed once `min_sites` hold them.
/// Every site must already hold the same vault, except when `creating` a vault: a site that holds
/// none while others do is refused ([`embassy_core::Error::SiteWithoutVault`]; a new site is
/// seeded with [`embassy_core::engine::sync::seed`]), never created or filled (the agent leaves
/// it out instead: [`open_many_queued_with`] with [`WithoutVault::LeaveOut`]).
pub fn open_many(
    locations: &[String],
    min_sites: usize,
    creating: bool,
) -> embassy_core::Result<Arc<dyn Site>> {
    open_many_queued(locations, min_sites, creating, None)
}

/// [`open_many`], with a catch-up queue per site under `state_dir` when given (see
/// [`queue`]): writes a site misses are recorded there before they are acknowledged.
pub fn open_many_queued(
    locations: &[String],
    min_sites: usize,
    creating: bool,
    state_dir: Option<&std::path::Path>,
) -> embassy_core::Result<Arc<dyn Site>> {
    open_many_queued_with(
        locations,
        min_sites,
        creating,
        state_dir,
        &RetryPolicy::default(),
        WithoutVault::Refuse,
    )
}

/// What opening several sites does with a site that holds no vault while others hold it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WithoutVault {
    /// The open fails with [`embassy_core::Error::SiteWithoutVault`] (the command line: the
    /// operator is there to mount the disk or seed the site).
    #[default]
    Refuse,
    /// The site is left out of the run, as a site that is down: never written to or filled,
    /// its missed writes queued, and it counts against `min_sites` (the agent: every dataset
    /// stays protected at the other sites, and the site is shown as holding no vault).
    LeaveOut,
}

/// [`open_many_queued`], each site retrying as `policy` says, a site without a vault refused or
/// left out as `without_vault` says (every site without one is [`embassy_core::Error::NoVault`]
/// either way).
pub fn open_many_queued_with(
    locations: &[String],
    min_sites: usize,
    creating: bool,
    state_dir: Option<&std::path::Path>,
    policy: &RetryPolicy,
    without_vault: WithoutVault,
) -> embassy_core::Result<Arc<dyn Site>> {
    if locations.len() == 1 {
        return Ok(open_with(&locations[0], policy)?);
    }
    let sites: Vec<Arc<dyn Site>> = locations
        .iter()
        .map(|l| open_with(l, policy))
        .collect::<Result<_, _>>()?;
    let mut replicated = ReplicatedSite::new(sites.clone(), min_sites)?;
    if let Some(dir) = state_dir {
        replicated = replicated.with_queue(dir)?;
    }
    if !creating {
        // Sites that answer must hold the same vault, and every site that answers must hold
        // one; sites that cannot be reached only count against min_sites, and are reported as
        // lagging. Every site is asked at once; once min_sites have answered with a
        // configuration, a site still silent after OPEN_GRACE is down for the run (it costs
        // that much, not its timeout).
        let answers = read_configs(&sites, min_sites);
        let mut first: Option<(String, Vec<u8>)> = None;
        let mut usable = 0;
        let (mut holding, mut without) = (Vec::new(), Vec::new());
        // The locations as given (an S3 site's own location drops its options, such as the
        // endpoint, that a command naming the site needs).
        for ((site, given), answer) in sites.iter().zip(locations).zip(answers) {
            let answer = answer.unwrap_or_else(|| {
                Err(SiteError::Retryable {
                    site: site.location().to_string(),
                    operation: "open",
                    path: embassy_core::format::layout::CONFIG.into(),
                    message: format!(
                        "no answer within {} s while the other sites answered: left out of \
                         this run",
                        OPEN_GRACE.as_secs()
                    ),
                })
            });
            let config = match answer {
                Ok(c) => c,
                Err(SiteError::NotFound { .. }) => {
                    without.push((site.location().to_string(), given.clone()));
                    continue;
                }
                Err(e) => {
                    if matches!(e, SiteError::Retryable { .. }) {
                        replicated.mark_down(site.location());
                    }
                    replicated.mark_lagging(
                        site.location(),
                        format!("{e}: it is caught up from the other sites once it answers"),
                    );
                    continue;
                }
            };
            match &first {
                None => first = Some((site.location().to_string(), config)),
                Some((other, c)) if *c != config => {
                    return Err(SiteError::Permanent {
                        site: site.location().to_string(),
                        operation: "open",
                        path: embassy_core::format::layout::CONFIG.into(),
                        message: format!(
                            "holds another vault than {other}: these sites cannot be used together"
                        ),
                    }
                    .into())
                }
                Some(_) => {}
            }
            holding.push(given.clone());
            usable += 1;
        }
        if without.len() == sites.len() {
            return Err(embassy_core::Error::NoVault {
                site: locations.join(" + "),
            });
        }
        if !without.is_empty() {
            // Refused or left out, never filled: an empty or missing site is most often a disk
            // that is not mounted or a mistyped path (issue 15).
            match without_vault {
                WithoutVault::Refuse => {
                    return Err(embassy_core::Error::SiteWithoutVault {
                        sites: without.into_iter().map(|(_, given)| given).collect(),
                        holding,
                    })
                }
                WithoutVault::LeaveOut => {
                    for (location, _) in &without {
                        replicated.mark_down(location);
                        replicated.mark_lagging(
                            location,
                            "it holds no vault: left out, never filled; it is used again once \
                             it holds the vault (seeded), and caught up then"
                                .into(),
                        );
                    }
                }
            }
        }
        if usable < min_sites {
            return Err(SiteError::Permanent {
                site: locations.join(" + "),
                operation: "open",
                path: embassy_core::format::layout::CONFIG.into(),
                message: format!(
                    "only {usable} of {} sites hold the vault and answer, {min_sites} required: {}",
                    sites.len(),
                    replicated
                        .lagging()
                        .iter()
                        .map(|(s, why)| format!("{s}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
            .into());
        }
    }
    Ok(Arc::new(replicated))
}
