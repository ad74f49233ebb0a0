//! A vault in a local folder holding synthetic WAL objects and their ledger anchors, for the
//! tests that judge stored WAL without a server (`history_files.rs`, `wal_forks.rs`).

#![allow(dead_code)]

use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::config::VaultConfig;
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::history::ledger::{self, Event};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::wal;
use embassy_sites::LocalSite;

pub const DS: &str = "registry";

/// Stores `bytes` as a log object of `kind` on `timeline` from `start`, signed by the keyring's
/// writer (`prev` none); returns its id.
pub fn put(
    vault: &Vault,
    keyring: &Keyring,
    kind: LogKind,
    timeline: u32,
    start: u64,
    bytes: &[u8],
) -> ObjectId {
    let keys = keyring.dataset_at(DS, 0).unwrap();
    let spec = LogSpec {
        kind,
        timeline,
        start: if kind == LogKind::History { 0 } else { start },
        end: if kind == LogKind::History {
            bytes.len() as u64
        } else {
            start + bytes.len() as u64
        },
        prev: None,
        captured_at_ns: 1,
        system_id: 7,
    };
    wal::put(
        vault.site().as_ref(),
        &keys,
        &keyring.signer().unwrap(),
        &spec,
        bytes,
    )
    .unwrap()
    .0
}

/// Appends a `log_range_added` entry anchoring `piece` (and the history file `history`).
#[allow(clippy::too_many_arguments)]
pub fn anchor(
    vault: &Vault,
    keyring: &Keyring,
    piece: ObjectId,
    timeline: u32,
    start: u64,
    end: u64,
    history: Option<ObjectId>,
) {
    let head = vault.history(DS).unwrap();
    ledger::append(
        vault.site().as_ref(),
        &keyring.signer().unwrap(),
        DS,
        head.last(),
        Event::LogRangeAdded {
            manifest: piece,
            timeline,
            start,
            end,
            captured_at_ns: 1,
            history,
        },
    )
    .unwrap();
}

/// A new vault in a local folder, with a root keyring.
pub fn setup() -> (tempfile::TempDir, Vault, Keyring) {
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    VaultConfig::new(&root)
        .create(site.as_ref(), &root)
        .unwrap();
    let vault = Vault::open(site).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    (dir, vault, keyring)
}
