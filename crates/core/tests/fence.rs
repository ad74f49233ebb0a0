//! Issue 17, "going live is a decision, recorded and fenced", played as an attacker against the
//! acceptance rules (docs/format.md §9c): a home sealing credential (stolen, or an old primary
//! that comes back) after an authoritative promotion, forged promotions, replayed and foreign
//! approvals, forks below the promotion with sequence numbers and times the attacker chooses,
//! and old vaults. Entries are signed and stored by hand on a memory site, and judged by the
//! same loader every verifier uses.

use embassy_core::format::config::VaultConfig;
use embassy_core::format::layout;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::history::approval::{self, Approval, SigningKey};
use embassy_core::history::ledger::{self, Entry, Event, Record, Right};
use embassy_core::history::{self, History};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_testkit::memory::MemorySite;
use proptest::prelude::*;

const DS: &str = "registry";
const HOST: &str = "embassy-1";
const SEC: i64 = 1_000_000_000;

struct World {
    site: MemorySite,
    config: VaultConfig,
    root: SigningKey,
    writer: SigningKey,
    home: SigningKey,
    embassy: SigningKey,
    approvers: Vec<SigningKey>,
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// A vault whose configuration pins three approvers and needs `promotion` of them for a
/// takeover (format `version`).
fn world(promotion: u32, version: u32) -> World {
    let secret = RootSecret::from_slice(&[7; 32]).unwrap();
    let approvers = vec![key(101), key(102), key(103)];
    let mut config = VaultConfig::new(&secret);
    config.format_version = version;
    config.approvers = approvers
        .iter()
        .map(|k| hex::encode(k.verifying_key().to_bytes()))
        .collect();
    config.approvals_required = 1;
    config.promotion_approvals = promotion;
    let site = MemorySite::with(&[]);
    config.create(&site, &secret).unwrap();
    World {
        site,
        config,
        root: secret.root_signing_key(),
        writer: secret.writer_signing_key(0),
        home: key(1),
        embassy: key(2),
        approvers,
    }
}

impl World {
    /// Signs and stores an entry at `seq` after `prev`, dated `time_ns`.
    fn put(
        &self,
        key: &SigningKey,
        seq: u64,
        prev: Option<&Record>,
        time_ns: i64,
        event: Event,
    ) -> Record {
        let entry = Entry {
            dataset: DS.into(),
            seq,
            prev: prev.map(|p| p.id),
            time_ns,
            signer: key.verifying_key().to_bytes(),
            event,
        };
        let bytes = ledger::encode(&entry, key);
        let id = ObjectId::of(&bytes);
        self.site
            .put(&layout::ledger_entry(DS, seq, &id), &bytes)
            .unwrap();
        Record::new(id, entry)
    }

    /// The next entry after `prev`, a second later.
    fn next(&self, key: &SigningKey, prev: &Record, event: Event) -> Record {
        self.put(
            key,
            prev.entry.seq + 1,
            Some(prev),
            prev.entry.time_ns + SEC,
            event,
        )
    }

    fn history(&self) -> History {
        history::load(&self.site, &self.config, DS, None).unwrap()
    }

    /// Root grants home and the embassy sealing credentials; home adds a version and WAL.
    /// Returns the head (entry 4).
    fn start(&self) -> Record {
        let g1 = self.put(&self.root, 1, None, 10 * SEC, grant(&self.home));
        let g2 = self.next(&self.root, &g1, grant(&self.embassy));
        let v = self.next(&self.home, &g2, version(3));
        self.next(&self.home, &v, wal(1, 0, 100))
    }

    /// An approval by `approver` of promoting on `host` after `after`, by the embassy's key.
    fn approve(&self, approver: &SigningKey, after: &Record, host: Option<&str>) -> Vec<u8> {
        self.approve_key(approver, after, host, host.map(|_| &self.embassy))
    }

