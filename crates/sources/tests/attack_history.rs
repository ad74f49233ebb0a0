//! Issue 12, attacks 1 and 7, played through the real library on a real local-folder vault:
//! a (revoked or still active) sealing credential forks a dataset's history below a later
//! entry, and a site (or anyone who can write there) puts foreign, unparsable or misplaced
//! objects in a dataset's ledger folder. The fork rule and noise are docs/format.md §9.

use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify::{self, VerifyReport};
use embassy_core::format::config::now_unix_nanos;
use embassy_core::format::layout;
use embassy_core::format::manifest::VersionKind;
use embassy_core::history::approval::SigningKey;
use embassy_core::history::ledger::{self, Entry, Event, Record};
use embassy_core::history::state::StateStore;
use embassy_core::id::ObjectId;
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_sites::LocalSite;
use embassy_sources::stream;

const DS: &str = "registry";

/// A site that lists everything in reverse order (an attacker chooses the listing order).
#[derive(Debug)]
struct ReverseListing(Arc<LocalSite>);

impl Site for ReverseListing {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        let mut listed = self.0.list(prefix)?;
        listed.reverse();
        Ok(listed)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

/// A site whose listings name objects it does not hold (a lying listing, red team 2).
#[derive(Debug)]
struct PhantomListing(Arc<LocalSite>, Vec<String>);

impl Site for PhantomListing {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        let mut listed = self.0.list(prefix)?;
        for p in self.1.iter().filter(|p| p.starts_with(prefix)) {
            listed.push(ObjectInfo {
                path: p.clone(),
                size: 100,
            });
        }
        Ok(listed)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

struct World {
    dir: tempfile::TempDir,
    site: Arc<LocalSite>,
    root: RootSecret,
    vault_id: String,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
        let root = RootSecret::generate();
        let vault = Vault::create(site.clone(), &root).unwrap();
        let vault_id = vault.config().vault_id.clone();
        Self {
            dir,
            site,
            root,
            vault_id,
        }
    }

    /// A fresh client: no remembered state.
    fn fresh(&self) -> Vault {
        Vault::open(self.site.clone()).unwrap()
    }

    /// A client with its own remembered state.
    fn stateful(&self, name: &str) -> Vault {
        let state =
            StateStore::open(&self.dir.path().join("state").join(name), &self.vault_id).unwrap();
        self.fresh().with_state(state)
    }

    fn owner(&self, vault: &Vault) -> Keyring {
        Keyring::from_root(RootSecret::from_bytes(self.root.expose()), vault.config()).unwrap()
    }

    /// A sealing credential, added as a signer of the dataset by the root.
    fn credential(&self, label: &str) -> (Keyring, SigningKey) {
        let vault = self.fresh();
        let credential = Credential::sealing(&self.root, &self.vault_id, label, &[DS.into()]);
        let key = credential.signing_key().unwrap();
        vault
            .append_root_event(
                &self.root,
                DS,
                Event::SignerAdded {
                    key: key.verifying_key().to_bytes(),
                    role: label.into(),
                    rights: embassy_core::history::rights::Right::sealing(false),
                },
            )
            .unwrap();
        (
            Keyring::from_credential(credential, vault.config()).unwrap(),
            key,
        )
    }

    fn revoke(&self, vault: &Vault, key: &SigningKey) -> Record {
        vault
            .append_root_event(
                &self.root,
                DS,
                Event::SignerRevoked {
                    key: key.verifying_key().to_bytes(),
                    reason: "stolen".into(),
                },
            )
            .unwrap()
    }

    fn backup(&self, vault: &Vault, keyring: &Keyring, n: u64) -> Version {
        stream::backup_reader(vault, keyring, DS, &payload(n)[..], "test", &Silent)
            .unwrap_or_else(|e| panic!("honest backup {n} failed: {e}"))
    }

