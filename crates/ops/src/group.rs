//! Consistency groups: datasets that refer to each other (a person, a company, a land parcel)
//! and must come back at one instant after a disaster.
//!
//! A group point ([`take_point`]) opens a session on every PostgreSQL member first, then
//! creates a named restore point (`embassy-group-<group>-<n>`) on each, one right after the
//! other in the group's order, notes the version current for each file member, waits until
//! each restore point's WAL is durable in the vault (the streamer's acknowledgement rule: a WAL
//! log object stored at the sites the vault requires), and only then appends one signed
//! `group_point` entry to the group's ledger (`group.<name>`). A point whose WAL did not
//! become durable in time is never recorded.
//!
//! [`points`] lists a group's points with whether each can be restored now; [`restore`] brings
//! every member back to one point, each into `<dir>/<dataset>`: PostgreSQL members recover to
//! the restore point by name (`recovery_target_name`), file members get the recorded version.
//!
//! Members are pointed in the group's order, so list a dataset before the datasets it refers
//! to: when applications write the referred row first and the reference after, every
//! reference restored then finds its row (docs/operations.md, *Consistency groups*).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::format::config::{now_unix_nanos, GROUP_POINTS_SINCE};
use embassy_core::format::layout;
use embassy_core::format::manifest::VersionKind;
use embassy_core::history::ledger::{self, Event, GroupMember, GroupPoint};
use embassy_core::id::ObjectId;
use embassy_core::progress::Progress;
use embassy_postgres::restore::{Mode, PgRestore, PgRestoreOptions, RecoveryTarget};
use embassy_postgres::restore_point::PointSession;
use embassy_postgres::{Lsn, PgError};

/// Longest group name: `embassy-group-<name>-<n>` must fit PostgreSQL's 63 characters.
pub const MAX_GROUP_NAME: usize = 32;

/// One member of a group as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberSpec {
    /// A PostgreSQL dataset streamed continuously, reached over `conninfo` to create points.
    Postgres {
        /// The dataset.
        dataset: String,
        /// Its server's connection string.
        conninfo: String,
    },
    /// A file tree or stream dataset: the version current at the point is recorded.
    Version {
        /// The dataset.
        dataset: String,
    },
}

impl MemberSpec {
    /// The member's dataset.
    pub fn dataset(&self) -> &str {
        match self {
            MemberSpec::Postgres { dataset, .. } | MemberSpec::Version { dataset } => dataset,
        }
    }
}

/// A consistency group: its name and members, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The group's name (a-z, 0-9, '.', '_', '-', at most [`MAX_GROUP_NAME`] characters).
    pub name: String,
    /// Its members, pointed in this order.
    pub members: Vec<MemberSpec>,
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(#[from] embassy_core::Error),
    /// A member's server failed.
    #[error("group {group}: PostgreSQL dataset {dataset}: {source}")]
    Postgres {
        /// The group.
        group: String,
        /// The member.
        dataset: String,
        /// What failed.
        #[source]
        source: Box<PgError>,
    },
    /// A restore point's WAL did not become durable in the vault in time: no point recorded.
    #[error(
        "group {group}: the WAL of restore point {point} of dataset {dataset} (up to {lsn}) did \
         not become durable in the vault within {waited_secs:.0} s ({durable}); no group point \
         was recorded: check that the dataset's WAL stream runs and keeps up"
    )]
    NotDurable {
        /// The group.
        group: String,
        /// The member.
        dataset: String,
        /// The restore point.
        point: String,
        /// Where its record ends.
        lsn: Lsn,
        /// What the vault holds, in words.
        durable: String,
        /// How long it waited.
        waited_secs: f64,
    },
    /// The group or a member is unusable as given.
    #[error("group {group}: {problem}")]
    Invalid {
        /// The group.
        group: String,
        /// What is wrong and the way out.
        problem: String,
    },
    /// The point chosen names fewer members than the group has had: restoring it would bring
    /// back part of the group.
    #[error(
        "group {group}: point {number} names {} but earlier points also named {}: a member was \
         left out (the group's configuration dropped it, or a key that may sign the group's \
         ledger recorded a partial point), so a restore to it would bring back part of the group; \
         {}",
        named.join(", "),
        lacking.join(", "),
        match whole {
            Some((n, at)) => format!(
                "the newest restorable point before it that names every member, point {n}, was \
                 taken at {at}: ask for that time to restore the whole group, or accept restoring \
                 only the members point {number} names if the group lost them on purpose"
            ),
            None => format!(
                "no earlier restorable point names every member: accept restoring only the \
                 members point {number} names if the group lost them on purpose, or restore \
                 each dataset on its own"
            ),
        }
    )]
    FewerMembers {
        /// The group.
        group: String,
        /// The point's number.
        number: u64,
        /// The members it names.
        named: Vec<String>,
        /// The members earlier points named and it does not.
        lacking: Vec<String>,
        /// The newest earlier restorable point that lacks no member: its number and a time
        /// that selects it.
        whole: Option<(u64, String)>,
    },
    /// No point of the group can be restored to the target.
    #[error("group {group}: {problem}")]
    NoPoint {
        /// The group.
        group: String,
        /// Which points exist and why none fits.
        problem: String,
    },
}

