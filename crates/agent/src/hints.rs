//! The agent's own advice for errors whose way out it can name in its terms (core's error
//! policy, rule 5): the settings of `embassy.toml` rather than the command line's options, and
//! the sites by their `[[sites]]` names. The CLI's advice lives in the CLI (`hints.rs` there).

use embassy_core::error::{Grant, WayOut};
use embassy_core::Error;

use crate::config::Config;
use crate::error::RunError;

/// The way out of `error` for an agent user, when the agent knows one.
pub fn for_error(error: &RunError, config: &Config) -> Option<String> {
    let RunError::Core(error) = error else {
        return None;
    };
    match error {
        Error::NoVault { .. } => Some(format!(
            "if there is no vault yet, create it with `embassy init --site {}`; if there is, \
             check the sites' `path`/`url` in embassy.toml (and that their disks are mounted)",
            config.locations().join(" --site ")
        )),
        Error::SiteWithoutVault { sites, holding } => {
            Some(site_without_vault(config, sites, holding))
        }
        Error::NoKeyFile { path } => Some(format!(
            "set `file` under [keys] in embassy.toml to the vault's key file (now {}); if it is \
             lost, custodians can recover the root key with `embassy keys recover --out FILE`",
            path.display()
        )),
        Error::Refused { way_out, .. } => Some(way_out_hint(way_out, config)),
        _ => None,
    }
}

/// The way out of a typed refusal, in the agent's terms: the key file it holds is `file` under
/// [keys] in embassy.toml; what the root must issue is named in words.
fn way_out_hint(way_out: &WayOut, config: &Config) -> String {
    let file = config.keys.file.display();
    match way_out {
        WayOut::Grant {
            dataset,
            grant: Grant::Read,
        } => format!(
            "set `file` under [keys] in embassy.toml (now {file}) to the root key file or a \
             reader credential of {dataset}"
        ),
        WayOut::Grant {
            dataset,
            grant: Grant::Seal,
        } => format!(
            "the key file under [keys] in embassy.toml (now {file}) may not add to {dataset}: \
             have the root issue a sealing credential for it (`embassy keys issue --sealing \
             --dataset {dataset} ...`) and set `file` to it"
        ),
        WayOut::Grant {
            grant: Grant::Delete,
            ..
        } => format!(
            "pruning needs a key allowed to delete: set `file` under [keys] in embassy.toml (now \
             {file}) to the root key file or a credential issued with `embassy keys issue \
             --sealing --may-delete`, or leave retention to a host that has one"
        ),
        WayOut::Grant {
            grant: Grant::Collect,
            ..
        } => format!(
            "gc condemns objects of the whole vault, which only the root key signs (a \
             credential, even one issued with --may-delete, cannot): set `file` under [keys] in \
             embassy.toml (now {file}) to the root key file, or set gc_interval = \"never\" here \
             and run `embassy gc` with the root key file on a host trusted with it"
        ),
        WayOut::ApproveMinAge { dataset } => format!(
            "the approvers approve lowering {dataset}'s minimum age first (`embassy approve \
             --min-age`)"
        ),
        WayOut::ApprovePromotion {
            dataset,
            host,
            promoter,
        } => format!(
            "the approvers approve the takeover first (`embassy approve --promote {host} \
             --promoter {promoter} {dataset}`)"
        ),
        WayOut::RevokeSigner { dataset } => format!(
            "the agent adds nothing to {dataset} until the fork is decided: if one signer is \
             rogue, the root revokes it (`embassy keys revoke --signer HEX --dataset {dataset}`)"
        ),
        WayOut::PgBaseBackup { .. } => "the agent takes a new base backup at the dataset's next \
             scheduled one (its `interval` or `schedule` in embassy.toml); take one now with \
             `embassy pg base-backup` to close the gap sooner"
            .into(),
        WayOut::PgStream { dataset } => {
            format!("let the agent's WAL stream of {dataset} run until it passes that point")
        }
        WayOut::PgCreateSlot { slot } => format!(
            "drop slot {slot} on the server and create it again with WAL reserved, or set \
             another `slot` for the dataset in embassy.toml"
        ),
        WayOut::CatchUpSites { sites } => format!(
            "the agent catches {} up from the other sites after its next look at them; \
             `embassy sync --pending` does it now",
            sites.join(", ")
        ),
        WayOut::PgTablespaceMap { locations } => format!(
            "the agent restores no PostgreSQL dataset: restore it with `embassy restore` and a \
             --tablespace-map for each of {}",
            locations.join(", ")
        ),
        WayOut::PgPromoteBehind { dataset, .. } => format!(
            "the agent promotes no standby: let the standby of {dataset} replay the vault's WAL \
             first, or promote it with `embassy promote --accept-data-loss`"
        ),
        WayOut::PgChooseTimeline {
            dataset,
            parent,
            timeline,
        } => format!(
            "the node follows no timeline that leaves out acknowledged WAL: find out who forked \
             {dataset} (a failover at home, or a credential to revoke), then start its standby by \
             hand with `embassy standby {dataset} --timeline {parent}` (every record of timeline \
             {parent}) or `--timeline {timeline}` (the fork)"
        ),
        WayOut::AcceptSmallerGroup { group } => format!(
            "the agent restores no group: `embassy restore --group {group} --at TIME` restores \
             the whole group to an earlier point, or --accept-fewer-members only the members \
             the point names"
        ),
    }
}

