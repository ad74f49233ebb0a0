//! `embassy init`: a new vault at the sites and its passphrase-protected key file.

use std::process::ExitCode;

use clap::Args;
use embassy_core::duration::{format_duration, parse_duration};
use embassy_core::format::config::DEFAULT_MIN_AGE_SECS;
use embassy_core::{Error, Result};
use embassy_ops::init::InitOptions;
use serde_json::json;

use crate::{output, print_json, secrets, state_dir, Cli};

/// Arguments of `embassy init`.
#[derive(Args)]
pub struct InitArgs {
    /// A witness's public key (hex) whose cosignatures restores will count; repeatable.
    #[arg(long = "witness")]
    pub witnesses: Vec<String>,
    /// How many witness cosignatures a checkpoint needs before restores trust it.
    #[arg(long, default_value_t = 0)]
    pub witness_quorum: u32,
    /// An approver's public key (hex) whose approvals count for deletions outside the
    /// retention policy; repeatable.
    #[arg(long = "approver")]
    pub approvers: Vec<String>,
    /// How many distinct approvers must approve each deletion outside the policy.
    #[arg(long, default_value_t = 0)]
    pub approvals_required: u32,
    /// How many distinct approvers (`--approver`) must approve `embassy promote` of a
    /// PostgreSQL standby (`embassy approve --promote HOST DATASET`); the approved promotion
    /// fences the dataset's earlier writers. 0: no promotion policy.
    #[arg(long, default_value_t = 0)]
    pub promotion_approvals: u32,
    /// Legal minimum age of every version (e.g. 90d; default 30d): deleting a younger one
    /// needs approvals. `0` turns it off (with a warning); `embassy policy min-age` raises it
    /// later.
    #[arg(long)]
    pub min_age: Option<String>,
}

/// `embassy init`: the flags parsed, the vault created by embassy-ops, what it made printed.
pub fn run(cli: &Cli, args: &InitArgs) -> Result<ExitCode> {
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    let options = InitOptions {
        min_sites: cli.min_sites,
        key_file: cli.key_file.clone(),
        witnesses: args.witnesses.clone(),
        witness_quorum: args.witness_quorum,
        approvers: args.approvers.clone(),
        approvals_required: args.approvals_required,
        promotion_approvals: args.promotion_approvals,
        min_age_secs: args.min_age.as_deref().map(parse_duration).transpose()?,
        ..InitOptions::new(cli.site.clone(), state_dir(cli)?)
    };
    let report = secrets::with_rule(cli.passphrase_file.as_deref(), |passphrase| {
        embassy_ops::init::init(&options, passphrase)
    })?;
    for n in &report.notes {
        eprintln!("note: {}", output::escape(n));
    }
    if report.min_age_secs == 0 {
        eprintln!(
            "warning: --min-age 0: any key granted `delete` (and the root) can delete every \
             version but the newest at once; the default, {}, keeps recent history out of an \
             intruder's reach",
            format_duration(DEFAULT_MIN_AGE_SECS)
        );
    }
    let fingerprint = &report.fingerprint;
    if cli.json {
        print_json(
            json!({"ok": true, "vault_id": report.vault_id, "fingerprint": fingerprint, "site": report.site, "key_file": report.key_file}),
        )?;
    } else {
        println!("created vault {} at {}", report.vault_id, report.site);
        println!(
            "fingerprint: {fingerprint}\n  (record it away from this machine, on paper: it pins the vault's root key; \
             a first-time reader checks it with `embassy --vault-id {fingerprint} verify`)"
        );
        println!("key file: {} (keep a copy somewhere safe: without it and the passphrase, the data cannot be read)", report.key_file.display());
    }
    Ok(ExitCode::SUCCESS)
}