impl From<GroupError> for embassy_core::Error {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Vault(e) => e,
            GroupError::Postgres { source, .. } => (*source).into(),
            GroupError::NotDurable { .. } => embassy_core::Error::Source {
                what: "PostgreSQL WAL".into(),
                problem: e.to_string(),
            },
            GroupError::NoPoint { group, problem } => embassy_core::Error::NoSuchVersion {
                dataset: layout::group_ledger(&group),
                problem,
            },
            GroupError::Invalid { .. } => embassy_core::Error::invalid(e.to_string()),
            GroupError::FewerMembers { ref group, .. } => embassy_core::Error::Refused {
                kind: embassy_core::ErrorKind::Config,
                way_out: embassy_core::error::WayOut::AcceptSmallerGroup {
                    group: group.clone(),
                },
                problem: e.to_string(),
            },
        }
    }
}

type Result<T, E = GroupError> = std::result::Result<T, E>;

/// Checks a group's name (also what `embassy.toml`'s checks use).
pub fn check_group_name(name: &str) -> std::result::Result<(), String> {
    let ledger = layout::group_ledger(name);
    if name.is_empty()
        || name.len() > MAX_GROUP_NAME
        || layout::check_dataset_name(name).is_err()
        || layout::check_dataset_name(&ledger).is_err()
    {
        return Err(format!(
            "'{name}' is not a valid group name: use 1 to {MAX_GROUP_NAME} characters a-z, 0-9, \
             '.', '_' or '-', starting with a letter or digit (for example registries)"
        ));
    }
    Ok(())
}

/// The restore point name of a group's point `number`.
pub fn restore_point_name(group: &str, number: u64) -> String {
    format!("embassy-group-{group}-{number}")
}

/// A group point just recorded.
#[derive(Debug, Clone)]
pub struct PointTaken {
    /// The group ledger's entry.
    pub seq: u64,
    /// What it records.
    pub point: GroupPoint,
    /// Time between the first and the last restore point's creation.
    pub spread: Duration,
    /// Time spent waiting for the WAL to become durable.
    pub waited: Duration,
}

fn pg_error(group: &str, dataset: &str) -> impl FnOnce(PgError) -> GroupError {
    let (group, dataset) = (group.to_string(), dataset.to_string());
    move |source| GroupError::Postgres {
        group,
        dataset,
        source: Box::new(source),
    }
}

/// The group's points in its ledger, with their entries' sequence numbers (forged, unsigned
/// or unauthorised entries are not in a verified history, so never here).
fn recorded_points(vault: &Vault, group: &str) -> Result<Vec<(u64, ObjectId, GroupPoint)>> {
    let name = layout::group_ledger(group);
    if !vault.datasets()?.contains(&name) {
        return Ok(Vec::new());
    }
    Ok(vault
        .history(&name)?
        .into_iter()
        .filter(|r| r.refused.is_none())
        .filter_map(|r| match r.entry.event {
            Event::GroupPoint(p) if p.group == group => Some((r.entry.seq, r.id, p)),
            _ => None,
        })
        .collect())
}