    /// An approval by `approver` of promoting on `host` after `after`, by `promoter`'s key.
    fn approve_key(
        &self,
        approver: &SigningKey,
        after: &Record,
        host: Option<&str>,
        promoter: Option<&SigningKey>,
    ) -> Vec<u8> {
        approval::encode(
            &Approval {
                vault_id: self.config.vault_id.clone(),
                dataset: DS.into(),
                seq: after.entry.seq,
                entry: after.id,
                reason: "takeover".into(),
                approver: approver.verifying_key().to_bytes(),
                time_ns: after.entry.time_ns,
                min_age_secs: None,
                promote_host: host.map(str::to_string),
                promote_key: promoter.map(|k| k.verifying_key().to_bytes()),
            },
            approver,
        )
    }

    /// Two distinct approvers' approvals of promoting on HOST after `after` by the embassy.
    fn quorum(&self, after: &Record) -> Vec<Vec<u8>> {
        self.quorum_for(after, &self.embassy)
    }

    /// Two distinct approvers' approvals of promoting on HOST after `after` by `promoter`.
    fn quorum_for(&self, after: &Record, promoter: &SigningKey) -> Vec<Vec<u8>> {
        vec![
            self.approve_key(&self.approvers[0], after, Some(HOST), Some(promoter)),
            self.approve_key(&self.approvers[2], after, Some(HOST), Some(promoter)),
        ]
    }
}

fn grant(key: &SigningKey) -> Event {
    Event::SignerAdded {
        key: key.verifying_key().to_bytes(),
        role: "sealing".into(),
        rights: Right::sealing(true),
    }
}

fn version(n: u8) -> Event {
    Event::VersionAdded {
        wal_start: None,
        manifest: ObjectId::of(&[n]),
        kind: VersionKind::Stream,
        captured_at_ns: i64::from(n),
        stats: VersionStats::default(),
    }
}

fn wal(timeline: u32, start: u64, end: u64) -> Event {
    Event::LogRangeAdded {
        manifest: ObjectId::of(&end.to_le_bytes()),
        timeline,
        start,
        end,
        captured_at_ns: 0,
        history: None,
    }
}

fn promoted(approvals: Vec<Vec<u8>>) -> Event {
    Event::Promoted {
        data_lost_to: None,
        timeline: 2,
        lsn: 100,
        host: HOST.into(),
        data_dir: "/srv/pg".into(),
        approvals: approvals
            .into_iter()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
        replayed: None,
    }
}

fn ids(h: &History) -> Vec<ObjectId> {
    h.records.iter().map(|r| r.id).collect()
}

fn rejected_for(h: &History, r: &Record) -> String {
    h.rejected
        .iter()
        .find(|x| x.id == r.id)
        .map(|x| x.reason.clone())
        .unwrap_or_else(|| panic!("entry {} was not rejected: {:?}", r.entry.seq, ids(h)))
}

fn refusal(h: &History, r: &Record) -> Option<String> {
    h.records
        .iter()
        .find(|x| x.id == r.id)
        .unwrap_or_else(|| panic!("entry {} not accepted: {:?}", r.entry.seq, h.rejected))
        .refused
        .clone()
}

/// A stolen home credential appends a version, WAL and a promotion of its own after an
/// approved takeover: every one is noise; the embassy's entries and a credential the root
/// grants after the takeover (the way back home) write normally.
#[test]
fn an_approved_takeover_fences_home_versions_and_wal() {
    let w = world(2, 4);
    let head = w.start();
    let p = w.next(&w.embassy, &head, promoted(w.quorum(&head)));
    let home_version = w.next(&w.home, &p, version(9));
    let home_wal = w.next(&w.home, &p, wal(1, 100, 200));
    let home_promotes = w.next(&w.home, &p, promoted(w.quorum(&head)));
    let after_rejected = w.next(&w.home, &home_version, version(10));
    let e = w.next(&w.embassy, &p, wal(2, 100, 300));
    let back = key(3);
    let g = w.next(&w.root, &e, grant(&back));
    let b = w.next(&back, &g, version(11));
    let h = w.history();
    assert_eq!(
        refusal(&h, &p),
        None,
        "the approved promotion is authoritative"
    );
    assert_eq!(ids(&h)[4..], [p.id, e.id, g.id, b.id]);
    for r in [&home_version, &home_wal, &home_promotes] {
        let why = rejected_for(&h, r);
        assert!(
            why.contains("fenced by the takeover recorded at entry 5"),
            "{why}"
        );
    }
    assert!(rejected_for(&h, &after_rejected).contains("continues rejected entry"));
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
}

/// Red team 6: home's stolen credential reads the officials' approvals of the embassy's takeover
/// at the site and signs a `promoted` entry with them (on a server claiming the embassy's host
/// name). They name the embassy's key, not home's: the entry is information, fences no one, and
/// the embassy's own promotion with the same approvals still fences home.
#[test]
fn approvals_for_the_embassys_key_do_not_make_homes_promotion_authoritative() {
    let w = world(2, 5);
    let head = w.start();
    let hijack = w.next(&w.home, &head, promoted(w.quorum(&head)));
    let home_after = w.next(&w.home, &hijack, version(13));
    let h = w.history();
    let why = refusal(&h, &hijack)
        .expect("home's promotion with the embassy's approvals was authoritative (a hijack)");
    assert!(
        why.contains("approves a promotion signed by") && why.contains("not authoritative"),
        "{why}"
    );
    assert_eq!(ids(&h)[4..], [hijack.id, home_after.id]);
    let p = w.next(&w.embassy, &home_after, promoted(w.quorum(&head)));
    let late = w.next(&w.home, &p, version(14));
    let h = w.history();
    assert_eq!(
        refusal(&h, &p),
        None,
        "the embassy's takeover is authoritative"
    );
    let why = rejected_for(&h, &late);
    assert!(
        why.contains("fenced by the takeover recorded at entry 7"),
        "{why}"
    );
}

/// Approvals that name the key of home's current writer (officials deceived into approving it),
/// or no key at all (a format-4 approval), make no takeover: a promotion by a key the takeover
/// would fence, or by any key an approval does not name, fences no one.
#[test]
fn approvals_for_homes_writer_or_for_no_key_make_no_takeover() {
    let w = world(2, 5);
    let head = w.start();
    let by_home = w.next(&w.home, &head, promoted(w.quorum_for(&head, &w.home)));
    let keyless = w.next(
        &w.embassy,
        &by_home,
        promoted(vec![
            w.approve_key(&w.approvers[0], &head, Some(HOST), None),
            w.approve_key(&w.approvers[1], &head, Some(HOST), None),
        ]),
    );
    let home_after = w.next(&w.home, &keyless, version(15));
    let h = w.history();
    let why = refusal(&h, &by_home).expect("home's writer key was promoted by approvals");
    assert!(why.contains("a current writer of the dataset"), "{why}");
    let why = refusal(&h, &keyless).expect("approvals naming no key made a takeover");
    assert!(why.contains("signed by no named key"), "{why}");
    assert_eq!(ids(&h)[4..], [by_home.id, keyless.id, home_after.id]);
}

/// Red team 6, the variant without a race: after the embassy's approved takeover, home signs a
/// competing `promoted` entry at the same sequence number with the same approvals (and writes on
/// it). The approvals name the embassy's key, so home's branch holds no authoritative promotion:
/// every verifier, a fresh one or home's own client that remembers home's branch, keeps the
/// embassy's takeover, with no unresolved fork, and rejects home's entry as a promotion that is
/// not authoritative beside the one that is (and what continues it).
#[test]
fn homes_competing_promotion_loses_the_fork() {
    let w = world(2, 5);
    let head = w.start();
    let approvals = w.quorum(&head);
    let p = w.next(&w.embassy, &head, promoted(approvals.clone()));
    let e = w.next(&w.embassy, &p, wal(2, 100, 300));
    let rival = w.put(
        &w.home,
        5,
        Some(&head),
        p.entry.time_ns,
        promoted(approvals),
    );
    let rival_v = w.next(&w.home, &rival, version(16));
    for remember in [None, Some((rival_v.entry.seq, rival_v.id))] {
        let h = history::load(&w.site, &w.config, DS, remember).unwrap();
        assert!(h.conflict.is_none(), "{remember:?}: {:?}", h.conflict);
        assert_eq!(ids(&h)[4..], [p.id, e.id], "{remember:?}");
        assert_eq!(refusal(&h, &p), None);
        let why = rejected_for(&h, &rival);
        assert!(
            why.contains("not authoritative") && why.contains("another entry took its sequence"),
            "{remember:?}: {why}"
        );
        let why = rejected_for(&h, &rival_v);
        assert!(
            why.contains("continues rejected entry"),
            "{remember:?}: {why}"
        );
    }
}

/// The root's or a configured signer's promotion is authoritative without approvals, also in a
/// vault without a promotion policy.
#[test]
fn a_configured_signers_promotion_fences_without_approvals() {
    let w = world(0, 4);
    let head = w.start();
    let p = w.next(&w.writer, &head, promoted(vec![]));
    let home_version = w.next(&w.home, &p, version(9));
    let h = w.history();
    assert_eq!(refusal(&h, &p), None);
    assert!(rejected_for(&h, &home_version).contains("fenced"));
}

/// A promotion forged with a sealing credential, without the approvals the policy needs (none,
/// too few, the same approver twice, non-approvers, another host, approvals of a deletion or a
/// minimum-age change): recorded as information, and nobody is fenced.
#[test]
fn a_forged_promotion_fences_no_one() {
    let w = world(2, 4);
    let head = w.start();
    let stranger = key(200);
    let a = |k: &SigningKey, host: Option<&str>| w.approve(k, &head, host);
    let min_age = approval::encode(
        &Approval {
            min_age_secs: Some(1),
            ..approval::decode(&w.config.vault_id, DS, "x", &a(&w.approvers[1], None)).unwrap()
        },
        &w.approvers[1],
    );
    let attempts: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("none", vec![]),
        ("one", vec![a(&w.approvers[0], Some(HOST))]),
        (
            "the same twice",
            vec![
                a(&w.approvers[0], Some(HOST)),
                a(&w.approvers[0], Some(HOST)),
            ],
        ),
        (
            "non-approvers",
            vec![a(&stranger, Some(HOST)), a(&key(201), Some(HOST))],
        ),
        (
            "another host",
            vec![
                a(&w.approvers[0], Some("home-1")),
                a(&w.approvers[1], Some("home-1")),
            ],
        ),
        (
            "deletion and min-age approvals",
            vec![a(&w.approvers[0], None), min_age],
        ),
    ];
    for (what, approvals) in attempts {
        let p = w.next(&w.embassy, &head, promoted(approvals));
        let e = w.next(&w.embassy, &p, version(20));
        let home_after = w.next(&w.home, &e, version(21));
        let h = w.history();
        let why = refusal(&h, &p).unwrap_or_else(|| panic!("{what}: the forged promotion fenced"));
        assert!(why.contains("not authoritative"), "{what}: {why}");
        assert_eq!(ids(&h)[4..], [p.id, e.id, home_after.id], "{what}");
        for r in [&p, &e, &home_after] {
            w.site
                .delete(&layout::ledger_entry(DS, r.entry.seq, &r.id))
                .unwrap();
        }
    }
}

