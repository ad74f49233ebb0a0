//! An open vault: a site plus its verified configuration, and the keys that unlock it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::history::checkpoint::{self, Head, StoredCheckpoint};
use crate::history::state::StateStore;

use crate::error::{Error, Result};
use crate::format::config::VaultConfig;
use crate::format::layout;
use crate::history::ledger::{self, Event, Record};
pub use crate::history::numbering::{
    all_versions_in, missing_version, numbers_by_seq, versions_in, VersionNumbering,
};
pub use crate::history::version::Version;
use crate::id::ObjectId;
use crate::keys::RootSecret;
use crate::site::Site;

/// Verified histories by dataset.
pub type Histories = BTreeMap<String, Vec<Record>>;

/// What each dataset's history left out (noise, damage, an unresolved fork), by dataset; the
/// accepted records are in [`Histories`] (the `records` here are empty).
pub type Judged = Vec<(String, crate::history::History)>;

/// A vault at one site. Opening it checks the configuration's signature; no keys are needed.
#[derive(Debug, Clone)]
pub struct Vault {
    site: Arc<dyn Site>,
    config: VaultConfig,
    state: Option<Arc<StateStore>>,
}

impl Vault {
    /// Creates a new vault on an empty site.
    pub fn create(site: Arc<dyn Site>, root: &RootSecret) -> Result<Self> {
        let config = VaultConfig::new(root);
        config.create(site.as_ref(), root)?;
        Ok(Self {
            site,
            config,
            state: None,
        })
    }

    /// Opens the vault at a site.
    pub fn open(site: Arc<dyn Site>) -> Result<Self> {
        let config = VaultConfig::load(site.as_ref())?;
        Ok(Self {
            site,
            config,
            state: None,
        })
    }

    /// Remembers verified heads in `state` and refuses histories that go back from them.
    pub fn with_state(mut self, state: StateStore) -> Self {
        self.state = Some(Arc::new(state));
        self
    }

    /// The remembered state, if any.
    pub fn state(&self) -> Option<&StateStore> {
        self.state.as_deref()
    }

    /// The site.
    pub fn site(&self) -> &Arc<dyn Site> {
        &self.site
    }

