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
    let named = |location: &str| match config.sites.iter().find(|s| s.location == location) {
        Some(site) => format!("site {:?} ({location})", site.name),
        None => location.to_string(),
    };
    match error {
        Error::NoVault { .. } => Some(format!(
            "if there is no vault yet, create it with `embassy init --site {}`; if there is, \
             check the sites' `path`/`url` in embassy.toml (and that their disks are mounted)",
            config.locations().join(" --site ")
        )),
        Error::SiteWithoutVault { sites, holding } => {
            let from = holding
                .first()
                .map_or("SITE-WITH-THE-VAULT", String::as_str);
            Some(format!(
                "{} holds no vault: if it should, mount its disk or fix its `path`/`url` under \
                 [[sites]] in embassy.toml; if it is a new site, seed it with {} and start the \
                 agent again; or remove it from embassy.toml. The agent never fills a site that \
                 holds no vault",
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
            ))
        }
        Error::NoKeyFile { path } => Some(format!(
            "set `file` under [keys] in embassy.toml to the vault's key file (now {}); if it is \
             lost, custodians can recover the root key with `embassy keys recover --out FILE`",
            path.display()
        )),
        _ => None,
    }
}