    fn restore(&self, vault: &Vault, selector: Option<&str>) -> embassy_core::Result<Vec<u8>> {
        let version = vault.find_version(DS, selector)?;
        let keys = self.owner(vault).dataset(DS)?;
        let reader = VersionReader::open(vault.site().clone(), keys, &version)?;
        let mut out = Vec::new();
        stream::restore_to(&reader, &mut out, &Silent)?;
        Ok(out)
    }

    fn record(&self, seq: u64) -> Record {
        self.fresh().history(DS).unwrap()[seq as usize - 1].clone()
    }
}

fn payload(n: u64) -> Vec<u8> {
    format!("registry snapshot {n}\n").repeat(500).into_bytes()
}

/// What an attacker holding `key` stores directly at the site: an entry at `seq` after `prev`,
/// dated now (an entry dated before its predecessor is refused on that ground alone).
fn forge(site: &dyn Site, key: &SigningKey, seq: u64, prev: Option<ObjectId>, n: u64) -> Record {
    let entry = Entry {
        dataset: DS.into(),
        seq,
        prev,
        time_ns: embassy_core::format::config::now_unix_nanos() + n as i64,
        signer: key.verifying_key().to_bytes(),
        event: Event::VersionAdded {
            manifest: ObjectId::of(format!("rogue {n}").as_bytes()),
            kind: VersionKind::Stream,
            captured_at_ns: 1_000 + n as i64,
            stats: Default::default(),
            wal_start: None,
        },
    };
    let bytes = ledger::encode(&entry, key);
    let id = ObjectId::of(&bytes);
    site.put(&layout::ledger_entry(DS, seq, &id), &bytes)
        .unwrap();
    Record::new(id, entry)
}

/// The site withholds every checkpoint.
fn drop_checkpoints(w: &World) {
    for info in w.site.list("checkpoints/").unwrap() {
        w.site.delete(&info.path).unwrap();
    }
}

fn seqs(vault: &Vault) -> Vec<u64> {
    vault.versions(DS).unwrap().iter().map(|v| v.seq).collect()
}

fn report(vault: &Vault) -> VerifyReport {
    verify::verify(vault, None, &Silent).unwrap()
}

fn assert_noise(report: &VerifyReport, path: &str, why: &str) {
    assert!(
        report
            .noise
            .iter()
            .any(|n| n.starts_with(&format!("{path}:")) && n.contains(why)),
        "verify does not name {path} as noise ({why}): noise {:?}, problems {:?}",
        report.noise,
        report.problems
    );
}

fn path_of(r: &Record) -> String {
    layout::ledger_entry(DS, r.entry.seq, &r.id)
}

/// Versions 1 (root), credential K added (2), versions 3..5 by K, K revoked (6), version 7.
fn honest_with_revoked_credential(w: &World) -> (SigningKey, Vec<u64>) {
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    let (sealing, k) = w.credential("host-1");
    for n in 3..=5 {
        assert_eq!(w.backup(&vault, &sealing, n).seq, n);
    }
    assert_eq!(w.revoke(&vault, &k).entry.seq, 6);
    assert_eq!(w.backup(&vault, &owner, 7).seq, 7);
    (k, vec![1, 3, 4, 5, 7])
}

/// Everything an honest client does keeps working: versions, old and new restores, verify
/// (OK, naming the rogue entries as noise), a new backup.
fn honest_still_works(w: &World, vault: &Vault, expected: &[u64], rogue: &[&Record]) {
    assert_eq!(seqs(vault), expected);
    assert!(
        w.restore(vault, Some("1")).unwrap() == payload(1),
        "restored bytes differ"
    );
    let newest = *expected.last().unwrap();
    assert!(
        w.restore(vault, None).unwrap() == payload(newest),
        "restored bytes differ"
    );
    let r = report(vault);
    assert!(r.is_ok(), "verify fails: {:?}", r.problems);
    for rogue in rogue {
        assert_noise(&r, &path_of(rogue), "rejected");
    }
    let v = w.backup(vault, &w.owner(vault), 100 + newest);
    assert!(
        w.restore(vault, None).unwrap() == payload(100 + newest),
        "restored bytes differ"
    );
    assert!(report(vault).is_ok());
    assert!(v.seq > newest);
}

#[test]
fn revoked_key_cannot_brick_history_by_forking_below_revocation() {
    let w = World::new();
    let (k, expected) = honest_with_revoked_credential(&w);
    // The site withholds every checkpoint: the root's revocation alone must decide.
    drop_checkpoints(&w);
    // The thief signs a version at sequence 4, where K was still a signer, continuing entry 3.
    let rogue = forge(w.site.as_ref(), &k, 4, Some(w.record(3).id), 1);
    let fresh = w.fresh();
    let history = fresh.history_full(DS).unwrap();
    assert!(history.conflict.is_none() && history.damage.is_empty());
    let noise = history.rejected.iter().find(|r| r.id == rogue.id).unwrap();
    assert!(noise.reason.contains("losing branch"), "{}", noise.reason);
    assert!(noise.reason.contains("root key"), "{}", noise.reason);
    honest_still_works(&w, &fresh, &expected, &[&rogue]);
    // A client with remembered state agrees, and backs up too.
    let stateful = w.stateful("a");
    let mut after = expected.clone();
    after.push(8);
    assert_eq!(seqs(&stateful), after);
    assert!(report(&stateful).is_ok());
    w.backup(&stateful, &w.owner(&stateful), 9);
    assert!(w.restore(&stateful, None).unwrap() == payload(9));
}

#[test]
fn revoked_key_forks_at_several_seqs_and_with_a_longer_branch() {
    let w = World::new();
    let (k, expected) = honest_with_revoked_credential(&w);
    let site = w.site.as_ref();
    let at3 = forge(site, &k, 3, Some(w.record(2).id), 3);
    let at5 = forge(site, &k, 5, Some(w.record(4).id), 5);
    // At the revocation's own sequence number, where K was still a signer.
    let at6 = forge(site, &k, 6, Some(w.record(5).id), 6);
    // A rogue branch from 4 that runs far past the honest head (K is never revoked on it).
    let mut prev = w.record(3).id;
    let mut branch = Vec::new();
    for seq in 4..=15 {
        let r = forge(site, &k, seq, Some(prev), 40 + seq);
        prev = r.id;
        branch.push(r);
    }
    // And after the revocation, on the honest chain: rejected as a revoked signer's.
    let after = forge(site, &k, 8, Some(w.record(7).id), 8);
    let fresh = w.fresh();
    let mut rogue: Vec<&Record> = vec![&at3, &at5, &at6, &after];
    rogue.extend(branch.iter());
    honest_still_works(&w, &fresh, &expected, &rogue);
}

#[test]
fn a_site_listing_in_reverse_order_changes_nothing() {
    let w = World::new();
    let (k, expected) = honest_with_revoked_credential(&w);
    let rogue = forge(w.site.as_ref(), &k, 4, Some(w.record(3).id), 1);
    let reversed = Vault::open(Arc::new(ReverseListing(w.site.clone()))).unwrap();
    assert_eq!(
        reversed.history(DS).unwrap(),
        w.fresh().history(DS).unwrap()
    );
    honest_still_works(&w, &reversed, &expected, &[&rogue]);
}

#[test]
fn still_active_key_fork_is_unresolved_until_the_root_revokes_the_rogue_signer() {
    let w = World::new();
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    let (_sealing, k) = w.credential("host-2");
    for n in 3..=5 {
        w.backup(&vault, &owner, n);
    }
    // No checkpoint to decide (the site withholds them).
    drop_checkpoints(&w);
    // K (still a signer: nothing was revoked yet) forks at 4, below the owner's entries 4, 5.
    let rogue = forge(w.site.as_ref(), &k, 4, Some(w.record(3).id), 4);
    let fresh = w.fresh();
    let history = fresh.history_full(DS).unwrap();
    let conflict = history.conflict.clone().expect("an unresolved fork");
    assert_eq!(conflict.seq, 4);
    assert_eq!(history.records.len(), 3, "the common prefix is served");
    // The versions before the fork keep restoring; 'latest' is refused loudly.
    assert_eq!(seqs(&fresh), vec![1, 3]);
    assert!(
        w.restore(&fresh, Some("1")).unwrap() == payload(1),
        "restored bytes differ"
    );
    // Entry 3 is version 2 (entry 2 added the credential's key).
    assert!(
        w.restore(&fresh, Some("2")).unwrap() == payload(3),
        "restored bytes differ"
    );
    let err = w.restore(&fresh, None).unwrap_err();
    assert!(err.is_integrity(), "{err}");
    assert!(err.to_string().contains("fork"), "{err}");
    // Verify names it (exit 3 in the CLI).
    let r = report(&fresh);
    let k_hex: String = k
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("fork") && p.contains(&rogue.id.short()) && p.contains(&k_hex)),
        "{:?}",
        r.problems
    );
    // Appending is refused, with the way out.
    let err = stream::backup_reader(&fresh, &owner, DS, &payload(6)[..], "t", &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the root revokes it")
            && err.contains(&k_hex)
            && err.contains(&rogue.id.short()),
        "{err}"
    );
    // The root revokes K: the revocation goes after the honest branch, and decides the fork.
    let revocation = w.revoke(&fresh, &k);
    assert_eq!(revocation.entry.seq, 6);
    let history = fresh.history_full(DS).unwrap();
    assert!(history.conflict.is_none());
    assert_eq!(history.records.len(), 6);
    honest_still_works(&w, &fresh, &[1, 3, 4, 5], &[&rogue]);
}