    /// The verified configuration.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Names of the datasets that have a ledger.
    pub fn datasets(&self) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for info in self.site.list(layout::LEDGER_ROOT)? {
            if let Some((dataset, _, _)) = layout::parse_ledger_path(&info.path) {
                names.insert(dataset);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The verified history of a dataset, checked against the heads this client remembers.
    pub fn history(&self, dataset: &str) -> Result<Vec<Record>> {
        Ok(self.history_full(dataset)?.records)
    }

    /// [`Vault::history`] with what was left out of it: noise, damage, an unresolved fork.
    /// A fork below the head this client remembers resolves to the remembered chain.
    pub fn history_full(&self, dataset: &str) -> Result<crate::history::History> {
        let remembered = self.state.as_ref().and_then(|s| {
            let head = s.seen().heads.get(dataset)?.clone();
            Some((head.seq, ObjectId::from_hex(&head.id).ok()?))
        });
        let mut history =
            crate::history::load(self.site.as_ref(), &self.config, dataset, remembered)?;
        if let Some(state) = &self.state {
            let beyond = state
                .seen()
                .heads
                .get(dataset)
                .is_some_and(|h| h.seq > history.records.len() as u64);
            if beyond && history.is_truncated() {
                // The remembered head lies beyond a gap or a fork, which is reported as such.
                return Ok(history);
            }
            let checked = state.check_history(dataset, &history.records);
            if checked.is_ok() && !history.is_truncated() {
                self.note_shown(state, dataset, &history.records);
            }
            if let Err(mut e) = checked {
                // Name what the site holds in the place of the next entry (a damaged copy).
                if let Error::History { problem, .. } = &mut e {
                    problem.push_str(&history.in_place(history.records.len() as u64 + 1));
                }
                // Entries beyond a gap or a fork are not lost: the versions before it stay
                // readable, and the rollback is reported with the damage.
                if !history.is_truncated() {
                    return Err(e);
                }
                history.damage.push(e.to_string());
            }
        }
        Ok(history)
    }

    /// Remembers, per site, that it showed this machine the head of `history`: the site
    /// itself when it is one site; for several, each member that missed no write of this run
    /// and holds the head entry itself (read from it alone). A site that later lacks such an
    /// entry was rolled back, whatever its catch-up queue holds (`StateStore::check_history`).
    /// Best effort: a member that cannot be read now is simply not noted.
    fn note_shown(&self, state: &StateStore, dataset: &str, history: &[Record]) {
        let Some(head) = history.last() else { return };
        let (seq, id) = (head.entry.seq, head.id.to_hex());
        let members = self.site.members();
        if members.is_empty() {
            let _ = state.note_shown(&[self.site.location()], dataset, seq, &id);
            return;
        }
        let lagging: Vec<String> = self.site.lagging().into_iter().map(|(s, _)| s).collect();
        let path = layout::ledger_entry(dataset, seq, &head.id);
        let holding: Vec<&str> = members
            .iter()
            .map(|m| m.as_ref())
            .filter(|m| {
                !lagging.iter().any(|l| l == m.location())
                    && state
                        .shown(m.location(), dataset)
                        .is_none_or(|h| h.seq < seq)
                    && m.get(&path)
                        .is_ok_and(|bytes| ObjectId::of(&bytes) == head.id)
            })
            .map(|m| m.location())
            .collect();
        if !holding.is_empty() {
            let _ = state.note_shown(&holding, dataset, seq, &id);
        }
    }

    /// The keys that may sign `dataset`'s next entry (with any right), after its verified
    /// history. [`Vault::authority`] says which rights each holds.
    pub fn active_signers(&self, history: &[Record]) -> Vec<[u8; 32]> {
        // One home for who may sign: the rights rules (revocations, rotations).
        let dataset = history.first().map_or("", |r| r.entry.dataset.as_str());
        crate::history::rights::Authority::after(&self.config, dataset, history).keys()
    }

    /// The signers of `dataset` with their rights, and its legal minimum age, after its verified
    /// history: `authority(..).may(key, Right::Delete)`.
    pub fn authority(
        &self,
        dataset: &str,
        history: &[Record],
    ) -> crate::history::rights::Authority {
        crate::history::rights::Authority::after(&self.config, dataset, history)
    }

    /// Who may have signed the dataset's WAL objects, judged at the time each was anchored
    /// (see [`crate::history::wal_authority::WalAuthority`]), from an accepted `history`.
    pub fn wal_authority(&self, history: &[Record]) -> crate::history::wal_authority::WalAuthority {
        let dataset = history.first().map_or("", |r| r.entry.dataset.as_str());
        let start = crate::history::rights::Authority::after(&self.config, dataset, &[]);
        crate::history::wal_authority::WalAuthority::new(start, history)
    }

    /// The WAL retention cut-off of a dataset from its verified history
    /// (`history::wal_retention`): none in vaults before format 4, whose older programs would
    /// take collected WAL for lost.
    pub fn wal_cutoff(&self, history: &[Record]) -> crate::history::wal_retention::WalCutoff {
        use crate::history::wal_retention::{wal_cutoff, WalCutoff};
        if self.config.format_version < crate::format::config::WAL_RETENTION_SINCE {
            return WalCutoff::none();
        }
        let dataset = history.first().map_or("", |r| r.entry.dataset.as_str());
        wal_cutoff(dataset, history)
    }

    /// Every dataset's verified history; datasets that fail are returned as errors beside,
    /// and rejected entries are listed.
    pub fn histories(&self) -> Result<(Histories, Vec<Error>)> {
        let (ok, failed, _) = self.histories_full()?;
        Ok((ok, failed))
    }

    /// [`Vault::histories`] with what every dataset's history left out.
    pub fn histories_full(&self) -> Result<(Histories, Vec<Error>, Judged)> {
        let mut ok = BTreeMap::new();
        let mut failed = Vec::new();
        let mut rejected = Vec::new();
        let listed = self.datasets()?;
        for dataset in listed.iter().cloned() {
            match self.history_full(&dataset) {
                Ok(mut h) => {
                    ok.insert(dataset.clone(), std::mem::take(&mut h.records));
                    rejected.push((dataset, h));
                }
                Err(e) => failed.push(e),
            }
        }
        if let Some(state) = &self.state {
            for (dataset, head) in state.missing_datasets(&listed) {
                failed.push(Error::History {
                    dataset,
                    problem: format!(
                        "deleted: the site no longer holds this dataset, but entry {} ({}) was verified here on {}",
                        head.seq,
                        &head.id[..16.min(head.id.len())],
                        crate::time::utc(head.seen_at_ns)
                    ),
                });
            }
        }
        Ok((ok, failed, rejected))
    }

    /// Appends a root-signed event (signer added or revoked, reader key rotated) to a
    /// dataset's ledger, after its verified head and over any rejected entries.
    pub fn append_root_event(
        &self,
        root: &RootSecret,
        dataset: &str,
        event: Event,
    ) -> Result<Record> {
        if !event.needs_root() {
            return Err(Error::invalid(format!(
                "a {} entry is not signed by the root key",
                event.name()
            )));
        }
        let history = self.history_full(dataset)?;
        // A revocation of the signer of one side of an unresolved fork goes after the other
        // side: its root signature then decides the fork (docs/format.md §9).
        let head = match (&event, &history.conflict) {
            (Event::SignerRevoked { key, .. }, Some(conflict)) if history.damage.is_empty() => {
                let honest: Vec<&crate::history::Branch> = conflict
                    .branches
                    .iter()
                    .filter(|b| b.first().entry.signer != *key)
                    .collect();
                match honest.as_slice() {
                    [one] if honest.len() < conflict.branches.len() => one.records.last(),
                    // The revoked key signed every side (a stolen key forking against itself):
                    // the revocation takes the fork's sequence number itself, after the common
                    // prefix; being root-signed there, it wins the fork (docs/format.md §9).
                    [] => {
                        let ignore: Vec<ObjectId> = history
                            .rejected_ids()
                            .into_iter()
                            .chain(
                                conflict
                                    .branches
                                    .iter()
                                    .flat_map(|b| b.subtree.iter().copied()),
                            )
                            .collect();
                        return ledger::append_ignoring(
                            self.site.as_ref(),
                            &root.root_signing_key(),
                            dataset,
                            history.records.last(),
                            &ignore,
                            event,
                        );
                    }
                    _ => {
                        history.check_appendable(dataset)?;
                        history.records.last()
                    }
                }
            }
            _ => {
                history.check_appendable(dataset)?;
                history.records.last()
            }
        };
        ledger::append_ignoring(
            self.site.as_ref(),
            &root.root_signing_key(),
            dataset,
            head,
            &history.rejected_ids(),
            event,
        )
    }

    /// Keys that may sign checkpoints: the root key and the writer keys pinned in the
    /// configuration (root-derived). Sealing credentials, even active ones, may not.
    pub fn checkpoint_signers(&self) -> Result<Vec<[u8; 32]>> {
        let mut keys = self.config.signer_keys();
        keys.push(self.config.root_key()?);
        Ok(keys)
    }

    /// True when `key` may sign checkpoints (see [`Vault::checkpoint_signers`]).
    pub fn may_checkpoint(&self, key: &ed25519_dalek::SigningKey) -> bool {
        let public = key.verifying_key().to_bytes();
        self.checkpoint_signers()
            .is_ok_and(|keys| keys.contains(&public))
    }

    /// The valid checkpoints (oldest first) and the noise beside them: see
    /// [`checkpoint::load_valid`].
    pub fn checkpoints(
        &self,
        histories: &Histories,
    ) -> Result<(Vec<StoredCheckpoint>, Vec<String>)> {
        checkpoint::load_valid(
            self.site.as_ref(),
            &self.config.vault_id,
            &self.checkpoint_signers()?,
            histories,
        )
    }

    /// Writes a checkpoint of every verified head. Returns its id and the datasets left out
    /// because their history did not verify. Only the root key and the pinned writer keys may
    /// (callers holding a credential check [`Vault::may_checkpoint`] and skip).
    pub fn write_checkpoint(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(ObjectId, Vec<Error>)> {
        if !self.may_checkpoint(key) {
            return Err(Error::WrongKey(
                "only the root key and the writer keys pinned in the vault configuration sign \
                 checkpoints; a credential does not"
                    .into(),
            ));
        }
        let (histories, failed) = self.histories()?;
        let heads = histories
            .iter()
            .filter_map(|(name, h)| {
                h.last().map(|r| {
                    (
                        name.clone(),
                        Head {
                            seq: r.entry.seq,
                            id: r.id,
                        },
                    )
                })
            })
            .collect();
        let (id, time_ns) =
            checkpoint::write(self.site.as_ref(), &self.config.vault_id, heads, key)?;
        if let Some(state) = &self.state {
            state.check_checkpoint(&id.to_hex(), time_ns)?;
        }
        Ok((id, failed))
    }

    /// The newest checkpoint that is consistent with `histories` (for the datasets in it) and
    /// has at least the vault's witness quorum of cosignatures from pinned witnesses (any, when
    /// the quorum is 0).
    pub fn trusted_checkpoint(
        &self,
        histories: &BTreeMap<String, Vec<Record>>,
    ) -> Result<Option<StoredCheckpoint>> {
        let (checkpoints, _) = self.checkpoints(histories)?;
        let witnesses = self.config.witness_keys();
        Ok(checkpoints.into_iter().rev().find(|cp| {
            let cosigned = cp
                .cosigners
                .iter()
                .filter(|w| witnesses.contains(w))
                .count();
            // Judge only the datasets whose histories were loaded.
            let others: Vec<String> = cp
                .checkpoint
                .heads
                .keys()
                .filter(|d| !histories.contains_key(*d))
                .cloned()
                .collect();
            cosigned >= self.config.witness_quorum as usize
                && checkpoint::check_against_except(cp, histories, &others).is_empty()
        }))
    }

    /// Refuses "the newest version" of `dataset` when the site's history of it does not extend
    /// the newest valid checkpoint naming it (or the newest of all): a site that withholds the
    /// newest entries (a rollback) or serves others (a fork) must not turn a restore of the
    /// newest into a silent restore of an older version on a machine that never saw the vault
    /// (no remembered head). The same checkpoints a look (`status`) judges by; a version asked
    /// for by number is not refused.
    pub fn check_newest_checkpoints(&self, dataset: &str) -> Result<()> {
        let records = self.history(dataset)?;
        let listed: BTreeSet<String> = self
            .site
            .list(checkpoint::CHECKPOINTS)?
            .into_iter()
            .map(|i| i.path)
            .collect();
        let histories = BTreeMap::from([(dataset.to_string(), records)]);
        let checkpoints = checkpoint::load_newest(
            self.site.as_ref(),
            &self.config.vault_id,
            &self.checkpoint_signers()?,
            &histories,
            &listed,
        )?;
        let mut problems = Vec::new();
        for cp in &checkpoints {
            let others: Vec<String> = cp
                .checkpoint
                .heads
                .keys()
                .filter(|d| *d != dataset)
                .cloned()
                .collect();
            problems.extend(checkpoint::check_against_except(cp, &histories, &others));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let newest = versions_in(dataset, &histories[dataset])
            .last()
            .map(|v| v.number);
        Err(Error::History {
            dataset: dataset.into(),
            problem: format!(
                "the newest version cannot be proved: {}; {}",
                problems.join("; "),
                match newest {
                    Some(n) => format!(
                        "the newest version this site serves is {n}: restore {dataset}@{n} to \
                         take it, or repair this site from another (embassy sync --repair --from <good site> --to <this site>)"
                    ),
                    None => "this site serves no version of it: repair this site from another \
                             (embassy sync --repair --from <good site> --to <this site>)"
                        .to_string(),
                }
            ),
        })
    }

    /// The version a restore may use by default: like [`Vault::find_version`], but when the
    /// vault requires witnesses, only versions a checkpoint with the quorum of cosignatures
    /// covers (`latest` then means the newest such version), unless `allow_unwitnessed`.
    pub fn find_trusted_version(
        &self,
        dataset: &str,
        selector: Option<&str>,
        allow_unwitnessed: bool,
    ) -> Result<Version> {
        let limit = if allow_unwitnessed {
            None
        } else {
            self.witnessed_head(dataset)?
        };
        let Some(limit) = limit else {
            if matches!(selector, None | Some("latest")) {
                self.check_newest_checkpoints(dataset)?;
            }
            return self.find_version(dataset, selector);
        };
        let quorum = self.config.witness_quorum;
        if matches!(selector, None | Some("latest")) {
            // The same rule as without witnesses: a gap or an unresolved fork hides entries
            // beyond it, so "the newest" cannot be proved, and the newest witnessed version is
            // taken only when asked for by number (a site withholding one entry must not turn
            // a restore of the newest into a silent restore of an older version).
            let (versions, problems) = self.versions_full(dataset)?;
            let witnessed = versions.into_iter().rev().find(|v| v.seq <= limit);
            if !problems.is_empty() {
                return Err(Error::History {
                    dataset: dataset.into(),
                    problem: format!(
                        "the newest version cannot be proved: {}; {}",
                        problems.join("; "),
                        match &witnessed {
                            Some(v) => format!(
                                "the newest witnessed version before it is {}: restore \
                                 {dataset}@{} to take it",
                                v.number, v.number
                            ),
                            None => "no witnessed version before it".to_string(),
                        }
                    ),
                });
            }
            return witnessed.ok_or_else(|| Error::Unwitnessed {
                dataset: dataset.into(),
                problem: format!(
                    "dataset {dataset} has no version that {quorum} witnesses have \
                         cosigned yet"
                ),
            });
        }
        let version = self.find_version(dataset, selector)?;
        if version.seq > limit {
            return Err(Error::Unwitnessed {
                dataset: dataset.into(),
                problem: format!(
                    "version {} of {dataset} is not yet covered by a checkpoint with {quorum} \
                     witness cosignatures (it is ledger entry {}, the newest witnessed entry is \
                     {limit})",
                    version.number, version.seq
                ),
            });
        }
        Ok(version)
    }

    /// When a restore under the witness quorum picked `version` but newer versions exist that
    /// no witnessed checkpoint covers yet: a note saying so, for stderr (invariant 12).
    pub fn unwitnessed_note(&self, version: &Version) -> Result<Option<String>> {
        let now = crate::format::config::now_unix_nanos();
        Ok(self.newer_unwitnessed(version)?.map(|n| n.message(now)))
    }

    /// When a restore under the witness quorum picked `version` but newer versions exist that
    /// no witnessed checkpoint covers yet: which, and how new (invariant 12). `None` without a
    /// quorum or when `version` is the newest.
    pub fn newer_unwitnessed(&self, version: &Version) -> Result<Option<NewerUnwitnessed>> {
        if self.config.witness_quorum == 0 {
            return Ok(None);
        }
        let newer: Vec<Version> = self
            .versions(&version.dataset)?
            .into_iter()
            .filter(|v| v.seq > version.seq)
            .collect();
        let Some(newest) = newer.last() else {
            return Ok(None);
        };
        Ok(Some(NewerUnwitnessed {
            dataset: version.dataset.clone(),
            restored: version.number,
            restored_captured_at_ns: version.captured_at_ns,
            quorum: u64::from(self.config.witness_quorum),
            versions: newer.iter().map(|v| v.number).collect(),
            newest_captured_at_ns: newest.captured_at_ns,
        }))
    }

    /// The newest version of `dataset` that a witnessed checkpoint covers, when the vault
    /// requires witnesses; `None` when it does not.
    pub fn witnessed_head(&self, dataset: &str) -> Result<Option<u64>> {
        if self.config.witness_quorum == 0 {
            return Ok(None);
        }
        let history = self.history(dataset)?;
        let mut histories = BTreeMap::from([(dataset.to_string(), history)]);
        let signers = self.checkpoint_signers()?;
        let (checkpoints, _) =
            checkpoint::load_all(self.site.as_ref(), &self.config.vault_id, &signers)?;
        let witnesses = self.config.witness_keys();
        // Witnessed checkpoints with an acceptable time that name this dataset, reduced to its
        // head. The time check reads the other datasets' named entries from the site.
        let witnessed: Vec<StoredCheckpoint> = checkpoints
            .into_iter()
            .filter(|cp| {
                cp.cosigners
                    .iter()
                    .filter(|w| witnesses.contains(w))
                    .count()
                    >= self.config.witness_quorum as usize
            })
            .filter(|cp| checkpoint::time_problem(self.site.as_ref(), cp, &histories).is_none())
            .filter_map(|mut cp| {
                cp.checkpoint.heads.retain(|d, _| d == dataset);
                (!cp.checkpoint.heads.is_empty()).then_some(cp)
            })
            .collect();
        let contradictions = |histories: &Histories| -> Vec<String> {
            witnessed
                .iter()
                .flat_map(|cp| checkpoint::check_against(cp, histories))
                .collect()
        };
        // A witnessed checkpoint that the served history contradicts proves a fork or a
        // rollback: refuse, rather than fall back to an older checkpoint. Read the history
        // again first: a version stored after it was read is no contradiction (the checkpoints
        // were read before, so the history read now holds every entry they name).
        if !contradictions(&histories).is_empty() {
            histories.insert(dataset.to_string(), self.history(dataset)?);
            if let Some(problem) = contradictions(&histories).into_iter().next() {
                let problem = problem
                    .strip_prefix(&format!("dataset {dataset}: "))
                    .unwrap_or(&problem)
                    .to_string();
                return Err(Error::History {
                    dataset: dataset.to_string(),
                    problem: format!(
                        "{problem}; that checkpoint has the witness cosignatures restores trust, so \
                         this site serves a forked or rolled-back history: restore from another \
                         site"
                    ),
                });
            }
        }
        Ok(Some(witnessed.last().map_or(0, |cp| {
            cp.checkpoint.heads.get(dataset).map_or(0, |h| h.seq)
        })))
    }

    /// Refuses a dataset name the vault does not hold (no ledger of that name) with the names it
    /// does hold: for commands that read a named dataset, where an unknown name is a typo, not
    /// an empty dataset.
    pub fn require_dataset(&self, dataset: &str) -> Result<()> {
        let known = self.datasets()?;
        if known.iter().any(|k| k == dataset) {
            return Ok(());
        }
        Err(Error::UnknownDataset {
            dataset: dataset.to_string(),
            known,
        })
    }

    /// The versions of a dataset still held (not removed by retention), oldest first. After a
    /// gap or an unresolved fork these are the versions before it only: see
    /// [`Vault::versions_full`].
    pub fn versions(&self, dataset: &str) -> Result<Vec<Version>> {
        Ok(versions_in(dataset, &self.history(dataset)?))
    }

    /// [`Vault::versions`], and the problems that hide newer entries (a gap, an unresolved
    /// fork): when there are any, the newest version listed may not be the newest stored.
    pub fn versions_full(&self, dataset: &str) -> Result<(Vec<Version>, Vec<String>)> {
        let history = self.history_full(dataset)?;
        Ok((
            versions_in(dataset, &history.records),
            history.problems(dataset),
        ))
    }

    /// Finds a version: `None` or `latest` for the newest, a version number
    /// ([`Version::number`], not a ledger sequence number), or a prefix (at least 6 hex digits)
    /// of the manifest or ledger entry id. `latest` is refused when newer entries exist beyond a
    /// gap or an unresolved fork: an older version is never served as the newest in silence.
    pub fn find_version(&self, dataset: &str, selector: Option<&str>) -> Result<Version> {
        let history = self.history_full(dataset)?;
        let problems = history.problems(dataset);
        if history.records.is_empty() && problems.is_empty() {
            self.require_dataset(dataset)?;
        }
        let versions = versions_in(dataset, &history.records);
        if matches!(selector, None | Some("latest")) && !problems.is_empty() {
            return Err(Error::History {
                dataset: dataset.into(),
                problem: format!(
                    "the newest version cannot be proved: {}; {}",
                    problems.join("; "),
                    match versions.last() {
                        Some(v) => format!(
                            "the newest version before it is {}: restore {dataset}@{} to take it",
                            v.number, v.number
                        ),
                        None => "no version before it".to_string(),
                    }
                ),
            });
        }
        let not_found = |what: String| {
            if !problems.is_empty() {
                // The version may lie beyond the damage: that is an integrity failure.
                return Error::History {
                    dataset: dataset.into(),
                    problem: format!(
                        "the provable history has {what}, and newer entries cannot be proved: {}",
                        problems.join("; ")
                    ),
                };
            }
            Error::NoSuchVersion {
                dataset: dataset.into(),
                problem: format!("dataset {dataset} has {what}"),
            }
        };
        match selector {
            None | Some("latest") => versions
                .last()
                .cloned()
                .ok_or_else(|| not_found("no versions in this vault".into())),
            Some(sel) => {
                if let Ok(number) = sel.parse::<u64>() {
                    if sel.len() < 6 {
                        if let Some(v) = versions.into_iter().find(|v| v.number == number) {
                            return Ok(v);
                        }
                        return Err(if problems.is_empty() {
                            Error::NoSuchVersion {
                                dataset: dataset.into(),
                                problem: missing_version(dataset, &history.records, number),
                            }
                        } else {
                            not_found(format!("no version {number}"))
                        });
                    }
                }
                if sel.len() < 6 || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::invalid(format!(
                        "'{sel}' is not a version: use a version number (as the list of versions numbers them), 'latest', or at least 6 hex digits of its id"
                    )));
                }
                let sel = sel.to_ascii_lowercase();
                let matches: Vec<Version> = versions
                    .into_iter()
                    .filter(|v| {
                        v.manifest.to_hex().starts_with(&sel)
                            || v.ledger_id.to_hex().starts_with(&sel)
                    })
                    .collect();
                match matches.len() {
                    1 => Ok(matches.into_iter().next().unwrap_or_else(|| unreachable!())),
                    0 => Err(not_found(format!("no version whose id starts with {sel}"))),
                    n => Err(Error::invalid(format!(
                        "{n} versions start with {sel}: give more digits"
                    ))),
                }
            }
        }
    }
}

mod keyring;
pub use keyring::Keyring;

/// Newer versions than the one a restore under the witness quorum picked, not yet covered by a
/// witnessed checkpoint: the restore says so, and how to take one (have the witnesses cosign,
/// or restore it anyway on purpose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewerUnwitnessed {
    /// The dataset.
    pub dataset: String,
    /// The version restored: the newest witnessed one.
    pub restored: u64,
    /// When its source was captured.
    pub restored_captured_at_ns: i64,
    /// Cosignatures a checkpoint needs.
    pub quorum: u64,
    /// The newer versions' numbers, oldest first (never empty).
    pub versions: Vec<u64>,
    /// When the newest of them was captured.
    pub newest_captured_at_ns: i64,
}

impl NewerUnwitnessed {
    /// The newest version not yet witnessed.
    pub fn newest(&self) -> u64 {
        self.versions.last().copied().unwrap_or(self.restored)
    }

    /// Seconds from the capture at `captured_ns` to `now_ns` (0 for a time ahead).
    pub fn age_secs(captured_ns: i64, now_ns: i64) -> u64 {
        u64::try_from(now_ns.saturating_sub(captured_ns) / 1_000_000_000).unwrap_or(0)
    }

    /// The note, in words, at time `now_ns`.
    pub fn message(&self, now_ns: i64) -> String {
        let age = |ns| crate::duration::format_duration(Self::age_secs(ns, now_ns));
        let which = match self.versions.as_slice() {
            [one] => format!("1 newer version ({one}) is"),
            many => format!(
                "{} newer versions ({} to {}) are",
                many.len(),
                many.first().copied().unwrap_or_default(),
                self.newest()
            ),
        };
        format!(
            "dataset {}: restoring version {} (captured {} ago), the newest that {} witnesses \
             have cosigned; {which} not yet witnessed, the newest, version {}, captured {} ago: \
             have the witnesses cosign to restore it, or restore it anyway on purpose",
            self.dataset,
            self.restored,
            age(self.restored_captured_at_ns),
            self.quorum,
            self.newest(),
            age(self.newest_captured_at_ns),
        )
    }
}
