//! `embassy prune`, `gc`, `forget`, `approve` and `approver-key`: thin wrappers over
//! `embassy_core::{history::retention, engine::prune, engine::gc, engine::approve}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use embassy_core::duration::{format_duration, parse_duration};
use embassy_core::engine::prune::{self as core_prune, PruneReport};
use embassy_core::history::approval;
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_APPROVER};
use embassy_core::keys::RootSecret;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::{output, secrets, Cli};

/// `embassy prune`.
#[derive(Args)]
pub struct PruneArgs {
    /// Dataset to prune; every dataset of the vault when omitted.
    pub dataset: Option<String>,
    /// Keep the newest N versions.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest version of each of the N most recent hours that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Likewise per day (UTC).
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Likewise per ISO week.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Likewise per month.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Likewise per year.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Never delete versions younger than this (e.g. 90d, 36h); the vault's pinned legal minimum
    /// age applies in any case.
    #[arg(long)]
    pub min_age: Option<String>,
    /// PostgreSQL: keep the streamed WAL of this window (e.g. 7d) for point-in-time restores,
    /// even when no kept base backup needs it; recorded with the deletion, read by `gc`.
    #[arg(long)]
    pub wal_keep: Option<String>,
    /// Print what would be kept and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `embassy gc`.
#[derive(Args)]
pub struct GcArgs {
    /// How long objects stay condemned before they are deleted (default 1d).
    #[arg(long)]
    pub grace: Option<String>,
    /// Print what would be condemned and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Unused space a dataset may keep in packs that still hold live data, as a percentage of
    /// its stored packs (`10%`, the default), or `unlimited` (never repack). Above it, the packs
    /// with the most dead data are rewritten (needs a key that can read the dataset).
    #[arg(long, value_name = "PERCENT")]
    pub max_unused: Option<String>,
    /// Also merge packs smaller than this (e.g. `4MiB`) that hold live data.
    #[arg(long, value_name = "SIZE")]
    pub repack_small: Option<String>,
}

/// `10%`, `10` or `unlimited` as a percentage of unused space (100 = never repack).
fn parse_max_unused(text: &str) -> Result<u8> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(100);
    }
    t.trim_end_matches('%')
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| {
            Error::invalid(format!(
                "--max-unused {text}: give a percentage from 0 to 100 (`10%`) or `unlimited`"
            ))
        })
}

/// `4MiB`, `512KiB`, `1GiB` or a number of bytes.
fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| (&t[..i], t[i..].trim()));
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => 0,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| factor > 0)
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            Error::invalid(format!(
                "--repack-small {text}: give a size such as `4MiB`, `512KiB` or a number of bytes"
            ))
        })
}

/// The keyring for a change, or none for a dry run (which only reads the ledger, so asks for no
/// key or passphrase).
fn unlock_unless_dry_run(
    cli: &Cli,
    vault: &embassy_core::engine::vault::Vault,
    dry_run: bool,
) -> Result<Option<embassy_core::engine::vault::Keyring>> {
    if dry_run {
        return Ok(None);
    }
    secrets::unlock(
        vault.config(),
        cli.key_file.as_deref(),
        cli.passphrase_file.as_deref(),
    )
    .map(Some)
}

/// `embassy forget`.
#[derive(Args)]
pub struct ForgetArgs {
    /// Versions to delete: DATASET@N, repeatable (all of one dataset).
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Why, for the record (kept in the ledger).
    #[arg(long)]
    pub reason: String,
    /// Check the approvals; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `embassy policy`.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Change a dataset's legal minimum age (root key): raising needs nothing more; lowering
    /// needs the approvals the vault requires (`embassy approve --min-age DURATION DATASET`).
    MinAge {
        /// The dataset.
        dataset: String,
        /// The new minimum age (e.g. 90d, 1y).
        duration: String,
    },
}

/// `embassy approve`.
#[derive(Args)]
pub struct ApproveArgs {
    /// The approver's key file (made with `embassy approver-key --out FILE`).
    #[arg(long)]
    pub approver_key: PathBuf,
    /// Versions whose deletion is approved: DATASET@N, repeatable. With `--min-age` or
    /// `--promote`: datasets.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Approve lowering each named dataset's legal minimum age to this duration (by the root's
    /// next `embassy policy min-age`), instead of deleting versions.
    #[arg(long, conflicts_with = "promote")]
    pub min_age: Option<String>,
    /// Approve a takeover: `embassy promote` of each named dataset's standby on this host (as
    /// its /proc/sys/kernel/hostname says). The approval names the ledger's newest entry, so it
    /// serves one promotion and cannot be replayed for a later one.
    #[arg(long, value_name = "HOST", requires = "promoter")]
    pub promote: Option<String>,
    /// With `--promote`: the public key (64 hex digits) of the embassy's credential that will
    /// sign the `promoted` entry, as printed when the root issued it. The approval counts only
    /// for a promotion signed by this key: a stolen credential that reads it at the site cannot
    /// use it. Refused for a key that wrote the dataset since the last takeover (home's).
    #[arg(long, value_name = "KEY", requires = "promote")]
    pub promoter: Option<String>,
    /// Why, for the record.
    #[arg(long, default_value = "approved")]
    pub reason: String,
}

