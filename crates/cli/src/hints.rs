//! The hints that name CLI syntax (core's error policy, rule 5, `embassy_core::error`): a library
//! error says the way out in words; the command to type is added here, in one place, when the CLI
//! prints the error (the agent names its own, in terms of embassy.toml). A refusal whose way out
//! needs data says it typed ([`Error::Refused`] with a [`WayOut`]).

use embassy_core::error::{Grant, WayOut};
use embassy_core::Error;

/// The command line for a typed way out.
pub fn for_way_out(way_out: &WayOut) -> String {
    match way_out {
        WayOut::Grant {
            dataset,
            grant: Grant::Read,
        } => format!(
            "pass the root key file with --key-file, or a reader credential the root issues with \
             `embassy keys issue --reader --dataset {dataset} --label WHO --out FILE`"
        ),
        WayOut::Grant {
            dataset,
            grant: Grant::Seal,
        } => format!(
            "the root issues a new sealing credential with `embassy keys issue --sealing \
             --dataset {dataset} --label HOST --out FILE`"
        ),
        WayOut::Grant {
            dataset,
            grant: Grant::Delete,
        } => format!(
            "pass the root key file with --key-file, or a credential the root issues with \
             `embassy keys issue --sealing --may-delete --dataset {dataset} --label HOST --out FILE`"
        ),
        WayOut::Grant {
            grant: Grant::Collect,
            ..
        } => "run `embassy gc` with the root key file (`--key-file root.key`): gc condemns \
              objects of the whole vault, which only the root signs (a sealing credential, even \
              one issued with `--may-delete`, prunes its datasets but cannot collect)"
            .into(),
        WayOut::ApproveMinAge { dataset } => format!(
            "each approver runs `embassy approve --approver-key FILE --min-age DURATION \
             {dataset}`, then run this again"
        ),
        WayOut::ApprovePromotion {
            dataset,
            host,
            promoter,
        } => format!(
            "each approver runs `embassy approve --approver-key FILE --promote {host} --promoter \
             {promoter} {dataset}` (after the ledger's newest entry; the key is this credential's), \
             then run this again"
        ),
        WayOut::RevokeSigner { dataset } => format!(
            "if one signer is rogue, revoke it: `embassy keys revoke --signer HEX --dataset \
             {dataset}` (HEX: its key, as the message names it)"
        ),
        WayOut::PgBaseBackup { dataset } => format!(
            "`embassy pg base-backup {} --conninfo CONNINFO` takes a new base backup",
            if dataset.is_empty() { "DATASET" } else { dataset }
        ),
        WayOut::PgStream { dataset } => format!(
            "keep `embassy pg stream {dataset} --conninfo CONNINFO` running past that point, or \
             restore a base backup taken without --wal-streamed"
        ),
        WayOut::PgCreateSlot { slot } => format!(
            "drop slot {slot} on the server (SELECT pg_drop_replication_slot('{slot}')) and run \
             `embassy pg stream` with --create-slot"
        ),
        WayOut::CatchUpSites { sites } => format!(
            "catch it up from a site that holds the writes: `embassy sync --pending{} --site \
             OTHER-SITE`",
            sites
                .iter()
                .map(|s| format!(" --site {s}"))
                .collect::<String>()
        ),
        WayOut::PgTablespaceMap { locations } => format!(
            "choose a folder for each tablespace (a new one in a folder you control, or an empty \
             one the server's owner owns) and pass{}",
            locations
                .iter()
                .map(|l| format!(
                    " --tablespace-map {}",
                    embassy_postgres::restore::shell_quote(&format!(
                        "{}=NEW-FOLDER",
                        l.replace('=', "\\=")
                    ))
                ))
                .collect::<String>()
        ),
        WayOut::PgPromoteBehind { dataset, data_dir } => format!(
            "wait until the standby has replayed the vault's WAL and run this again; if a site \
             lacks WAL, copy it back from one that holds it (`embassy sync --from GOOD-SITE --to \
             THAT-SITE --repair`); or promote losing that WAL, recorded in the ledger: \
             `embassy promote {dataset} --data {} --accept-data-loss`",
            embassy_postgres::restore::shell_quote(data_dir)
        ),
        WayOut::PgChooseTimeline {
            dataset,
            parent,
            timeline,
        } => format!(
            "find out who forked it (a failover at home, or a credential to revoke: `embassy \
             keys revoke`), then name the timeline: `embassy restore {dataset} --latest \
             --timeline {parent} ...` keeps every record of timeline {parent} and none of \
             timeline {timeline}'s writes; `--timeline {timeline}` follows the fork and loses \
             them (the same for `embassy standby`)"
        ),
        WayOut::AcceptSmallerGroup { group } => format!(
            "`embassy restore --group {group} --at TIME` with the time named restores the whole \
             group; if the group lost those members on purpose, add --accept-fewer-members to \
             restore only the members the point names"
        ),
    }
}

