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
use embassy_core::history::withdrawal::{self, Withdrawal};
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
    /// What writer Y deleted (its withdrawn entry), for a site that keeps it all the same.
    deleted: Mutex<Vec<(String, Vec<u8>)>>,
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
        if let Ok(bytes) = self.inner.get(path) {
            self.deleted.lock().unwrap().push((path.to_string(), bytes));
        }
        self.inner.delete(path)
    }
}

#[test]
fn a_writer_that_lost_a_race_for_a_sequence_number_leaves_no_fork_behind() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let Raced {
        site,
        config,
        key,
        x,
        y,
        ..
    } = race(VaultConfig::new(&secret), &secret);

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
        "two entries at sequence number 2 (Y's: {})",
        y.0
    );
    // A fresh reader (no remembered head, no checkpoint) sees X's acknowledged version.
    let h = history::load(site.as_ref(), &config, DS, None).unwrap();
    assert!(h.conflict.is_none(), "{:?}", h.problems(DS));
    assert_eq!(h.records.last().map(|r| r.id), Some(x.id));
    // And the next writer appends after it.
    ledger::append(site.as_ref(), &key, DS, Some(&x), version(4)).unwrap();
}

/// The race of writers X and Y above: writer X's acknowledged entry 2 and writer Y's withdrawn
/// one, with what Y deleted (its entry) handed back. Both writers sign with `key`.
struct Raced {
    site: Arc<MemorySite>,
    config: VaultConfig,
    key: ed25519_dalek::SigningKey,
    first: Record,
    /// Writer X's acknowledged entry 2.
    x: Record,
    /// Writer Y's withdrawn entry 2: path and bytes.
    y: (String, Vec<u8>),
}

fn race(config: VaultConfig, secret: &RootSecret) -> Raced {
    let site = Arc::new(MemorySite::named("memory:vault"));
    config.create(site.as_ref(), secret).unwrap();
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
        deleted: Mutex::new(Vec::new()),
    };
    let y = ledger::append(&y_view, &key, DS, Some(&first), version(3));
    assert!(y.is_err(), "writer Y saw X's entry after its put: {y:?}");
    let x = acknowledged.lock().unwrap().clone().expect("writer X ran");
    let mut deleted = y_view.deleted.into_inner().unwrap();
    assert_eq!(deleted.len(), 1, "writer Y deleted its own entry only");
    let y = deleted.remove(0);
    Raced {
        site,
        config,
        key,
        first,
        x,
        y,
    }
}

fn ids_at(h: &history::History, seq: u64) -> Vec<ObjectId> {
    h.rejected
        .iter()
        .filter(|r| r.seq == seq)
        .map(|r| r.id)
        .collect()
}

/// Red team 8: a site that keeps the entry the losing writer withdrew (stale, or hostile) made
/// a fork of it, so a fresh reader could not prove the newest version (`restore @latest`
/// refused) and a reader that had seen X's entry reported history a fork displaced. The loser
/// now signs a withdrawal before it deletes its entry, and every reader takes the kept entry
/// for noise.
#[test]
fn an_entry_its_writer_withdrew_is_noise_to_every_reader_even_where_a_site_keeps_it() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let r = race(VaultConfig::new(&secret), &secret);
    // The withdrawal is stored, naming Y's entry and the entry it lost to.
    let withdrawals = r
        .site
        .list(&format!("withdrawals/{DS}/{:016}-", 2))
        .unwrap();
    assert_eq!(withdrawals.len(), 1, "one withdrawal: {withdrawals:?}");
    // The site keeps Y's entry after all.
    r.site.put(&r.y.0, &r.y.1).unwrap();
    let y_id = layout::id_in_path(&r.y.0).unwrap();

    // A fresh reader: X's version is the newest, and nothing is wrong.
    let h = history::load(r.site.as_ref(), &r.config, DS, None).unwrap();
    assert!(h.conflict.is_none(), "{:?}", h.problems(DS));
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert_eq!(h.records.last().map(|r| r.id), Some(r.x.id));
    assert_eq!(ids_at(&h, 2), vec![y_id], "Y's entry is rejected");
    let noise = h.all_noise();
    assert!(
        noise
            .iter()
            .any(|(p, why)| *p == r.y.0 && why.contains("withdrawn by its own signer")),
        "{noise:?}"
    );
    assert_eq!(h.withdrawn.len(), 1);
    assert_eq!(h.withdrawn[0].id, y_id);
    // A reader that saw X's entry as its head: no displaced history either.
    let h = history::load(r.site.as_ref(), &r.config, DS, Some((2, r.x.id))).unwrap();
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert!(h.displaced_ids.is_empty());
    assert_eq!(h.records.last().map(|r| r.id), Some(r.x.id));
    // Writers append after X.
    let next = ledger::append_ignoring(
        r.site.as_ref(),
        &r.key,
        DS,
        Some(&r.x),
        &h.rejected_ids(),
        version(4),
    )
    .unwrap();
    let h = history::load(r.site.as_ref(), &r.config, DS, None).unwrap();
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert_eq!(h.records.last().map(|r| r.id), Some(next.id));
    assert_eq!(h.records[0].id, r.first.id);
}