/// Approvals that served one takeover cannot be replayed for a later one (by anyone), and an
/// approval naming an entry that is not in the accepted history does not count.
#[test]
fn a_replayed_approval_is_refused() {
    let w = world(2, 4);
    let head = w.start();
    let approvals = w.quorum(&head);
    let p1 = w.next(&w.embassy, &head, promoted(approvals.clone()));
    let v = w.next(&w.embassy, &p1, version(30));
    let again = w.next(&w.embassy, &v, promoted(approvals));
    let h = w.history();
    assert_eq!(refusal(&h, &p1), None);
    let why = refusal(&h, &again).expect("the replayed approvals made it authoritative");
    assert!(why.contains("cannot be replayed"), "{why}");
    // A relief credential the root grants after the takeover (not fenced, not yet a writer).
    let relief = key(4);
    let granted = w.next(&w.root, &again, grant(&relief));
    // An approval naming an entry the history does not hold (a forged id at a real seq).
    let mut ghost = granted.clone();
    ghost.id = ObjectId::of(b"not an entry");
    let g = w.next(
        &relief,
        &granted,
        promoted(vec![
            w.approve_key(&w.approvers[0], &ghost, Some(HOST), Some(&relief)),
            w.approve_key(&w.approvers[1], &ghost, Some(HOST), Some(&relief)),
        ]),
    );
    let why = refusal(&w.history(), &g).unwrap();
    assert!(
        why.contains("not an accepted entry before this one"),
        "{why}"
    );
    // Fresh approvals, named after the first takeover, do count.
    let fresh = w.next(&relief, &g, promoted(w.quorum_for(&g, &relief)));
    assert_eq!(refusal(&w.history(), &fresh), None);
}

