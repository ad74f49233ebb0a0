//! Status figures of continuous WAL: per dataset and site, the last durable LSN and when it was
//! captured, and the lag behind the server in bytes and seconds. The agent and `embassy status`
//! call [`wal_status`].

use std::sync::Arc;

use embassy_core::format::wal_log;
use embassy_core::site::Site;

use crate::error::Result;
use crate::lsn::Lsn;
use crate::replication::{ConnConfig, ReplicationConnection};
use crate::wal;

/// The newest WAL one site holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteWal {
    /// The site's location.
    pub site: String,
    /// Newest timeline there.
    pub timeline: u32,
    /// End of the newest durable WAL there.
    pub durable: Lsn,
    /// When that WAL was received (ns since the Unix epoch), 0 if unknown.
    pub captured_at_ns: i64,
}

/// Continuous-WAL status of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStatus {
    /// The dataset.
    pub dataset: String,
    /// Per site (None when the site holds no WAL of the dataset or could not be read: see
    /// `errors`).
    pub sites: Vec<SiteWal>,
    /// Sites that could not be read, with why.
    pub errors: Vec<(String, String)>,
    /// The server's current WAL position, if it was asked.
    pub server_lsn: Option<Lsn>,
    /// Bytes of WAL the server has that the least advanced site does not.
    pub lag_bytes: Option<u64>,
    /// Seconds since the newest WAL durable on the least advanced site was received, when the
    /// server has more (0 when it has nothing more).
    pub lag_seconds: Option<f64>,
}

/// The newest WAL object on one site, keyless (header parsed, signature checked against the key
/// it names; status does not need the ledger).
pub fn site_wal(location: &str, site: &dyn Site, dataset: &str) -> Result<Option<SiteWal>> {
    let listing = wal::list(site, dataset)?;
    let Some(newest) = listing.newest() else {
        return Ok(None);
    };
    let bytes = site.get(&newest.path)?;
    let captured_at_ns = wal_log::parse(&newest.path, &bytes)
        .map(|p| p.header.captured_at_ns)
        .unwrap_or(0);
    Ok(Some(SiteWal {
        site: location.to_string(),
        timeline: newest.name.timeline,
        durable: Lsn(newest.name.end),
        captured_at_ns,
    }))
}

/// The server's current WAL position (`IDENTIFY_SYSTEM` over a replication connection).
pub fn server_lsn(conn: &ConnConfig) -> Result<Lsn> {
    let mut c = ReplicationConnection::connect(conn)?;
    let pos = c.identify_system()?.xlogpos;
    c.close();
    Ok(pos)
}

/// Status of `dataset` on each of `sites`; `server` (if given) is the source's current position.
pub fn wal_status(
    sites: &[(String, Arc<dyn Site>)],
    dataset: &str,
    server: Option<Lsn>,
) -> WalStatus {
    let mut out = WalStatus {
        dataset: dataset.to_string(),
        sites: Vec::new(),
        errors: Vec::new(),
        server_lsn: server,
        lag_bytes: None,
        lag_seconds: None,
    };
    for (location, site) in sites {
        match site_wal(location, site.as_ref(), dataset) {
            Ok(Some(s)) => out.sites.push(s),
            Ok(None) => out
                .errors
                .push((location.clone(), "holds no WAL of this dataset".into())),
            Err(e) => out.errors.push((location.clone(), e.to_string())),
        }
    }
    if let (Some(server), Some(least)) = (server, out.sites.iter().min_by_key(|s| s.durable)) {
        let lag = server.0.saturating_sub(least.durable.0);
        out.lag_bytes = Some(lag);
        let now = embassy_core::format::config::now_unix_nanos();
        out.lag_seconds = Some(if lag == 0 || least.captured_at_ns == 0 {
            0.0
        } else {
            (now - least.captured_at_ns).max(0) as f64 / 1e9
        });
    }
    out
}