/// Stores `bytes` under their hash at the withdrawals of entry 2, as a hostile site may.
fn plant_withdrawal(site: &MemorySite, bytes: &[u8]) -> String {
    let path = withdrawal::path(DS, 2, &ObjectId::of(bytes));
    site.put(&path, bytes).unwrap();
    path
}

fn withdrawing(entry: ObjectId, seq: u64, lost_to: ObjectId, signer: [u8; 32]) -> Withdrawal {
    Withdrawal {
        dataset: DS.into(),
        seq,
        entry,
        lost_to: vec![lost_to],
        time_ns: 10,
        signer,
    }
}

/// Red team 8, the attacker's side: withdrawals a site forges, a withdrawal by another
/// credential than the entry's signer, and a genuine withdrawal of another entry put at this
/// sequence number withdraw nothing: the acknowledged entry stays the newest, and each is
/// reported as noise. Only Y's own withdrawal counts.
#[test]
fn a_site_cannot_withdraw_a_real_entry_with_forged_foreign_or_replayed_withdrawals() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let mut config = VaultConfig::new(&secret);
    let other = secret.writer_signing_key(1);
    config
        .signers
        .push(hex::encode(other.verifying_key().to_bytes()));
    let r = race(config, &secret);
    r.site.put(&r.y.0, &r.y.1).unwrap();
    let y_id = layout::id_in_path(&r.y.0).unwrap();
    let k = r.key.verifying_key().to_bytes();

    // 1. Forged: claims X's signer, but the signature is not its.
    let mut forged = withdrawal::encode(&withdrawing(r.x.id, 2, y_id, k), &r.key);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged = plant_withdrawal(&r.site, &forged);
    // 2. Signed by another credential of this vault (a pinned writer key), naming X.
    let foreign = plant_withdrawal(
        &r.site,
        &withdrawal::encode(
            &withdrawing(r.x.id, 2, y_id, other.verifying_key().to_bytes()),
            &other,
        ),
    );
    // 3. X's own signer's genuine withdrawal of another entry 2 (say, of an earlier race on
    //    another site, or one the site dropped), naming Y as the entry it lost to: bound to
    //    that entry's id, it withdraws nothing here. (Y's own withdrawal, altered to name X,
    //    would fail its signature: case 1.)
    let replayed = plant_withdrawal(
        &r.site,
        &withdrawal::encode(
            &withdrawing(ObjectId::of(b"another entry 2"), 2, y_id, k),
            &r.key,
        ),
    );

    for remembered in [None, Some((2, r.x.id))] {
        let h = history::load(r.site.as_ref(), &r.config, DS, remembered).unwrap();
        assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
        assert_eq!(
            h.records.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![r.first.id, r.x.id],
            "X stays the newest entry"
        );
        assert_eq!(
            h.withdrawn.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![y_id]
        );
        let noise = h.all_noise();
        for (planted, why) in [
            (&forged, "signature does not verify"),
            (&foreign, "not by the entry's signer"),
            (&replayed, "withdraws nothing"),
        ] {
            assert!(
                noise.iter().any(|(p, w)| p == planted && w.contains(why)),
                "{planted} ({why}) not reported: {noise:?}"
            );
        }
    }

    // Without Y's genuine withdrawal, the planted ones decide nothing: the fork stays.
    let genuine: Vec<String> = r
        .site
        .list(&format!("withdrawals/{DS}/"))
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .filter(|p| ![&forged, &foreign, &replayed].contains(&p))
        .collect();
    assert_eq!(genuine.len(), 1);
    r.site.delete(&genuine[0]).unwrap();
    // 4. Y's signer's withdrawal of Y that names no entry held at entry 2 as the one it lost
    //    to: not a race lost here, so it withdraws nothing either.
    let unraced = plant_withdrawal(
        &r.site,
        &withdrawal::encode(&withdrawing(y_id, 2, ObjectId::of(b"nothing"), k), &r.key),
    );
    let h = history::load(r.site.as_ref(), &r.config, DS, None).unwrap();
    assert!(
        h.all_noise()
            .iter()
            .any(|(p, w)| *p == unraced && w.contains("none of the entries it lost to")),
        "{:?}",
        h.all_noise()
    );
    let conflict = h.conflict.as_ref().expect("the fork stays unresolved");
    assert_eq!(conflict.seq, 2);
    assert!(h.withdrawn.is_empty());
}

