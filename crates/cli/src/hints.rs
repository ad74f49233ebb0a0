//! The hints that name CLI syntax (core's error policy, rule 5, `embassy_core::error`): a library
//! error says the way out in words; the command to type is added here, in one place, when the CLI
//! prints the error (the agent names its own, in terms of embassy.toml). Library messages that
//! still name commands are listed in that policy, to move here as the CLI's operations take them.

use embassy_core::Error;

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
        Error::SubstitutedConfig { .. } => {
            Some("the genuine vault id is the fingerprint `embassy init` printed".into())
        }
        _ => None,
    }
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
    }
}