/// An approval nobody used expires 48 hours after it was given (format 9): the embassy's key
/// cannot take over months later with approvals the officials gave for a crisis that passed,
/// and it cannot date its promotion back into their lifetime once home's history moved past it
/// (an entry dated before the entry it continues is not acceptable).
#[test]
fn an_unused_approval_expires_and_the_promotion_cannot_be_dated_back_into_its_lifetime() {
    const HOUR: i64 = 3600 * SEC;
    let w = world(2, 9);
    let head = w.start();
    let approvals = w.quorum(&head);
    // Home goes on writing for two days and more.
    let later = w.put(
        &w.home,
        head.entry.seq + 1,
        Some(&head),
        head.entry.time_ns + 49 * HOUR,
        version(40),
    );
    let stale = w.next(&w.embassy, &later, promoted(approvals.clone()));
    let h = w.history();
    let why = refusal(&h, &stale).expect("approvals two days old made a takeover authoritative");
    assert!(why.contains("expired 48 hours later"), "{why}");
    assert!(why.contains("ask the approvers again"), "{why}");
    // Home was not fenced: its next version is accepted.
    let home_again = w.next(&w.home, &stale, version(41));
    assert!(ids(&w.history()).contains(&home_again.id));
    for r in [&stale, &home_again] {
        w.site
            .delete(&layout::ledger_entry(DS, r.entry.seq, &r.id))
            .unwrap();
    }
    // Dated back into the approvals' lifetime: before the entry it continues, so not acceptable.
    let backdated = w.put(
        &w.embassy,
        later.entry.seq + 1,
        Some(&later),
        head.entry.time_ns + HOUR,
        promoted(approvals.clone()),
    );
    let h = w.history();
    assert!(
        !ids(&h).contains(&backdated.id),
        "a back-dated promotion was accepted"
    );
    assert!(
        h.rejected.iter().any(|x| x.id == backdated.id),
        "the back-dated promotion is not reported"
    );
    w.site
        .delete(&layout::ledger_entry(
            DS,
            backdated.entry.seq,
            &backdated.id,
        ))
        .unwrap();
    // Within the lifetime (the last nanosecond of it included) the same approvals count.
    let w = world(2, 9);
    let head = w.start();
    let on_time = w.put(
        &w.embassy,
        head.entry.seq + 1,
        Some(&head),
        head.entry.time_ns + 48 * HOUR,
        promoted(w.quorum(&head)),
    );
    assert_eq!(refusal(&w.history(), &on_time), None);
}