/// Red team 8: a stolen credential cannot use a withdrawal of its own to take an entry out of
/// history that continues it, nor out of the history of a reader that saw it as its head or
/// that reads a checkpoint naming it. (A
/// fresh reader does take a withdrawal of an unseen newest entry: docs/format.md §9 says
/// why that is no worse than what the credential can do anyway, and garbage collection keeps
/// the withdrawn entry's objects.)
#[test]
fn a_withdrawal_never_removes_an_entry_history_continues_or_a_reader_saw_as_its_head() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let config = VaultConfig::new(&secret);
    let site = Arc::new(MemorySite::named("memory:vault"));
    config.create(site.as_ref(), &secret).unwrap();
    let key = secret.writer_signing_key(0);
    let first = ledger::append(site.as_ref(), &key, DS, None, version(1)).unwrap();
    let x = ledger::append(site.as_ref(), &key, DS, Some(&first), version(2)).unwrap();
    // The attacker (holding the writer's key) puts its own entry 2 beside X and withdraws X.
    let z = embassy_core::history::ledger::Entry {
        dataset: DS.into(),
        seq: 2,
        prev: Some(first.id),
        time_ns: x.entry.time_ns + 1,
        signer: key.verifying_key().to_bytes(),
        event: version(66),
    };
    let z_bytes = ledger::encode(&z, &key);
    let z_id = ObjectId::of(&z_bytes);
    site.put(&layout::ledger_entry(DS, 2, &z_id), &z_bytes)
        .unwrap();
    withdrawal::write(site.as_ref(), &key, DS, 2, x.id, vec![z_id]).unwrap();

    // A reader that saw X as its head keeps it (and reports Z as history the fork left out).
    let h = history::load(site.as_ref(), &config, DS, Some((2, x.id))).unwrap();
    assert_eq!(h.records.last().map(|r| r.id), Some(x.id));
    assert!(h.withdrawn.is_empty());
    assert!(h
        .all_noise()
        .iter()
        .any(|(_, why)| why.contains("remembered head")));

    // Nor does a fresh reader when a checkpoint (here the root's) names X as the head.
    let heads = [(
        DS.to_string(),
        embassy_core::history::checkpoint::Head { seq: 2, id: x.id },
    )]
    .into_iter()
    .collect();
    embassy_core::history::checkpoint::write(
        site.as_ref(),
        &config.vault_id,
        heads,
        &secret.root_signing_key(),
    )
    .unwrap();
    let h = history::load(site.as_ref(), &config, DS, None).unwrap();
    assert_eq!(h.records.last().map(|r| r.id), Some(x.id));
    assert!(h.withdrawn.is_empty());
    assert!(h
        .all_noise()
        .iter()
        .any(|(_, why)| why.contains("a checkpoint or this client's remembered head")));
    for cp in site
        .list(embassy_core::history::checkpoint::CHECKPOINTS)
        .unwrap()
    {
        site.delete(&cp.path).unwrap();
    }

    // Once history continues X, nobody takes X out.
    let third = ledger::append_ignoring(
        site.as_ref(),
        &key,
        DS,
        Some(&x),
        &h.rejected_ids(),
        version(3),
    )
    .unwrap();
    for remembered in [None, Some((3, third.id))] {
        let h = history::load(site.as_ref(), &config, DS, remembered).unwrap();
        assert!(h.withdrawn.is_empty());
        assert!(
            h.all_noise()
                .iter()
                .any(|(_, why)| why.contains("withdraws nothing: entries continue it")),
            "{:?}",
            h.all_noise()
        );
        match remembered {
            // A fresh reader sees the fork the stolen key made, as before withdrawals: X's
            // branch is one side of it, and the history ends before it, loudly.
            None => {
                let c = h.conflict.as_ref().expect("the fork is reported");
                assert!(c
                    .branches
                    .iter()
                    .any(|b| b.records.iter().any(|r| r.id == x.id)));
            }
            Some(_) => assert_eq!(
                h.records.iter().map(|r| r.id).collect::<Vec<_>>(),
                vec![first.id, x.id, third.id]
            ),
        }
    }
}

