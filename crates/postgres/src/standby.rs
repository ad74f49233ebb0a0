//! A warm standby at the embassy, and its promotion.
//!
//! [`standby`] writes the newest base backup as a data directory with `standby.signal` and a
//! `restore_command` calling `embassy wal-fetch`: PostgreSQL started on it replays every WAL
//! file the vault receives (the newest partial one included; it asks again every second) and
//! stays read-only. [`promote`] runs `pg_ctl promote`, waits until the server accepts writes,
//! and records the promotion and its new timeline as a ledger entry of the dataset.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::history::approval;
use embassy_core::history::ledger::{self, Entry, Event, ReplayedWal};
use embassy_core::progress::Progress;

use crate::base_backup::pg_program;
use crate::error::PgError;
use crate::restore::{restore, Mode, PgRestore, PgRestoreOptions};
use crate::tablespace::Relocation;
use crate::Lsn;

/// Writes a standby data directory for `dataset` into the new or empty folder `dir`, its
/// tablespaces at their locations or where `relocations` say.
#[allow(clippy::too_many_arguments)]
pub fn standby(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    dir: &Path,
    restore_command: &str,
    owner: Option<(u32, u32)>,
    relocations: &[Relocation],
    timeline: Option<u32>,
    progress: &dyn Progress,
) -> Result<PgRestore, PgError> {
    let options = PgRestoreOptions {
        mode: Mode::Standby,
        restore_command: restore_command.to_string(),
        owner,
        allow_unwitnessed: true,
        relocations: relocations.to_vec(),
        timeline,
    };
    restore(vault, keyring, dataset, dir, &options, progress)
}

/// A completed promotion.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The timeline the promoted server writes on.
    pub timeline: u32,
    /// Where its new timeline forks: the switch point in its timeline history (the end of the
    /// WAL it replayed; the first write's position when the history file cannot be read).
    pub lsn: Lsn,
    /// Set when it was promoted short of the WAL the vault holds durably (the loss accepted):
    /// that WAL's end.
    pub data_lost_to: Option<Lsn>,
    /// How many approvals the `promoted` entry embeds.
    pub approvals: usize,
    /// Why the entry is not authoritative (it then fences no writer), or None when it is.
    pub not_authoritative: Option<String>,
    /// From `pg_ctl promote` until a write was accepted.
    pub elapsed: Duration,
    /// The ledger entry's sequence number.
    pub seq: u64,
    /// The WAL object of the timeline it left that the entry anchors (what it replayed last),
    /// or None when none was found (the old writers' unanchored WAL is then not valid).
    pub replayed: Option<ReplayedWal>,
}

/// Where a running server on `dir` listens, from its postmaster.pid: (socket dir, port).
fn listen_address(dir: &Path) -> Result<(String, String), PgError> {
    let pid_file = dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).map_err(|e| {
        PgError::Restore(format!(
            "no PostgreSQL server runs on {} ({}: {e}): start it with `pg_ctl -D {} start` first",
            dir.display(),
            pid_file.display(),
            dir.display()
        ))
    })?;
    let lines: Vec<&str> = text.lines().collect();
    match (lines.get(3), lines.get(4)) {
        (Some(port), Some(socket)) => {
            let socket = if socket.trim().is_empty() {
                "/tmp"
            } else {
                socket.trim()
            };
            Ok((socket.to_string(), port.trim().to_string()))
        }
        _ => Err(PgError::Restore(format!(
            "{} does not say where the server listens",
            pid_file.display()
        ))),
    }
}

/// A command running as the data directory's owner (PostgreSQL's tools refuse root).
pub fn as_owner(program: &Path, dir: &Path) -> Result<Command, PgError> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| PgError::Restore(format!("reading {}: {e}", dir.display())))?;
    let mut cmd = Command::new(program);
    // The server on `dir` runs code from the backup, which can read the environment of any
    // process of its user (/proc/PID/environ): psql and pg_ctl get none of ours (no
    // EMBASSY_PASSPHRASE, no cloud keys), only a PATH.
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    Ok(cmd)
}

/// The `psql` command for one statement on the server on `dir`: over `conninfo` (its password
/// in psql's environment only, never in its argv where every local user can read it) or over
/// the server's Unix socket.
fn psql_command(dir: &Path, conninfo: Option<&str>, query: &str) -> Result<Command, PgError> {
    let psql = pg_program("psql");
    let mut cmd = as_owner(&psql, dir)?;
    match conninfo {
        Some(c) => {
            let parsed = crate::replication::ConnConfig::parse(c)?;
            cmd.args(["-d", &parsed.libpq_conninfo()]);
            parsed.pass_password_to(&mut cmd);
        }
        None => {
            let (socket, port) = listen_address(dir)?;
            cmd.args(["-h", &socket, "-p", &port, "-d", "postgres"]);
            // Per-database and per-role settings restored in the catalog (ALTER DATABASE ...
            // SET session_preload_libraries) would load the backup's code into this session:
            // the connection's own options win over them. (As the owner, a superuser.)
            cmd.env(
                "PGOPTIONS",
                "-c session_preload_libraries= -c local_preload_libraries=",
            );
        }
    }
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query]);
    Ok(cmd)
}