/// The embassy's key keeps approvals nobody used and, months later, forks the history back to
/// the entry they name, dating its promotion inside their lifetime: a branch holding an
/// authoritative promotion wins a fork (so home cannot undo a takeover), but home's history it
/// leaves out is reported (an integrity problem: verify fails and garbage collection keeps the
/// dataset whole), and what of it is dated more than 48 hours after the takeover is named as no
/// race: the custodians must decide. A race of home with a takeover gets no such warning.
#[test]
fn a_takeover_forked_back_to_old_approvals_leaves_out_home_history_only_loudly() {
    const HOUR: i64 = 3600 * SEC;
    let w = world(2, 9);
    let head = w.start();
    let approvals = w.quorum(&head);
    // Home writes for 60 days after the approvals were given, in the history every reader sees.
    let h1 = w.next(&w.home, &head, version(50));
    let h2 = w.put(
        &w.home,
        h1.entry.seq + 1,
        Some(&h1),
        head.entry.time_ns + 60 * 24 * HOUR,
        version(51),
    );
    // The embassy forks at entry 5, its promotion dated an hour after the approvals.
    let forked = w.put(
        &w.embassy,
        head.entry.seq + 1,
        Some(&head),
        head.entry.time_ns + HOUR,
        promoted(approvals.clone()),
    );
    let h = w.history();
    assert_eq!(
        refusal(&h, &forked),
        None,
        "the fork's promotion is authoritative"
    );
    let problems = h.problems(DS);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("more than 48 hours after it") && p.contains("custodians")),
        "home's 60 days were left out in silence: {problems:?}"
    );
    assert!(h.displaced_ids.contains(&h2.id), "{:?}", h.displaced_ids);
    for r in [&forked, &h1, &h2] {
        w.site
            .delete(&layout::ledger_entry(DS, r.entry.seq, &r.id))
            .unwrap();
    }
    // A race: home's competing entries are dated within hours of the takeover. The takeover
    // wins; what it leaves out is reported as left out, without the days-later warning.
    let race_home = w.next(&w.home, &head, version(52));
    let race_home2 = w.next(&w.home, &race_home, version(53));
    let takeover = w.next(&w.embassy, &head, promoted(approvals));
    let h = w.history();
    assert_eq!(refusal(&h, &takeover), None);
    assert!(ids(&h).contains(&takeover.id));
    assert!(!ids(&h).contains(&race_home2.id));
    let problems = h.problems(DS);
    assert!(
        !problems.iter().any(|p| p.contains("48 hours")),
        "{problems:?}"
    );
}

