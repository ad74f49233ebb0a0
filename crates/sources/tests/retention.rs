//! Retention, prune, garbage collection and k-of-n approvals (issue 8), against real local-folder
//! sites and real backups: deletions are ledger entries every verifier checks without keys;
//! garbage collection is two-phase and safe while a backup runs; deletions outside the policy
//! need approvals by distinct pinned approvers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::prune::{self, PruneReport};
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify;
use embassy_core::format::config::{now_unix_nanos, VaultConfig};
use embassy_core::history::approval::{self, Approval};
use embassy_core::history::ledger::{self, Event};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_core::Error;
use embassy_sites::LocalSite;
use embassy_sources::files;

const DAY: u64 = 86_400;

/// Deterministic file content for iteration `i` of a dataset: some files shared by every
/// iteration (dedup across versions), some changed each time.
fn write_tree(dir: &Path, i: usize) -> BTreeMap<String, Vec<u8>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut files = BTreeMap::new();
    for f in 0..4 {
        files.insert(
            format!("stable-{f}.txt"),
            format!("stable record {f}\n").repeat(3000 + f).into_bytes(),
        );
    }
    for f in 0..3 {
        let mut bytes = vec![0u8; 1_500_000 + f * 1000];
        // File 0 repeats every 4 iterations and file 1 every 3: a backup then reuses chunks
        // that only versions already deleted by retention reference (the dangerous case for
        // garbage collection); file 2 is new every time.
        let generation = match f {
            0 => i % 4,
            1 => i % 3,
            _ => i,
        };
        let mut s = (generation as u64 + 1) * 7919 + f as u64;
        for b in bytes.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (s >> 56) as u8;
        }
        files.insert(format!("sub/changing-{f}.bin"), bytes);
    }
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    files
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

struct Setup {
    dir: tempfile::TempDir,
    vault: Vault,
    root: RootSecret,
}

impl Setup {
    /// Applies `keep_last(n)` to `dataset` now, with the vault's keyring.
    fn keep_last_now(&self, dataset: &str, n: u32) -> Result<PruneReport, Error> {
        prune::apply_retention(
            &self.vault,
            &self.keyring(),
            dataset,
            &keep_last(n),
            now_unix_nanos(),
        )
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    /// The collector of this vault: signs with the root-derived writer key, remembers first
    /// sightings of records in the test's folder.
    fn collector(&self) -> gc::Collector {
        gc::Collector::new(
            self.keyring().signer().unwrap(),
            &self.dir.path().join("gc-state"),
            &self.vault.config().vault_id,
        )
    }

    fn backup(&self, dataset: &str, i: usize) -> (Version, BTreeMap<String, Vec<u8>>) {
        let src = self.dir.path().join(format!("src-{dataset}"));
        let files = write_tree(&src, i);
        let b = files::backup(&self.vault, &self.keyring(), dataset, &[src], &Silent).unwrap();
        (b.version, files)
    }

    fn restore(&self, version: &Version) -> BTreeMap<String, Vec<u8>> {
        let target = self.dir.path().join(format!(
            "restore-{}-{}-{}",
            version.dataset,
            version.seq,
            now_unix_nanos()
        ));
        let reader =
            VersionReader::open_with(self.vault.site().clone(), &self.keyring(), version).unwrap();
        files::restore(&reader, &target, &Default::default(), &Silent).unwrap();
        read_tree(&target)
    }
}

fn setup_with(configure: impl FnOnce(&mut VaultConfig)) -> Setup {
    setup_on(configure, |s| s)
}

fn setup_on(
    configure: impl FnOnce(&mut VaultConfig),
    wrap: impl FnOnce(Arc<dyn Site>) -> Arc<dyn Site>,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = wrap(Arc::new(LocalSite::new(dir.path().join("site")).unwrap()));
    let root = RootSecret::generate();
    let mut config = VaultConfig::new(&root);
    configure(&mut config);
    config.create(site.as_ref(), &root).unwrap();
    let vault = Vault::open(site).unwrap();
    Setup { dir, vault, root }
}

/// Collection with a one-second grace period (the shortest allowed), run twice a second apart.
fn fast_gc() -> GcOptions {
    GcOptions {
        grace_secs: 1,
        clock_skew_secs: 1,
        ..Default::default()
    }
}

/// `now` for a collection: real time, or 1.1 s later to let records pass their grace.
fn after_grace() -> i64 {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    now_unix_nanos()
}

fn keep_last(n: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: n,
        ..Default::default()
    }
}

