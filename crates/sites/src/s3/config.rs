//! Where an S3 site is and how to talk to it: parsed from an `s3://bucket/prefix?option=value`
//! location, the process environment and the usual AWS config files.
//!
//! Precedence, highest first: options in the location, `EMBASSY_S3_*` variables, `AWS_*`
//! variables, the AWS config files (`~/.aws/credentials`, `~/.aws/config`), defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use embassy_core::site::SiteError;

/// S3's smallest allowed part (except the last one of an upload).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
/// S3's largest number of parts in one upload.
pub const MAX_PARTS: usize = 10_000;
/// Default [`S3Config::listing_limit`]: 1 GiB, some nine million entries of the format's pack
/// paths (about 84 bytes each, plus 32 bytes of bookkeeping).
pub const DEFAULT_LISTING_LIMIT: u64 = 1024 * 1024 * 1024;

/// Object Lock retention mode (see the S3 documentation on Object Lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still shorten or remove the retention.
    Governance,
    /// Nobody, not even the account root, can delete the object before the date.
    Compliance,
}

impl LockMode {
    /// The header value S3 expects (`GOVERNANCE`, `COMPLIANCE`).
    pub fn as_header(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    /// Parses `governance` / `compliance` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// Object Lock retention put on every object this site creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Governance or compliance.
    pub mode: LockMode,
    /// Each object is retained until its creation time plus this many days.
    pub days: u32,
}

impl ObjectLock {
    /// Parses `MODE:DAYS` (`governance:30`, `compliance:365d`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = "expected MODE:DAYS, e.g. governance:30 or compliance:365d";
        let (mode, days) = s
            .split_once(':')
            .ok_or_else(|| format!("object lock '{s}': {usage}"))?;
        let mode = LockMode::parse(mode).ok_or_else(|| {
            format!("object lock mode '{mode}': use governance or compliance ({usage})")
        })?;
        let days = days.trim();
        let days = days.strip_suffix('d').unwrap_or(days);
        let days: u32 = days
            .parse()
            .ok()
            .filter(|d| (1..=36_500).contains(d))
            .ok_or_else(|| format!("object lock days '{days}': a whole number from 1 to 36500"))?;
        Ok(ObjectLock { mode, days })
    }
}

/// How create-only writes are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// Probe the server once (on the first write): use `If-None-Match: *` where it is honoured,
    /// else fall back to [`ConditionalWrites::CheckThenPut`].
    Auto,
    /// Probe the server once and refuse to write (a permanent error) if it ignores
    /// `If-None-Match: *`.
    Required,
    /// Do not probe: look for the object first and write only if it is absent (still sending
    /// `If-None-Match: *`). Two writers racing on one name may both write; content-addressed
    /// names and the signed ledger keep that detectable.
    CheckThenPut,
}

impl ConditionalWrites {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "required" | "require" | "on" => Some(Self::Required),
            "check-then-put" | "off" => Some(Self::CheckThenPut),
            _ => None,
        }
    }
}

/// Access keys. The secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Everything an [`crate::S3Site`] needs.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix of the vault inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `http://host:port` or `https://host[:port]`, without a path.
    pub endpoint: String,
    /// Signing region (`us-east-1` when nothing says otherwise).
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`) rather than virtual-hosted
    /// (`bucket.endpoint/key`). MinIO, Garage, Ceph RGW and moto usually want path style.
    pub path_style: bool,
    /// Access keys.
    pub credentials: S3Credentials,
    /// Object Lock retention put on every created object, if any.
    pub object_lock: Option<ObjectLock>,
    /// How create-only writes are enforced.
    pub conditional_writes: ConditionalWrites,
    /// Objects larger than this are sent as multipart uploads.
    pub multipart_threshold: usize,
    /// Size of each multipart part (and of each parallel ranged read of large objects).
    pub part_size: usize,
    /// Parts sent or fetched at the same time for one object.
    pub parallelism: usize,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for any single read or write on a connection to make progress, and for the server to
    /// start answering.
    pub io_timeout: Duration,
    /// Resends of an HTTP request whose connection was reset or closed before any answer (a
    /// stale kept-alive connection), at most 3. Every other transient failure is reported as
    /// [`SiteError::Retryable`] at once: the one retry layer above (`RetryingSite`) decides.
    pub retries: u32,
    /// Most memory one listing may hold, in bytes: the paths kept plus 32 bytes for each entry.
    /// A server that lists more is refused (a damaged or hostile site, or a vault larger than
    /// this allows: raise it with `listing-limit-mib`).
    pub listing_limit: u64,
}

/// The options an `s3://` location may carry after `?`.
pub const LOCATION_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "path-style",
    "object-lock",
    "conditional-writes",
    "part-size-mib",
    "multipart-threshold-mib",
    "parallelism",
    "connect-timeout",
    "timeout",
    "retries",
    "listing-limit-mib",
];