/// Takes one group point (see the module's description) and records it, signed by `signer`;
/// waits at most `wait` for the restore points' WAL to become durable.
pub fn take_point(
    vault: &Vault,
    signer: &ed25519_dalek::SigningKey,
    spec: &GroupSpec,
    wait: Duration,
) -> Result<PointTaken> {
    let group = spec.name.as_str();
    let invalid = |problem: String| GroupError::Invalid {
        group: group.to_string(),
        problem,
    };
    check_group_name(group).map_err(&invalid)?;
    let version = vault.config().format_version;
    if version < GROUP_POINTS_SINCE {
        return Err(invalid(format!(
            "the vault is in format version {version}, which cannot hold group points (format \
             {GROUP_POINTS_SINCE} can): its readers would take them for damage; keep the group in \
             a vault created by this release"
        )));
    }
    if spec.members.is_empty() {
        return Err(invalid("the group has no members".into()));
    }
    let number = recorded_points(vault, group)?
        .last()
        .map_or(1, |(_, _, p)| p.number + 1);
    // A signer without the right would record a point every verifier takes for noise: refuse
    // before any restore point is created, naming the credential it needs.
    let ledger_name = layout::group_ledger(group);
    let history = vault.history_full(&ledger_name)?;
    let key = signer.verifying_key().to_bytes();
    if !vault
        .authority(&ledger_name, &history.records)
        .may(&key, ledger::Right::AddVersions)
    {
        return Err(GroupError::Vault(embassy_core::Error::Refused {
            kind: embassy_core::ErrorKind::Keys,
            problem: format!(
                "this key may not sign group {group}'s ledger {ledger_name}, so its points would \
                 be noise to every verifier; no restore point was created"
            ),
            way_out: embassy_core::error::WayOut::Grant {
                dataset: ledger_name,
                grant: embassy_core::error::Grant::Seal,
            },
        }));
    }
    let point_name = restore_point_name(group, number);
    // Sessions first, so the points themselves are created one round trip apart.
    let mut sessions = Vec::new();
    for m in &spec.members {
        if let MemberSpec::Postgres { dataset, conninfo } = m {
            sessions.push(PointSession::open(conninfo).map_err(pg_error(group, dataset))?);
        }
    }
    let taken_at_ns = now_unix_nanos();
    let started = Instant::now();
    let mut created = Vec::new();
    for (m, session) in spec
        .members
        .iter()
        .filter(|m| matches!(m, MemberSpec::Postgres { .. }))
        .zip(sessions.iter_mut())
    {
        created.push(
            session
                .create(&point_name)
                .map_err(pg_error(group, m.dataset()))?,
        );
    }
    let spread = started.elapsed();
    for s in sessions {
        s.close();
    }
    let mut created = created.into_iter();
    let mut members = Vec::new();
    for m in &spec.members {
        members.push(match m {
            MemberSpec::Postgres { dataset, .. } => {
                let p = created.next().ok_or_else(|| {
                    invalid(format!("no restore point was created for {dataset}"))
                })?;
                GroupMember::Postgres {
                    dataset: dataset.clone(),
                    restore_point: p.name,
                    lsn: p.lsn.0,
                    timeline: p.timeline,
                }
            }
            MemberSpec::Version { dataset } => {
                let v = vault.find_version(dataset, None)?;
                GroupMember::Version {
                    dataset: dataset.clone(),
                    entry: v.ledger_id,
                    number: v.number,
                }
            }
        });
    }
    // The durable-acknowledgement rule: the point counts once its WAL is stored.
    let waiting = Instant::now();
    for m in &members {
        if let GroupMember::Postgres {
            dataset,
            restore_point,
            lsn,
            timeline,
        } = m
        {
            loop {
                let why_not = not_durable(vault, dataset, *lsn, *timeline)
                    .map_err(pg_error(group, dataset))?;
                let Some(durable) = why_not else { break };
                if waiting.elapsed() >= wait {
                    return Err(GroupError::NotDurable {
                        group: group.to_string(),
                        dataset: dataset.clone(),
                        point: restore_point.clone(),
                        lsn: Lsn(*lsn),
                        durable,
                        waited_secs: waiting.elapsed().as_secs_f64(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let waited = waiting.elapsed();
    let point = GroupPoint {
        group: group.to_string(),
        number,
        taken_at_ns,
        members,
    };
    let ledger_name = layout::group_ledger(group);
    let history = vault.history_full(&ledger_name)?;
    history.check_appendable(&ledger_name)?;
    let record = ledger::append_ignoring(
        vault.site().as_ref(),
        signer,
        &ledger_name,
        history.records.last(),
        &history.rejected_ids(),
        Event::GroupPoint(point.clone()),
    )?;
    // Checkpoint the new head as backups do, so that a site withholding the newest point is a
    // rollback for every reader (red team 12: it was an older point in silence). A key that may
    // not sign checkpoints (a credential) writes none; a failed checkpoint is not a failed point.
    if vault.may_checkpoint(signer) {
        let _ = vault.write_checkpoint(signer);
    }
    Ok(PointTaken {
        seq: record.entry.seq,
        point,
        spread,
        waited,
    })
}

/// `None` when the vault holds `dataset`'s WAL durably up to `lsn` on `timeline` (or a later
/// timeline); otherwise what it holds, in words.
fn not_durable(
    vault: &Vault,
    dataset: &str,
    lsn: u64,
    timeline: u32,
) -> std::result::Result<Option<String>, PgError> {
    let newest = embassy_postgres::status::site_wal("vault", vault, dataset)?;
    Ok(match newest {
        Some(w) if w.timeline > timeline || (w.timeline == timeline && w.durable.0 >= lsn) => None,
        Some(w) => Some(format!(
            "its streamed WAL ends at {} on timeline {}",
            w.durable, w.timeline
        )),
        None => Some("the vault holds no streamed WAL of it".into()),
    })
}

/// One recorded group point and whether it can be restored now.
#[derive(Debug, Clone)]
pub struct ListedPoint {
    /// The group ledger's entry.
    pub seq: u64,
    /// Its id.
    pub entry: ObjectId,
    /// What it records.
    pub point: GroupPoint,
    /// Why it cannot be restored (a member's WAL not durable in the vault, a member's version
    /// gone), or `None`.
    pub unrestorable: Option<String>,
    /// Members an earlier point named that this one does not (the group's members are the
    /// union over its points): a restore to it would bring back part of the group.
    pub lacking: Vec<String>,
}

/// The group's points, oldest first, each judged restorable or not: a PostgreSQL member's WAL
/// must be durable in the vault up to its restore point; a file member's version must exist.
/// Each also names the members earlier points named and it does not.
pub fn points(vault: &Vault, group: &str) -> Result<Vec<ListedPoint>> {
    check_group_name(group).map_err(|problem| GroupError::Invalid {
        group: group.to_string(),
        problem,
    })?;
    let mut out = Vec::new();
    // Every member any point so far named, in order of first appearance.
    let mut members_so_far: Vec<String> = Vec::new();
    for (seq, entry, point) in recorded_points(vault, group)? {
        let named = member_names(&point);
        let lacking: Vec<String> = members_so_far
            .iter()
            .filter(|d| !named.contains(d))
            .cloned()
            .collect();
        for d in named {
            if !members_so_far.contains(&d) {
                members_so_far.push(d);
            }
        }
        let mut why = Vec::new();
        for m in &point.members {
            match m {
                GroupMember::Postgres {
                    dataset,
                    restore_point,
                    lsn,
                    timeline,
                } => match not_durable(vault, dataset, *lsn, *timeline) {
                    Ok(None) => {}
                    Ok(Some(held)) => why.push(format!(
                        "{dataset}: the WAL up to restore point {restore_point} ({}) is not \
                         durable in the vault: {held}",
                        Lsn(*lsn)
                    )),
                    Err(e) => why.push(format!("{dataset}: {e}")),
                },
                GroupMember::Version {
                    dataset,
                    entry,
                    number,
                } => {
                    if let Err(e) = vault.find_version(dataset, Some(&entry.to_hex())) {
                        why.push(format!("{dataset}: version {number}: {e}"));
                    }
                }
            }
        }
        out.push(ListedPoint {
            seq,
            entry,
            point,
            unrestorable: (!why.is_empty()).then(|| why.join("; ")),
            lacking,
        });
    }
    Ok(out)
}

/// Which group point a restore asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupTarget {
    /// The newest restorable point.
    Latest,
    /// The newest restorable point taken at or before this time (ns since the Unix epoch).
    Time(i64),
}

/// Whether a restore may bring back fewer members than the group has had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallerGroup {
    /// A point that leaves out a member an earlier point named is refused (the default).
    Refuse,
    /// The operator accepts restoring only the members the point names (a member was dropped
    /// from the group on purpose).
    Accept,
}

/// The names of a point's members, in its order.
fn member_names(point: &GroupPoint) -> Vec<String> {
    point
        .members
        .iter()
        .map(|m| m.dataset().to_string())
        .collect()
}

/// A point's time rounded up to the second, so that a restore asked for that time selects it.
fn selecting_time(taken_at_ns: i64) -> String {
    embassy_core::time::utc(taken_at_ns.saturating_add(999_999_999) / 1_000_000_000 * 1_000_000_000)
}

/// The point a restore to `target` uses: the newest restorable one that fits. Points that are
/// not restorable are passed over (and named in the error when none fits); a point that leaves
/// out a member of an earlier point is refused unless `smaller` accepts it.
pub fn choose(
    vault: &Vault,
    group: &str,
    target: GroupTarget,
    smaller: SmallerGroup,
) -> Result<ListedPoint> {
    let all = points(vault, group)?;
    // The newest point must be provable against the site's checkpoints (red team 12: a site
    // withholding the newest point brought the group back to an older point in silence). A
    // point names its members' exact entries, so a withheld one makes that point unrestorable
    // (below), never an older point in silence.
    if matches!(target, GroupTarget::Latest) {
        vault.check_newest_checkpoints(&layout::group_ledger(group))?;
    }
    let fits = |p: &ListedPoint| match target {
        GroupTarget::Latest => true,
        GroupTarget::Time(t) => p.point.taken_at_ns <= t,
    };
    // `latest` asks for the newest point: when it cannot be restored (a site withholds a
    // member's entry or WAL) the restore says so instead of silently bringing the group back
    // to an older instant. Asked for a time, the newest restorable point at or before it.
    let newest = match target {
        GroupTarget::Latest => all.iter().rev().find(|p| fits(p)),
        GroupTarget::Time(_) => all
            .iter()
            .rev()
            .find(|p| fits(p) && p.unrestorable.is_none()),
    };
    if let Some(newest) = newest {
        if let Some(why) = &newest.unrestorable {
            let older = all
                .iter()
                .rev()
                .find(|p| p.seq < newest.seq && p.unrestorable.is_none());
            return Err(GroupError::NoPoint {
                group: group.to_string(),
                problem: format!(
                    "the newest group point that fits, point {}, cannot be restored: {why}; {}",
                    newest.point.number,
                    match older {
                        Some(o) => format!(
                            "the newest restorable point before it is point {}, taken at {}: \
                             ask for that time to bring the group back to it",
                            o.point.number,
                            selecting_time(o.point.taken_at_ns)
                        ),
                        None => "no restorable point precedes it".to_string(),
                    }
                ),
            });
        }
        // A point that names fewer members than the group has had (any earlier point) would
        // restore part of the group in silence (a changed configuration, or a point recorded by
        // a key that may sign the group's ledger, once or again and again): refused unless the
        // caller accepts a smaller group, naming what it lacks.
        if !newest.lacking.is_empty() && smaller == SmallerGroup::Refuse {
            let whole = all
                .iter()
                .rev()
                .find(|p| p.seq < newest.seq && p.lacking.is_empty() && p.unrestorable.is_none())
                .map(|p| (p.point.number, selecting_time(p.point.taken_at_ns)));
            return Err(GroupError::FewerMembers {
                group: group.to_string(),
                number: newest.point.number,
                named: member_names(&newest.point),
                lacking: newest.lacking.clone(),
                whole,
            });
        }
        return Ok(newest.clone());
    }
    let problem = if all.is_empty() {
        "no group point is recorded yet: take one first".into()
    } else {
        let skipped: Vec<String> = all
            .iter()
            .filter(|p| fits(p))
            .filter_map(|p| {
                let why = p.unrestorable.as_deref()?;
                Some(format!("point {}: {why}", p.point.number))
            })
            .collect();
        if skipped.is_empty() {
            "no group point was taken at or before that time; choose a later time".into()
        } else {
            format!("no restorable group point fits: {}", skipped.join("; "))
        }
    };
    Err(GroupError::NoPoint {
        group: group.to_string(),
        problem,
    })
}

/// What one member's restore did.
#[derive(Debug)]
pub enum MemberRestored {
    /// A PostgreSQL data directory that recovers to the restore point when started.
    Postgres(Box<PgRestore>),
    /// A file tree restored into a folder.
    Tree {
        /// The version.
        version: Box<Version>,
        /// Files written.
        files: u64,
    },
    /// A stream restored into a file.
    Stream {
        /// The version.
        version: Box<Version>,
        /// Bytes written.
        bytes: u64,
    },
}

/// One member's restore.
#[derive(Debug)]
pub struct MemberRestore {
    /// The dataset.
    pub dataset: String,
    /// Where it was restored: `<dir>/<dataset>`.
    pub path: PathBuf,
    /// What was restored.
    pub restored: MemberRestored,
}

/// Restores every member of `point` into `<dir>/<dataset>` (`dir` new or empty). `pg_options`
/// gives a PostgreSQL member's restore options (its `restore_command`, owner) for its data
/// directory; their mode is set here to recover to the point's restore point.
pub fn restore(
    vault: &Vault,
    keyring: &Keyring,
    point: &ListedPoint,
    dir: &Path,
    allow_unwitnessed: bool,
    pg_options: &mut dyn FnMut(&str, &Path) -> embassy_core::Result<PgRestoreOptions>,
    progress: &dyn Progress,
) -> Result<Vec<MemberRestore>> {
    let group = point.point.group.as_str();
    if let Some(why) = &point.unrestorable {
        return Err(GroupError::NoPoint {
            group: group.to_string(),
            problem: format!("point {} cannot be restored: {why}", point.point.number),
        });
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| embassy_core::Error::io(format!("creating {}", dir.display()), e))?;
    let mut out = Vec::new();
    for m in &point.point.members {
        let dataset = m.dataset();
        let path = dir.join(dataset);
        let restored = match m {
            GroupMember::Postgres {
                restore_point, lsn, ..
            } => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    embassy_core::Error::io(format!("creating {}", path.display()), e)
                })?;
                let mut options = pg_options(dataset, &path)?;
                options.mode = Mode::Recover(RecoveryTarget::RestorePoint {
                    name: restore_point.clone(),
                    lsn: Lsn(*lsn),
                });
                options.allow_unwitnessed = allow_unwitnessed;
                let done = embassy_postgres::restore::restore(
                    vault, keyring, dataset, &path, &options, progress,
                )
                .map_err(pg_error(group, dataset))?;
                MemberRestored::Postgres(Box::new(done))
            }
            GroupMember::Version { entry, .. } => {
                let version = vault.find_trusted_version(
                    dataset,
                    Some(&entry.to_hex()),
                    allow_unwitnessed,
                )?;
                let reader = VersionReader::open_with(vault.site().clone(), keyring, &version)?;
                match version.kind {
                    VersionKind::Tree => {
                        let stats = embassy_sources::files::restore(
                            &reader,
                            &path,
                            &embassy_sources::files::RestoreOptions::default(),
                            progress,
                        )?;
                        MemberRestored::Tree {
                            version: Box::new(version),
                            files: stats.files,
                        }
                    }
                    VersionKind::Stream => {
                        let mut file =
                            embassy_core::fsutil::NewFile::beside(&path).map_err(|e| {
                                embassy_core::Error::io(
                                    format!("creating a file beside {}", path.display()),
                                    e,
                                )
                            })?;
                        let bytes =
                            embassy_sources::stream::restore_to(&reader, &mut file, progress)?;
                        file.persist().map_err(|e| {
                            embassy_core::Error::io(format!("writing {}", path.display()), e)
                        })?;
                        MemberRestored::Stream {
                            version: Box::new(version),
                            bytes,
                        }
                    }
                }
            }
        };
        out.push(MemberRestore {
            dataset: dataset.to_string(),
            path,
            restored,
        });
    }
    Ok(out)
}
