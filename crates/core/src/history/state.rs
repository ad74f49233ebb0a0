//! What a client remembers about a vault: the newest ledger heads and checkpoint it has
//! verified. A site that later serves an older or different history is caught here: rollback,
//! deleted datasets, forks and replayed checkpoints (invariant 4).
//!
//! One JSON file per vault under the state folder (`$XDG_STATE_HOME/data-embassy`, else
//! `~/.local/state/data-embassy`), replaced atomically; concurrent updates merge by keeping the
//! newest head per dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::history::ledger::Record;
use crate::time::utc;

/// The newest verified entry of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenHead {
    /// Sequence number.
    pub seq: u64,
    /// Entry id (hex).
    pub id: String,
    /// When this client verified it (ns since the epoch).
    pub seen_at_ns: i64,
}

/// The newest checkpoint this client has verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCheckpoint {
    /// Checkpoint id (hex).
    pub id: String,
    /// The checkpoint's own time.
    pub time_ns: i64,
    /// When this client verified it.
    pub seen_at_ns: i64,
}

/// The remembered state of one vault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Per dataset.
    #[serde(default)]
    pub heads: BTreeMap<String, SeenHead>,
    /// Newest checkpoint.
    #[serde(default)]
    pub checkpoint: Option<SeenCheckpoint>,
    /// Per site location (its pin spelling), per dataset: the newest entry that site itself
    /// showed this machine (it served or stored it). A site that later lacks such an entry
    /// was rolled back, whatever its catch-up queue holds: the queue only explains entries the
    /// site never showed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<String, BTreeMap<String, SeenHead>>,
}

/// The state file of one vault.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    seen: Mutex<Seen>,
    /// Sites read through this store that have writes waiting in this machine's catch-up
    /// queues, with what is queued: a history they serve short of the remembered head lags
    /// only when the queue holds exactly the entries it lacks; otherwise it was rolled back.
    lagging: Vec<Queued>,
}

/// What this machine's catch-up queue holds for one site: the object paths it missed (the
/// ledger entries among them decide whether a shorter history merely lags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// The site's location.
    pub site: String,
    /// The object paths queued for it.
    pub paths: Vec<String>,
    /// A full comparison is queued for it (a writer was killed before it could name what the
    /// site missed): this machine knows the site missed writes it cannot name, so a shorter
    /// history of it lags until that comparison runs, as long as it still holds every entry it
    /// showed this machine before ([`StateStore::check_history`]).
    pub full_sync: bool,
}

impl Queued {
    /// Whether the queue holds every entry of `dataset` after `served` up to and including
    /// the remembered `head` (and the one at the head is the very entry verified): then a site
    /// serving history only up to `served` lacks exactly what it missed while it was down.
    pub fn covers(&self, dataset: &str, served: Option<u64>, head: &SeenHead) -> bool {
        let queued: BTreeMap<u64, String> = self
            .paths
            .iter()
            .filter_map(|p| crate::format::layout::parse_ledger_path(p))
            .filter(|(d, _, _)| d == dataset)
            .map(|(_, seq, id)| (seq, id.to_hex()))
            .collect();
        let first = served.map_or(1, |s| s + 1);
        if self.full_sync {
            return first <= head.seq;
        }
        first <= head.seq
            && (first..=head.seq).all(|seq| queued.contains_key(&seq))
            && queued.get(&head.seq) == Some(&head.id)
    }
}

impl StateStore {
    /// The default state folder.
    pub fn default_dir() -> Option<PathBuf> {
        crate::fsutil::default_state_dir()
    }

