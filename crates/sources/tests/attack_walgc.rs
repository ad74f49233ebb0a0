//! Attacks on garbage collection's bookkeeping (issue 12, attack 9), played against real
//! local-folder vaults and real backups: condemnation records and session markers are signed;
//! a record counts from the later of its signed time and when this collector first saw it; one
//! site's record deletes only at that site; unsigned or foreign-signed markers protect nothing,
//! while an honest live session still does.

use std::collections::HashSet;
use std::sync::Arc;

use embassy_core::engine::gc::{self, Condemnation, GcOptions, SessionMarker, SigningKey};
use embassy_core::engine::prune;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::config::{now_unix_nanos, VaultConfig};
use embassy_core::history::ledger::{self, Event};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::{LocalSite, ReplicatedSite};

const HOUR_NS: i64 = 3_600 * 1_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

struct World {
    dir: tempfile::TempDir,
    vault: Vault,
    root: RootSecret,
    /// The member sites (one, or two behind a replicated site).
    sites: Vec<Arc<dyn Site>>,
}

impl World {
    fn new(sites: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Arc<dyn Site>> = (0..sites)
            .map(|i| {
                Arc::new(LocalSite::new(dir.path().join(format!("site-{i}"))).unwrap())
                    as Arc<dyn Site>
            })
            .collect();
        let site: Arc<dyn Site> = if sites == 1 {
            members[0].clone()
        } else {
            Arc::new(ReplicatedSite::new(members.clone(), sites).unwrap())
        };
        let root = RootSecret::generate();
        VaultConfig::new(&root)
            .create(site.as_ref(), &root)
            .unwrap();
        let vault = Vault::open(site).unwrap();
        Self {
            dir,
            vault,
            root,
            sites: members,
        }
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    /// The honest collector: the root-derived writer key, state in the test's folder.
    fn collector(&self) -> gc::Collector {
        gc::Collector::new(
            self.root.writer_signing_key(0),
            &self.dir.path().join("gc-state"),
            &self.vault.config().vault_id,
        )
    }

    fn gc(&self, grace_secs: u64, dry_run: bool, now_ns: i64) -> gc::GcReport {
        let options = GcOptions {
            dry_run,
            ..GcOptions::with_grace(grace_secs)
        };
        gc::collect_garbage(&self.vault, &self.collector(), &options, now_ns).unwrap()
    }

    /// Two versions of `dataset`, then retention keeps the last: the first version's own
    /// objects are unreferenced. Returns them (as a dry run would condemn them).
    fn orphans(&self, dataset: &str) -> Vec<String> {
        for i in 0..2u8 {
            let bytes: Vec<u8> = (0..300_000u32)
                .map(|n| (n.wrapping_mul(2654435761) >> (8 + i)) as u8 ^ i)
                .collect();
            embassy_sources::stream::backup_reader(
                &self.vault,
                &self.keyring(),
                dataset,
                std::io::Cursor::new(bytes),
                "stdin",
                &Silent,
            )
            .unwrap();
        }
        prune::apply_retention(
            &self.vault,
            &self.keyring(),
            dataset,
            &RetentionPolicy {
                keep_last: 1,
                ..Default::default()
            },
            now_unix_nanos(),
        )
        .unwrap();
        // What is unreferenced now: a dry run by a throw-away collector (its own state).
        let scratch = tempfile::tempdir().unwrap();
        let probe = gc::Collector::new(
            self.root.writer_signing_key(0),
            scratch.path(),
            &self.vault.config().vault_id,
        );
        let options = GcOptions {
            dry_run: true,
            ..GcOptions::with_grace(1)
        };
        let r = gc::collect_garbage(&self.vault, &probe, &options, now_unix_nanos()).unwrap();
        let mine: Vec<String> = r
            .condemned
            .into_iter()
            .filter(|p| p.contains(&format!("/{dataset}/")))
            .collect();
        assert!(
            mine.iter().any(|p| p.starts_with("packs/")),
            "the first version left packs to collect: {mine:?}"
        );
        mine
    }

    fn exists_at(&self, site: usize, path: &str) -> bool {
        self.sites[site].get(path).is_ok()
    }
}

/// A condemnation record of `objects` dated `time_ns`, signed by `key`; returns its bytes.
fn signed_record(dataset: &str, time_ns: i64, objects: &[String], key: &SigningKey) -> Vec<u8> {
    gc::encode_record(
        &Condemnation {
            dataset: dataset.into(),
            time_ns,
            objects: objects.to_vec(),
            signer: key.verifying_key().to_bytes(),
        },
        key,
    )
}

/// Stores `bytes` as a record of `dataset` at `site`, named by `time_ns` and their hash.
fn put_record(site: &dyn Site, dataset: &str, time_ns: i64, bytes: &[u8]) -> String {
    let path = gc::record_path(dataset, time_ns, &ObjectId::of(bytes));
    site.put(&path, bytes).unwrap();
    path
}

/// The unsigned version-1 form of a record: magic "EMBCOND1", length, CBOR, no signature.
fn unsigned_v1(signed: &[u8]) -> Vec<u8> {
    let len = u32::from_le_bytes(signed[8..12].try_into().unwrap()) as usize;
    let mut out = b"EMBCOND1".to_vec();
    out.extend_from_slice(&signed[8..12 + len]);
    out
}

fn none_deleted(report: &gc::GcReport, objects: &[String]) {
    let deleted: HashSet<&String> = report.deleted.iter().collect();
    assert!(
        objects.iter().all(|o| !deleted.contains(o)),
        "deleted too early: {report:?}"
    );
}

#[test]
fn backdated_condemnation_record_waits_full_grace() {
    const GRACE: u64 = 3_600;
    // 1. A record signed by a key allowed to delete (a writer key of config.signers), but dated
    //    ten days back: it counts from when this collector first saw it, not from its date.
    let w = World::new(1);
    let orphans = w.orphans("identity");
    let now = now_unix_nanos();
    let old = now - 10 * DAY_NS;
    let bytes = signed_record("identity", old, &orphans, &w.root.writer_signing_key(0));
    put_record(w.sites[0].as_ref(), "identity", old, &bytes);
    let first = w.gc(GRACE, false, now);
    none_deleted(&first, &orphans);
    assert!(first.waiting > 0, "{first:?}");
    assert!(orphans.iter().all(|o| w.exists_at(0, o)));
    // Still within the grace period after the first sighting: kept.
    none_deleted(&w.gc(GRACE, false, now + HOUR_NS / 2), &orphans);
    // A whole grace period after it was first seen: the honest deleter's record takes effect.
    let later = w.gc(GRACE, false, now + HOUR_NS + 60 * 1_000_000_000);
    assert!(
        later.deleted.iter().any(|p| p.starts_with("packs/")),
        "{later:?}"
    );

    // 1b. Session protection: a backup session that started before the back-dated record was
    //     first seen (but long after its claimed date) still holds its objects past the grace.
    let w = World::new(1);
    let orphans = w.orphans("registry");
    let head = w
        .vault
        .history("registry")
        .unwrap()
        .last()
        .unwrap()
        .entry
        .seq;
    gc::begin_session(
        w.sites[0].as_ref(),
        "registry",
        head,
        "db-host",
        &w.root.writer_signing_key(0),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let now = now_unix_nanos();
    let old = now - 10 * DAY_NS;
    let bytes = signed_record("registry", old, &orphans, &w.root.writer_signing_key(0));
    put_record(w.sites[0].as_ref(), "registry", old, &bytes);
    none_deleted(&w.gc(GRACE, false, now), &orphans);
    let later = w.gc(GRACE, false, now + 2 * HOUR_NS);
    none_deleted(&later, &orphans);
    assert!(
        later.deferred.iter().any(|d| d.contains("gc/registry/")),
        "the live session defers the back-dated record: {later:?}"
    );

    // 2. A record signed by an active signer of the dataset that may not delete (a sealing
    //    credential's key, added by the root), and 3. an unsigned version-1 record, both dated
    //    ten days back. Seen first by a dry run; a real run two grace periods later must not
    //    delete on their word: only its own new record condemns the objects, from now.
    for variant in ["sealing credential", "unsigned"] {
        let w = World::new(1);
        let orphans = w.orphans("cadastre");
        let sealing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let history = w.vault.history("cadastre").unwrap();
        ledger::append(
            w.vault.site().as_ref(),
            &w.root.root_signing_key(),
            "cadastre",
            history.last(),
            Event::SignerAdded {
                key: sealing.verifying_key().to_bytes(),
                role: "db-host-1".into(),
                rights: embassy_core::history::rights::Right::sealing(false),
            },
        )
        .unwrap();
        assert!(w
            .vault
            .active_signers(&w.vault.history("cadastre").unwrap())
            .contains(&sealing.verifying_key().to_bytes()));
        let now = now_unix_nanos();
        let old = now - 10 * DAY_NS;
        let signed = signed_record("cadastre", old, &orphans, &sealing);
        let bytes = if variant == "unsigned" {
            unsigned_v1(&signed)
        } else {
            signed
        };
        let path = put_record(w.sites[0].as_ref(), "cadastre", old, &bytes);
        let seen = w.gc(GRACE, true, now);
        let run = w.gc(GRACE, false, now + 2 * HOUR_NS);
        none_deleted(&run, &orphans);
        assert!(
            seen.problems.iter().any(|p| p.message.contains(&path)),
            "{variant}: the forged record is reported: {seen:?}"
        );
        assert!(
            orphans.iter().all(|o| w.exists_at(0, o)),
            "{variant}: {run:?}"
        );
        assert!(
            !run.condemned.is_empty(),
            "{variant}: the collector condemns them itself, from now: {run:?}"
        );
        // The forged record itself is never deleted by collection (it is not its own).
        assert!(w.exists_at(0, &path));
    }
}

#[test]
fn forged_record_at_one_site_cannot_delete_at_others() {
    const GRACE: u64 = 3_600;
    let w = World::new(2);
    let orphans = w.orphans("population");
    for o in &orphans {
        assert!(w.exists_at(0, o) && w.exists_at(1, o), "{o} at both sites");
    }
    // Site 0 holds a valid, back-dated record that site 1 never received (a site that kept
    // it, or withheld it from the others): listings are merged, deletes used to go everywhere.
    let now = now_unix_nanos();
    let old = now - 10 * DAY_NS;
    let bytes = signed_record("population", old, &orphans, &w.root.writer_signing_key(0));
    let path = put_record(w.sites[0].as_ref(), "population", old, &bytes);
    assert!(!w.exists_at(1, &path));
    let first = w.gc(GRACE, false, now);
    none_deleted(&first, &orphans);
    // Past the grace period from its first sighting: site 0 may act on its own record, site 1
    // holds none, so its copies stay.
    let second = w.gc(GRACE, false, now + 2 * HOUR_NS);
    assert!(
        second.deleted.iter().any(|p| p.starts_with("packs/")),
        "{second:?}"
    );
    for o in &orphans {
        assert!(!w.exists_at(0, o), "{o} deleted at site 0");
        assert!(
            w.exists_at(1, o),
            "{o} deleted at site 1 on site 0's record: {second:?}"
        );
    }
    // The live version is whole at both sites.
    for site in &w.sites {
        let alone = Vault::open(site.clone()).unwrap();
        let report = embassy_core::engine::verify::verify(&alone, None, &Silent).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}

#[test]
fn forged_session_markers_are_ignored_and_an_honest_live_session_protects() {
    let w = World::new(1);
    let site = w.sites[0].as_ref();
    // An honest backup session of "identity" (its own key, an active signer) that started
    // before the objects were condemned and has not recorded its version: it protects them.
    let orphans = w.orphans("identity");
    let head = w
        .vault
        .history("identity")
        .unwrap()
        .last()
        .unwrap()
        .entry
        .seq;
    gc::begin_session(
        site,
        "identity",
        head,
        "db-host",
        &w.root.writer_signing_key(0),
    )
    .unwrap();
    // Markers for "cadastre" that no active signer made: unsigned (version 1) and signed by a
    // foreign key, started long ago from the current head (live, if they counted).
    let forged = w.orphans("cadastre");
    let head = w
        .vault
        .history("cadastre")
        .unwrap()
        .last()
        .unwrap()
        .entry
        .seq;
    let foreign = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let started = now_unix_nanos() - HOUR_NS;
    let marker = SessionMarker {
        dataset: "cadastre".into(),
        started_at_ns: started,
        base_seq: head,
        host: "intruder".into(),
        signer: foreign.verifying_key().to_bytes(),
    };
    let signed = gc::encode_marker(&marker, &foreign);
    let len = u32::from_le_bytes(signed[8..12].try_into().unwrap()) as usize;
    let mut unsigned = b"EMBSESS1".to_vec();
    unsigned.extend_from_slice(&signed[8..12 + len]);
    let mut marker_paths = Vec::new();
    for bytes in [&signed, &unsigned] {
        let path = gc::marker_path("cadastre", started, &ObjectId::of(bytes));
        site.put(&path, bytes).unwrap();
        marker_paths.push(path);
    }
    let first = w.gc(1, false, now_unix_nanos());
    assert!(orphans.iter().all(|o| first.condemned.contains(o)));
    assert!(forged.iter().all(|o| first.condemned.contains(o)));
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let second = w.gc(1, false, now_unix_nanos());
    // The honest session defers "identity".
    none_deleted(&second, &orphans);
    assert!(
        second.deferred.iter().any(|d| d.contains("gc/identity/")),
        "{second:?}"
    );
    assert!(orphans.iter().all(|o| w.exists_at(0, o)));
    // The forged markers protect nothing: "cadastre" is collected, and they are reported.
    assert!(
        !second.deferred.iter().any(|d| d.contains("gc/cadastre/")),
        "a forged marker deferred collection: {second:?}"
    );
    assert!(
        forged.iter().all(|o| second.deleted.contains(o)),
        "{second:?}"
    );
    for p in &marker_paths {
        assert!(
            second
                .problems
                .iter()
                .any(|x| x.message.contains(p.as_str())),
            "{p} reported: {second:?}"
        );
    }
}
