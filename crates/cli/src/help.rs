//! What `embassy --help` shows beyond the commands' own text, and what is generated from the
//! clap definition: the commands in the order of the tasks they serve (protect, prove, recover,
//! custody, operate), the exit codes, shell completions (`embassy completions SHELL`, clap_complete)
//! and manual pages (`embassy man --out DIR`, clap_mangen).

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use embassy_core::{Error, Result};

/// The commands by task, in the order `--help` lists them. A command missing here is listed
/// last (the test `every_command_has_its_place_in_the_help` asks for it to be placed).
pub const GROUPS: &[(&str, &[&str])] = &[
    ("protect", &["init", "backup", "pg", "wal-fetch"]),
    (
        "prove",
        &[
            "versions",
            "status",
            "verify",
            "history",
            "witness",
            "witness-key",
        ],
    ),
    (
        "recover",
        &[
            "restore", "drill", "group", "ls", "find", "diff", "stats", "mount", "serve",
            "standby", "promote", "sync",
        ],
    ),
    ("custody", &["keys", "approver-key", "approve", "policy"]),
    (
        "operate",
        &["agent", "config", "prune", "forget", "gc", "completions"],
    ),
];

/// The text after the commands in `--help`: the commands by task, then the exit codes.
pub fn after_help() -> String {
    let mut out = String::from("Commands by task:\n");
    for (group, names) in GROUPS {
        out.push_str(&format!("  {group:<9} {}\n", names.join(", ")));
    }
    out.push('\n');
    out.push_str(crate::exit::HELP);
    out
}

/// The clap definition of `embassy`, its commands ordered by [`GROUPS`] and the
/// [`after_help`] text added: what parses the arguments and what completions and manual pages
/// are generated from.
pub fn command() -> clap::Command {
    let mut cmd = crate::Cli::command().after_help(after_help());
    for sub in cmd.get_subcommands_mut() {
        let order = GROUPS
            .iter()
            .flat_map(|(_, names)| names.iter())
            .position(|n| *n == sub.get_name())
            .unwrap_or(1000);
        *sub = std::mem::take(sub).display_order(order);
    }
    cmd
}

/// Arguments of `embassy completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. Bash: `source <(embassy completions
    /// bash)`, or save it as /usr/share/bash-completion/completions/embassy.
    pub shell: clap_complete::Shell,
}

/// `embassy completions SHELL`: the completion script on stdout.
pub fn completions(args: &CompletionsArgs) {
    let mut cmd = command();
    clap_complete::generate(args.shell, &mut cmd, "embassy", &mut std::io::stdout());
}

/// Arguments of `embassy man` (hidden: for packagers).
#[derive(Args)]
pub struct ManArgs {
    /// The folder to write embassy.1 and one page per command (embassy-backup.1, ...) into.
    #[arg(long)]
    pub out: PathBuf,
}

/// `embassy man --out DIR`: the manual pages, generated from the clap definition.
pub fn man(args: &ManArgs) -> Result<()> {
    write_man_pages(&args.out)
        .map_err(|e| Error::io(format!("writing manual pages to {}", args.out.display()), e))
}

fn write_man_pages(out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    clap_mangen::generate_to(command(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_place_in_the_help() {
        let cmd = command();
        let placed: Vec<&str> = GROUPS.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                placed.contains(&sub.get_name()),
                "`{}` has no place in help::GROUPS",
                sub.get_name()
            );
        }
        cmd.debug_assert();
    }
}
