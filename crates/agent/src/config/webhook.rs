//! Webhook URLs as the configuration checks them (https, or http to a loopback address).

/// What the configuration checks of a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// True for https://.
    pub https: bool,
    /// The host (without port), as written.
    pub host: String,
    /// True when the host is a loopback address or `localhost`.
    pub loopback: bool,
}

impl WebhookUrl {
    /// Reads the scheme and host of an http:// or https:// URL.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("expected an https:// URL (or http:// to a loopback address)".into());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            hostport.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(format!(
                "expected a host after {}://",
                if https { "https" } else { "http" }
            ));
        }
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(WebhookUrl {
            https,
            host: host.to_string(),
            loopback,
        })
    }
}