/// Red team 12: the writer a takeover fences (a sealing credential without `delete`, so the
/// fence leaves it no right) had its entries on the losing side of a fork the takeover won
/// listed as noise, silently, although they were acknowledged history (a rogue embassy forked
/// back to old approvals, dating its promotion inside their lifetime). They are left-out
/// history, an integrity problem that keeps garbage collection off the dataset, until the root
/// revokes the key on the accepted history (the custodians decided it was rogue).
#[test]
fn what_a_takeover_leaves_out_of_a_fenced_writer_is_reported_until_the_root_revokes_it() {
    const HOUR: i64 = 3600 * SEC;
    let w = world(2, 9);
    let writer = Event::SignerAdded {
        key: w.home.verifying_key().to_bytes(),
        role: "sealing".into(),
        rights: Right::sealing(false),
    };
    let g1 = w.put(&w.root, 1, None, 10 * SEC, writer);
    let g2 = w.next(&w.root, &g1, grant(&w.embassy));
    let v = w.next(&w.home, &g2, version(3));
    let head = w.next(&w.home, &v, wal(1, 0, 100));
    let approvals = w.quorum(&head);
    let h1 = w.put(
        &w.home,
        head.entry.seq + 1,
        Some(&head),
        head.entry.time_ns + HOUR,
        version(60),
    );
    let h2 = w.put(
        &w.home,
        h1.entry.seq + 1,
        Some(&h1),
        head.entry.time_ns + 10 * HOUR,
        version(61),
    );
    let forked = w.put(
        &w.embassy,
        head.entry.seq + 1,
        Some(&head),
        head.entry.time_ns + 2 * HOUR,
        promoted(approvals),
    );
    let h = w.history();
    assert_eq!(refusal(&h, &forked), None);
    assert!(h.displaced_ids.contains(&h1.id) && h.displaced_ids.contains(&h2.id));
    let problems = h.problems(DS);
    assert!(
        problems.iter().any(|p| p.contains("leaves out 2 entries")),
        "home's acknowledged entries left out in silence: {problems:?}"
    );
    // The custodians decide home's key was rogue: the root revokes it after the takeover.
    let revoked = w.next(
        &w.root,
        &forked,
        Event::SignerRevoked {
            key: w.home.verifying_key().to_bytes(),
            reason: "stolen".into(),
        },
    );
    let h = w.history();
    assert!(ids(&h).contains(&revoked.id));
    assert!(h.problems(DS).is_empty(), "{:?}", h.problems(DS));
}

