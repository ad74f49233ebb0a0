//! `embassy find DATASET PATTERN`: the paths matching a pattern (the selection grammar
//! backups and restores use) in any version of a dataset, each with the versions that hold it.

use std::process::ExitCode;

use clap::Args;
use embassy_core::format::tree::NodeKind;
use embassy_core::{Error, Result};
use embassy_ops::browse;
use embassy_sources::selection::Pattern;

use super::ls::{content_note, to_json};
use crate::{open_vault, output, print_json, unlock, Cli};

/// Arguments of `embassy find`.
#[derive(Args)]
pub struct FindArgs {
    /// The dataset.
    pub dataset: String,
    /// A pattern, in the grammar `backup --exclude` and `restore --include` use (README,
    /// "Selection"): `*` and `?` within a name, `**` as a whole part for any folders,
    /// `[a-z]` sets. Without `/` it matches names at any depth (`*.csv`), with `/` paths from
    /// the version's root (`registry/**/2026*`); a trailing `/` folders only, `!` what does not
    /// match.
    pub pattern: String,
    /// Also versions no witnessed checkpoint covers yet (when the vault requires witnesses).
    #[arg(long)]
    pub unwitnessed: bool,
}

/// Runs `embassy find`.
pub fn run(cli: &Cli, args: &FindArgs) -> Result<ExitCode> {
    // A pattern that cannot be used is refused before the passphrase is asked for.
    Pattern::parse(&args.pattern).map_err(|e| Error::invalid(e.to_string()))?;
    let vault = open_vault(cli)?;
    browse::versions(&vault, &args.dataset, args.unwitnessed)?;
    let keyring = unlock(cli, &vault)?;
    let found = browse::find::find(
        &vault,
        &keyring,
        &args.dataset,
        &args.pattern,
        args.unwitnessed,
    )?;
    if cli.json {
        return print_json(to_json(&found)?).map(|()| ExitCode::SUCCESS);
    }
    if let Some(note) = found.content.and_then(content_note) {
        eprintln!("note: {note}");
    }
    let mut out = String::new();
    for m in &found.matches {
        out.push_str(&format!(
            "{}{}  ({}, in version{} {})\n",
            output::escape(&m.path),
            if m.kind == NodeKind::Dir { "/" } else { "" },
            if m.kind == NodeKind::File {
                output::size(m.size)
            } else {
                format!("{:?}", m.kind).to_lowercase()
            },
            if m.versions.len() == 1 { "" } else { "s" },
            ranges(&m.versions)
        ));
    }
    print!("{out}");
    let n = found.matches.len();
    eprintln!(
        "{n} path{} matching {} in {} version{} of {}",
        if n == 1 { "" } else { "s" },
        output::escape(&found.pattern),
        found.versions_searched.len(),
        if found.versions_searched.len() == 1 {
            ""
        } else {
            "s"
        },
        found.dataset
    );
    Ok(ExitCode::SUCCESS)
}

/// Version numbers as runs: `1-3, 5`.
fn ranges(numbers: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            numbers[i].to_string()
        } else {
            format!("{}-{}", numbers[i], numbers[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_of_versions() {
        assert_eq!(super::ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(super::ranges(&[4]), "4");
    }
}