/// A fork a rule decided against entries of a signer the history still trusts (`k`): verify
/// names the left-out entry as a problem and the newest version is not offered as proved (an
/// honest writer's versions may be on that branch: a site hid them while another appended);
/// once the root revokes `k`, its entry is a rogue's noise and nothing is reported.
fn displaced_until_revoked(w: &World, vault: &Vault, k: &SigningKey, rogue: &Record) {
    let r = report(vault);
    assert!(
        !r.is_ok(),
        "a displaced entry of a trusted signer passes verify"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("leaves out 1 entries") && p.contains(&rogue.id.short())),
        "{:?}",
        r.problems
    );
    let err = w.restore(vault, None).unwrap_err().to_string();
    assert!(err.contains("cannot be proved"), "{err}");
    w.revoke(vault, k);
    let history = w.fresh().history_full(DS).unwrap();
    assert!(history.displaced.is_empty(), "{:?}", history.displaced);
}

/// Owner versions 1, K added (2), owner versions 3..5 each with a checkpoint by the owner's
/// writer key; K forks at 3. Nothing root-signed follows the fork.
fn fork_below_a_trusted_head(w: &World) -> (SigningKey, Record) {
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    let (_sealing, k) = w.credential("host-3");
    for n in 3..=5 {
        w.backup(&vault, &owner, n);
    }
    let rogue = forge(w.site.as_ref(), &k, 3, Some(w.record(2).id), 3);
    (k, rogue)
}