/// A promotion approval names the head, which may be a version: it must not count as an
/// approval to delete that version.
#[test]
fn a_promotion_approval_does_not_delete_a_version() {
    let w = world(2, 4);
    let g1 = w.put(&w.root, 1, None, 10 * SEC, grant(&w.home));
    let v1 = w.next(&w.home, &g1, version(1));
    let v2 = w.next(&w.home, &v1, version(2));
    let forget = w.next(
        &w.home,
        &v2,
        Event::VersionsDeleted {
            seqs: vec![2],
            reason: "forget".into(),
            policy: None,
            as_of_ns: None,
            approvals: vec![serde_bytes::ByteBuf::from(w.approve(
                &w.approvers[0],
                &v1,
                Some(HOST),
            ))],
        },
    );
    let why = refusal(&w.history(), &forget).expect("a promotion approval deleted a version");
    assert!(
        why.contains("approves a promotion on embassy-1, not a deletion"),
        "{why}"
    );
}

/// A version-3 vault (no promotion policy, no fence) judges promotions as before: information,
/// accepted, fencing no one, whoever signs them.
#[test]
fn old_vaults_judge_promotions_as_before() {
    let w = world(0, 3);
    let head = w.start();
    let p = w.next(&w.writer, &head, promoted(vec![]));
    let s = w.next(&w.embassy, &p, promoted(vec![]));
    let home_after = w.next(&w.home, &s, version(9));
    let h = w.history();
    assert_eq!(ids(&h)[4..], [p.id, s.id, home_after.id]);
    assert!(h.records.iter().all(|r| r.refused.is_none()));
}

/// What an attacker holding home's credential writes after (or around) the takeover.
#[derive(Debug, Clone)]
enum Forged {
    Version,
    Wal { timeline: u32, end: u64 },
    Promotion,
}

impl Forged {
    fn event(&self, n: u8) -> Event {
        match self {
            Forged::Version => version(n),
            Forged::Wal { timeline, end } => wal(*timeline, 0, *end),
            Forged::Promotion => promoted(vec![]),
        }
    }
}

