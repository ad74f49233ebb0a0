//! The agent's own advice for errors whose way out it can name in its terms (core's error
//! policy, rule 5): the settings of `embassy.toml` rather than the command line's options, and
//! the sites by their `[[sites]]` names. The CLI's advice lives in the CLI (`hints.rs` there).

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
        _ => None,
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