#[test]
fn fork_below_a_checkpointed_head_is_resolved_by_the_checkpoint() {
    let w = World::new();
    let (k, rogue) = fork_below_a_trusted_head(&w);
    let fresh = w.fresh();
    let history = fresh.history_full(DS).unwrap();
    assert!(history.conflict.is_none(), "{:?}", history.problems(DS));
    let noise = history.rejected.iter().find(|r| r.id == rogue.id).unwrap();
    assert!(noise.reason.contains("checkpointed"), "{}", noise.reason);
    // K is still trusted: its left-out entry is reported (a rogue, or a writer a site hid
    // entries from), and the newest version is not offered as proved, until the root decides.
    displaced_until_revoked(&w, &fresh, &k, &rogue);
    honest_still_works(&w, &w.fresh(), &[1, 3, 4, 5], &[&rogue]);
}

#[test]
fn fork_below_a_remembered_head_is_resolved_by_the_remembered_state() {
    let w = World::new();
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    let (_sealing, k) = w.credential("host-4");
    for n in 3..=5 {
        w.backup(&vault, &owner, n);
    }
    let stateful = w.stateful("remembers");
    assert_eq!(stateful.history(DS).unwrap().len(), 5);
    // No checkpoint to decide (the site dropped them all), then K forks at 3.
    drop_checkpoints(&w);
    let rogue = forge(w.site.as_ref(), &k, 3, Some(w.record(2).id), 3);
    // A fresh client cannot decide; the client that saw entry 5 can.
    assert!(w.fresh().history_full(DS).unwrap().conflict.is_some());
    let history = stateful.history_full(DS).unwrap();
    assert!(history.conflict.is_none(), "{:?}", history.problems(DS));
    assert_eq!(history.records.len(), 5);
    let noise = history.rejected.iter().find(|r| r.id == rogue.id).unwrap();
    assert!(noise.reason.contains("remembered"), "{}", noise.reason);
    displaced_until_revoked(&w, &stateful, &k, &rogue);
    assert!(
        w.restore(&stateful, None).unwrap() == payload(5),
        "restored bytes differ"
    );
    w.backup(&stateful, &owner, 6);
    assert!(
        w.restore(&stateful, None).unwrap() == payload(6),
        "restored bytes differ"
    );
}

