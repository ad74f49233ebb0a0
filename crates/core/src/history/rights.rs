//! Rights: who may sign what in a dataset's ledger, as the root granted it, and the rules that
//! judge an entry from its signed bytes and the accepted history before it (no site reads, no
//! verifier clock).
//!
//! - the root key signs `signer_added`, `signer_revoked`, `reader_key_rotated` and
//!   `min_age_changed`, and nothing else needs it;
//! - the keys in `config.signers` (root-derived writer keys) hold every right;
//! - a key added by `signer_added` holds the rights listed there: `add_versions`
//!   (`version_added`, `promoted`), `stream_wal` (`log_range_added`), `delete`
//!   (`versions_deleted`), until it is revoked;
//! - an entry is never dated before its predecessor;
//! - an authoritative `promoted` entry (`history::promotion`) fences the dataset's writers
//!   granted before it, but its own signer: from it on they may not sign `version_added`,
//!   `log_range_added` or `promoted` (they lose `add_versions` and `stream_wal`), so an old
//!   primary that comes back cannot write a diverging history. Keys the root grants after it
//!   write normally.
//!
//! [`Authority`] follows these through a history; [`Authority::verdict`] is the one call the
//! acceptance loop makes per entry.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::format::config::VaultConfig;
use crate::history::ledger::{Entry, Event, Record};
use crate::history::version::Version;
use crate::id::ObjectId;

pub use crate::history::ledger::Right;

/// What the acceptance rules make of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted, with its effect.
    Accept,
    /// Accepted as a no-op: a policy entry (`versions_deleted`, `min_age_changed`) by a signer
    /// of the dataset that breaks a rule, or a `promoted` entry that is not authoritative
    /// (information that fences no one). It holds its sequence number and entries continuing it
    /// are judged normally, but it changes nothing. The reason says why.
    Noop(String),
    /// Rejected: its signer may not sign it at all (never added, revoked, not the root), or it
    /// is dated before its predecessor. Ignored, like noise.
    Reject(String),
}

/// The signers of a dataset's ledger with their rights, and the dataset's legal minimum age, at
/// one point of its accepted history.
#[derive(Debug, Clone)]
pub struct Authority {
    root: [u8; 32],
    pinned: Vec<[u8; 32]>,
    signers: BTreeMap<[u8; 32], Vec<Right>>,
    config_min_age_secs: u64,
    changed_min_age_secs: Option<u64>,
    /// Ids of the accepted entries so far (entry `s` at index `s - 1`): approvals of a
    /// promotion name one of them.
    chain: Vec<ObjectId>,
    /// Sequence number of the last authoritative promotion (0: none).
    last_promotion: u64,
    /// Keys an authoritative promotion fenced, with that promotion's sequence number.
    fenced: BTreeMap<[u8; 32], u64>,
    /// Whether promotions can fence here (format 4 on; older vaults judge them as before).
    fencing: bool,
    /// Keys that added versions or WAL since the last authoritative promotion, and its signer:
    /// the writers a takeover fences, which approvals cannot promote (`history::promotion`).
    writers: Vec<[u8; 32]>,
}

impl Authority {
    /// The authority before a dataset's first entry.
    pub fn new(config: &VaultConfig, dataset: &str) -> Result<Self> {
        Ok(Self {
            root: config.root_key()?,
            pinned: config.signer_keys(),
            signers: config
                .signer_keys()
                .into_iter()
                .map(|k| (k, Right::ALL.to_vec()))
                .collect(),
            config_min_age_secs: config.min_age_of(dataset),
            changed_min_age_secs: None,
            chain: Vec::new(),
            last_promotion: 0,
            fenced: BTreeMap::new(),
            fencing: config.format_version >= crate::format::config::FENCING_SINCE,
            writers: Vec::new(),
        })
    }

    /// The authority before any entry of a vault whose root key is `root` and whose
    /// configuration pins `pinned` (each holding every right), with no minimum age.
    pub fn pinned(root: [u8; 32], pinned: &[[u8; 32]]) -> Self {
        Self {
            root,
            pinned: pinned.to_vec(),
            signers: pinned.iter().map(|k| (*k, Right::ALL.to_vec())).collect(),
            config_min_age_secs: 0,
            changed_min_age_secs: None,
            chain: Vec::new(),
            last_promotion: 0,
            fenced: BTreeMap::new(),
            fencing: true,
            writers: Vec::new(),
        }
    }

