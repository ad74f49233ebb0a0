//! Which WAL object a `promoted` entry anchors (`wal::replayed_object`): the valid object
//! holding the WAL just before the switch point whose bytes there are the ones the promoted
//! server copied into its new timeline's first segment. The anchor is what keeps the fenced
//! writers' unanchored WAL valid (red team 8), so an object holding other bytes must never be
//! named when the server's copy is at hand, and an object that is not valid never is. Against a
//! real vault in a local folder, without a server.

use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::config::VaultConfig;
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::wal;
use embassy_sites::LocalSite;

const DS: &str = "registry";
const SEG: u64 = 16 * 1024 * 1024;

struct World {
    _dir: tempfile::TempDir,
    vault: Vault,
    keyring: Keyring,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
        let root = RootSecret::generate();
        let config = VaultConfig::new(&root);
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site).unwrap();
        let keyring =
            Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
        Self {
            _dir: dir,
            vault,
            keyring,
        }
    }

    /// A piece of timeline 1 at `start` holding `bytes`, signed by `key`; its id.
    fn piece(&self, key: &ed25519_dalek::SigningKey, start: u64, bytes: &[u8]) -> ObjectId {
        let keys = self.keyring.dataset_at(DS, 0).unwrap();
        let spec = LogSpec {
            kind: LogKind::Piece,
            timeline: 1,
            start,
            end: start + bytes.len() as u64,
            prev: None,
            captured_at_ns: 1,
            system_id: 7,
        };
        wal::put(self.vault.site().as_ref(), &keys, key, &spec, bytes)
            .unwrap()
            .0
    }

    /// What `promote` names for a switch at `lsn` given the server's copy of its segment.
    fn named(&self, lsn: u64, copy: Option<&[u8]>) -> Option<ObjectId> {
        let signers = wal::dataset_signers(&self.vault, DS).unwrap();
        wal::replayed_object(
            self.vault.site().as_ref(),
            &self.keyring,
            DS,
            &signers,
            (1, lsn),
            copy,
        )
        .unwrap()
        .map(|w| {
            assert_eq!(w.timeline, 1);
            assert!(w.start < lsn && lsn <= w.end);
            w.object
        })
    }
}

#[test]
fn the_promotion_names_the_object_holding_the_bytes_the_server_replayed() {
    let w = World::new();
    let writer = w.keyring.signer().unwrap();
    // What the server replayed: 8 KiB of 7s at the segment's start; another valid object of the
    // same range holds other bytes and reaches further (what wal-fetch would prefer).
    let replayed = w.piece(&writer, SEG, &[7u8; 8192]);
    let other = w.piece(&writer, SEG, &[9u8; 16384]);
    // An object by a key that is no signer of the dataset, holding the replayed bytes.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    w.piece(&stranger, SEG, &[7u8; 32768]);
    let switch = SEG + 4096;
    let mut copy = vec![0u8; SEG as usize];
    copy[..4096].fill(7);

    assert_eq!(w.named(switch, Some(&copy)), Some(replayed));
    // Without the server's copy: the valid piece reaching furthest.
    assert_eq!(w.named(switch, None), Some(other));
    // A copy that no valid object matches: none is named rather than a wrong one.
    copy[..4096].fill(3);
    assert_eq!(w.named(switch, Some(&copy)), None);
    // No WAL before the switch point on that timeline, or none at all: none.
    assert_eq!(w.named(SEG * 3, None), None);
    assert_eq!(w.named(0, None), None);
}