impl S3Config {
    /// A configuration with defaults for everything but the bucket, endpoint and credentials.
    pub fn new(
        bucket: impl Into<String>,
        prefix: impl Into<String>,
        endpoint: impl Into<String>,
        credentials: S3Credentials,
    ) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: endpoint.into(),
            region: "us-east-1".into(),
            path_style: true,
            credentials,
            object_lock: None,
            conditional_writes: ConditionalWrites::Auto,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
            parallelism: 4,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            retries: 1,
            listing_limit: DEFAULT_LISTING_LIMIT,
        }
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Reads an `s3://bucket/prefix[?option=value&...]` location, completing it from the
    /// process environment and the AWS config files.
    pub fn from_location(location: &str) -> Result<Self, SiteError> {
        Self::from_location_with(location, &|name| std::env::var(name).ok())
    }

    /// Like [`S3Config::from_location`] with `env` standing for the environment.
    pub fn from_location_with(
        location: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SiteError> {
        let bad = |message: String| SiteError::Permanent {
            site: location.to_string(),
            operation: "open",
            path: String::new(),
            message,
        };
        let rest = location
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an S3 site location starts with s3://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        check_bucket(bucket).map_err(&bad)?;
        if !prefix.is_empty() && !crate::valid_object_path(prefix) {
            return Err(bad(format!(
                "prefix '{prefix}' has an empty, '.' or '..' component: give s3://BUCKET/PREFIX"
            )));
        }

        let mut opts: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = k.to_ascii_lowercase();
            if !LOCATION_OPTIONS.contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown option '{k}' in the S3 location; known options: {}",
                    LOCATION_OPTIONS.join(", ")
                )));
            }
            opts.push((k, percent_decode(v)));
        }
        let opt = |name: &str| {
            opts.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let profile = nonempty("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = nonempty("HOME").map(PathBuf::from);
        let credentials_file = nonempty("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = nonempty("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let creds_section = credentials_file
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| ini_section(&text, &profile))
            .unwrap_or_default();
        let config_section = config_file
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| {
                let name = if profile == "default" {
                    "default".to_string()
                } else {
                    format!("profile {profile}")
                };
                ini_section(&text, &name)
            })
            .unwrap_or_default();
        let from_files = |key: &str| {
            creds_section
                .iter()
                .chain(config_section.iter())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };

        let region = opt("region")
            .or_else(|| nonempty("AWS_REGION"))
            .or_else(|| nonempty("AWS_DEFAULT_REGION"))
            .or_else(|| from_files("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom_endpoint = opt("endpoint")
            .or_else(|| nonempty("EMBASSY_S3_ENDPOINT"))
            .or_else(|| nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| nonempty("AWS_ENDPOINT_URL"))
            .or_else(|| from_files("endpoint_url"));
        let endpoint = match &custom_endpoint {
            Some(e) => normalize_endpoint(e).map_err(&bad)?,
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let path_style = match opt("path-style").or_else(|| nonempty("EMBASSY_S3_PATH_STYLE")) {
            Some(v) => {
                parse_bool(&v).ok_or_else(|| bad(format!("path-style '{v}': use true or false")))?
            }
            // Custom endpoints (MinIO, Garage, Ceph, moto) rarely have wildcard DNS for buckets;
            // bucket names with dots break TLS on virtual-hosted names.
            None => custom_endpoint.is_some() || bucket.contains('.'),
        };
        let path_style = path_style || host_is_ip(&endpoint);

        let access_key_id =
            nonempty("AWS_ACCESS_KEY_ID").or_else(|| from_files("aws_access_key_id"));
        let secret_access_key =
            nonempty("AWS_SECRET_ACCESS_KEY").or_else(|| from_files("aws_secret_access_key"));
        let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key)
        else {
            return Err(bad(format!(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
                 AWS_SESSION_TOKEN for temporary keys), or put them in profile '{profile}' of \
                 ~/.aws/credentials (AWS_PROFILE picks another profile)"
            )));
        };
        let session_token = if nonempty("AWS_ACCESS_KEY_ID").is_some() {
            nonempty("AWS_SESSION_TOKEN")
        } else {
            from_files("aws_session_token")
        };

        let mut cfg = S3Config::new(
            bucket,
            prefix,
            endpoint,
            S3Credentials {
                access_key_id,
                secret_access_key,
                session_token,
            },
        );
        cfg.region = region;
        cfg.path_style = path_style;
        if let Some(v) = opt("object-lock").or_else(|| nonempty("EMBASSY_S3_OBJECT_LOCK")) {
            if !matches!(v.trim(), "" | "none" | "off") {
                cfg.object_lock = Some(ObjectLock::parse(&v).map_err(&bad)?);
            }
        }
        if let Some(v) =
            opt("conditional-writes").or_else(|| nonempty("EMBASSY_S3_CONDITIONAL_WRITES"))
        {
            cfg.conditional_writes = ConditionalWrites::parse(&v).ok_or_else(|| {
                bad(format!(
                    "conditional-writes '{v}': use auto, required or check-then-put"
                ))
            })?;
        }
        let number =
            |name: &str, env_name: &str, lo: u64, hi: u64| -> Result<Option<u64>, SiteError> {
                match opt(name).or_else(|| nonempty(env_name)) {
                    None => Ok(None),
                    Some(v) => v
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (lo..=hi).contains(n))
                        .map(Some)
                        .ok_or_else(|| {
                            bad(format!("{name} '{v}': a whole number from {lo} to {hi}"))
                        }),
                }
            };
        const MIB: u64 = 1024 * 1024;
        if let Some(n) = number("part-size-mib", "EMBASSY_S3_PART_SIZE_MIB", 5, 5120)? {
            cfg.part_size = (n * MIB) as usize;
            cfg.multipart_threshold = cfg.part_size;
        }
        if let Some(n) = number(
            "multipart-threshold-mib",
            "EMBASSY_S3_MULTIPART_THRESHOLD_MIB",
            5,
            5120,
        )? {
            cfg.multipart_threshold = (n * MIB) as usize;
        }
        if let Some(n) = number("parallelism", "EMBASSY_S3_PARALLELISM", 1, 64)? {
            cfg.parallelism = n as usize;
        }
        if let Some(n) = number("connect-timeout", "EMBASSY_S3_CONNECT_TIMEOUT", 1, 3600)? {
            cfg.connect_timeout = Duration::from_secs(n);
        }
        if let Some(n) = number("timeout", "EMBASSY_S3_TIMEOUT", 1, 3600)? {
            cfg.io_timeout = Duration::from_secs(n);
        }
        if let Some(n) = number(
            "listing-limit-mib",
            "EMBASSY_S3_LISTING_LIMIT_MIB",
            1,
            1024 * 1024,
        )? {
            cfg.listing_limit = n * MIB;
        }
        if let Some(n) = number("retries", "EMBASSY_S3_RETRIES", 0, 3)? {
            cfg.retries = n as u32;
        }
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks the values a caller may have set by hand.
    pub fn validate(&self) -> Result<(), String> {
        check_bucket(&self.bucket)?;
        if !self.prefix.is_empty() && !crate::valid_object_path(&self.prefix) {
            return Err(format!("invalid prefix '{}'", self.prefix));
        }
        normalize_endpoint(&self.endpoint)?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(format!(
                "part size {} is outside S3's limits (5 MiB to 5 GiB)",
                self.part_size
            ));
        }
        if self.multipart_threshold < MIN_PART_SIZE {
            return Err("the multipart threshold must be at least 5 MiB".into());
        }
        if self.parallelism == 0 {
            return Err("parallelism must be at least 1".into());
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("region '{}' is not a region name", self.region));
        }
        Ok(())
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{bucket}' is not a bucket name (3 to 63 letters, digits, '.', '-'): give \
             s3://BUCKET/PREFIX"
        ))
    }
}

