//! Witnessing: a witness key made, and a vault verified without keys (streamed WAL included)
//! and its newest checkpoint cosigned, but only when nothing was found wrong and everything
//! could be checked. The command line (`embassy witness`, `embassy witness-key`) and any
//! scheduler call these, so a witness vouches by one rule.
//!
//! Witnessing is incremental: the witness remembers (see [`memory`]) the heads it cosigned and
//! the objects it read in full, so the next cosign reads only what is new and checks the rest
//! by listing; a full read runs on a schedule, on demand, and whenever the memory cannot be
//! trusted. docs/design.md says what an incremental cosign still proves.

pub mod memory;

use std::path::{Path, PathBuf};

use embassy_core::engine::vault::Vault;
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_WITNESS};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use serde::Serialize;

use crate::unlock::Passphrase;
use crate::verify::Verification;
use memory::{Loaded, Memory};

/// The `vault_id` an unbound witness key file carries (it may witness any vault).
pub const UNBOUND: &str = "witness";

/// A witness key made.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessKeyReport {
    /// The key file written.
    pub key_file: PathBuf,
    /// Its public key (hex), to pin in a vault (`init --witness`).
    pub public_key: String,
}

/// Makes a witness key at `out`, sealed with a new passphrase; bound to vault `bound` when
/// given (it then refuses to witness any other).
pub fn make_key(
    out: &Path,
    passphrase: &Passphrase,
    bound: Option<&str>,
) -> Result<WitnessKeyReport> {
    let secret = RootSecret::generate();
    let public = hex::encode(
        embassy_core::history::checkpoint::witness_signing_key(&secret)
            .verifying_key()
            .to_bytes(),
    );
    let pass = passphrase.read(true)?;
    KeyFile::seal_payload(
        secret.expose(),
        PURPOSE_WITNESS,
        bound.unwrap_or(UNBOUND),
        pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .store(out)?;
    Ok(WitnessKeyReport {
        key_file: out.to_path_buf(),
        public_key: public,
    })
}

/// What a witness run found and did.
pub enum WitnessReport {
    /// Everything checked and sound: the newest checkpoint was cosigned.
    Cosigned {
        /// The verification (its `noise` is worth showing).
        verification: Box<Verification>,
        /// The checkpoint cosigned (hex id).
        checkpoint: String,
        /// Its short id, for people.
        checkpoint_short: String,
        /// Its time (ns since the epoch).
        checkpoint_time_ns: i64,
        /// The witness's public key (hex).
        witness: String,
    },
    /// Some objects could not be read or checked this time (an outage, not damage): nothing
    /// was cosigned; run again once the sites answer.
    NotChecked(Box<Verification>),
    /// Damage or tampering found (a history that does not extend the one this witness cosigned
    /// included): nothing was cosigned.
    Damaged(Box<Verification>),
}

/// How often a witness reads the whole vault when nothing else asks for it: 7 days.
pub const FULL_EVERY_SECS: u64 = 7 * 24 * 3600;

/// How much a witness run reads, and where it remembers what it verified.
#[derive(Debug, Clone)]
pub struct WitnessOptions {
    /// The state folder; the witness memory lives below it (`witness/`). None: no memory,
    /// every run reads everything.
    pub state_dir: Option<PathBuf>,
    /// Read every object this time.
    pub full: bool,
    /// Read every object when the last full read is at least this old (seconds).
    pub full_every_secs: u64,
    /// Also read every object after this many runs that did not.
    pub full_every_runs: Option<u32>,
}

impl WitnessOptions {
    /// Incremental runs remembered under `state_dir`, a full one every [`FULL_EVERY_SECS`].
    pub fn new(state_dir: Option<PathBuf>) -> Self {
        Self {
            state_dir,
            full: false,
            full_every_secs: FULL_EVERY_SECS,
            full_every_runs: None,
        }
    }
}

/// Whether a run read every object, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "pass")]
pub enum Pass {
    /// Every object read: why (asked for, on schedule, no memory or one not to be trusted).
    Full {
        /// Why, for people.
        why: String,
    },
    /// Only objects not verified before were read; the others were checked by listing.
    Incremental {
        /// When the last full read was (ns since the epoch).
        last_full_ns: i64,
    },
}

/// A witness run: its outcome, how much it read, and what it remembered.
pub struct WitnessRun {
    /// What was found and done.
    pub outcome: WitnessReport,
    /// Full or incremental, and why.
    pub pass: Pass,
    /// The memory file used (None without a state folder).
    pub memory: Option<PathBuf>,
    /// Things worth knowing that are not wrong (the memory could not be written, ...).
    pub notes: Vec<String>,
}

/// Opens the witness key at `key_path` with the passphrase, checks it may witness `vault`,
/// verifies the vault as `embassy verify` does (streamed WAL included, so a witness never
/// vouches for a vault whose site withholds or damages WAL) and, when all is sound and the
/// histories extend the ones this witness cosigned before, cosigns the newest valid checkpoint.
/// Objects the witness memory says were read in full before are checked by listing only,
/// unless `options` or the memory's state call for a full read.
pub fn witness(
    vault: &Vault,
    key_path: &Path,
    passphrase: &Passphrase,
    options: &WitnessOptions,
    progress: &dyn Progress,
) -> Result<WitnessRun> {
    let file = KeyFile::load(key_path)?;
    file.expect_purpose(PURPOSE_WITNESS, key_path)?;
    let pass = passphrase.read(false)?;
    let seed = file.open_payload(pass.as_bytes(), key_path)?;
    let seed = RootSecret::from_slice(&seed)
        .ok_or_else(|| Error::invalid("witness key file holds a secret of the wrong length"))?;
    let key = embassy_core::history::checkpoint::witness_signing_key(&seed);
    let vault_id = vault.config().vault_id.clone();
    if file.vault_id != UNBOUND && file.vault_id != vault_id {
        return Err(Error::SubstitutedConfig {
            site: vault.site().location().to_string(),
            problem: format!(
                "it holds vault {vault_id}, but witness key {} was made for vault {}",
                key_path.display(),
                file.vault_id
            ),
        });
    }
    let witness = hex::encode(key.verifying_key().to_bytes());
    let site = vault.site().location().to_string();
    let memory_file = options
        .state_dir
        .as_deref()
        .map(|d| memory::path(d, &vault_id, &site, &witness));
    let remembered = match &memory_file {
        Some(f) => memory::load(f, &vault_id, &site, &witness),
        None => Loaded::Missing,
    };
    let now = embassy_core::format::config::now_unix_nanos();
    let pass = choose_pass(&remembered, memory_file.as_deref(), options, now);
    let remembered = match remembered {
        Loaded::Usable(m) => Some(m),
        _ => None,
    };
    let known = match (&pass, &remembered) {
        (Pass::Incremental { .. }, Some(m)) => Some(&m.known),
        _ => None,
    };
    let mut verification = Box::new(crate::verify::verify_known(vault, known, progress)?);
    let run = |outcome, notes| WitnessRun {
        outcome,
        pass: pass.clone(),
        memory: memory_file.clone(),
        notes,
    };
    if !verification.is_ok() && !verification.found_damage() {
        return Ok(run(WitnessReport::NotChecked(verification), Vec::new()));
    }
    if !verification.is_ok() {
        return Ok(run(WitnessReport::Damaged(verification), Vec::new()));
    }
    let (histories, _) = vault.histories()?;
    // The newest valid checkpoint (signed by the root or a pinned writer key, dated sanely);
    // the verification proved that the served histories extend every valid one.
    let (checkpoints, _) = vault.checkpoints(&histories)?;
    let newest = checkpoints
        .last()
        .ok_or_else(|| Error::NotFound("the vault has no valid checkpoint to cosign yet".into()))?;
    // Never cosign a history that does not extend the one this witness cosigned before.
    if let Some(m) = &remembered {
        let problems = not_extending(m, &histories, newest);
        if !problems.is_empty() {
            verification.vault.problems.extend(problems);
            return Ok(run(WitnessReport::Damaged(verification), Vec::new()));
        }
    }
    embassy_core::history::checkpoint::cosign(vault.site().as_ref(), &newest.id, &key)?;
    let mut notes = Vec::new();
    if let Some(f) = &memory_file {
        let full = matches!(pass, Pass::Full { .. });
        let next = Memory {
            format: memory::FORMAT,
            vault_id,
            site,
            witness: witness.clone(),
            last_full_ns: match (&remembered, full) {
                (Some(m), false) => m.last_full_ns,
                _ => now,
            },
            runs_since_full: match (&remembered, full) {
                (Some(m), false) => m.runs_since_full.saturating_add(1),
                _ => 0,
            },
            heads: histories
                .iter()
                .filter_map(|(d, h)| {
                    let last = h.last()?;
                    Some((
                        d.clone(),
                        memory::Head {
                            seq: last.entry.seq,
                            id: last.id.to_hex(),
                        },
                    ))
                })
                .collect(),
            checkpoint: Some(memory::Cosigned {
                id: newest.id.to_hex(),
                time_ns: newest.checkpoint.time_ns,
            }),
            known: std::mem::take(&mut verification.vault.learned),
        };
        if let Err(e) = memory::store(f, &next) {
            notes.push(format!("{e}; the next run reads every object again"));
        }
    }
    Ok(run(
        WitnessReport::Cosigned {
            verification,
            checkpoint: newest.id.to_hex(),
            checkpoint_short: newest.id.short(),
            checkpoint_time_ns: newest.checkpoint.time_ns,
            witness,
        },
        notes,
    ))
}

/// Full or incremental: full when asked, when there is no usable memory, or when the last full
/// read is older than the schedule allows.
fn choose_pass(
    remembered: &Loaded,
    file: Option<&Path>,
    options: &WitnessOptions,
    now: i64,
) -> Pass {
    let full = |why: String| Pass::Full { why };
    let shown = file.map_or(String::new(), |f| format!(" {}", f.display()));
    match remembered {
        _ if options.full => full("a full check was asked for".into()),
        Loaded::Missing if file.is_none() => full("no state folder to remember in".into()),
        Loaded::Missing => full(format!(
            "no witness memory of this vault and site yet (it is written to{shown})"
        )),
        Loaded::Unusable(why) => full(format!(
            "the witness memory{shown} is not used: {why}; every object is read, and the \
                 memory is rewritten after the cosign"
        )),
        Loaded::Usable(m) => {
            let age_secs =
                u64::try_from(now.saturating_sub(m.last_full_ns) / 1_000_000_000).unwrap_or(0);
            if age_secs >= options.full_every_secs {
                full(format!(
                    "the last full check was on {} (every {} at least)",
                    embassy_core::time::utc(m.last_full_ns),
                    embassy_core::duration::format_duration(options.full_every_secs)
                ))
            } else if options
                .full_every_runs
                .is_some_and(|n| m.runs_since_full >= n)
            {
                full(format!(
                    "{} incremental runs since the last full check",
                    m.runs_since_full
                ))
            } else {
                Pass::Incremental {
                    last_full_ns: m.last_full_ns,
                }
            }
        }
    }
}

/// Where the served histories and newest checkpoint fail to extend what this witness cosigned
/// before: a rollback, a rewritten history or a hidden checkpoint, one line each.
fn not_extending(
    m: &Memory,
    histories: &embassy_core::engine::vault::Histories,
    newest: &embassy_core::history::checkpoint::StoredCheckpoint,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (dataset, head) in &m.heads {
        let short = head.id.get(..16).unwrap_or(&head.id);
        let served = histories.get(dataset);
        match served.and_then(|h| embassy_core::history::ledger::entry_at(h, head.seq)) {
            Some(r) if r.id.to_hex() == head.id => {}
            Some(r) => problems.push(format!(
                "dataset {dataset}: rewritten history: entry {} is {} at the site, but this \
                 witness cosigned a history whose entry {} is {short}",
                head.seq,
                &r.id.to_hex()[..16],
                head.seq
            )),
            None => problems.push(format!(
                "dataset {dataset}: rollback: the site serves {}, but this witness cosigned a \
                 history up to entry {} ({short}): the site deleted history or was rolled back",
                served
                    .and_then(|h| h.last())
                    .map_or("no history".into(), |r| format!(
                        "entries up to {}",
                        r.entry.seq
                    )),
                head.seq
            )),
        }
    }
    if let Some(cp) = &m.checkpoint {
        if newest.checkpoint.time_ns < cp.time_ns {
            problems.push(format!(
                "replay: the newest checkpoint at the site is {} of {}, but this witness cosigned \
                 checkpoint {} of {}: the site hides newer checkpoints or was rolled back",
                newest.id.short(),
                embassy_core::time::utc(newest.checkpoint.time_ns),
                cp.id.get(..8).unwrap_or(&cp.id),
                embassy_core::time::utc(cp.time_ns)
            ));
        }
    }
    problems
}