#[test]
fn foreign_ledger_entry_is_noise() {
    let w = World::new();
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    w.backup(&vault, &owner, 2);
    // Another vault's entry 1 of a dataset of the same name, copied in under its own name.
    let other = World::new();
    let ov = other.fresh();
    other.backup(&ov, &other.owner(&ov), 9);
    let foreign = other.record(1);
    let foreign_path = path_of(&foreign);
    w.site
        .put(&foreign_path, &other.site.get(&foreign_path).unwrap())
        .unwrap();
    // An entry of another dataset of this vault, under this dataset's name.
    w.backup(&vault, &owner, 3); // entry 3
    let tax = stream::backup_reader(&vault, &owner, "tax", &payload(7)[..], "t", &Silent).unwrap();
    let tax_bytes = w
        .site
        .get(&layout::ledger_entry("tax", 1, &tax.ledger_id))
        .unwrap();
    let wrong_dataset = layout::ledger_entry(DS, 4, &tax.ledger_id);
    w.site.put(&wrong_dataset, &tax_bytes).unwrap();
    // This dataset's entry 1 under sequence 9 (same bytes, same id): a wrong-seq path.
    let first = w.record(1);
    let wrong_seq = layout::ledger_entry(DS, 9, &first.id);
    w.site
        .put(&wrong_seq, &w.site.get(&path_of(&first)).unwrap())
        .unwrap();
    // Garbage under a valid name (its own hash), garbage under a wrong hash, and a stray name.
    let garbage = b"not a ledger entry".to_vec();
    let garbage_path = layout::ledger_entry(DS, 4, &ObjectId::of(&garbage));
    w.site.put(&garbage_path, &garbage).unwrap();
    let misnamed = layout::ledger_entry(DS, 2, &ObjectId::of(b"something else"));
    w.site.put(&misnamed, &garbage).unwrap();
    let stray = format!("{}notes.txt", layout::ledger_prefix(DS));
    w.site.put(&stray, b"hello").unwrap();
    let nameless = "ledger/README".to_string();
    w.site.put(&nameless, b"hello").unwrap();

    for client in [w.fresh(), w.stateful("s")] {
        assert_eq!(seqs(&client), vec![1, 2, 3]);
        let r = report(&client);
        assert!(r.is_ok(), "noise is not damage: {:?}", r.problems);
        assert_noise(&r, &foreign_path, "not (or no longer) a signer");
        assert_noise(&r, &wrong_dataset, "an entry of dataset tax");
        assert_noise(&r, &wrong_seq, "holds sequence 1");
        assert_noise(&r, &garbage_path, "not a validly signed ledger entry");
        assert_noise(&r, &misnamed, "do not hash");
        assert_noise(&r, &stray, "not a ledger entry's name");
        assert_noise(&r, &nameless, "not a ledger entry's name");
        assert!(
            w.restore(&client, Some("1")).unwrap() == payload(1),
            "restored bytes differ"
        );
        assert!(
            w.restore(&client, None).unwrap() == payload(3),
            "restored bytes differ"
        );
    }
    // Backups, restores and checkpoints carry on.
    let v = w.backup(&vault, &owner, 4);
    assert_eq!(
        v.seq, 4,
        "the next backup steps over the noise at sequence 4"
    );
    assert!(
        w.restore(&w.fresh(), None).unwrap() == payload(4),
        "restored bytes differ"
    );
    let fresh = w.fresh();
    let r = report(&fresh);
    assert!(r.is_ok(), "{:?}", r.problems);
    let (histories, failed) = fresh.histories().unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(fresh.trusted_checkpoint(&histories).unwrap().is_some());
}