fn seqs(versions: &[Version]) -> Vec<u64> {
    versions.iter().map(|v| v.seq).collect()
}

fn listed(site: &dyn Site, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = site
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    v.sort();
    v
}

#[test]
fn prune_records_a_policy_deletion_every_reader_honours_and_gc_removes_only_garbage() {
    let s = setup_with(|_| {});
    let mut contents = BTreeMap::new();
    for i in 0..4 {
        let (v, files) = s.backup("land", i);
        contents.insert(v.seq, files);
    }
    assert_eq!(seqs(&s.vault.versions("land").unwrap()), vec![1, 2, 3, 4]);

    // A dry run plans without writing.
    let plan = prune::plan_retention(&s.vault, "land", &keep_last(2), now_unix_nanos()).unwrap();
    assert_eq!(plan.deleted, vec![1, 2]);
    let why: Vec<String> = plan
        .decisions
        .iter()
        .map(|d| format!("{}:{}", d.seq, d.reasons.len()))
        .collect();
    assert_eq!(
        why,
        vec!["4:2", "3:1", "2:0", "1:0"],
        "newest+last, last, deleted"
    );
    assert_eq!(s.vault.history("land").unwrap().len(), 4);

    let report: PruneReport = s.keep_last_now("land", 2).unwrap();
    assert_eq!(report.deleted, vec![1, 2]);
    let (seq, _) = report.entry.unwrap();
    assert_eq!(seq, 5);
    // The entry names the policy; versions, find and restore treat the deleted ones as gone.
    let history = s.vault.history("land").unwrap();
    match &history[4].entry.event {
        Event::VersionsDeleted {
            seqs,
            policy,
            as_of_ns,
            ..
        } => {
            assert_eq!(seqs, &vec![1, 2]);
            assert_eq!(policy.unwrap().keep_last, 2);
            assert!(as_of_ns.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(seqs(&s.vault.versions("land").unwrap()), vec![3, 4]);
    let err = s.vault.find_version("land", Some("1")).unwrap_err();
    assert!(matches!(err, Error::NoSuchVersion { .. }), "{err}");
    assert!(
        err.to_string().contains("was deleted by ledger entry"),
        "{err}"
    );
    // Idempotent: a second run deletes nothing.
    let again = s.keep_last_now("land", 2).unwrap();
    assert!(again.deleted.is_empty() && again.entry.is_none());

    // GC, phase 1: condemns the deleted versions' manifests and the packs only they used.
    let packs_before = listed(s.vault.site().as_ref(), "packs/land/");
    let first =
        gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap();
    assert!(first.deleted.is_empty(), "{first:?}");
    assert!(
        first
            .condemned
            .iter()
            .filter(|p| p.starts_with("manifests/"))
            .count()
            == 2,
        "{:?}",
        first.condemned
    );
    assert!(first.condemned.iter().any(|p| p.starts_with("packs/land/")));
    assert_eq!(listed(s.vault.site().as_ref(), "packs/land/"), packs_before);
    // Phase 2: deletes them.
    let second = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    let mut deleted = second.deleted.clone();
    deleted.sort();
    let mut condemned = first.condemned.clone();
    condemned.sort();
    assert_eq!(deleted, condemned, "{second:?}");
    assert!(second.deleted_bytes > 0);
    assert!(second.condemned.is_empty(), "{second:?}");
    // The remaining versions restore byte-identically; the vault verifies with and without keys
    // and holds nothing unreferenced.
    for v in s.vault.versions("land").unwrap() {
        assert_eq!(s.restore(&v), contents[&v.seq], "version {}", v.seq);
    }
    let report = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.unreferenced.is_empty(), "{:?}", report.unreferenced);
    let deep = verify::verify(&s.vault, Some(&s.keyring()), &Silent).unwrap();
    assert!(deep.is_ok(), "{:?}", deep.problems);

    // Keyless verify still catches a site that deletes an object of a live version...
    let live_pack = listed(s.vault.site().as_ref(), "packs/land/")[0].clone();
    let bytes = s.vault.site().get(&live_pack).unwrap();
    s.vault.site().delete(&live_pack).unwrap();
    let report = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&live_pack) && p.contains("missing")),
        "{:?}",
        report.problems
    );
    s.vault.site().put(&live_pack, &bytes).unwrap();
    // ...or drops the deletion's ledger entry (the versions it deleted are gone: a gap).
    let entry = listed(s.vault.site().as_ref(), "ledger/land/")[4].clone();
    s.vault.site().delete(&entry).unwrap();
    s.backup("land", 9); // a later entry makes the dropped one a gap
    let err = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(
        err.problems.iter().any(|p| p.contains("missing")),
        "{:?}",
        err.problems
    );
}

