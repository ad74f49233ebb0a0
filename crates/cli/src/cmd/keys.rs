//! `embassy keys split | recover | issue | rotate | revoke | passwd`: custody of the keys.
//! Parse, call embassy-ops's custody operations, render; the prompts (passphrases, shares) are
//! the CLI's (`secrets`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use embassy_core::{Error, Result};
use embassy_ops::custody;
use serde_json::json;

use crate::{expected_vault_id, open_vault, print_json, secrets, unlock_root, Cli};

/// `embassy keys ...`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Split the root key into N custodian shares, any K of which recover it.
    Split {
        /// Shares needed to recover (K).
        #[arg(long)]
        threshold: u8,
        /// Shares to make (N).
        #[arg(long)]
        shares: u8,
    },
    /// Recover the root key from K custodian shares and write a new key file under a new
    /// passphrase (asked twice on a terminal; at least 12 characters, 5 of them different).
    Recover {
        /// A share text; repeat for each. Without any, each share is asked for on a terminal
        /// (saying how many are still needed), or read from stdin, one a line.
        #[arg(long = "share")]
        shares: Vec<String>,
        /// Where to write the recovered key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a credential: `--sealing` for a source host (adds, never reads) or `--reader`.
    Issue {
        /// A sealing credential: adds versions and streams WAL, cannot decrypt, and cannot delete
        /// unless `--may-delete` is given.
        #[arg(long, conflicts_with = "reader", required_unless_present = "reader")]
        sealing: bool,
        /// Also grant the sealing credential the right to delete versions (prune, forget), still
        /// bound by the retention policy, the legal minimum age and the approvals.
        #[arg(long, requires = "sealing")]
        may_delete: bool,
        /// A reader credential: decrypts the named datasets, cannot add.
        #[arg(long)]
        reader: bool,
        /// A dataset it covers; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        /// Who or what it is for (a host or team name).
        #[arg(long)]
        label: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Passphrase for the new credential file (default: the same passphrase); a new one
        /// must have at least 12 characters, 5 of them different.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Change a key file's passphrase (root key, credential, witness or approver key): the
    /// current one from --passphrase-file, EMBASSY_PASSPHRASE or a prompt; the new one from
    /// --new-passphrase-file or asked twice. The file is replaced atomically; the keys inside,
    /// the custodian shares and every backup are unchanged.
    Passwd {
        /// Read the new passphrase from this file (at least 12 characters, 5 of them
        /// different); else it is asked twice on the terminal.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Rotate datasets' reader keys: new versions are sealed to a new key; old ones stay readable.
    Rotate {
        /// A dataset; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
    },
    /// Revoke a signing key (a sealing credential) for datasets: its later entries are rejected.
    Revoke {
        /// The key's public half (hex), as `keys issue` printed it.
        #[arg(long)]
        signer: String,
        /// A dataset; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        /// Why, for the record.
        #[arg(long, default_value = "revoked")]
        reason: String,
    },
}

/// Runs a `keys` subcommand.
pub fn run(cli: &Cli, command: &KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Split { threshold, shares } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let report = custody::split(&vault, root, *threshold, *shares)?;
            if cli.json {
                let texts: Vec<&str> = report.shares.iter().map(|s| s.as_str()).collect();
                print_json(
                    json!({"vault_id": report.vault_id, "threshold": report.threshold, "shares": texts}),
                )?;
            } else {
                println!(
                    "Custodian shares of vault {} ({} of {} recover the root key).",
                    report.vault_id, report.threshold, report.count
                );
                println!("Give each custodian one share, on paper, and keep no copy together with another.\n");
                for (i, t) in report.shares.iter().enumerate() {
                    println!("share {} of {}:\n  {}\n", i + 1, report.count, t.as_str());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Recover { shares, out } => {
            // The vault first: a wrong site is said before anyone types a share.
            let vault = open_vault(cli)?;
            let texts = if shares.is_empty() {
                secrets::shares()?
            } else {
                shares
                    .iter()
                    .map(|s| zeroize::Zeroizing::new(s.clone()))
                    .collect()
            };
            let report = secrets::with_rule(cli.passphrase_file.as_deref(), |pass| {
                custody::recover(vault.config(), &texts, pass, out)
            })?;
            if cli.json {
                print_json(
                    json!({"ok": true, "vault_id": report.vault_id, "key_file": report.key_file}),
                )?;
            } else {
                println!(
                    "recovered the root key of vault {}; key file written to {}",
                    report.vault_id,
                    report.key_file.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Issue {
            sealing,
            may_delete,
            datasets,
            label,
            out,
            new_passphrase_file,
            ..
        } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let pass = match new_passphrase_file {
                Some(f) => secrets::passphrase(Some(f), true)?,
                None => secrets::passphrase(cli.passphrase_file.as_deref(), false)?,
            };
            let request = custody::IssueRequest {
                sealing: *sealing,
                may_delete: *may_delete,
                datasets,
                label,
                out,
            };
            let report = custody::issue(&vault, root, &request, pass.as_bytes())?;
            if cli.json {
                print_json(
                    json!({"ok": true, "credential": report.credential, "purpose": report.purpose, "signer": report.signer}),
                )?;
            } else {
                println!(
                    "{} '{label}' for {} written to {}",
                    report.purpose,
                    datasets.join(", "),
                    report.credential.display()
                );
                if let Some(s) = report.signer {
                    println!(
                        "its signing key {s} was added to each dataset's ledger; it may add versions \
                         and stream WAL{}",
                        if *may_delete {
                            ", and delete versions (within the policy, minimum age and approvals)"
                        } else {
                            ", not delete (`--may-delete` grants that)"
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { datasets } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let rotated = custody::rotate(&vault, root, datasets)?;
            if cli.json {
                print_json(json!({"ok": true, "rotated": rotated}))?;
            } else {
                for r in &rotated {
                    println!(
                        "{}: reader key rotated to epoch {} (key id {}); issue new sealing and reader credentials",
                        r.dataset, r.epoch, r.key_id
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke {
            signer,
            datasets,
            reason,
        } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let key = custody::parse_signer(signer, "--signer")?;
            custody::revoke(&vault, root, &key, datasets, reason)?;
            if cli.json {
                print_json(json!({"ok": true, "revoked": signer, "datasets": datasets}))?;
            } else {
                println!("signer {signer} revoked for {}: its later entries are rejected by every verifier", datasets.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Passwd {
            new_passphrase_file,
        } => {
            let key_file = match (&cli.key_file, expected_vault_id(cli)?) {
                (Some(path), _) => path.clone(),
                (None, Some(id)) => secrets::key_path(None, &id)?,
                (None, None) => {
                    return Err(Error::invalid(
                        "which key file? pass --key-file FILE (or --vault-id ID for the \
                         default key file of that vault)",
                    ))
                }
            };
            let report = secrets::with_current(cli.passphrase_file.as_deref(), &key_file, |old| {
                secrets::with_new(new_passphrase_file.as_deref(), |new| {
                    custody::change_passphrase(&key_file, old, new)
                })
            })?;
            if cli.json {
                print_json(
                    json!({"ok": true, "key_file": report.key_file, "purpose": report.purpose, "vault_id": report.vault_id}),
                )?;
            } else {
                println!(
                    "passphrase of {} ({} of vault {}) changed; the old passphrase no longer opens it",
                    report.key_file.display(),
                    report.purpose,
                    report.vault_id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
