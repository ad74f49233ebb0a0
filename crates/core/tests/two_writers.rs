//! Two writers appending to one dataset at once (issue 19's crash campaign finding "two writers
//! at once"). A host's ledger lock makes the writers of one host with one state folder take
//! turns; writers it does not reach (another host, a CLI run given another state folder or the
//! sites in another order) are kept apart only at the sites: each lists the sequence number, puts
//! its entry, and lists again. The interleaving attacked: writer Y lists entry 2's place (free),
//! writer X then appends entry 2 whole (lists, puts, lists: alone, acknowledged), and Y puts its
//! own entry 2 and lists again (X's is there: Y fails). Before, Y's entry stayed: two entries of
//! one signer at sequence number 2, a fork no rule decides, so a fresh reader's history ended at
//! entry 1 and X's acknowledged version was gone from it (and nothing could be appended).

use std::sync::{Arc, Mutex};

use embassy_core::format::config::VaultConfig;
use embassy_core::format::layout;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::history::ledger::{self, Event, Record};
use embassy_core::history::{self};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_testkit::memory::MemorySite;

const DS: &str = "registry";

fn version(n: u8) -> Event {
    Event::VersionAdded {
        wal_start: None,
        manifest: ObjectId::of(&[n]),
        kind: VersionKind::Stream,
        captured_at_ns: i64::from(n),
        stats: VersionStats::default(),
    }
}

type Meanwhile = Box<dyn FnOnce() + Send>;

/// The shared vault as writer Y reaches it (under its own location, so its host lock is not
/// X's): the first listing of `place` is answered as it stood, and `meanwhile` (the other
/// writer) runs before the answer arrives.
struct Racing {
    inner: Arc<MemorySite>,
    place: String,
    meanwhile: Mutex<Option<Meanwhile>>,
}

impl std::fmt::Debug for Racing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Racing")
    }
}

impl Site for Racing {
    fn location(&self) -> &str {
        "memory:the-same-vault-from-another-writer"
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.inner.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.inner.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        let listed = self.inner.list(prefix)?;
        if prefix == self.place {
            let meanwhile = self.meanwhile.lock().unwrap().take();
            if let Some(other_writer) = meanwhile {
                other_writer();
            }
        }
        Ok(listed)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.inner.delete(path)
    }
}

#[test]
fn a_writer_that_lost_a_race_for_a_sequence_number_leaves_no_fork_behind() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let config = VaultConfig::new(&secret);
    let site = Arc::new(MemorySite::named("memory:vault"));
    config.create(site.as_ref(), &secret).unwrap();
    let key = secret.writer_signing_key(0);
    let first = ledger::append(site.as_ref(), &key, DS, None, version(1)).unwrap();

    let acknowledged: Arc<Mutex<Option<Record>>> = Arc::new(Mutex::new(None));
    let x = {
        let (site, key, first, acknowledged) = (
            site.clone(),
            key.clone(),
            first.clone(),
            acknowledged.clone(),
        );
        Box::new(move || {
            let r = ledger::append(site.as_ref(), &key, DS, Some(&first), version(2));
            *acknowledged.lock().unwrap() = Some(r.expect("writer X appends alone"));
        }) as Meanwhile
    };
    let y_view = Racing {
        inner: site.clone(),
        place: format!("{}{:016}-", layout::ledger_prefix(DS), 2),
        meanwhile: Mutex::new(Some(x)),
    };
    let y = ledger::append(&y_view, &key, DS, Some(&first), version(3));
    let x = acknowledged.lock().unwrap().clone().expect("writer X ran");
    assert!(y.is_err(), "writer Y saw X's entry after its put: {y:?}");

    let place = format!("{}{:016}-", layout::ledger_prefix(DS), 2);
    let held: Vec<String> = site
        .list(&place)
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(
        held,
        vec![layout::ledger_entry(DS, 2, &x.id)],
        "two entries at sequence number 2 ({y:?})"
    );
    // A fresh reader (no remembered head, no checkpoint) sees X's acknowledged version.
    let h = history::load(site.as_ref(), &config, DS, None).unwrap();
    assert!(h.conflict.is_none(), "{:?}", h.problems(DS));
    assert_eq!(h.records.last().map(|r| r.id), Some(x.id));
    // And the next writer appends after it.
    ledger::append(site.as_ref(), &key, DS, Some(&x), version(4)).unwrap();
}