/// Runs one SQL statement on the server on `dir`; returns the output.
pub fn sql(dir: &Path, conninfo: Option<&str>, query: &str) -> Result<String, PgError> {
    let mut cmd = psql_command(dir, conninfo, query)?;
    let out = cmd.output().map_err(|e| {
        PgError::Restore(format!(
            "cannot run {}: {e}",
            cmd.get_program().to_string_lossy()
        ))
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(PgError::Restore(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Promotes the standby running on `dir`: refused (nothing promoted) while it has not replayed
/// the WAL the vault holds durably, unless `accept_data_loss` ([`replayed_durable_wal`]); then
/// `pg_ctl promote`, waits (up to `timeout`) until it accepts a write, and appends a `promoted`
/// entry with the new timeline and where it forks (the end of the WAL it replayed) to the
/// dataset's ledger. `conninfo` overrides the connection used to check writes (default: the
/// server's Unix socket from postmaster.pid, as the data directory's owner).
pub fn promote(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    dir: &Path,
    conninfo: Option<&str>,
    timeout: Duration,
    accept_data_loss: bool,
) -> Result<Promotion, PgError> {
    if !dir.join("standby.signal").exists() && !dir.join("recovery.signal").exists() {
        return Err(PgError::Restore(format!(
            "{} is not in recovery (no standby.signal or recovery.signal): nothing to promote",
            dir.display()
        )));
    }
    let signer = keyring.signer().map_err(PgError::Vault)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // The vault's promotion policy is checked before anything touches the server: a takeover
    // without its approvals must not happen at all.
    let approvals = promotion_approvals(vault, dataset, &host, &signer.verifying_key().to_bytes())?;
    listen_address(dir)?;
    // It must be a copy of this dataset's cluster (whatever WAL position it shows).
    crate::promote_check::same_cluster(vault, keyring, dataset, dir)?;
    // Then the standby must hold every WAL record the vault holds durably (or the loss accepted).
    let data_lost_to = replayed_durable_wal(
        vault,
        keyring,
        dataset,
        (dir, conninfo),
        timeout.min(CATCH_UP_GRACE),
        accept_data_loss,
    )?;
    let started = Instant::now();
    let pg_ctl = pg_program("pg_ctl");
    let out = as_owner(&pg_ctl, dir)?
        .arg("promote")
        .arg("-D")
        .arg(dir)
        .args(["-w", "-t", &timeout.as_secs().max(1).to_string()])
        .output()
        .map_err(|e| PgError::Restore(format!("cannot run {}: {e}", pg_ctl.display())))?;
    if !out.status.success() {
        return Err(PgError::Restore(format!(
            "pg_ctl promote failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    // Accepting writes: a transaction id can be assigned (impossible during recovery).
    let (lsn, walfile) = loop {
        match sql(
            dir,
            conninfo,
            "SELECT txid_current() IS NOT NULL, pg_last_wal_replay_lsn(), pg_walfile_name(pg_current_wal_lsn())",
        ) {
            Ok(row) => {
                let cols: Vec<&str> = row.split('|').collect();
                if cols.len() == 3 {
                    // Where the new timeline forks: the end of the WAL replayed.
                    break (cols[1].parse::<Lsn>()?, cols[2].to_string());
                }
                return Err(PgError::Restore(format!("unexpected answer {row:?}")));
            }
            Err(e) if started.elapsed() > timeout => {
                return Err(PgError::Restore(format!(
                    "the server on {} did not accept writes within {} s after promotion: {e}",
                    dir.display(),
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let elapsed = started.elapsed();
    let timeline = walfile
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| PgError::Restore(format!("cannot read a timeline from {walfile:?}")))?;
    let switch = switch_point(dir, timeline);
    let lsn = switch.map_or(lsn, |(_, at)| at);
    // The WAL it replayed on the timeline it left, anchored by the entry: the only WAL of the
    // writers it fences that stays valid unanchored (a thief holding their key cannot add
    // other WAL below the switch point afterwards).
    let replayed = match switch {
        Some((parent, at)) => replayed_wal(vault, keyring, dataset, dir, (parent, timeline), at)?,
        None => None,
    };
    let event = Event::Promoted {
        timeline,
        lsn: lsn.0,
        host,
        data_dir: dir.display().to_string(),
        data_lost_to: data_lost_to.map(|l| l.0),
        approvals: approvals
            .iter()
            .map(|b| serde_bytes::ByteBuf::from(b.clone()))
            .collect(),
        replayed: replayed.clone(),
    };
    // The dataset's WAL streamer may append at the same time: on a conflict, read the history
    // again and append after its new head (a few times).
    let mut attempt = 0;
    let record = loop {
        let history = vault.history_full(dataset).map_err(PgError::Vault)?;
        history.check_appendable(dataset).map_err(PgError::Vault)?;
        if !vault
            .active_signers(&history.records)
            .contains(&signer.verifying_key().to_bytes())
        {
            return Err(PgError::Vault(embassy_core::Error::Refused {
                kind: embassy_core::ErrorKind::Keys,
                problem: format!(
                    "the server is promoted, but this key may not sign dataset {dataset}'s \
                     history, so the promotion is not recorded: record it with a sealing \
                     credential of {dataset}"
                ),
                way_out: embassy_core::error::WayOut::Grant {
                    dataset: dataset.to_string(),
                    grant: embassy_core::error::Grant::Seal,
                },
            }));
        }
        match ledger::append_ignoring(
            vault.site().as_ref(),
            &signer,
            dataset,
            history.records.last(),
            &history.rejected_ids(),
            event.clone(),
        ) {
            Ok(record) => break record,
            Err(embassy_core::Error::History { .. }) if attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * attempt));
            }
            Err(e) => return Err(PgError::Vault(e)),
        }
    };
    let not_authoritative = vault.history_full(dataset).ok().and_then(|h| {
        h.records
            .iter()
            .find(|r| r.id == record.id)
            .and_then(|r| r.refused.clone())
    });
    Ok(Promotion {
        timeline,
        lsn,
        data_lost_to,
        approvals: approvals.len(),
        not_authoritative,
        elapsed,
        seq: record.entry.seq,
        replayed,
    })
}

/// How long promotion waits for a standby to replay the WAL the vault holds durably (it asks the
/// vault every second) before refusing.
const CATCH_UP_GRACE: Duration = Duration::from_secs(10);

/// The check before promotion ([`crate::promote_check::check`]): the standby's replay
/// position against the end of the WAL the vault holds durably (the ledger's anchors and the
/// signed WAL the sites serve after them), asked again for up to `grace` while it is behind;
/// `Some(durable end)` when it stays behind and the loss was accepted.
fn replayed_durable_wal(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    (dir, conninfo): (&Path, Option<&str>),
    grace: Duration,
    accept_data_loss: bool,
) -> Result<Option<Lsn>, PgError> {
    let started = Instant::now();
    // Objects that checked out: asked again, only what arrived since is read.
    let mut valid = std::collections::HashSet::new();
    loop {
        let row = sql(
            dir,
            conninfo,
            "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')",
        )?;
        let (recovering, replay) = row.split_once('|').unwrap_or((row.as_str(), ""));
        if recovering != "t" {
            return Err(PgError::Restore(format!(
                "the server on {} is not in recovery: it was promoted already, or is not a \
                 standby",
                dir.display()
            )));
        }
        let replay = replay.parse::<Lsn>()?;
        // One judgement per look: a loss is accepted only on the last look, which must then
        // be the one that returns (judged again after a slow check, the last look refused an
        // accepted loss: seen under load in pg_node's fork test).
        let last_look = started.elapsed() >= grace;
        let accept = accept_data_loss && last_look;
        match crate::promote_check::check(
            vault,
            keyring,
            dataset,
            (dir, replay),
            accept,
            &mut valid,
        ) {
            Err(_) | Ok(Some(_)) if !last_look => std::thread::sleep(Duration::from_millis(500)),
            done => return done,
        }
    }
}

/// The switch point of `timeline` from its history file in the data directory's `pg_wal`
/// (`<parent>\t<lsn>\t<reason>` lines, the last one the switch to `timeline`): the timeline
/// it left and where.
fn switch_point(dir: &Path, timeline: u32) -> Option<(u32, Lsn)> {
    let text =
        std::fs::read_to_string(dir.join("pg_wal").join(format!("{timeline:08X}.history"))).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut cols = line.split_whitespace();
    let parent = cols.next()?.parse().ok()?;
    Some((parent, cols.next()?.parse().ok()?))
}

/// The log object the promoted server on `dir` replayed last on timeline `parent` before the
/// switch point `at` to `timeline` ([`crate::wal::replayed_object`]), compared with the copy
/// of those bytes in its new timeline's first segment when the keyring can read them. Asked a
/// few times when a site fails: the promotion has happened, and recording it without its
/// anchor leaves the old writers' unanchored WAL invalid.
fn replayed_wal(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    dir: &Path,
    (parent, timeline): (u32, u32),
    at: Lsn,
) -> Result<Option<ReplayedWal>, PgError> {
    let segno = at.0.saturating_sub(1) / crate::lsn::SEGMENT_SIZE;
    let name = crate::lsn::segment_file_name(timeline, segno);
    let copy = std::fs::read(dir.join("pg_wal").join(name)).ok();
    let mut attempt = 0;
    loop {
        let signers = crate::wal::dataset_signers(vault, dataset)?;
        match crate::wal::replayed_object(
            vault.site().as_ref(),
            keyring,
            dataset,
            &signers,
            (parent, at.0),
            copy.as_deref(),
        ) {
            Ok(found) => return Ok(found),
            Err(_) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The approvals of promoting `dataset` on `host` stored in the vault (their signed bytes), and
/// whether a `promoted` entry by `signer` embedding them would satisfy the vault's promotion
/// policy: refused when the policy needs approvals it does not have. Without a policy, the
/// stored approvals are embedded all the same (none are needed).
fn promotion_approvals(
    vault: &Vault,
    dataset: &str,
    host: &str,
    signer: &[u8; 32],
) -> Result<Vec<Vec<u8>>, PgError> {
    let config = vault.config();
    let history = vault.history_full(dataset).map_err(PgError::Vault)?;
    let authority = vault.authority(dataset, &history.records);
    let (found, _damaged) = approval::list_signed(vault.site().as_ref(), &config.vault_id, dataset)
        .map_err(PgError::Vault)?;
    let approvals: Vec<Vec<u8>> = found
        .into_iter()
        .filter(|(_, a, _)| {
            a.promote_host.as_deref() == Some(host)
                && a.promote_key == Some(*signer)
                && a.seq >= authority.last_promotion()
        })
        .map(|(_, _, bytes)| bytes)
        .collect();
    if config.promotion_approvals == 0 {
        return Ok(approvals);
    }
    let head = history.records.last();
    let probe = Entry {
        dataset: dataset.to_string(),
        seq: head.map_or(1, |h| h.entry.seq + 1),
        prev: head.map(|h| h.id),
        // Dated as the writer will date it (never before the head).
        time_ns: embassy_core::format::config::now_unix_nanos()
            .max(head.map_or(0, |h| h.entry.time_ns)),
        signer: *signer,
        event: Event::Promoted {
            timeline: 0,
            lsn: 0,
            host: host.to_string(),
            data_dir: String::new(),
            data_lost_to: None,
            approvals: approvals
                .iter()
                .map(|b| serde_bytes::ByteBuf::from(b.clone()))
                .collect(),
            replayed: None,
        },
    };
    match authority.check_promotion(config, dataset, &probe) {
        Ok(()) => Ok(approvals),
        Err(why) => Err(PgError::Vault(embassy_core::Error::Refused {
            kind: embassy_core::ErrorKind::Config,
            problem: format!(
                "dataset {dataset}: the server is not promoted: the vault's promotion policy \
                 needs approvals of a takeover on {host} by {} distinct approvers: {why}",
                config.promotion_approvals
            ),
            way_out: embassy_core::error::WayOut::ApprovePromotion {
                dataset: dataset.to_string(),
                host: host.to_string(),
                promoter: hex::encode(signer),
            },
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// psql and pg_ctl run beside code restored from the backup, which can read their
    /// environment: they get none of ours (red team: psql carried EMBASSY_PASSPHRASE and the
    /// operator's AWS keys to a library preloaded by a restored ALTER DATABASE ... SET).
    #[test]
    fn programs_run_beside_the_restored_server_get_none_of_our_environment() {
        let dir = std::env::temp_dir();
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO_")));
        let out = as_owner(Path::new("/usr/bin/env"), &dir)
            .unwrap()
            .output()
            .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(!env.contains("CARGO_"), "{env}");
        assert!(env.contains("PATH="), "{env}");
    }

    /// `embassy promote --conninfo '... password=...'` once put the password in psql's argv,
    /// readable by every local user in /proc.
    #[test]
    fn promote_keeps_the_password_out_of_psqls_argv() {
        let dir = std::env::temp_dir();
        let cmd = psql_command(
            &dir,
            Some("host=127.0.0.1 port=5999 user=u password='s3cret pw' dbname=d"),
            "SELECT 1",
        )
        .unwrap();
        let argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            argv.iter()
                .all(|a| !a.contains("s3cret") && !a.contains("password")),
            "{argv:?}"
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(
            env.iter()
                .any(|(k, v)| *k == "PGPASSWORD" && v.map(|v| v == "s3cret pw").unwrap_or(false)),
            "{env:?}"
        );
    }
}