/// The way out for `sites` that hold no vault while `holding` hold it: the agent leaves such a
/// site out (never fills it) and uses it again once it holds the vault.
pub fn site_without_vault(config: &Config, sites: &[String], holding: &[String]) -> String {
    let named = |location: &str| match config.sites.iter().find(|s| s.location == location) {
        Some(site) => format!("site {:?} ({location})", site.name),
        None => location.to_string(),
    };
    let from = holding
        .first()
        .map_or("SITE-WITH-THE-VAULT", String::as_str);
    format!(
        "{} holds no vault: if it should, mount its disk or fix its `path`/`url` under \
         [[sites]] in embassy.toml; if it is a new site, seed it with {}; or remove it from \
         embassy.toml. The agent leaves it out and never fills it; it uses it again, and \
         catches it up, once it holds the vault",
        sites
            .iter()
            .map(|s| named(s))
            .collect::<Vec<_>>()
            .join(", "),
        sites
            .iter()
            .map(|to| format!("`embassy sync --seed --from {from} --to {to}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each typed way out is spelled in the agent's terms: the key file setting, not a flag.
    #[test]
    fn a_typed_way_out_names_the_embassy_toml_setting() {
        let text = "[agent]\nstate_dir = \"/var/lib/embassy\"\n[keys]\nfile = \"/etc/embassy/host.cred\"\n\
                    passphrase_file = \"/etc/embassy/pass\"\n[[sites]]\nname = \"a\"\npath = \"/srv/a\"\n";
        let config = Config::parse(text, std::path::Path::new("/etc/embassy/embassy.toml"))
            .expect("a valid configuration");
        let refused = |way_out: WayOut| {
            RunError::Core(Error::Refused {
                kind: embassy_core::ErrorKind::Keys,
                problem: "refused in words".into(),
                way_out,
            })
        };
        for grant in [Grant::Read, Grant::Seal, Grant::Delete, Grant::Collect] {
            let hint = for_error(
                &refused(WayOut::Grant {
                    dataset: "docs".into(),
                    grant,
                }),
                &config,
            );
            assert!(
                hint.as_ref().is_some_and(|h| h.contains("[keys]")
                    && h.contains("/etc/embassy/host.cred")
                    && !h.contains("--key-file")),
                "{grant:?}: {hint:?}"
            );
        }
        for way_out in [
            WayOut::ApproveMinAge {
                dataset: "docs".into(),
            },
            WayOut::RevokeSigner {
                dataset: "docs".into(),
            },
            WayOut::PgBaseBackup {
                dataset: "docs".into(),
            },
            WayOut::PgStream {
                dataset: "docs".into(),
            },
            WayOut::PgCreateSlot {
                slot: "embassy".into(),
            },
        ] {
            assert!(
                for_error(&refused(way_out.clone()), &config).is_some(),
                "{way_out:?}"
            );
        }
    }
}
