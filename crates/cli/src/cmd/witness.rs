//! `embassy witness` (verify without keys, streamed WAL included, cosign the newest checkpoint) and
//! `embassy witness-key`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_WITNESS};
use embassy_core::keys::RootSecret;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::cmd::history::hex_key;
use crate::{expected_vault_id, open_vault, output, print_json, secrets, Cli};

/// Arguments of `embassy witness`.
#[derive(Args)]
pub struct WitnessArgs {
    /// The witness's key file (made with `embassy witness-key --out FILE`).
    #[arg(long)]
    pub witness_key: PathBuf,
}

/// Arguments of `embassy witness-key`.
#[derive(Args)]
pub struct WitnessKeyArgs {
    /// Where to write the key file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `embassy witness-key --out FILE`
pub fn witness_key(cli: &Cli, args: &WitnessKeyArgs) -> Result<ExitCode> {
    let out = &args.out;
    let secret = RootSecret::generate();
    let public = ed25519_dalek_public(&secret);
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
    // Bound to one vault when --vault-id is given: it then refuses to witness any other.
    let bound = expected_vault_id(cli)?;
    KeyFile::seal_payload(
        secret.expose(),
        PURPOSE_WITNESS,
        bound.as_deref().unwrap_or(WITNESS_KEY_ID),
        pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .store(out)?;
    if cli.json {
        print_json(json!({"ok": true, "key_file": out, "public_key": public}))?;
    } else {
        println!("witness key written to {}", out.display());
        println!("public key: {public}");
        println!("pin it in a vault with: embassy init --witness {public} --witness-quorum 1");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `vault_id` a witness key file carries.
const WITNESS_KEY_ID: &str = "witness";

fn ed25519_dalek_public(secret: &RootSecret) -> String {
    hex_key(
        &embassy_core::history::checkpoint::witness_signing_key(secret)
            .verifying_key()
            .to_bytes(),
    )
}

/// `embassy witness --witness-key FILE`
pub fn witness(cli: &Cli, args: &WitnessArgs) -> Result<ExitCode> {
    let key_path = &args.witness_key;
    let file = KeyFile::load(key_path)?;
    file.expect_purpose(PURPOSE_WITNESS, key_path)?;
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), false)?;
    let seed = file.open_payload(pass.as_bytes(), key_path)?;
    let seed = RootSecret::from_slice(&seed)
        .ok_or_else(|| Error::invalid("witness key file holds a secret of the wrong length"))?;
    let key = embassy_core::history::checkpoint::witness_signing_key(&seed);
    let vault = open_vault(cli)?;
    // A witness key made for one vault (`embassy --vault-id ID witness-key`) witnesses only it.
    if file.vault_id != WITNESS_KEY_ID && file.vault_id != vault.config().vault_id {
        return Err(Error::SubstitutedConfig {
            site: vault.site().location().to_string(),
            problem: format!(
                "it holds vault {}, but witness key {} was made for vault {}",
                vault.config().vault_id,
                key_path.display(),
                file.vault_id
            ),
        });
    }
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    // The same verification as `embassy verify` (embassy-ops): streamed WAL included, so a
    // witness never vouches for a vault whose site withholds or damages WAL.
    let verification = embassy_ops::verify::verify(&vault, None, &bar)?;
    bar.finish();
    if !verification.is_ok() && !verification.found_damage() {
        for u in &verification.vault.unreadable {
            eprintln!("NOT CHECKED: {}", output::escape(u));
        }
        // An outage, not damage: nothing is vouched for, and the exit status says "try again".
        return Err(Error::Site(embassy_core::site::SiteError::Retryable {
            site: vault.site().location().to_string(),
            operation: "verify",
            path: String::new(),
            message: format!(
                "{} objects could not be read or checked; nothing was cosigned: run the witness \
                 again once the site answers",
                verification.vault.unreadable.len()
            ),
        }));
    }
    if !verification.is_ok() {
        let problems = verification.problems();
        for p in &problems {
            eprintln!("PROBLEM: {}", output::escape(p));
        }
        return Err(Error::History {
            dataset: "(vault)".into(),
            problem: format!("{} problems found; nothing was cosigned", problems.len()),
        });
    }
    let report = &verification.vault;
    for n in &report.noise {
        eprintln!("noise: {}", output::escape(n));
    }
    let (histories, _) = vault.histories()?;
    // The newest valid checkpoint (signed by the root or a pinned writer key, dated sanely);
    // verify above proved that the served histories extend every valid one.
    let (checkpoints, _) = vault.checkpoints(&histories)?;
    let newest = checkpoints
        .last()
        .ok_or_else(|| Error::NotFound("the vault has no valid checkpoint to cosign yet".into()))?;
    embassy_core::history::checkpoint::cosign(vault.site().as_ref(), &newest.id, &key)?;
    if cli.json {
        print_json(
            json!({"ok": true, "checkpoint": newest.id.to_hex(), "witness": hex_key(&key.verifying_key().to_bytes())}),
        )?;
    } else {
        println!(
            "verified {} objects; cosigned checkpoint {} of {}",
            report.objects_checked,
            newest.id.short(),
            output::time(newest.checkpoint.time_ns)
        );
    }
    Ok(ExitCode::SUCCESS)
}