/// When each racing writer saw the other after its put, both withdraw: a site that keeps both
/// entries holds noise only, and the next writer takes the sequence number.
#[test]
fn two_entries_both_withdrawn_leave_the_sequence_number_free() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let config = VaultConfig::new(&secret);
    let site = Arc::new(MemorySite::named("memory:vault"));
    config.create(site.as_ref(), &secret).unwrap();
    let key = secret.writer_signing_key(0);
    let first = ledger::append(site.as_ref(), &key, DS, None, version(1)).unwrap();
    let mut ids = Vec::new();
    for n in [2, 3] {
        let e = embassy_core::history::ledger::Entry {
            dataset: DS.into(),
            seq: 2,
            prev: Some(first.id),
            time_ns: first.entry.time_ns + i64::from(n),
            signer: key.verifying_key().to_bytes(),
            event: version(n),
        };
        let bytes = ledger::encode(&e, &key);
        let id = ObjectId::of(&bytes);
        site.put(&layout::ledger_entry(DS, 2, &id), &bytes).unwrap();
        ids.push(id);
    }
    withdrawal::write(site.as_ref(), &key, DS, 2, ids[0], vec![ids[1]]).unwrap();
    withdrawal::write(site.as_ref(), &key, DS, 2, ids[1], vec![ids[0]]).unwrap();
    let h = history::load(site.as_ref(), &config, DS, None).unwrap();
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert_eq!(h.records.len(), 1);
    assert_eq!(h.withdrawn.len(), 2);
    let second = ledger::append_ignoring(
        site.as_ref(),
        &key,
        DS,
        Some(&first),
        &h.rejected_ids(),
        version(4),
    )
    .unwrap();
    let h = history::load(site.as_ref(), &config, DS, None).unwrap();
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert_eq!(h.records.last().map(|r| r.id), Some(second.id));
}

/// A sync (or seed) from a site that keeps a withdrawn entry copies the history without it:
/// no fork at the target, no refusal. Before, the entry was copied (or refused as a fork,
/// which stopped the dataset's copy there).
#[test]
fn sync_from_a_site_keeping_a_withdrawn_entry_does_not_copy_it() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let r = race(VaultConfig::new(&secret), &secret);
    r.site.put(&r.y.0, &r.y.1).unwrap();
    let next = ledger::append_ignoring(
        r.site.as_ref(),
        &r.key,
        DS,
        Some(&r.x),
        &[layout::id_in_path(&r.y.0).unwrap()],
        version(5),
    )
    .unwrap();
    let target = MemorySite::named("memory:new-site");
    let report = embassy_core::engine::sync::seed(
        r.site.as_ref(),
        &target,
        false,
        &embassy_core::progress::Silent,
    )
    .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        target.get(&r.y.0).is_err(),
        "the withdrawn entry was copied"
    );
    let h = history::load(&target, &r.config, DS, None).unwrap();
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
    assert_eq!(
        h.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![r.first.id, r.x.id, next.id]
    );
}