/// `embassy approver-key`.
#[derive(Args)]
pub struct ApproverKeyArgs {
    /// Where to write the key file.
    #[arg(long)]
    pub out: PathBuf,
}

fn split_target(target: &str) -> Result<(String, u64)> {
    let bad = || {
        Error::invalid(format!(
            "'{target}' is not DATASET@N (a dataset and a version number, as `embassy versions` lists them)"
        ))
    };
    let (dataset, n) = target.split_once('@').ok_or_else(bad)?;
    embassy_core::format::layout::check_dataset_name(dataset)?;
    Ok((dataset.to_string(), n.parse().map_err(|_| bad())?))
}

fn print_report(report: &PruneReport, dry_run: bool) {
    println!("dataset {}:", report.dataset);
    if let Some(p) = &report.policy {
        println!("  policy: {p}");
    }
    for d in &report.decisions {
        let when = output::time(d.captured_at_ns);
        if d.keep() {
            let why: Vec<String> = d.reasons.iter().map(|r| r.to_string()).collect();
            println!("  keep   {:>6}  {when}  {}", d.number, why.join(", "));
        } else {
            println!("  delete {:>6}  {when}", d.number);
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    match (&report.entry, report.deleted.is_empty()) {
        (_, true) => println!("  nothing to delete"),
        (Some((seq, id)), false) => println!(
            "  {verb} versions {:?} (ledger entry {seq}, {}); `embassy gc` removes their data later",
            report.deleted,
            id.short()
        ),
        (None, false) => println!("  {verb} versions {:?}", report.deleted),
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

/// `embassy prune`.
pub fn prune(cli: &Cli, args: &PruneArgs) -> Result<ExitCode> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        min_age_secs: args
            .min_age
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .unwrap_or(0),
        wal_keep_secs: args
            .wal_keep
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .unwrap_or(0),
    };
    policy.check()?;
    let vault = crate::open_vault(cli)?;
    let datasets = match &args.dataset {
        Some(d) => vec![d.clone()],
        None => vault.datasets()?,
    };
    let keyring = unlock_unless_dry_run(cli, &vault, args.dry_run)?;
    let mut reports = Vec::new();
    for dataset in &datasets {
        let report = embassy_ops::prune::retention(&vault, keyring.as_ref(), dataset, &policy)?;
        if !cli.json {
            print_report(&report, args.dry_run);
        }
        reports.push(report);
    }
    if cli.json {
        crate::print_json(json!({"ok": true, "dry_run": args.dry_run, "datasets": reports}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `embassy forget`.
pub fn forget(cli: &Cli, args: &ForgetArgs) -> Result<ExitCode> {
    let mut dataset: Option<String> = None;
    let mut numbers = Vec::new();
    for t in &args.targets {
        let (d, n) = split_target(t)?;
        if dataset.as_ref().is_some_and(|x| *x != d) {
            return Err(Error::invalid(
                "forget one dataset at a time: every target must name the same dataset",
            ));
        }
        dataset = Some(d);
        numbers.push(n);
    }
    let dataset = dataset.unwrap_or_default();
    let vault = crate::open_vault(cli)?;
    let keyring = unlock_unless_dry_run(cli, &vault, args.dry_run)?;
    let report = core_prune::forget(
        &vault,
        keyring.as_ref(),
        &dataset,
        &numbers,
        &args.reason,
        args.dry_run,
    )?;
    if cli.json {
        crate::print_json(json!({"ok": true, "dry_run": args.dry_run, "report": report}))?;
    } else {
        println!(
            "{dataset}: {} versions {:?} with {} approvals{}",
            if args.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            report.deleted,
            report.approvals.len(),
            report.entry.map_or(String::new(), |(seq, id)| format!(
                " (ledger entry {seq}, {})",
                id.short()
            ))
        );
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `embassy gc`: the collection run by embassy-ops, its report printed; exit 3 when a
/// history or bookkeeping object did not check out.
pub fn gc(cli: &Cli, args: &GcArgs) -> Result<ExitCode> {
    let grace = args.grace.as_deref().map(parse_duration).transpose()?;
    let mut options = embassy_ops::gc::options(grace, args.dry_run);
    if let Some(m) = &args.max_unused {
        options.max_unused_percent = parse_max_unused(m)?;
    }
    if let Some(s) = &args.repack_small {
        options.repack_small_bytes = parse_size(s)?;
    }
    let vault = crate::open_vault(cli)?;
    // Condemnation records are signed by the root key (also for a dry run, which
    // checks that the key would do).
    let keyring = secrets::unlock(
        vault.config(),
        cli.key_file.as_deref(),
        cli.passphrase_file.as_deref(),
    )
    .map_err(|e| {
        Error::WrongKey(format!(
            "`embassy gc` signs its condemnation records with the vault's root key: give the \
             root key file (`--key-file root.key`) ({e})"
        ))
    })?;
    let collection = embassy_ops::gc::collect(
        &vault,
        &std::sync::Arc::new(keyring),
        &crate::state_dir(cli)?,
        options,
    )?;
    let (report, options) = (&collection.report, &collection.options);
    if cli.json {
        crate::print_json(
            json!({"ok": collection.is_clean(), "dry_run": args.dry_run, "report": report}),
        )?;
    } else {
        let verb = if args.dry_run { "would " } else { "" };
        println!(
            "{verb}condemn {} objects ({}); {verb}delete {} objects ({}) condemned more than {} ago; {} rescued; {} waiting",
            report.condemned.len(),
            output::size(report.condemned_bytes),
            report.deleted.len(),
            output::size(report.deleted_bytes),
            format_duration(options.grace_secs),
            report.rescued.len(),
            report.waiting
        );
        if !report.repacked.is_empty() {
            println!(
                "{verb}repack {} packs ({}, of which {} unused){}",
                report.repacked.len(),
                output::size(report.repacked_bytes),
                output::size(report.repacked_unused_bytes),
                if args.dry_run {
                    String::new()
                } else {
                    format!(
                        ": wrote {} in {} new objects; the old packs are condemned",
                        output::size(report.repack_written_bytes),
                        report.repack_written.len()
                    )
                }
            );
        }
        for n in &report.repack_notes {
            println!("note: {n}");
        }
        for d in &report.deferred {
            println!("deferred: {d}");
        }
        for r in &report.refused {
            println!("refused by the site (retried next run): {r}");
        }
        for s in &report.skipped {
            println!("SKIPPED ({}): {s}", s.kind.as_str());
        }
        for p in &report.problems {
            println!("PROBLEM ({}): {p}", p.kind.as_str());
        }
    }
    // Damage exits 3 (as `verify`); a site that could not be listed or read, 1.
    Ok(if collection.is_clean() {
        ExitCode::SUCCESS
    } else if collection.found_damage() {
        crate::exit::code(crate::exit::INTEGRITY)
    } else {
        crate::exit::code(crate::exit::FAILURE)
    })
}

/// `embassy approver-key`.
pub fn approver_key(cli: &Cli, args: &ApproverKeyArgs) -> Result<ExitCode> {
    let secret = RootSecret::generate();
    let public = crate::cmd::history::hex_key(
        &approval::approver_signing_key(&secret)
            .verifying_key()
            .to_bytes(),
    );
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
    KeyFile::seal_payload(
        secret.expose(),
        PURPOSE_APPROVER,
        approval::APPROVER_KEY_ID,
        pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .store(&args.out)?;
    if cli.json {
        crate::print_json(json!({"ok": true, "key_file": args.out, "public_key": public}))?;
    } else {
        println!("approver key written to {}", args.out.display());
        println!("public key: {public}");
        println!("pin it in a vault with: embassy init --approver {public} --approvals-required K");
    }
    Ok(ExitCode::SUCCESS)
}

fn open_approver(cli: &Cli, path: &Path) -> Result<approval::SigningKey> {
    let file = KeyFile::load(path)?;
    file.expect_purpose(PURPOSE_APPROVER, path)?;
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), false)?;
    let seed = file.open_payload(pass.as_bytes(), path)?;
    let seed = RootSecret::from_slice(&seed)
        .ok_or_else(|| Error::invalid("approver key file holds a secret of the wrong length"))?;
    Ok(approval::approver_signing_key(&seed))
}

/// `embassy policy`.
pub fn policy(cli: &Cli, command: &PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::MinAge { dataset, duration } => {
            embassy_core::format::layout::check_dataset_name(dataset)?;
            let secs = parse_duration(duration)?;
            let vault = crate::open_vault(cli)?;
            let root = crate::unlock_root(cli, &vault)?;
            let report = core_prune::change_min_age(&vault, &root, dataset, secs)?;
            if cli.json {
                crate::print_json(json!({"ok": true, "report": report}))?;
            } else {
                println!(
                    "{dataset}: legal minimum age {} (was {}; ledger entry {}, {}{})",
                    format_duration(report.after_secs),
                    format_duration(report.before_secs),
                    report.entry.0,
                    report.entry.1.short(),
                    if report.approvals.is_empty() {
                        String::new()
                    } else {
                        format!(", {} approvals", report.approvals.len())
                    }
                );
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn approve_min_age(cli: &Cli, args: &ApproveArgs, duration: &str) -> Result<ExitCode> {
    let secs = parse_duration(duration)?;
    let key = open_approver(cli, &args.approver_key)?;
    let vault = crate::open_vault(cli)?;
    let mut done = Vec::new();
    for dataset in &args.targets {
        embassy_core::format::layout::check_dataset_name(dataset)?;
        let history = vault.history(dataset)?;
        let head = history
            .last()
            .ok_or_else(|| Error::invalid(format!("dataset {dataset} has no history to change")))?;
        let id = embassy_core::engine::approve::approve_min_age(
            &vault,
            &key,
            dataset,
            head,
            secs,
            &args.reason,
        )?;
        done.push(json!({"dataset": dataset, "min_age_secs": secs, "approval": id.to_hex()}));
        if !cli.json {
            println!(
                "approved lowering {dataset}'s minimum age to {} after entry {} (approval {}); \
                 the root's `embassy policy min-age {dataset} {duration}` embeds it",
                format_duration(secs),
                head.entry.seq,
                id.short()
            );
        }
    }
    if cli.json {
        crate::print_json(json!({"ok": true, "approvals": done}))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn approve_promotion(cli: &Cli, args: &ApproveArgs, host: &str) -> Result<ExitCode> {
    let promoter = embassy_ops::custody::parse_signer(
        args.promoter.as_deref().unwrap_or_default(),
        "--promoter",
    )?;
    let key = open_approver(cli, &args.approver_key)?;
    let vault = crate::open_vault(cli)?;
    let mut done = Vec::new();
    for dataset in &args.targets {
        embassy_core::format::layout::check_dataset_name(dataset)?;
        let history = vault.history(dataset)?;
        let id = embassy_core::engine::approve::approve_promotion(
            &vault,
            &key,
            dataset,
            &history,
            host,
            &promoter,
            &args.reason,
        )?;
        let after = history.last().map_or(0, |h| h.entry.seq);
        done.push(
            json!({"dataset": dataset, "host": host, "promoter": hex::encode(promoter),
            "after_entry": after, "approval": id.to_hex()}),
        );
        if !cli.json {
            println!(
                "approved promoting {dataset}'s standby on {host} by key {} after entry {after} \
                 (approval {}); `embassy promote` there with that key's credential embeds it once \
                 {} approvers have approved",
                hex::encode(promoter),
                id.short(),
                vault.config().promotion_approvals
            );
        }
    }
    if cli.json {
        crate::print_json(json!({"ok": true, "approvals": done}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `embassy approve`.
pub fn approve(cli: &Cli, args: &ApproveArgs) -> Result<ExitCode> {
    if let Some(d) = &args.min_age {
        return approve_min_age(cli, args, d);
    }
    if let Some(host) = &args.promote {
        return approve_promotion(cli, args, host);
    }
    let targets: Vec<(String, u64)> = args
        .targets
        .iter()
        .map(|t| split_target(t))
        .collect::<Result<_>>()?;
    let key = open_approver(cli, &args.approver_key)?;
    let vault = crate::open_vault(cli)?;
    let mut done = Vec::new();
    for (dataset, n) in &targets {
        let version = vault.find_version(dataset, Some(&n.to_string()))?;
        let id = embassy_core::engine::approve::approve(&vault, &key, &version, &args.reason)?;
        done.push(json!({"dataset": dataset, "version": n, "approval": id.to_hex()}));
        if !cli.json {
            println!(
                "approved deleting {dataset}@{n} (approval {}); `embassy forget {dataset}@{n} --reason ...` \
                 deletes it once {} approvers have approved",
                id.short(),
                vault.config().approvals_required
            );
        }
    }
    if cli.json {
        crate::print_json(json!({"ok": true, "approvals": done}))?;
    }
    Ok(ExitCode::SUCCESS)
}