    /// The authority after the accepted entries of `history` (no-op entries change nothing).
    pub fn after(
        config: &VaultConfig,
        dataset: &str,
        history: &[crate::history::ledger::Record],
    ) -> Self {
        let mut out = Self::new(config, dataset).unwrap_or_else(|_| Self {
            root: [0; 32],
            pinned: Vec::new(),
            signers: BTreeMap::new(),
            config_min_age_secs: config.min_age_of(dataset),
            changed_min_age_secs: None,
            chain: Vec::new(),
            last_promotion: 0,
            fenced: BTreeMap::new(),
            fencing: config.format_version >= crate::format::config::FENCING_SINCE,
            writers: Vec::new(),
        });
        for r in history {
            out.record(r);
        }
        out
    }

    /// Follows one accepted record: its effect when it has one (no-ops change nothing but hold
    /// their sequence number), including the fence of an authoritative promotion.
    pub fn record(&mut self, record: &Record) {
        self.chain.push(record.id);
        if record.refused.is_some() {
            return;
        }
        self.apply(&record.entry.event);
        match (self.fencing, &record.entry.event) {
            (true, Event::Promoted { .. }) => {
                self.fence(&record.entry.signer, record.entry.seq);
                self.writers = vec![record.entry.signer];
            }
            (_, Event::VersionAdded { .. } | Event::LogRangeAdded { .. })
                if !self.writers.contains(&record.entry.signer) =>
            {
                self.writers.push(record.entry.signer);
            }
            _ => {}
        }
    }

    /// An authoritative promotion at `seq` signed by `promoter`: every other signer loses the
    /// rights to add versions and WAL (and to promote) for this dataset.
    fn fence(&mut self, promoter: &[u8; 32], seq: u64) {
        self.last_promotion = seq;
        self.fenced.remove(promoter);
        let mut emptied = Vec::new();
        for (key, rights) in self.signers.iter_mut().filter(|(k, _)| *k != promoter) {
            rights.retain(|r| !matches!(r, Right::AddVersions | Right::StreamWal));
            self.fenced.insert(*key, seq);
            if rights.is_empty() {
                emptied.push(*key);
            }
        }
        for key in emptied {
            self.signers.remove(&key);
        }
    }

    /// The sequence number of the authoritative promotion that fenced `signer`, if one did
    /// (and the root has not granted it anew since).
    pub fn fenced_by(&self, signer: &[u8; 32]) -> Option<u64> {
        self.fenced.get(signer).copied()
    }

    /// True when `signer` added versions or WAL since the last authoritative promotion (or
    /// signed it): a writer the next takeover fences, which approvals cannot promote.
    pub fn is_current_writer(&self, signer: &[u8; 32]) -> bool {
        self.writers.contains(signer)
    }

    /// The sequence number of the dataset's last authoritative promotion (0: none).
    pub fn last_promotion(&self) -> u64 {
        self.last_promotion
    }

    /// Whether `entry` (a `promoted` entry) would be authoritative here: `Ok`, or why not
    /// (`history::promotion`). `embassy promote` asks before it promotes the server.
    pub fn check_promotion(
        &self,
        config: &VaultConfig,
        dataset: &str,
        entry: &Entry,
    ) -> std::result::Result<(), String> {
        crate::history::promotion::check(
            config,
            dataset,
            crate::history::promotion::Before {
                root: &self.root,
                pinned: &self.pinned,
                chain: &self.chain,
                last_promotion: self.last_promotion,
                writers: &self.writers,
            },
            entry,
        )
    }

    /// True when `signer` may sign entries that need `right`.
    pub fn may(&self, signer: &[u8; 32], right: Right) -> bool {
        self.signers
            .get(signer)
            .is_some_and(|rights| rights.contains(&right))
    }

    /// True when `signer` is an active (added, not revoked) signer of the dataset, whatever its
    /// rights.
    pub fn is_signer(&self, signer: &[u8; 32]) -> bool {
        self.signers.contains_key(signer)
    }

    /// The active signers, whatever their rights.
    pub fn keys(&self) -> Vec<[u8; 32]> {
        self.signers.keys().copied().collect()
    }

