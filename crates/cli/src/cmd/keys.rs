//! `embassy keys split | recover | issue | rotate | revoke`: custody of the keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use embassy_core::history::ledger::{self, Event};
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_READER, PURPOSE_SEALING};
use embassy_core::keys::Credential;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::cmd::history::hex_key;
use crate::{open_vault, print_json, secrets, unlock_root, Cli};

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
    /// Recover the root key from K custodian shares and write a new key file.
    Recover {
        /// A share text; repeat for each. Without any, shares are read from stdin, one a line.
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
        /// Passphrase for the new credential file (default: the same passphrase).
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
            let texts = embassy_core::keys::custody::split(root, *threshold, *shares)?;
            if cli.json {
                print_json(
                    json!({"vault_id": vault.config().vault_id, "threshold": threshold, "shares": texts}),
                )?;
            } else {
                println!(
                    "Custodian shares of vault {} ({threshold} of {shares} recover the root key).",
                    vault.config().vault_id
                );
                println!("Give each custodian one share, on paper, and keep no copy together with another.\n");
                for (i, t) in texts.iter().enumerate() {
                    println!("share {} of {shares}:\n  {t}\n", i + 1);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Recover { shares, out } => {
            let texts: Vec<String> = if shares.is_empty() {
                use std::io::BufRead;
                std::io::stdin()
                    .lock()
                    .lines()
                    .map_while(|l| l.ok())
                    .filter(|l| !l.trim().is_empty())
                    .collect()
            } else {
                shares.clone()
            };
            let root = embassy_core::keys::custody::recover(&texts)?;
            let vault = open_vault(cli)?;
            vault.config().check_root(&root).map_err(|_| {
                Error::WrongKey(format!(
                    "the shares recombine correctly, but to the root key of another vault, not {}",
                    vault.config().vault_id
                ))
            })?;
            let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
            KeyFile::seal(
                &root,
                &vault.config().vault_id,
                pass.as_bytes(),
                KdfParams::DEFAULT,
            )?
            .store(out)?;
            if cli.json {
                print_json(
                    json!({"ok": true, "vault_id": vault.config().vault_id, "key_file": out}),
                )?;
            } else {
                println!(
                    "recovered the root key of vault {}; key file written to {}",
                    vault.config().vault_id,
                    out.display()
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
            for d in datasets {
                embassy_core::format::layout::check_dataset_name(d)?;
            }
            let vault_id = vault.config().vault_id.clone();
            // Keys at each dataset's current key epoch (after `keys rotate`, the new one); a
            // reader also gets every earlier epoch's, so old versions stay readable.
            let mut epochs = Vec::new();
            for d in datasets {
                epochs.push((d.clone(), ledger::key_epoch(&vault.history(d)?)));
            }
            let credential = Credential::at_epochs(root, &vault_id, label, &epochs, !*sealing);
            let purpose = if *sealing {
                PURPOSE_SEALING
            } else {
                PURPOSE_READER
            };
            let pass = match new_passphrase_file {
                Some(f) => secrets::passphrase(Some(f), false)?,
                None => secrets::passphrase(cli.passphrase_file.as_deref(), false)?,
            };
            KeyFile::seal_payload(
                &credential.to_bytes(),
                purpose,
                &vault_id,
                pass.as_bytes(),
                KdfParams::DEFAULT,
            )?
            .store(out)?;
            let mut signer_hex = None;
            if let Some(key) = credential.signing_key() {
                let public = key.verifying_key().to_bytes();
                let root_key = root.root_signing_key();
                for d in datasets {
                    let event = Event::SignerAdded {
                        key: public,
                        role: label.clone(),
                        rights: embassy_core::history::rights::Right::sealing(*may_delete),
                    };
                    vault.append_root_event(root, d, event)?;
                }
                vault.write_checkpoint(&root_key)?;
                signer_hex = Some(hex_key(&public));
            }
            if cli.json {
                print_json(
                    json!({"ok": true, "credential": out, "purpose": purpose, "signer": signer_hex}),
                )?;
            } else {
                println!(
                    "{purpose} '{label}' for {} written to {}",
                    datasets.join(", "),
                    out.display()
                );
                if let Some(s) = signer_hex {
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
            let root_key = root.root_signing_key();
            let mut rotated = Vec::new();
            for d in datasets {
                let epoch = ledger::key_epoch(&vault.history(d)?) + 1;
                let keys = root.dataset_keys(d, epoch);
                let event = Event::ReaderKeyRotated {
                    epoch,
                    reader_public: embassy_core::keys::crypto::reader_public_bytes(
                        &keys.reader_public,
                    ),
                };
                vault.append_root_event(root, d, event)?;
                rotated.push(
                    json!({"dataset": d, "epoch": epoch, "key_id": hex_bytes(&keys.key_id())}),
                );
            }
            vault.write_checkpoint(&root_key)?;
            if cli.json {
                print_json(json!({"ok": true, "rotated": rotated}))?;
            } else {
                for r in &rotated {
                    println!(
                        "{}: reader key rotated to epoch {} (key id {}); issue new sealing and reader credentials",
                        r["dataset"].as_str().unwrap_or_default(),
                        r["epoch"],
                        r["key_id"].as_str().unwrap_or_default()
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
            let mut key = [0u8; 32];
            if hex::decode_to_slice(signer, &mut key).is_err() {
                return Err(Error::invalid(format!(
                    "--signer {signer} is not a 64-digit hex public key"
                )));
            }
            let root_key = root.root_signing_key();
            for d in datasets {
                let event = Event::SignerRevoked {
                    key,
                    reason: reason.clone(),
                };
                vault.append_root_event(root, d, event)?;
            }
            vault.write_checkpoint(&root_key)?;
            if cli.json {
                print_json(json!({"ok": true, "revoked": signer, "datasets": datasets}))?;
            } else {
                println!("signer {signer} revoked for {}: its later entries are rejected by every verifier", datasets.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
