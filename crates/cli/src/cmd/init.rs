//! `embassy init`: a new vault at the sites and its passphrase-protected key file.

use std::process::ExitCode;

use clap::Args;
use embassy_core::format::config::VaultConfig;
use embassy_core::keys::keyfile::{KdfParams, KeyFile};
use embassy_core::keys::RootSecret;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::{open_sites, output, print_json, prune, secrets, state_dir, Cli};

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
    /// Legal minimum age of every version (e.g. 90d; default 30d): deleting a younger one
    /// needs approvals. `0` turns it off (with a warning); `embassy policy min-age` raises it
    /// later.
    #[arg(long)]
    pub min_age: Option<String>,
}

/// `embassy init`
pub fn run(cli: &Cli, args: &InitArgs) -> Result<ExitCode> {
    let (witnesses, witness_quorum) = (&args.witnesses, args.witness_quorum);
    let deletions = (
        &args.approvers[..],
        args.approvals_required,
        args.min_age.as_deref(),
    );
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    // Say what each store lacks (create-only writes, Object Lock) before anything is written.
    let mut notes = Vec::new();
    for location in &cli.site {
        let caps = embassy_sites::check_capabilities(location)?;
        caps.ensure_usable()?;
        for w in &caps.warnings {
            notes.push(format!("{location}: {w}"));
        }
    }
    for n in &notes {
        eprintln!("note: {}", output::escape(n));
    }
    let site = open_sites(cli, true)?;
    if let Some(existing) = VaultConfig::try_load(site.as_ref())? {
        return Err(Error::VaultExists {
            site: site.location().to_string(),
            vault_id: existing.vault_id,
        });
    }
    let root = RootSecret::generate();
    let mut config = VaultConfig::new(&root);
    for w in witnesses {
        let ok = w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(Error::invalid(format!(
                "--witness {w} is not a 64-digit hex public key (print one with `embassy witness-key`)"
            )));
        }
    }
    if witness_quorum as usize > witnesses.len() {
        return Err(Error::invalid(format!(
            "--witness-quorum {witness_quorum} is more than the {} witnesses given",
            witnesses.len()
        )));
    }
    config.witnesses = witnesses.iter().map(|w| w.to_ascii_lowercase()).collect();
    config.witness_quorum = witness_quorum;
    prune::configure_init(&mut config, deletions.0, deletions.1, deletions.2)?;
    let key_path = secrets::key_path(cli.key_file.as_deref(), &config.vault_id)?;
    if key_path.exists() {
        return Err(Error::invalid(format!(
            "key file {} already exists; choose another --key-file (existing keys are never overwritten)",
            key_path.display()
        )));
    }
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
    // Key file first: a vault must never exist without a way to open it.
    KeyFile::seal(&root, &config.vault_id, pass.as_bytes(), KdfParams::DEFAULT)?
        .store(&key_path)?;
    if let Err(e) = config.create(site.as_ref(), &root) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    let dir = state_dir(cli)?;
    for location in &cli.site {
        embassy_core::history::state::pin_site(&dir, location, &config.vault_id, true)?;
    }
    let fingerprint = embassy_core::format::config::fingerprint(&config.vault_id);
    if cli.json {
        print_json(
            json!({"ok": true, "vault_id": config.vault_id, "fingerprint": fingerprint, "site": site.location(), "key_file": key_path}),
        )?;
    } else {
        println!("created vault {} at {}", config.vault_id, site.location());
        println!(
            "fingerprint: {fingerprint}\n  (record it away from this machine, on paper: it pins the vault's root key; \
             a first-time reader checks it with `embassy --vault-id {fingerprint} verify`)"
        );
        println!("key file: {} (keep a copy somewhere safe: without it and the passphrase, the data cannot be read)", key_path.display());
    }
    Ok(ExitCode::SUCCESS)
}