#[test]
fn a_deleted_middle_entry_is_a_gap_older_versions_restore_latest_refuses() {
    let w = World::new();
    let vault = w.fresh();
    let owner = w.owner(&vault);
    for n in 1..=4 {
        w.backup(&vault, &owner, n);
    }
    let stateful = w.stateful("s");
    assert_eq!(stateful.history(DS).unwrap().len(), 4);
    let v4 = vault.versions(DS).unwrap().pop().unwrap();
    assert_eq!(v4.seq, 4);
    w.site.delete(&path_of(&w.record(3))).unwrap();
    // Garbage collection leaves the dataset alone: version 4, beyond the gap, keeps its data
    // (so the entry can be repaired from another site).
    let fast = GcOptions {
        grace_secs: 1,
        clock_skew_secs: 1,
        ..Default::default()
    };
    let collector = gc::Collector::new(
        w.owner(&vault).signer().unwrap(),
        &w.dir.path().join("gc-state"),
        &vault.config().vault_id,
    );
    let first = gc::collect_garbage(&vault, &collector, &fast, now_unix_nanos()).unwrap();
    assert!(
        first
            .skipped
            .iter()
            .any(|s| s.message.contains(DS) && s.message.contains("entry 3 is missing")),
        "{:?}",
        first.skipped
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    gc::collect_garbage(&vault, &collector, &fast, now_unix_nanos()).unwrap();
    let keys = w.owner(&vault).dataset(DS).unwrap();
    let reader = VersionReader::open(vault.site().clone(), keys, &v4).unwrap();
    let mut out = Vec::new();
    stream::restore_to(&reader, &mut out, &Silent).unwrap();
    assert!(out == payload(4), "version 4 lost data to gc");
    for client in [w.fresh(), stateful] {
        let r = report(&client);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("gap") && p.contains("entry 3 is missing")),
            "{:?}",
            r.problems
        );
        let (versions, problems) = client.versions_full(DS).unwrap();
        assert_eq!(versions.iter().map(|v| v.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(!problems.is_empty(), "versions says newer entries exist");
        assert!(
            w.restore(&client, Some("1")).unwrap() == payload(1),
            "restored bytes differ"
        );
        assert!(
            w.restore(&client, Some("2")).unwrap() == payload(2),
            "restored bytes differ"
        );
        let err = w.restore(&client, None).unwrap_err();
        assert!(err.is_integrity(), "{err}");
        assert!(err.to_string().contains("entry 3 is missing"), "{err}");
        assert!(err.to_string().contains("registry@2"), "{err}");
        // No backup lands on top of the gap (it would hide version 4 for good).
        let err =
            stream::backup_reader(&client, &owner, DS, &payload(5)[..], "t", &Silent).unwrap_err();
        assert!(err.to_string().contains("entry 3 is missing"), "{err}");
    }
}

/// A listing that names objects the site does not hold, under every prefix the history and
/// version loaders list: each is noise, exactly as a damaged copy would be (red team 2: "no
/// object at ledger/..." stopped versions, restore, backup and status).
#[test]
fn a_site_listing_objects_it_does_not_hold_changes_nothing() {
    let w = World::new();
    let vault = w.fresh();
    w.backup(&vault, &w.owner(&vault), 1);
    let id = ObjectId::of(b"never stored").to_hex();
    let phantoms: Vec<String> = [
        "ledger/registry/0000000000000002-",
        "ledger/registry/0000000000000009-",
        "index/registry/",
        "manifests/registry/",
        "checkpoints/00000000000000000001-",
        "cosignatures/",
        "approvals/registry/",
        "gc/",
        "sessions/",
    ]
    .iter()
    .map(|dir| format!("{dir}{id}"))
    .collect();
    let lying = Vault::open(Arc::new(PhantomListing(w.site.clone(), phantoms.clone()))).unwrap();
    assert_eq!(seqs(&lying), [1]);
    assert!(
        w.restore(&lying, None).unwrap() == payload(1),
        "restored bytes differ"
    );
    let r = report(&lying);
    assert!(r.is_ok(), "verify fails: {:?}", r.problems);
    for p in phantoms.iter().filter(|p| p.starts_with("ledger/")) {
        assert_noise(&r, p, "no site produces it");
    }
    for p in &phantoms {
        assert!(
            r.noise.iter().any(|n| n.contains(p.as_str())),
            "{p} is not noise: {:?}",
            r.noise
        );
    }
    let v = w.backup(&lying, &w.owner(&lying), 2);
    assert_eq!(v.seq, 2);
    assert!(
        w.restore(&lying, None).unwrap() == payload(2),
        "restored bytes differ"
    );
}

/// Red team 5, #1: the site hides the newest entries (versions the source host's sealing
/// credential stored) while a root client with no memory of them appends at their sequence
/// number (a drill, a root backup), then serves them again. The root-signed branch is
/// followed, but the hidden versions are reported as left out (verify fails, the newest
/// version is not offered as proved), never taken for noise behind a "vault OK".
#[test]
fn entries_a_site_hid_while_the_root_appended_are_reported_not_noise() {
    let w = World::new();
    let vault = w.fresh();
    let owner = w.owner(&vault);
    w.backup(&vault, &owner, 1);
    let (sealing, _k) = w.credential("source-host");
    assert_eq!(w.backup(&w.fresh(), &sealing, 3).seq, 3);
    assert_eq!(w.backup(&w.fresh(), &sealing, 4).seq, 4);
    // The site hides entries 3 and 4.
    let mut hidden = Vec::new();
    for r in [w.record(3), w.record(4)] {
        let path = path_of(&r);
        hidden.push((path.clone(), w.site.get(&path).unwrap()));
        w.site.delete(&path).unwrap();
    }
    // A root client that never saw them appends at 3.
    let root_client = w.fresh();
    assert_eq!(w.backup(&root_client, &owner, 5).seq, 3);
    for (path, bytes) in &hidden {
        w.site.put(path, bytes).unwrap();
    }
    let fresh = w.fresh();
    let r = report(&fresh);
    assert!(
        !r.is_ok(),
        "the hidden versions were dropped behind a passing verify"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("fork at entry 3") && p.contains("leaves out 2 entries")),
        "{:?}",
        r.problems
    );
    let err = w.restore(&fresh, None).unwrap_err().to_string();
    assert!(err.contains("cannot be proved"), "{err}");
}