    /// The active signers holding `right`.
    pub fn holders(&self, right: Right) -> Vec<[u8; 32]> {
        self.signers
            .iter()
            .filter(|(_, rights)| rights.contains(&right))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The rights of `signer` (empty when it is not an active signer).
    pub fn rights_of(&self, signer: &[u8; 32]) -> Vec<Right> {
        self.signers.get(signer).cloned().unwrap_or_default()
    }

    /// The dataset's legal minimum age in force: the configuration's, raised by the newest
    /// accepted `min_age_changed`.
    pub fn min_age_secs(&self) -> u64 {
        self.config_min_age_secs
            .max(self.changed_min_age_secs.unwrap_or(0))
    }

    /// The minimum age the newest accepted `min_age_changed` set (the configuration's when none).
    fn current_min_age_secs(&self) -> u64 {
        self.changed_min_age_secs
            .unwrap_or(self.config_min_age_secs)
    }

    /// Applies an accepted entry's effect on signers and policy.
    pub fn apply(&mut self, event: &Event) {
        match event {
            // Keys of config.signers keep every right; a re-grant replaces the rights.
            Event::SignerAdded { key, .. } if self.pinned.contains(key) => {
                self.fenced.remove(key);
                self.signers.insert(*key, Right::ALL.to_vec());
            }
            Event::SignerAdded { key, rights, .. } => {
                // A grant after a promotion is the root's new decision: the fence is lifted.
                self.fenced.remove(key);
                let mut r = rights.clone();
                r.sort();
                r.dedup();
                self.signers.insert(*key, r);
            }
            Event::SignerRevoked { key, .. } => {
                self.signers.remove(key);
            }
            Event::MinAgeChanged { min_age_secs, .. } => {
                self.changed_min_age_secs = Some(*min_age_secs);
            }
            // A rotation retires every credential of the old epoch: only the pinned writer
            // keys keep signing; credentials issued after it are added anew.
            Event::ReaderKeyRotated { .. } => {
                let pinned = &self.pinned;
                self.signers.retain(|k, _| pinned.contains(k));
            }
            _ => {}
        }
    }

    /// Whether `entry`'s signer may sign it here: the root for root events, else an active
    /// signer holding the right the event needs. `Ok` or why not.
    pub fn authorise(&self, entry: &Entry) -> std::result::Result<(), String> {
        let who = hex::encode(&entry.signer[..8]);
        let needed = Right::needed_for(&entry.event);
        if let (Some(right @ (Right::AddVersions | Right::StreamWal)), Some(at)) =
            (needed, self.fenced_by(&entry.signer))
        {
            if !self.may(&entry.signer, right) {
                return Err(format!(
                    "{} signed by {who}, a writer fenced by the takeover recorded at entry {at} \
                     (an authoritative promotion): the old primary's history after it is ignored",
                    entry.event.name()
                ));
            }
        }
        match needed {
            // The root's own promotion (a takeover it decides alone).
            Some(Right::AddVersions)
                if entry.signer == self.root && matches!(entry.event, Event::Promoted { .. }) =>
            {
                Ok(())
            }
            None if entry.signer == self.root => Ok(()),
            None => Err(format!(
                "{} signed by {who}, which is not the vault's root key",
                entry.event.name()
            )),
            Some(right) => match self.signers.get(&entry.signer) {
                None => Err(format!(
                    "{} signed by {who}, which is not (or no longer) a signer of this dataset: a \
                     revoked or foreign key",
                    entry.event.name()
                )),
                Some(rights) if !rights.contains(&right) => Err(format!(
                    "{} signed by {who}, a signer the root did not grant the right {right} (it \
                     holds {})",
                    entry.event.name(),
                    if rights.is_empty() {
                        "none".to_string()
                    } else {
                        rights
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )),
                Some(_) => Ok(()),
            },
        }
    }

    /// The acceptance rules for one entry that chains to the accepted head, whose time is
    /// `prev_time_ns` (none for the first entry), given the versions live before it: a pure
    /// function of signed bytes and the configuration.
    pub fn verdict(
        &self,
        config: &VaultConfig,
        dataset: &str,
        live: &BTreeMap<u64, Version>,
        prev_time_ns: Option<i64>,
        entry: &Entry,
    ) -> Verdict {
        let policy_entry = matches!(
            entry.event,
            Event::VersionsDeleted { .. } | Event::MinAgeChanged { .. }
        );
        // Who signed it decides between noise and a refused policy entry.
        let known = self.is_signer(&entry.signer) || entry.signer == self.root;
        let early = prev_time_ns.filter(|p| entry.time_ns < *p).map(|p| {
            format!(
                "{} dated {}, before the entry it follows ({})",
                entry.event.name(),
                crate::time::utc(entry.time_ns),
                crate::time::utc(p)
            )
        });
        if !policy_entry || !known {
            if let Err(why) = self.authorise(entry) {
                return Verdict::Reject(why);
            }
            if let Some(why) = early {
                return Verdict::Reject(why);
            }
            if let Event::DrillRecorded(drill) = &entry.event {
                if let Err(why) = check_drill(drill, live) {
                    return Verdict::Reject(why);
                }
            }
            // A promotion that is not authoritative is kept as information, without effect
            // (before format 4 every promotion is information, as it always was).
            if self.fencing {
                if let Err(why) = self.check_promotion(config, dataset, entry) {
                    return Verdict::Noop(why);
                }
            }
            return Verdict::Accept;
        }
        if let Err(why) = self.authorise(entry) {
            return Verdict::Noop(why);
        }
        if let Some(why) = early {
            return Verdict::Noop(why);
        }
        let judged = match &entry.event {
            Event::VersionsDeleted { .. } => crate::history::deletion::check_deletion(
                config,
                dataset,
                live,
                self.min_age_secs(),
                entry,
            ),
            Event::MinAgeChanged { .. } => self.check_min_age_change(config, dataset, entry),
            _ => Ok(()),
        };
        match judged {
            Ok(()) => Verdict::Accept,
            Err(why) => Verdict::Noop(why),
        }
    }

    /// A `min_age_changed` entry: raising (or keeping) needs only the root; lowering needs
    /// `config.approvals_required` (at least 1) distinct pinned approvers' approvals embedded in
    /// the entry, each for exactly this change (the new age) after exactly this predecessor.
    fn check_min_age_change(
        &self,
        config: &VaultConfig,
        dataset: &str,
        entry: &Entry,
    ) -> std::result::Result<(), String> {
        let Event::MinAgeChanged {
            min_age_secs,
            approvals,
        } = &entry.event
        else {
            return Ok(());
        };
        let current = self.current_min_age_secs();
        if *min_age_secs >= current {
            return Ok(());
        }
        let need = config.approvals_required as usize;
        if need == 0 {
            return Err(format!(
                "min age changed: lowering {dataset}'s minimum age from {} to {} needs approvals, \
                 and this vault pins no approvers",
                crate::duration::format_duration(current),
                crate::duration::format_duration(*min_age_secs)
            ));
        }
        let pinned = config.approver_keys();
        let mut approvers = std::collections::BTreeSet::new();
        let mut problems = Vec::new();
        for (i, bytes) in approvals.iter().enumerate() {
            match crate::history::approval::decode(
                &config.vault_id,
                dataset,
                &format!("approval {i}"),
                bytes,
            ) {
                Ok(a) if !pinned.contains(&a.approver) => problems.push(format!(
                    "approval {i} is by {}, not a pinned approver",
                    hex::encode(&a.approver[..8])
                )),
                Ok(a)
                    if a.min_age_secs != Some(*min_age_secs)
                        || a.seq + 1 != entry.seq
                        || Some(a.entry) != entry.prev =>
                {
                    problems.push(format!(
                        "approval {i} does not approve this change (lowering to {} after entry {})",
                        crate::duration::format_duration(*min_age_secs),
                        entry.seq.saturating_sub(1)
                    ))
                }
                Ok(a) => {
                    approvers.insert(a.approver);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if approvers.len() >= need {
            return Ok(());
        }
        Err(format!(
            "min age changed: lowering {dataset}'s minimum age needs {need} distinct pinned \
             approvers, the entry carries {}{}",
            approvers.len(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        ))
    }
}

/// A drill entry names a live version and calls itself passed only when every check passed:
/// otherwise it is noise (a drill of nothing, or a "pass" that hides a failed check).
fn check_drill(
    drill: &crate::history::ledger::DrillResult,
    live: &BTreeMap<u64, Version>,
) -> std::result::Result<(), String> {
    if !live.contains_key(&drill.version_seq) {
        return Err(format!(
            "drill recorded for entry {}, which is not a live version",
            drill.version_seq
        ));
    }
    let all = !drill.checks.is_empty() && drill.checks.iter().all(|c| c.passed);
    if drill.passed != all {
        return Err(format!(
            "drill recorded as {} although {}",
            if drill.passed { "passed" } else { "failed" },
            if all {
                "every check passed"
            } else {
                "a check failed (or none ran)"
            }
        ));
    }
    Ok(())
}
