//! The newest WAL a site holds (`status::site_wal`, the embassy node's `CheckedWal`) is judged
//! by checked objects, never by names alone (red team 7: one junk object named like later WAL
//! made the node's lag huge, raised its alarm and, once home was quiet, rebuilt its standby
//! every stall limit; `embassy status`, group points and restores read the same end). Against
//! a real vault in a local folder, without a server: junk bytes, a wrong id, a moved object,
//! an object sealed by a key that is no signer of the dataset (on a later timeline too) are all
//! passed over; an object by a signer the ledger adds later is taken once it is added.

use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::config::{now_unix_nanos, VaultConfig};
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::history::ledger::{self, Event, Right};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::status::{self, CheckedWal};
use embassy_postgres::wal;
use embassy_postgres::Lsn;
use embassy_sites::LocalSite;

const DS: &str = "registry";
const SEG: u64 = 16 * 1024 * 1024;

struct World {
    _dir: tempfile::TempDir,
    vault: Vault,
    root: RootSecret,
    prev: Option<ObjectId>,
    end: u64,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.min_age_secs = 0;
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site).unwrap();
        Self {
            _dir: dir,
            vault,
            root,
            prev: None,
            end: SEG,
        }
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    fn site(&self) -> &dyn Site {
        self.vault.site().as_ref()
    }

    fn spec(&self, timeline: u32, start: u64, end: u64) -> LogSpec {
        LogSpec {
            kind: LogKind::Piece,
            timeline,
            start,
            end,
            prev: self.prev,
            captured_at_ns: now_unix_nanos(),
            system_id: 7,
        }
    }

    /// Streams a piece of 8 KiB signed by the vault's writer key (a signer of every dataset).
    fn stream(&mut self) {
        let keyring = self.keyring();
        let keys = keyring.dataset_at(DS, 0).unwrap();
        let signer = keyring.signer().unwrap();
        let spec = self.spec(1, self.end, self.end + 8192);
        let (id, _) = wal::put(self.site(), &keys, &signer, &spec, &[7u8; 8192]).unwrap();
        self.prev = Some(id);
        self.end += 8192;
    }

    /// A piece sealed with the dataset's keys and signed by `key`, named as `timeline`
    /// `start..end`; its path.
    fn sealed_by(
        &self,
        key: &ed25519_dalek::SigningKey,
        timeline: u32,
        start: u64,
        end: u64,
    ) -> String {
        let keyring = self.keyring();
        let keys = keyring.dataset_at(DS, 0).unwrap();
        let spec = self.spec(timeline, start, end);
        let payload = vec![9u8; (end - start) as usize];
        wal::put(self.site(), &keys, key, &spec, &payload)
            .unwrap()
            .1
    }

    fn newest(&self) -> Option<(u32, Lsn)> {
        status::site_wal("vault", &self.vault, DS)
            .unwrap()
            .map(|w| (w.timeline, w.durable))
    }
}

/// A junk object's path: `timeline`, `start..end`, and `id`.
fn junk_path(timeline: u32, start: u64, end: u64, id: &ObjectId) -> String {
    format!("wal/{DS}/{timeline:08x}/p/{start:016x}-{end:016x}-{id}")
}

#[test]
fn the_wal_end_is_the_newest_checked_object_never_a_name() {
    let mut w = World::new();
    w.stream();
    w.stream();
    let real = (1, Lsn(w.end));
    assert_eq!(w.newest(), Some(real));
    let ahead = w.end + 100 * SEG;

    // Junk bytes whose name carries their true hash (the hash checks, the header does not
    // parse), named far ahead.
    let junk = b"not a log object".to_vec();
    let id = ObjectId::of(&junk);
    w.site()
        .put(&junk_path(1, ahead, ahead + SEG, &id), &junk)
        .unwrap();
    // Bytes that do not hash to the id in their name.
    let other = ObjectId::of(b"something else");
    w.site()
        .put(&junk_path(1, ahead, ahead + 2 * SEG, &other), &junk)
        .unwrap();
    // A real object moved to a later name (the header does not match it).
    let listing = wal::list(w.site(), DS).unwrap();
    let real_obj = listing.newest().unwrap();
    let bytes = w.site().get(&real_obj.path).unwrap();
    w.site()
        .put(
            &junk_path(1, ahead, ahead + 3 * SEG, &real_obj.name.id),
            &bytes,
        )
        .unwrap();
    // Sealed with the dataset's keys (a thief holding its reader secret) but signed by a key
    // that is no signer of the dataset, on a later timeline and far ahead.
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[13; 32]);
    w.sealed_by(&foreign, 5, ahead, ahead + 8192);
    w.sealed_by(&foreign, 1, ahead + SEG, ahead + SEG + 8192);

    // Every name says more than the real end; none of them is taken.
    let by_name = wal::list(w.site(), DS)
        .unwrap()
        .newest()
        .unwrap()
        .name
        .clone();
    assert!(
        by_name.timeline == 5 && by_name.end > real.1 .0,
        "{by_name:?}"
    );
    assert_eq!(w.newest(), Some(real));
    let st = status::wal_status(&[("vault".into(), w.vault.site().clone())], DS, None);
    assert_eq!(st.sites.len(), 1, "{st:?}");
    assert_eq!((st.sites[0].timeline, st.sites[0].durable), real);
    assert!(st.sites[0].captured_at_ns > 0);

    // Asked again and again (the node, every second): still the real end; new WAL is taken.
    let mut checked = CheckedWal::new();
    assert_eq!(look(&mut checked, &w), Some(real));
    assert_eq!(look(&mut checked, &w), Some(real));
    w.stream();
    assert_eq!(look(&mut checked, &w), Some((1, Lsn(w.end))));
}

/// The node's look: the newest checked WAL's timeline and end.
fn look(c: &mut CheckedWal, w: &World) -> Option<(u32, Lsn)> {
    c.newest("vault", &w.vault, DS)
        .unwrap()
        .map(|s| (s.timeline, s.durable))
}

#[test]
fn wal_of_a_signer_added_later_is_taken_once_the_ledger_adds_it() {
    let mut w = World::new();
    w.stream();
    let before = (1, Lsn(w.end));
    let mut checked = CheckedWal::new();
    assert_eq!(look(&mut checked, &w), Some(before));
    // A key not (yet) a signer streams: noise.
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let end = w.end + 8192;
    w.sealed_by(&key, 1, w.end, end);
    assert_eq!(look(&mut checked, &w), Some(before));
    assert_eq!(look(&mut checked, &w), Some(before));
    // The root adds it with the right to stream WAL: its WAL counts from the next look.
    let head = w.vault.history(DS).unwrap().last().cloned();
    ledger::append(
        w.site(),
        &w.root.root_signing_key(),
        DS,
        head.as_ref(),
        Event::SignerAdded {
            key: key.verifying_key().to_bytes(),
            role: "embassy".into(),
            rights: Right::sealing(false),
        },
    )
    .unwrap();
    assert_eq!(look(&mut checked, &w), Some((1, Lsn(end))));
    assert_eq!(w.newest(), Some((1, Lsn(end))));
}