    /// Opens (or starts) the state of vault `vault_id` in `dir`.
    pub fn open(dir: &Path, vault_id: &str) -> Result<Self> {
        let path = dir.join(format!("{vault_id}.json"));
        let mut seen = Self::read(&path)?;
        // The agent kept its heads in a `vaults` subfolder once: one home now, shared by the
        // command line and the agent, with the newer head of each dataset kept.
        if let Ok(legacy) = Self::read(&dir.join("vaults").join(format!("{vault_id}.json"))) {
            for (name, head) in legacy.heads {
                if seen.heads.get(&name).is_none_or(|h| h.seq < head.seq) {
                    seen.heads.insert(name, head);
                }
            }
        }
        Ok(Self {
            path,
            seen: Mutex::new(seen),
            lagging: Vec::new(),
        })
    }

    /// The same store, knowing what this machine's catch-up queues hold for these sites (read
    /// through it): a shorter history one serves is called lagging, with the way out
    /// ([`WayOut::CatchUpSites`](crate::error::WayOut::CatchUpSites)), only when its queue
    /// holds every entry it lacks ([`Queued::covers`]); otherwise it is a rollback.
    pub fn with_lagging_sites(mut self, sites: Vec<Queued>) -> Self {
        self.lagging = sites;
        self
    }