/// Withdrawals are never collected, so a dataset that once had a race keeps one for ever. A
/// sync judges withdrawn entries by loading the source's history; it did so for every dataset
/// holding any withdrawal at every sync (the agent's catch-ups, one GET per ledger entry from
/// an S3 site, for ever more entries). Now only a dataset with an entry to copy at a sequence
/// number that has withdrawals is loaded: a later sync reads just the entry it copies.
#[test]
fn a_sync_reads_no_history_for_a_withdrawal_of_an_entry_no_site_keeps() {
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let secret = RootSecret::from_slice(&[9; 32]).unwrap();
    let r = race(VaultConfig::new(&secret), &secret);
    let target = MemorySite::named("memory:other-site");
    let silent = &embassy_core::progress::Silent;
    embassy_core::engine::sync::seed(r.site.as_ref(), &target, false, silent).unwrap();
    let next = ledger::append(r.site.as_ref(), &r.key, DS, Some(&r.x), version(5)).unwrap();
    let from = embassy_testkit::memory::CountingGets::new(r.site.clone(), "ledger/");
    let report = embassy_core::engine::sync::sync(&from, &target, false, silent).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(target.get(&layout::ledger_entry(DS, 3, &next.id)).is_ok());
    assert_eq!(
        from.gets(),
        1,
        "the sync read more ledger entries than the one it copied"
    );
}

/// The race's vault as a site keeps it after all (Y's withdrawn entry stored again) without the
/// withdrawal, its configuration, X's entry id and the withdrawal's bytes.
type KeptRace = (Vec<(String, Vec<u8>)>, VaultConfig, ObjectId, Vec<u8>);

/// [`KeptRace`], built once for the property below.
fn kept_race_without_withdrawal() -> &'static KeptRace {
    static BUILT: std::sync::OnceLock<KeptRace> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let locks = tempfile::tempdir().unwrap();
        ledger::use_lock_folder(locks.path().to_path_buf());
        let secret = RootSecret::from_slice(&[9; 32]).unwrap();
        let r = race(VaultConfig::new(&secret), &secret);
        r.site.put(&r.y.0, &r.y.1).unwrap();
        let listed = r.site.list(&format!("withdrawals/{DS}/")).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let withdrawal = r.site.get(&listed[0].path).unwrap();
        r.site.delete(&listed[0].path).unwrap();
        let objects = r
            .site
            .lock()
            .iter()
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect();
        (objects, r.config.clone(), r.x.id, withdrawal)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
    /// Withdrawals are site bytes like any other: a hostile site mutates the one real
    /// withdrawal (flipped bytes, a cut, inserted bytes) and stores the result under its hash.
    /// Reading never panics, and the history is exactly one of the two the site could have
    /// shown honestly: the withdrawal counted whole (X's entry accepted) or not at all (the
    /// fork reported, nothing accepted past entry 1). Never another entry, never an error.
    #[test]
    fn a_mutated_withdrawal_counts_whole_or_not_at_all(
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..4),
        cut in proptest::option::of(proptest::prelude::any::<usize>()),
        insert in proptest::option::of((proptest::prelude::any::<usize>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 1..9))),
    ) {
        let (objects, config, x, original) = kept_race_without_withdrawal();
        let mut bytes = original.clone();
        for (at, mask) in &flips {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        if let Some((at, more)) = &insert {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, more.iter().copied());
        }
        let site = MemorySite::named("memory:vault");
        for (path, object) in objects {
            site.put(path, object).unwrap();
        }
        plant_withdrawal(&site, &bytes);
        let h = history::load(&site, config, DS, None).unwrap();
        let last = h.records.last().map(|r| r.id);
        if bytes == *original {
            proptest::prop_assert_eq!(last, Some(*x));
        }
        if last == Some(*x) {
            proptest::prop_assert!(h.conflict.is_none());
            proptest::prop_assert_eq!(h.records.len(), 2);
        } else {
            proptest::prop_assert!(h.conflict.is_some(), "neither whole nor the fork: {:?}", h.problems(DS));
            proptest::prop_assert_eq!(h.records.len(), 1);
        }
    }
}