/// The command line for a restore's note that newer versions are not yet witnessed.
pub const UNWITNESSED_NOTE: &str =
    "`embassy witness` has the witnesses cosign; --unwitnessed restores the newest anyway";

/// The command line for a PostgreSQL restore that started from an older witnessed base backup.
pub const UNWITNESSED_BASE_BACKUP: &str =
    "`embassy witness` has the witnesses cosign the newer one; --unwitnessed restores from it anyway";

/// The command line that gets the user out of `e`, when there is one.
pub fn for_error(e: &Error) -> Option<String> {
    match e {
        Error::NoVault { site } => Some(format!(
            "if there is no vault yet, create one with `embassy init --site {}`; if there is, \
             check the site's path (and that its disk is mounted)",
            site.split(" + ").collect::<Vec<_>>().join(" --site ")
        )),
        Error::UnknownDataset { dataset, known } if !known.is_empty() => {
            Some(match embassy_core::error::nearest(dataset, known) {
                Some(n) => format!("`embassy versions {n}` lists the versions of {n}"),
                None => "`embassy versions` lists every dataset's versions".into(),
            })
        }
        Error::UnknownDataset { .. } => {
            Some("store a first version with `embassy backup DATASET PATH...`".into())
        }
        Error::Missing { path, site, .. } if path == embassy_core::format::layout::CONFIG => {
            Some(format!(
                "`embassy sync --seed --from SITE-WITH-THE-VAULT --to {site}` copies the \
                 configuration and what else is missing"
            ))
        }
        Error::NoSuchVersion { dataset, .. } => Some(format!(
            "`embassy versions {dataset}` lists the versions it holds"
        )),
        Error::Unwitnessed { .. } => Some(
            "have the witnesses cosign (`embassy witness`), or pass --unwitnessed to restore it \
             anyway"
                .into(),
        ),
        Error::NoKeyFile { .. } => Some(
            "pass the vault's key file with --key-file FILE (or EMBASSY_KEY_FILE); if it is lost, \
             custodians can recover the root key with `embassy keys recover --out FILE`"
                .into(),
        ),
        Error::SiteWithoutVault { sites, holding } => {
            let from = holding
                .first()
                .map_or("SITE-WITH-THE-VAULT", |s| s.as_str());
            Some(format!(
                "if {} is a new site, seed it with {}; if it should hold the vault, mount its \
                 disk or fix its path; or leave it out of --site",
                sites.join(", "),
                sites
                    .iter()
                    .map(|to| format!("`embassy sync --seed --from {from} --to {to}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))
        }
        Error::SitePinMismatch { site, .. } => Some(format!(
            "if the vault at {site} was legitimately replaced, pass --forget-site-pin once to pin \
             the new one"
        )),
        Error::Refused { way_out, .. } => Some(for_way_out(way_out)),
        Error::NotApproved { dataset, .. } => Some(format!(
            "each pinned approver runs `embassy approve --approver-key FILE {dataset}@N` for the \
             versions named"
        )),
        Error::SubstitutedConfig { .. } => {
            Some("the genuine vault id is the fingerprint `embassy init` printed".into())
        }
        _ => None,
    }
}

/// How to catch up a site that is behind (writes queued for it in a state folder).
pub fn catch_up_pending() -> &'static str {
    "catch it up from the other sites: embassy --site A --site B ... --state-dir DIR sync \
     --pending (every site of the vault, and the state folder that holds the queue: the \
     agent's state_dir), or let the agent's next catch-up do it"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_live_here_not_in_the_library_messages() {
        let e = Error::NoVault {
            site: "/srv/vault".into(),
        };
        assert!(!e.to_string().contains("embassy "), "{e}");
        assert!(for_error(&e).is_some_and(|h| h.contains("`embassy init --site /srv/vault`")));
        let e = Error::SiteWithoutVault {
            sites: vec!["/mnt/b".into()],
            holding: vec!["/srv/a".into()],
        };
        assert!(!e.to_string().contains("embassy "), "{e}");
        assert!(for_error(&e)
            .is_some_and(|h| h.contains("`embassy sync --seed --from /srv/a --to /mnt/b`")));
        let e = Error::NoSuchVersion {
            dataset: "docs".into(),
            problem: embassy_core::history::numbering::missing_version("docs", &[], 9),
        };
        assert!(!e.to_string().contains("embassy "), "{e}");
        assert!(for_error(&e).is_some_and(|h| h.contains("`embassy versions docs`")));
        let e = Error::Unwitnessed {
            dataset: "docs".into(),
            problem: "version 2 of docs is not yet covered".into(),
        };
        assert!(for_error(&e).is_some_and(|h| h.contains("--unwitnessed")));
        let e = Error::NoKeyFile { path: "/k".into() };
        assert!(!e.to_string().contains("--key-file"), "{e}");
        assert!(for_error(&e).is_some_and(|h| h.contains("--key-file")));
        let e = Error::SitePinMismatch {
            site: "/srv/vault".into(),
            pinned: "a".into(),
            served: "b".into(),
        };
        assert!(!e.to_string().contains("--forget-site-pin"), "{e}");
        assert!(for_error(&e).is_some_and(|h| h.contains("--forget-site-pin")));
        let e = Error::SubstitutedConfig {
            site: "/srv/vault".into(),
            problem: "vault a is not vault b".into(),
        };
        assert!(!e.to_string().contains("embassy "), "{e}");
        assert!(for_error(&e).is_some());
        let e = Error::NotApproved {
            dataset: "docs".into(),
            versions: vec![3],
            have: 1,
            need: 2,
            detail: "get 1 more from pinned approvers".into(),
        };
        assert!(!e.to_string().contains("embassy "), "{e}");
        assert!(for_error(&e)
            .is_some_and(|h| h.contains("`embassy approve --approver-key FILE docs@N`")));
        // One case per typed way out: the message in words, the command here.
        let refused = |way_out: WayOut| Error::Refused {
            kind: embassy_core::ErrorKind::Keys,
            problem: "refused in words".into(),
            way_out,
        };
        let grant = |grant: Grant| WayOut::Grant {
            dataset: "docs".into(),
            grant,
        };
        let dataset = || "docs".to_string();
        for (way_out, command) in [
            (
                grant(Grant::Read),
                "`embassy keys issue --reader --dataset docs",
            ),
            (
                grant(Grant::Seal),
                "`embassy keys issue --sealing --dataset docs",
            ),
            (
                grant(Grant::Delete),
                "`embassy keys issue --sealing --may-delete --dataset docs",
            ),
            (grant(Grant::Collect), "`embassy gc` with the root key file"),
            (
                WayOut::ApproveMinAge { dataset: dataset() },
                "`embassy approve --approver-key FILE --min-age DURATION docs`",
            ),
            (
                WayOut::RevokeSigner { dataset: dataset() },
                "`embassy keys revoke --signer HEX --dataset docs`",
            ),
            (
                WayOut::ApprovePromotion {
                    dataset: dataset(),
                    host: "embassy-1".into(),
                    promoter: "ab12".into(),
                },
                "`embassy approve --approver-key FILE --promote embassy-1 --promoter ab12 docs`",
            ),
            (
                WayOut::PgBaseBackup { dataset: dataset() },
                "`embassy pg base-backup docs",
            ),
            (
                WayOut::PgBaseBackup {
                    dataset: String::new(),
                },
                "`embassy pg base-backup DATASET",
            ),
            (
                WayOut::PgStream { dataset: dataset() },
                "`embassy pg stream docs",
            ),
            (
                WayOut::PgCreateSlot {
                    slot: "embassy".into(),
                },
                "--create-slot",
            ),
            (
                WayOut::PgTablespaceMap {
                    locations: vec!["/usr/local/sbin".into()],
                },
                "--tablespace-map /usr/local/sbin=NEW-FOLDER",
            ),
            (
                WayOut::PgPromoteBehind {
                    dataset: dataset(),
                    data_dir: "/srv/standby".into(),
                },
                "`embassy promote docs --data /srv/standby --accept-data-loss`",
            ),
            (
                WayOut::PgChooseTimeline {
                    dataset: dataset(),
                    parent: 1,
                    timeline: 2,
                },
                "`embassy restore docs --latest --timeline 1",
            ),
        ] {
            let e = refused(way_out);
            assert!(!e.to_string().contains("embassy "), "{e}");
            let hint = for_error(&e);
            assert!(
                hint.as_ref().is_some_and(|h| h.contains(command)),
                "{hint:?}"
            );
        }
        assert!(UNWITNESSED_NOTE.contains("--unwitnessed"));
    }
}