    fn read(path: &Path) -> Result<Seen> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!(
                    "state file {} is damaged ({e}); it records the newest history this machine verified, \
                     so it is not replaced silently: inspect it, or move it away to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Seen::default()),
            Err(e) => Err(Error::io(format!("reading state file {}", path.display()), e)),
        }
    }

    /// A copy of what is remembered.
    pub fn seen(&self) -> Seen {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a freshly verified history against what was seen before, then remembers its head.
    pub fn check_history(&self, dataset: &str, history: &[Record]) -> Result<()> {
        let seen = self.lock().heads.get(dataset).cloned();
        if let Some(seen) = seen {
            let served = history.last().map(|r| (r.entry.seq, r.id.to_hex()));
            let served_seq = served.as_ref().map(|(s, _)| *s);
            // A site that no longer holds the newest entry it showed this machine was rolled
            // back: its queue explains only entries it never showed.
            let mut unshown = Vec::new();
            let covering: Vec<String> = self
                .lagging
                .iter()
                .filter(|q| match self.shown(&q.site, dataset) {
                    Some(shown)
                        if crate::history::ledger::entry_at(history, shown.seq)
                            .is_none_or(|r| r.id.to_hex() != shown.id) =>
                    {
                        unshown.push(format!(
                            "; site {} showed entry {} ({}) here on {} and no longer serves it, \
                             so its catch-up queue does not excuse it",
                            q.site,
                            shown.seq,
                            shown.id.get(..16).unwrap_or(&shown.id),
                            utc(shown.seen_at_ns)
                        ));
                        false
                    }
                    _ => q.covers(dataset, served_seq, &seen),
                })
                .map(|q| q.site.clone())
                .collect();
            match crate::history::ledger::entry_at(history, seen.seq) {
                None if !covering.is_empty() => {
                    return Err(Error::Refused {
                        kind: crate::error::ErrorKind::Outage,
                        problem: format!(
                            "dataset {dataset}: site {} lags: it serves {}, but entry {} was \
                             verified here on {} and waits, with every entry before it the site \
                             lacks, in this machine's catch-up queue for it; catch the site up \
                             from the others, which hold them",
                            covering.join(", "),
                            served.as_ref().map_or("no history".to_string(), |(s, _)| format!(
                                "entries up to {s}"
                            )),
                            seen.seq,
                            utc(seen.seen_at_ns)
                        ),
                        way_out: crate::error::WayOut::CatchUpSites { sites: covering },
                    })
                }
                None => {
                    return Err(Error::History {
                        dataset: dataset.into(),
                        problem: format!(
                            "rollback: the site serves {} (entries up to {}), but entry {} ({}) was verified here on {}: \
                             the site deleted history or was rolled back{}",
                            served.as_ref().map_or("no history".to_string(), |(s, id)| format!("head {s} {}", &id[..16])),
                            served.as_ref().map_or(0, |(s, _)| *s),
                            seen.seq,
                            seen.id.get(..16).unwrap_or(&seen.id),
                            utc(seen.seen_at_ns),
                            if !unshown.is_empty() {
                                unshown.concat()
                            } else if self.lagging.is_empty() {
                                String::new()
                            } else {
                                " (this machine's catch-up queue for it does not hold every entry \
                                 it lacks, so it does not merely lag)"
                                    .to_string()
                            }
                        ),
                    })
                }
                Some(record) if record.id.to_hex() != seen.id => {
                    return Err(Error::History {
                        dataset: dataset.into(),
                        problem: format!(
                            "fork: entry {} is {} at the site, but {} was verified here on {}: \
                             the site serves different histories to different clients",
                            seen.seq,
                            &record.id.to_hex()[..16],
                            seen.id.get(..16).unwrap_or(&seen.id),
                            utc(seen.seen_at_ns)
                        ),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(head) = history.last() {
            let mut state = self.lock();
            let newer = state
                .heads
                .get(dataset)
                .is_none_or(|h| h.seq < head.entry.seq);
            if newer {
                state.heads.insert(
                    dataset.to_string(),
                    SeenHead {
                        seq: head.entry.seq,
                        id: head.id.to_hex(),
                        seen_at_ns: crate::format::config::now_unix_nanos(),
                    },
                );
                drop(state);
                self.save()?;
            }
        }
        Ok(())
    }

    /// The newest entry of `dataset` that the site at `location` itself showed this machine.
    pub fn shown(&self, location: &str, dataset: &str) -> Option<SeenHead> {
        self.lock()
            .sites
            .get(&normalise_location(location))?
            .get(dataset)
            .cloned()
    }

    /// Remembers that each site of `locations` itself showed (served or stored) entry `seq`
    /// `id` of `dataset`, where it is newer than what that site showed before.
    pub fn note_shown(&self, locations: &[&str], dataset: &str, seq: u64, id: &str) -> Result<()> {
        let mut state = self.lock();
        let mut changed = false;
        for location in locations {
            let site = state.sites.entry(normalise_location(location)).or_default();
            if site.get(dataset).is_some_and(|h| h.seq >= seq) {
                continue;
            }
            site.insert(
                dataset.to_string(),
                SeenHead {
                    seq,
                    id: id.to_string(),
                    seen_at_ns: crate::format::config::now_unix_nanos(),
                },
            );
            changed = true;
        }
        drop(state);
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Datasets remembered here that the site no longer lists.
    pub fn missing_datasets(&self, listed: &[String]) -> Vec<(String, SeenHead)> {
        self.lock()
            .heads
            .iter()
            .filter(|(name, _)| !listed.contains(name))
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect()
    }

    /// Remembers a verified checkpoint if it is newer than the one remembered; returns the
    /// remembered one if the offered checkpoint is older (a replay).
    pub fn check_checkpoint(&self, id: &str, time_ns: i64) -> Result<Option<SeenCheckpoint>> {
        let mut state = self.lock();
        if let Some(seen) = &state.checkpoint {
            if seen.time_ns > time_ns {
                return Ok(Some(seen.clone()));
            }
            if seen.time_ns == time_ns && seen.id == id {
                return Ok(None);
            }
        }
        state.checkpoint = Some(SeenCheckpoint {
            id: id.to_string(),
            time_ns,
            seen_at_ns: crate::format::config::now_unix_nanos(),
        });
        drop(state);
        self.save()?;
        Ok(None)
    }

    /// Writes the state atomically, merging with what another process may have written.
    fn save(&self) -> Result<()> {
        // Several stores of one vault may live in one process (the agent runs datasets on
        // threads): one save at a time, each with its own temporary file.
        static SAVING: Mutex<()> = Mutex::new(());
        let _saving = SAVING.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut merged = self.lock().clone();
        if let Ok(on_disk) = Self::read(&self.path) {
            for (name, head) in on_disk.heads {
                let keep_disk = merged.heads.get(&name).is_none_or(|h| h.seq < head.seq);
                if keep_disk {
                    merged.heads.insert(name, head);
                }
            }
            for (location, heads) in on_disk.sites {
                let mine = merged.sites.entry(location).or_default();
                for (name, head) in heads {
                    if mine.get(&name).is_none_or(|h| h.seq < head.seq) {
                        mine.insert(name, head);
                    }
                }
            }
            if let Some(cp) = on_disk.checkpoint {
                if merged
                    .checkpoint
                    .as_ref()
                    .is_none_or(|c| c.time_ns < cp.time_ns)
                {
                    merged.checkpoint = Some(cp);
                }
            }
        }
        let json = serde_json::to_vec_pretty(&merged).map_err(|e| Error::invalid(e.to_string()))?;
        crate::fsutil::write_atomic(&self.path, &json)
            .map_err(|e| Error::io(format!("writing state file {}", self.path.display()), e))?;
        *self.lock() = merged;
        Ok(())
    }
}

/// The file in the state folder that pins, per site location, the vault id it served on first
/// contact.
const SITE_PINS: &str = "site-pins.json";

/// Pins the vault id a site location serves: on first contact it is remembered (in
/// `site-pins.json` in the state folder `dir`); later, a site that serves another vault id is
/// refused ([`Error::SitePinMismatch`]). With `forget`, the remembered pin is replaced by the
/// vault id served now (the way out when a vault was legitimately replaced).
pub fn pin_site(dir: &Path, location: &str, vault_id: &str, forget: bool) -> Result<()> {
    static PINNING: Mutex<()> = Mutex::new(());
    let _pinning = PINNING.lock().unwrap_or_else(|p| p.into_inner());
    let path = dir.join(SITE_PINS);
    let location = normalise_location(location);
    let mut pins: BTreeMap<String, String> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(format!(
                "site pin file {} is damaged ({e}); it records which vault each site held, so it is \
                 not replaced silently: inspect it, or move it away to pin the sites afresh",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    match pins.get(&location) {
        Some(pinned) if pinned == vault_id => return Ok(()),
        Some(pinned) if !forget => {
            return Err(Error::SitePinMismatch {
                site: location,
                pinned: pinned.clone(),
                served: vault_id.to_string(),
            })
        }
        _ => {}
    }
    pins.insert(location, vault_id.to_string());
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let json = serde_json::to_vec_pretty(&pins).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&path, &json)
        .map_err(|e| Error::io(format!("writing site pin file {}", path.display()), e))
}

/// The site locations pinned in the state folder `dir` to vault `vault_id`: every site of the
/// vault this machine has met (a command that must reach them all, such as `promote`, adds
/// them to the sites it was given). A missing or unreadable pin file pins nothing.
pub fn pinned_sites(dir: &Path, vault_id: &str) -> Vec<String> {
    let Ok(bytes) = std::fs::read(dir.join(SITE_PINS)) else {
        return Vec::new();
    };
    let pins: BTreeMap<String, String> = serde_json::from_slice(&bytes).unwrap_or_default();
    pins.into_iter()
        .filter(|(_, id)| id == vault_id)
        .map(|(location, _)| location)
        .collect()
}

/// The one spelling of a site location that pins use (see [`pinned_sites`]).
pub fn pin_spelling(location: &str) -> String {
    normalise_location(location)
}

/// One spelling per site location: `file://` and trailing slashes dropped, local folders made
/// absolute when they exist.
fn normalise_location(location: &str) -> String {
    let trimmed = location.trim();
    let bare = trimmed.strip_prefix("file://").unwrap_or(trimmed);
    if bare.contains("://") {
        return bare.trim_end_matches('/').to_string();
    }
    match std::fs::canonicalize(bare) {
        Ok(path) => path.to_string_lossy().into_owned(),
        Err(_) => bare.trim_end_matches('/').to_string(),
    }
}