/// Checks and tidies an endpoint URL: scheme http or https, a host, no path; default ports
/// dropped (so the signed `host` matches the one sent).
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim().trim_end_matches('/');
    let (scheme, authority) = e.split_once("://").ok_or_else(|| {
        format!("endpoint '{endpoint}': give a URL such as https://s3.example.org or http://127.0.0.1:9000")
    })?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "endpoint '{endpoint}': the scheme must be http or https"
        ));
    }
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
        || authority.bytes().any(|b| b.is_ascii_control())
    {
        return Err(format!(
            "endpoint '{endpoint}': give only scheme, host and port (no path, user or query)"
        ));
    }
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "http" { ":80" } else { ":443" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Ok(format!("{scheme}://{authority}"))
}

fn host_is_ip(endpoint: &str) -> bool {
    let authority = endpoint.split_once("://").map_or(endpoint, |(_, a)| a);
    if authority.starts_with('[') {
        return true;
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Decodes `%XX` escapes (and leaves malformed ones as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key = value` pairs of one `[section]` of an INI file (keys lower-cased).
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const KEYS: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];

    #[test]
    fn parses_location_env_and_options() {
        let mut pairs = KEYS.to_vec();
        pairs.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"));
        pairs.push(("AWS_REGION", "eu-west-1"));
        let cfg = S3Config::from_location_with("s3://my-bucket/a/b/", &env_of(&pairs)).unwrap();
        assert_eq!(cfg.bucket, "my-bucket");
        assert_eq!(cfg.prefix, "a/b");
        assert_eq!(cfg.endpoint, "http://127.0.0.1:9000");
        assert_eq!(cfg.region, "eu-west-1");
        assert!(cfg.path_style);
        assert_eq!(cfg.location(), "s3://my-bucket/a/b");
        assert_eq!(cfg.conditional_writes, ConditionalWrites::Auto);

        let cfg = S3Config::from_location_with(
            "s3://my-bucket?region=eu-north-1&object-lock=compliance:30d&part-size-mib=8&conditional-writes=check-then-put",
            &env_of(KEYS),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "https://s3.eu-north-1.amazonaws.com");
        assert!(!cfg.path_style);
        assert_eq!(cfg.prefix, "");
        assert_eq!(
            cfg.object_lock,
            Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        assert_eq!(cfg.part_size, 8 << 20);
        assert_eq!(cfg.conditional_writes, ConditionalWrites::CheckThenPut);
        let cfg = S3Config::from_location_with(
            "s3://my-bucket?endpoint=https://s3.example.org:443&path-style=false",
            &env_of(KEYS),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "https://s3.example.org");
        assert!(!cfg.path_style);
        assert_eq!(cfg.listing_limit, DEFAULT_LISTING_LIMIT);
        let cfg =
            S3Config::from_location_with("s3://my-bucket?listing-limit-mib=4096", &env_of(KEYS))
                .unwrap();
        assert_eq!(cfg.listing_limit, 4096 << 20);
    }

    #[test]
    fn bad_locations_say_what_is_wrong() {
        let env = env_of(KEYS);
        for (loc, needle) in [
            ("s3://", "bucket name"),
            ("s3://ab", "bucket name"),
            ("s3://Bad Bucket/x", "bucket name"),
            ("s3://bucket/a/../b", "prefix"),
            ("s3://bucket?colour=blue", "unknown option"),
            ("s3://bucket?object-lock=forever", "MODE:DAYS"),
            (
                "s3://bucket?object-lock=legal:3",
                "governance or compliance",
            ),
            ("s3://bucket?object-lock=governance:0", "1 to 36500"),
            ("s3://bucket?endpoint=ftp://x", "http or https"),
            ("s3://bucket?endpoint=http://x/path", "no path"),
            ("s3://bucket?part-size-mib=1", "part-size-mib"),
            ("s3://bucket?listing-limit-mib=0", "listing-limit-mib"),
            ("s3://bucket?path-style=maybe", "true or false"),
            ("s3://bucket?conditional-writes=sometimes", "check-then-put"),
        ] {
            let err = S3Config::from_location_with(loc, &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{loc}: {err}");
        }
        let err = S3Config::from_location_with("s3://bucket", &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    }

    #[test]
    fn reads_profiles_from_aws_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[work]\naws_access_key_id=W\naws_secret_access_key=WS\naws_session_token=T\n",
        )
        .unwrap();
        std::fs::write(&config, "[profile work]\nregion = ap-south-1\n").unwrap();
        let env = env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_PROFILE", "work"),
        ]);
        let cfg = S3Config::from_location_with("s3://bucket-1", &env).unwrap();
        assert_eq!(cfg.credentials.access_key_id, "W");
        assert_eq!(cfg.credentials.session_token.as_deref(), Some("T"));
        assert_eq!(cfg.region, "ap-south-1");
        assert!(!format!("{cfg:?}").contains("WS"), "secret printed");
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }
}