#[test]
fn retention_never_deletes_younger_than_the_pinned_legal_minimum() {
    let s = setup_with(|c| c.min_age_secs = 30 * DAY);
    for i in 0..3 {
        s.backup("tax", i);
    }
    // The policy says keep one; the vault's legal minimum age says all are too young.
    let report = s.keep_last_now("tax", 1).unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(report.decisions.iter().all(|d| d.keep()));
    assert_eq!(report.policy.unwrap().min_age_secs, 30 * DAY);
    // A signer that writes the deletion anyway, claiming a policy without the minimum age, is
    // refused by every verifier: a no-op that holds its sequence number; the versions stay.
    let history = s.vault.history_full("tax").unwrap();
    ledger::append(
        s.vault.site().as_ref(),
        &s.keyring().signer().unwrap(),
        "tax",
        history.records.last(),
        Event::VersionsDeleted {
            seqs: vec![1, 2],
            reason: "retention".into(),
            policy: Some(keep_last(1)),
            as_of_ns: Some(now_unix_nanos()),
            approvals: Vec::new(),
        },
    )
    .unwrap();
    let full = s.vault.history_full("tax").unwrap();
    let refused: Vec<&String> = full
        .records
        .iter()
        .filter_map(|r| r.refused.as_ref())
        .collect();
    assert_eq!(refused.len(), 1, "{full:?}");
    assert!(
        refused[0].contains("outside the retention policy"),
        "{}",
        refused[0]
    );
    assert_eq!(seqs(&s.vault.versions("tax").unwrap()), vec![1, 2, 3]);
    // A policy evaluated in the future (to age versions early) is refused before writing.
    let err = prune::apply_retention(
        &s.vault,
        &s.keyring(),
        "tax",
        &keep_last(1),
        now_unix_nanos() + 40 * DAY as i64 * 1_000_000_000,
    )
    .unwrap_err();
    assert!(err.to_string().contains("in the future"), "{err}");
}

fn approver(seed: u8) -> approval::SigningKey {
    approval::approver_signing_key(&RootSecret::from_bytes(&[seed; 32]))
}