fn forged() -> impl Strategy<Value = Forged> {
    prop_oneof![
        Just(Forged::Version),
        (1u32..4, 1u64..1000).prop_map(|(timeline, end)| Forged::Wal { timeline, end }),
        Just(Forged::Promotion),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the attacker picks where its branch starts (at or below the promotion, or after
    /// it), how long it is, what it holds and how it is dated (times are the signer's choice:
    /// equal, earlier, far later), and even when this client remembers the attacker's head, the
    /// accepted history keeps the takeover and holds no entry by home after it.
    #[test]
    fn home_cannot_slip_under_the_fence(
        fork_at in 2u64..=8,
        events in proptest::collection::vec((forged(), -5i64..1_000_000), 1..6),
        remember in any::<bool>(),
    ) {
        let w = world(2, 4);
        let head = w.start();
        let p = w.next(&w.embassy, &head, promoted(w.quorum(&head)));
        let e6 = w.next(&w.embassy, &p, version(40));
        let e7 = w.next(&w.embassy, &e6, wal(2, 100, 200));
        // The legitimate entries 1..=7: the attacker continues any of them.
        let h0 = w.history();
        prop_assert_eq!(ids(&h0)[4..].to_vec(), vec![p.id, e6.id, e7.id]);
        let mut prev = h0.records[(fork_at - 2) as usize].clone();
        let mut last = None;
        for (i, (what, dt)) in events.iter().enumerate() {
            let time = prev.entry.time_ns.saturating_add(dt.saturating_mul(SEC / 1000));
            let r = w.put(&w.home, prev.entry.seq + 1, Some(&prev), time, what.event(50 + i as u8));
            last = Some((r.entry.seq, r.id));
            prev = r;
        }
        let h = history::load(&w.site, &w.config, DS, if remember { last } else { None }).unwrap();
        prop_assert!(h.conflict.is_none(), "{:?}", h.conflict);
        prop_assert_eq!(ids(&h), ids(&h0));
        prop_assert_eq!(refusal(&h, &p), None);
        let home = w.home.verifying_key().to_bytes();
        prop_assert!(h.records.iter().all(|r| r.entry.seq <= 5 || r.entry.signer != home));
    }
}

/// WAL log objects: a fenced writer keeps what it streamed before the takeover that an anchor
/// covers: the ledger's anchors before it, and the `promoted` entry's anchor of the WAL the
/// promoted server replayed (through `prev`, back to the previous anchor). Any other object it
/// signs is not valid, below the switch point too: red team 8 forged old-timeline WAL below it
/// with home's fenced key, and readers took it. The promoting writer is not fenced.
#[test]
fn fenced_wal_is_valid_only_where_an_anchor_or_the_promotion_covers_it() {
    use embassy_core::history::ledger::ReplayedWal;
    use embassy_core::history::rights::Authority;
    use embassy_core::history::wal_authority::WalAuthority;
    use std::collections::HashMap;
    let w = world(2, 4);
    let head = w.start();
    // Home's anchored object (entry 4 names it), two unanchored pieces after it (p1, p2), and a
    // forged piece over p1's range that the thief signed with home's key after the takeover.
    let anchored = ObjectId::of(&100u64.to_le_bytes());
    let (p1, p2, forged) = (
        ObjectId::of(b"p1"),
        ObjectId::of(b"p2"),
        ObjectId::of(b"forged"),
    );
    let mut event = promoted(w.quorum(&head));
    if let Event::Promoted { replayed, lsn, .. } = &mut event {
        *lsn = 140;
        *replayed = Some(ReplayedWal {
            object: p2,
            timeline: 1,
            start: 120,
            end: 150,
        });
    }
    let p = w.next(&w.embassy, &head, event);
    let h = w.history();
    assert_eq!(ids(&h).last(), Some(&p.id));
    assert_eq!(refusal(&h, &p), None);
    let auth = WalAuthority::new(Authority::after(&w.config, DS, &[]), &h.records);
    let home = w.home.verifying_key().to_bytes();
    let embassy = w.embassy.verifying_key().to_bytes();
    let prevs: HashMap<ObjectId, Option<ObjectId>> = [
        (anchored, None),
        (p1, Some(anchored)),
        (p2, Some(p1)),
        (forged, Some(anchored)),
    ]
    .into_iter()
    .collect();
    let cover = auth.coverage(&prevs);
    assert_eq!(cover.get(&anchored), Some(&4));
    assert_eq!(cover.get(&p1), Some(&p.entry.seq));
    assert_eq!(cover.get(&p2), Some(&p.entry.seq));
    assert_eq!(cover.get(&forged), None);
    // Anchored by entry 4, or replayed by the promoted server: valid.
    for id in [anchored, p1, p2] {
        assert!(auth.allows(&home, cover.get(&id).copied()), "{id:?}");
    }
    // The forged piece, below the switch point on the old timeline: not valid; nor anything
    // else unanchored, nor under an anchor after the takeover that is not the promotion's.
    assert!(!auth.allows(&home, cover.get(&forged).copied()));
    assert!(!auth.allows(&home, None));
    assert!(!auth.allows(&home, Some(p.entry.seq + 1)));
    assert!(!auth.active_at_head(&home));
    // The promotion's anchor vouches for the writers before it only: a key never active then
    // gains nothing from it.
    assert!(!auth.allows(&[7u8; 32], Some(p.entry.seq)));
    // The embassy streams on.
    assert!(auth.allows(&embassy, None));
}
