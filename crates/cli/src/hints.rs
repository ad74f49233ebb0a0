//! The hints that name CLI syntax (core's error policy, rule 5, `embassy_core::error`): a library
//! error says the way out in words; the command to type is added here, in one place, when the CLI
//! prints the error (the agent names its own, in terms of embassy.toml). Library messages that
//! still name commands are listed in that policy, to move here as the CLI's operations take them.

use embassy_core::Error;

/// The command line that gets the user out of `e`, when there is one.
pub fn for_error(e: &Error) -> Option<String> {
    match e {
        Error::NoVault { site } => Some(format!("create one with `embassy init --site {site}`")),
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
        assert_eq!(
            for_error(&e).as_deref(),
            Some("create one with `embassy init --site /srv/vault`")
        );
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