fn hex_pub(key: &approval::SigningKey) -> String {
    key.verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn forget_needs_k_distinct_valid_approvals_for_exactly_that_version() {
    let (a, b, c, foreign) = (approver(1), approver(2), approver(3), approver(9));
    let s = setup_with(|cfg| {
        cfg.approvers = vec![hex_pub(&a), hex_pub(&b), hex_pub(&c)];
        cfg.approvals_required = 2;
    });
    let mut contents = BTreeMap::new();
    for i in 0..3 {
        let (v, files) = s.backup("court", i);
        contents.insert(v.seq, files);
    }
    let v1 = s.vault.find_version("court", Some("1")).unwrap();
    let v2 = s.vault.find_version("court", Some("2")).unwrap();
    let forget = |dry: bool| {
        prune::forget(
            &s.vault,
            Some(&s.keyring()),
            "court",
            &[1],
            "court order 17",
            dry,
        )
    };

    // No approvals.
    let err = forget(false).unwrap_err();
    match &err {
        Error::NotApproved {
            have,
            need,
            versions,
            ..
        } => {
            assert_eq!((*have, *need, versions.clone()), (0, 2, vec![1]));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("missing 2"), "{err}");

    // k-1 approvals: refused, naming how many are missing.
    embassy_core::engine::approve::approve(&s.vault, &a, &v1, "court order 17").unwrap();
    // The same approver again, an approval of another version, a foreign approver, and a
    // forgery in b's name: none of them counts.
    embassy_core::engine::approve::approve(&s.vault, &a, &v1, "again").unwrap();
    embassy_core::engine::approve::approve(&s.vault, &b, &v2, "other version").unwrap();
    let err =
        embassy_core::engine::approve::approve(&s.vault, &foreign, &v1, "not pinned").unwrap_err();
    assert!(matches!(err, Error::WrongKey(_)), "{err}");
    let store = |appr: &Approval, key: &approval::SigningKey| {
        let bytes = approval::encode(appr, key);
        let id = embassy_core::id::ObjectId::of(&bytes);
        s.vault
            .site()
            .put(&approval::path("court", &id), &bytes)
            .unwrap();
    };
    let mut foreign_appr = Approval {
        vault_id: s.vault.config().vault_id.clone(),
        dataset: "court".into(),
        seq: 1,
        entry: v1.ledger_id,
        reason: "foreign".into(),
        approver: foreign.verifying_key().to_bytes(),
        time_ns: now_unix_nanos(),
        min_age_secs: None,
        promote_host: None,
        promote_key: None,
    };
    store(&foreign_appr, &foreign);
    foreign_appr.approver = b.verifying_key().to_bytes(); // claims b, signed by foreign
    store(&foreign_appr, &foreign);
    let err = forget(false).unwrap_err();
    match &err {
        Error::NotApproved { have, need, .. } => assert_eq!((*have, *need), (1, 2), "{err}"),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("missing 1"), "{err}");
    assert_eq!(seqs(&s.vault.versions("court").unwrap()), vec![1, 2, 3]);

    // The k-th approval: accepted.
    embassy_core::engine::approve::approve(&s.vault, &b, &v1, "court order 17").unwrap();
    assert!(
        forget(true).unwrap().entry.is_none(),
        "a dry run writes nothing"
    );
    let report = forget(false).unwrap();
    assert_eq!(report.deleted, vec![1]);
    assert_eq!(
        report.approvals.len(),
        3,
        "a twice, b: every approval of v1 by a pinned key"
    );
    assert_eq!(seqs(&s.vault.versions("court").unwrap()), vec![2, 3]);
    let ok = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(ok.is_ok(), "{:?}", ok.problems);

    // The approvals travel inside the entry: a site that deletes the approval objects changes
    // nothing any verifier accepts (issue 12, attack 4; it used to reject the deletion).
    let named = report.approvals[0];
    s.vault
        .site()
        .delete(&approval::path("court", &named))
        .unwrap();
    s.vault
        .site()
        .delete(&approval::path("court", &report.approvals[1]))
        .unwrap();
    let report = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(seqs(&s.vault.versions("court").unwrap()), vec![2, 3]);
}

#[test]
fn a_deletion_signed_without_approvals_is_rejected_and_changes_nothing() {
    let s = setup_with(|_| {});
    for i in 0..2 {
        s.backup("pension", i);
    }
    let err = prune::forget(
        &s.vault,
        Some(&s.keyring()),
        "pension",
        &[1],
        "why not",
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("pins no approvers"), "{err}");
    let history = s.vault.history_full("pension").unwrap();
    ledger::append(
        s.vault.site().as_ref(),
        &s.keyring().signer().unwrap(),
        "pension",
        history.records.last(),
        Event::VersionsDeleted {
            seqs: vec![1],
            reason: "ransom".into(),
            policy: None,
            as_of_ns: None,
            approvals: Vec::new(),
        },
    )
    .unwrap();
    assert_eq!(seqs(&s.vault.versions("pension").unwrap()), vec![1, 2]);
    // A refused deletion is a no-op that verify reports as such, not damage.
    let report = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(
        report.notes.iter().any(|n| n.contains("refused")),
        "{:?}",
        report.notes
    );
    // GC keeps everything of version 1.
    gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap();
    let second = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    assert!(second.deleted.is_empty(), "{second:?}");
    // The next backup continues after the refused entry (it holds seq 3); everything restores.
    s.backup("pension", 3);
    assert_eq!(seqs(&s.vault.versions("pension").unwrap()), vec![1, 2, 4]);
}

/// A site whose deletes are refused while `locked` is set, as an S3 bucket with Object Lock
/// retention refuses early deletes.
#[derive(Debug)]
struct Locked {
    inner: Arc<dyn Site>,
    locked: Arc<AtomicBool>,
}

impl Site for Locked {
    fn location(&self) -> &str {
        self.inner.location()
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
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        if self.locked.load(Ordering::SeqCst) && !path.starts_with("tmp/") {
            return Err(SiteError::Permanent {
                site: self.location().into(),
                operation: "delete",
                path: path.into(),
                message: "AccessDenied: object is WORM protected and cannot be overwritten or deleted (Object Lock retention)".into(),
            });
        }
        self.inner.delete(path)
    }
}

#[test]
fn object_lock_refusals_are_reported_and_retried_never_fatal() {
    let locked = Arc::new(AtomicBool::new(true));
    let flag = locked.clone();
    let s = setup_on(
        |_| {},
        move |inner| {
            Arc::new(Locked {
                inner,
                locked: flag,
            })
        },
    );
    for i in 0..3 {
        s.backup("gazette", i);
    }
    s.keep_last_now("gazette", 1).unwrap();
    let first =
        gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap();
    assert!(!first.condemned.is_empty());
    let second = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    assert!(second.deleted.is_empty());
    assert!(
        second.refused.len() >= first.condemned.len(),
        "{:?}",
        second.refused
    );
    assert!(second.refused.iter().all(|r| r.contains("Object Lock")));
    // Nothing was lost and nothing re-condemned twice; once the retention ends, the next run
    // deletes them.
    let ok = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(ok.is_ok(), "{:?}", ok.problems);
    locked.store(false, Ordering::SeqCst);
    let third = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    let mut a = third.deleted.clone();
    a.sort();
    let mut b = first.condemned.clone();
    b.sort();
    assert_eq!(a, b, "{third:?}");
    assert!(listed(s.vault.site().as_ref(), "gc/").is_empty());
}

#[test]
fn backups_run_while_prune_and_gc_run_and_every_kept_version_restores_byte_identically() {
    const BACKUPS: usize = 24;
    const MAX_BACKUPS: usize = 150;
    let s = Arc::new(setup_with(|_| {}));
    let done = Arc::new(AtomicBool::new(false));
    let made: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    // Objects deleted by collection while backups ran: backups go on (up to a bound) until
    // collection has deleted some, so the test never passes vacuously.
    let deleted_meanwhile = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let backups = {
        let (s, done, made, deleted_meanwhile) = (
            s.clone(),
            done.clone(),
            made.clone(),
            deleted_meanwhile.clone(),
        );
        std::thread::spawn(move || {
            let src: PathBuf = s.dir.path().join("src-concurrent");
            for i in 0..MAX_BACKUPS {
                if i >= BACKUPS && deleted_meanwhile.load(Ordering::SeqCst) > 0 {
                    break;
                }
                write_tree(&src, i);
                let b = files::backup(
                    &s.vault,
                    &s.keyring(),
                    "population",
                    std::slice::from_ref(&src),
                    &Silent,
                )
                .unwrap_or_else(|e| panic!("backup {i} failed while prune and gc ran: {e}"));
                made.lock().unwrap().insert(b.version.seq, i);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let options = fast_gc();
    let mut rounds = 0;
    let mut deleted = 0;
    let mut deferred = 0;
    while !done.load(Ordering::SeqCst) && !backups.is_finished() {
        if !s
            .vault
            .versions("population")
            .unwrap_or_default()
            .is_empty()
        {
            match s.keep_last_now("population", 2) {
                Ok(_) => {}
                // Losing a race to a backup is reported, never silent and never harmful.
                Err(e) if e.to_string().contains("writer") => {}
                Err(e) => panic!("prune failed: {e}"),
            }
        }
        let r = gc::collect_garbage(&s.vault, &s.collector(), &options, now_unix_nanos()).unwrap();
        deleted += r.deleted.len();
        deleted_meanwhile.fetch_add(r.deleted.len(), Ordering::SeqCst);
        deferred += r.deferred.len();
        rounds += 1;
        // At random moments: records come of age while backups that started after them run
        // (they must not use the condemned objects) or that started before (they hold them).
        std::thread::sleep(std::time::Duration::from_millis(
            rand::random::<u64>() % 300,
        ));
    }
    backups.join().unwrap();
    let deleted_while_backing_up = deleted;
    for _ in 0..3 {
        let r = gc::collect_garbage(&s.vault, &s.collector(), &options, after_grace()).unwrap();
        deleted += r.deleted.len();
    }
    eprintln!(
        "{rounds} prune+gc rounds during {} backups ({:.1} s): {deleted_while_backing_up} objects deleted meanwhile ({deleted} in all), {deferred} deferrals",
        made.lock().unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        rounds >= 3,
        "prune and gc must actually overlap the backups"
    );
    assert!(
        deleted_while_backing_up > 0,
        "gc must have deleted objects while backups ran, for the test to mean anything"
    );
    let made = made.lock().unwrap().clone();
    let live = s.vault.versions("population").unwrap();
    assert!(live.len() >= 2);
    assert_eq!(live.last().unwrap().seq, *made.keys().max().unwrap());
    for v in &live {
        let i = made[&v.seq];
        let expected = write_tree(&s.dir.path().join("expected"), i);
        assert_eq!(s.restore(v), expected, "version {} (backup {i})", v.seq);
    }
    let report = verify::verify(&s.vault, Some(&s.keyring()), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A source that runs `hook` (a garbage collection) when the backup first reads it: after the
/// session has started and loaded what is stored, before it stores or references anything.
struct HookedReader<F: FnMut()> {
    data: std::io::Cursor<Vec<u8>>,
    hook: Option<F>,
}

impl<F: FnMut()> std::io::Read for HookedReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(mut hook) = self.hook.take() {
            hook();
        }
        self.data.read(buf)
    }
}

fn stream_bytes(seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; 6 * 1024 * 1024];
    let mut s = seed;
    for b in out.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 56) as u8;
    }
    out
}

fn stream_backup(s: &Setup, data: Vec<u8>, hook: impl FnMut()) -> Version {
    embassy_sources::stream::backup_reader(
        &s.vault,
        &s.keyring(),
        "identity",
        HookedReader {
            data: std::io::Cursor::new(data),
            hook: Some(hook),
        },
        "stdin",
        &Silent,
    )
    .unwrap()
}

fn stream_restore(s: &Setup, v: &Version) -> Vec<u8> {
    let reader = VersionReader::open_with(s.vault.site().clone(), &s.keyring(), v).unwrap();
    let mut out = Vec::new();
    embassy_sources::stream::restore_to(&reader, &mut out, &Silent).unwrap();
    out
}

#[test]
fn a_backup_that_started_before_a_condemnation_keeps_what_it_reuses() {
    // Version 1 holds A; retention deletes it. A backup of A again starts, loads the stored
    // chunks (A's are not condemned yet) and will reuse them. Meanwhile collection condemns A's
    // objects and, past the grace period, would delete them: the session's marker defers that.
    let s = setup_with(|_| {});
    let a = stream_bytes(1);
    stream_backup(&s, a.clone(), || {});
    stream_backup(&s, stream_bytes(2), || {});
    s.keep_last_now("identity", 1).unwrap();
    let mut reports = Vec::new();
    let v = stream_backup(&s, a.clone(), || {
        reports.push(
            gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap(),
        );
        reports.push(
            gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap(),
        );
    });
    assert!(!reports[0].condemned.is_empty(), "{:?}", reports[0]);
    assert!(reports[1].deleted.is_empty(), "{:?}", reports[1]);
    assert_eq!(reports[1].deferred.len(), 1, "{:?}", reports[1]);
    assert!(
        v.stats.new_bytes_stored < 64 * 1024,
        "the session reused version 1's data chunks (only its tree is new): {:?}",
        v.stats
    );
    assert!(stream_restore(&s, &v) == a, "restores byte-identically");
    // Once the version is recorded, its objects are referenced again: rescued, not deleted.
    let after = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    assert!(!after.rescued.is_empty(), "{after:?}");
    assert!(stream_restore(&s, &v) == a);
    let report = verify::verify(&s.vault, Some(&s.keyring()), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn a_backup_that_started_after_a_condemnation_never_reuses_condemned_objects() {
    // A's objects are condemned and past their grace period when a backup of A starts: the
    // session must store A again, because collection deletes the condemned objects while it
    // runs (its marker is younger than the record, so it does not hold them).
    let s = setup_with(|_| {});
    let a = stream_bytes(3);
    stream_backup(&s, a.clone(), || {});
    stream_backup(&s, stream_bytes(4), || {});
    s.keep_last_now("identity", 1).unwrap();
    let condemned =
        gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap();
    assert!(!condemned.condemned.is_empty());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut during = None;
    let v = stream_backup(&s, a.clone(), || {
        during = Some(
            gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap(),
        );
    });
    let during = during.unwrap();
    assert!(
        during
            .deleted
            .iter()
            .any(|p| p.starts_with("packs/identity/")),
        "collection deleted A's packs while the backup ran: {during:?}"
    );
    assert!(
        v.stats.new_bytes_stored >= a.len() as u64,
        "A was stored again: {:?}",
        v.stats
    );
    assert!(stream_restore(&s, &v) == a, "restores byte-identically");
    let report = verify::verify(&s.vault, Some(&s.keyring()), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn gc_leaves_what_it_does_not_understand_and_follows_wal_anchors_without_failing() {
    let s = setup_with(|_| {});
    for i in 0..3 {
        s.backup("cadastre", i);
    }
    // A log range that anchors an object outside packs/index/manifests (PostgreSQL WAL lives
    // under wal/), and an object of a kind this code does not know.
    let wal = b"a WAL log object".to_vec();
    let wal_id = embassy_core::id::ObjectId::of(&wal);
    let wal_path = format!("wal/cadastre/00000001/p/0000000000000000-0000000001000000-{wal_id}");
    s.vault.site().put(&wal_path, &wal).unwrap();
    s.vault.site().put("future/thing", b"unknown").unwrap();
    let history = s.vault.history_full("cadastre").unwrap();
    ledger::append(
        s.vault.site().as_ref(),
        &s.keyring().signer().unwrap(),
        "cadastre",
        history.records.last(),
        Event::LogRangeAdded {
            manifest: wal_id,
            timeline: 1,
            start: 0,
            end: 0x100_0000,
            captured_at_ns: now_unix_nanos(),
            history: None,
        },
    )
    .unwrap();
    s.keep_last_now("cadastre", 1).unwrap();
    let first =
        gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), now_unix_nanos()).unwrap();
    assert!(first.skipped.is_empty(), "{first:?}");
    assert!(!first.condemned.is_empty());
    let second = gc::collect_garbage(&s.vault, &s.collector(), &fast_gc(), after_grace()).unwrap();
    assert!(!second.deleted.is_empty(), "{second:?}");
    assert!(second.deleted.iter().all(|p| !p.starts_with("wal/")));
    assert_eq!(s.vault.site().get(&wal_path).unwrap(), wal);
    assert_eq!(s.vault.site().get("future/thing").unwrap(), b"unknown");
    let v = s.vault.versions("cadastre").unwrap();
    assert_eq!(seqs(&v), vec![3]);
    assert_eq!(s.restore(&v[0]).len(), 7);
}
