//! A drain cut at a ledger entry (the site refuses it, goes away) leaves the site holding a
//! prefix of each history: every later entry of the queue waits for the next drain, so `verify`
//! never finds an entry whose predecessor is missing (issue 19).

use std::sync::Arc;

use embassy_core::format::layout;
use embassy_core::id::ObjectId;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, ObjectSink, Put, Site, SiteError};
use embassy_sites::SiteQueue;
use embassy_testkit::memory::MemorySite;

/// A site that refuses to store one path.
#[derive(Debug)]
struct RefusesOne(Arc<MemorySite>, String);

impl Site for RefusesOne {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        if path == self.1 {
            return Err(SiteError::Permanent {
                site: self.location().into(),
                operation: "put",
                path: path.into(),
                message: "Permission denied (the test)".into(),
            });
        }
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        self.0.get_to(path, sink)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

#[test]
fn a_drain_stops_a_history_at_the_first_entry_it_cannot_copy() {
    let state = tempfile::tempdir().unwrap();
    let from = Arc::new(MemorySite::named("memory:from"));
    let to = Arc::new(MemorySite::named("memory:to"));
    // The target holds the vault (its configuration): a queue drain, not a full comparison.
    for site in [&from, &to] {
        site.put(layout::CONFIG, b"config").unwrap();
    }
    let entries: Vec<String> = (1..=4u64)
        .map(|seq| {
            let bytes = format!("entry {seq}").into_bytes();
            let path = layout::ledger_entry("reg", seq, &ObjectId::of(&bytes));
            from.put(&path, &bytes).unwrap();
            path
        })
        .collect();
    let queue = SiteQueue::open(state.path(), "memory:to").unwrap();
    for p in &entries {
        queue.record_missing(p).unwrap();
    }
    let target = RefusesOne(to.clone(), entries[1].clone());
    let sources: Vec<Arc<dyn Site>> = vec![from.clone()];
    let report = embassy_sites::drain(&queue, &target, &sources, &Silent).unwrap();
    let held = to.lock();
    assert!(held.contains_key(&entries[0]));
    for p in &entries[1..] {
        assert!(
            !held.contains_key(p),
            "{p} copied although entry 2 before it is missing: {report:?}"
        );
    }
    drop(held);
    assert_eq!(report.remaining, 3, "{report:?}");
    // The next drain, the site writable again, copies the rest.
    let report = embassy_sites::drain(&queue, to.as_ref(), &sources, &Silent).unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    assert!(entries.iter().all(|p| to.lock().contains_key(p)));
}

/// Before a ledger entry reaches a site that is behind, its queue is drained from the other
/// sites, the down ones too: a site down for writes (a folder made read-only, a full disk) still
/// serves reads and may be the only holder of what the queue names. Drained from the sites up
/// only, the queued entry was "nowhere", dropped from the queue, and the next entry landed on a
/// site without its predecessor: a hole no later drain fills (the crash campaign, seed
/// 1796593640037832259 kill 7: `verify` found registry's entry 7 missing beside entry 8).
#[test]
fn an_entry_reaches_a_site_behind_only_after_what_it_lacks_even_from_a_down_site() {
    let state = tempfile::tempdir().unwrap();
    let behind = Arc::new(MemorySite::named("memory:behind"));
    let holder = Arc::new(MemorySite::named("memory:holder"));
    let other = Arc::new(MemorySite::named("memory:other"));
    for site in [&behind, &holder, &other] {
        site.put(layout::CONFIG, b"config").unwrap();
    }
    let entry = |seq: u64| {
        let bytes = format!("entry {seq}").into_bytes();
        (
            layout::ledger_entry("reg", seq, &ObjectId::of(&bytes)),
            bytes,
        )
    };
    // Entry 1 reached only `holder`; it is queued for `behind`.
    let (first, first_bytes) = entry(1);
    holder.put(&first, &first_bytes).unwrap();
    SiteQueue::open(state.path(), "memory:behind")
        .unwrap()
        .record_missing(&first)
        .unwrap();
    let sites: Vec<Arc<dyn Site>> = vec![behind.clone(), holder.clone(), other.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    // `holder` is down for writes in this run (its reads still answer).
    vault.mark_down("memory:holder");
    let (second, second_bytes) = entry(2);
    vault.put(&second, &second_bytes).unwrap();
    let held = behind.lock();
    assert!(
        !held.contains_key(&second) || held.contains_key(&first),
        "entry 2 reached the site behind without entry 1 (held only by the down site)"
    );
}

/// A writer killed while it stored a ledger entry leaves it at some sites only, and nothing in
/// any queue says so: only its session file, no longer locked, tells that it died mid-write.
/// The next entry (the restarted agent's) must not reach a site before that session is turned
/// into a full comparison and the site is caught up: written first, the site held the next
/// entry without the killed one, a gap `verify` calls damage although the full comparison then
/// queued would have filled it (crash campaign seed 1796593640037832259 kill 7).
#[test]
fn an_entry_waits_for_a_dead_writers_full_comparison_before_it_reaches_a_site() {
    let state = tempfile::tempdir().unwrap();
    let missed = Arc::new(MemorySite::named("memory:missed"));
    let got = Arc::new(MemorySite::named("memory:got"));
    let root = embassy_core::keys::RootSecret::generate();
    embassy_core::format::config::VaultConfig::new(&root)
        .create(got.as_ref(), &root)
        .unwrap();
    missed
        .put(layout::CONFIG, &got.get(layout::CONFIG).unwrap())
        .unwrap();
    let entry = |seq: u64| {
        let bytes = format!("entry {seq}").into_bytes();
        (
            layout::ledger_entry("reg", seq, &ObjectId::of(&bytes)),
            bytes,
        )
    };
    // The killed writer stored entry 1 at `got` and died before `missed` answered: its
    // session file stays (unlocked), and no queue names the entry.
    let (first, first_bytes) = entry(1);
    got.put(&first, &first_bytes).unwrap();
    let sessions = state.path().join("queues").join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    std::fs::write(sessions.join("999-1-killed"), "memory:missed\nmemory:got\n").unwrap();
    let sites: Vec<Arc<dyn Site>> = vec![missed.clone(), got.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    let (second, second_bytes) = entry(2);
    vault.put(&second, &second_bytes).unwrap();
    let held = missed.lock();
    assert!(
        !held.contains_key(&second) || held.contains_key(&first),
        "entry 2 reached the site without entry 1, which the killed writer left at the other \
         site only"
    );
    assert!(held.contains_key(&second), "caught up, then written");
}

/// A writer lists its ledger through the sites up in its run, while the drain before its entry
/// copies from the down ones too: entry 2 held only by a site down for this run (queued for the
/// other) is invisible to the writer, which appends its own entry 2; the drain then brought the
/// first entry 2 to the site, and the writer's landed beside it, two entries at one sequence
/// number (crash campaign seed 1796595018723602712 kill 50). The site is left out of that write
/// instead, and the write is not acknowledged: the history must be read again.
#[test]
fn an_entry_never_lands_beside_one_a_drain_just_brought_to_its_place() {
    let state = tempfile::tempdir().unwrap();
    let up = Arc::new(MemorySite::named("memory:up"));
    let down = Arc::new(MemorySite::named("memory:down"));
    for site in [&up, &down] {
        site.put(layout::CONFIG, b"config").unwrap();
    }
    let entry = |seq: u64, who: &str| {
        let bytes = format!("entry {seq} by {who}").into_bytes();
        (
            layout::ledger_entry("reg", seq, &ObjectId::of(&bytes)),
            bytes,
        )
    };
    let (first, first_bytes) = entry(1, "one");
    up.put(&first, &first_bytes).unwrap();
    down.put(&first, &first_bytes).unwrap();
    // Entry 2 reached only `down`; it is queued for `up`.
    let (theirs, theirs_bytes) = entry(2, "them");
    down.put(&theirs, &theirs_bytes).unwrap();
    SiteQueue::open(state.path(), "memory:up")
        .unwrap()
        .record_missing(&theirs)
        .unwrap();
    let sites: Vec<Arc<dyn Site>> = vec![up.clone(), down.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    vault.mark_down("memory:down");
    // The writer's listing (sites up only) ends at entry 1: it appends its own entry 2.
    let listed: Vec<String> = vault
        .list("ledger/reg/")
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(listed, vec![first.clone()]);
    let (ours, ours_bytes) = entry(2, "us");
    let put = vault.put(&ours, &ours_bytes);
    let held = up.lock();
    assert!(
        !(held.contains_key(&theirs) && held.contains_key(&ours)),
        "two entries at sequence number 2 at one site: {put:?}"
    );
    assert!(held.contains_key(&theirs), "the queued entry was copied");
    assert!(put.is_err(), "a forking entry is never acknowledged");
    drop(held);
    let queued = SiteQueue::open(state.path(), "memory:up")
        .unwrap()
        .pending()
        .unwrap();
    assert!(!queued.paths.contains(&ours), "{queued:?}");
}

/// A site that can be taken down and brought back: while down, every call fails as a site
/// that does not answer fails (retryably).
#[derive(Debug)]
struct Switchable(Arc<MemorySite>, std::sync::atomic::AtomicBool);

impl Switchable {
    fn new(site: Arc<MemorySite>) -> Arc<Self> {
        Arc::new(Self(site, std::sync::atomic::AtomicBool::new(false)))
    }
    fn set_down(&self, down: bool) {
        self.1.store(down, std::sync::atomic::Ordering::SeqCst);
    }
    fn answer(&self, operation: &'static str, path: &str) -> Result<(), SiteError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SiteError::Retryable {
                site: self.location().into(),
                operation,
                path: path.into(),
                message: "connection refused (the test took the site down)".into(),
            });
        }
        Ok(())
    }
}

impl Site for Switchable {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.answer("put", path)?;
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.answer("get", path)?;
        self.0.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        self.answer("get", path)?;
        self.0.get_to(path, sink)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.answer("get", path)?;
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.answer("list", prefix)?;
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.answer("delete", path)?;
        self.0.delete(path)
    }
}

/// Three memory sites holding one real vault configuration (a full comparison reads it) and
/// entry 1 of `reg`; the killed writer's session file under `state`, as a writer killed while it
/// stored `entry` (sent to `sent_to`) leaves it: its sites, then the entry it was storing.
fn three_sites_and_a_killed_writer(
    state: &std::path::Path,
    entry: &str,
    sent_to: &[&str],
) -> [Arc<MemorySite>; 3] {
    let sites = ["memory:a", "memory:b", "memory:c"].map(|n| Arc::new(MemorySite::named(n)));
    let root = embassy_core::keys::RootSecret::generate();
    embassy_core::format::config::VaultConfig::new(&root)
        .create(sites[0].as_ref(), &root)
        .unwrap();
    let (first, first_bytes) = entry_by(1, "the first writer");
    for site in &sites {
        for p in [layout::CONFIG, layout::CONFIG_SIGNATURE] {
            let bytes = sites[0].get(p).unwrap();
            site.put(p, &bytes).unwrap();
        }
        site.put(&first, &first_bytes).unwrap();
    }
    let sessions = state.join("queues").join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let holders: Vec<String> = sent_to
        .iter()
        .map(|s| embassy_sites::queue::holder_key(s))
        .collect();
    std::fs::write(
        sessions.join("999-1-killed"),
        format!(
            "memory:a\nmemory:b\nmemory:c\n\t{entry} {}\n",
            holders.join(",")
        ),
    )
    .unwrap();
    sites
}

fn entry_by(seq: u64, who: &str) -> (String, Vec<u8>) {
    let bytes = format!("entry {seq} by {who}").into_bytes();
    (
        layout::ledger_entry("reg", seq, &ObjectId::of(&bytes)),
        bytes,
    )
}

/// Entries at `seq` of `reg` a site holds.
fn entries_at(site: &MemorySite, seq: u64) -> Vec<String> {
    let place = format!("{}{seq:016}-", layout::ledger_prefix("reg"));
    let mut held: Vec<String> = site
        .lock()
        .keys()
        .filter(|p| p.starts_with(&place))
        .cloned()
        .collect();
    held.sort();
    held
}

/// Issue 19, down sites left out of the writer's view of the ledger. A writer killed while it
/// stored entry 2 reached only site C; C went down; the next writer, reading its ledger from A
/// and B (C down for its run), saw entry 1 as the head and wrote its own entry 2 there, after a
/// "full comparison" of A and B with the sites that answered counted as done. When C came back
/// the vault held two entries at sequence number 2 (the drain refused to copy either over the
/// other, for ever): a fork no rule of the format decides between two entries of one signer, so
/// a fresh reader's history ended at entry 1, and the second writer's acknowledged version with
/// it. Now the dead writer's session names the entry it was storing and the sites it sent it to:
/// A and B are behind until C has been asked, the second writer's entry is not acknowledged
/// (no site takes it), and once C is back the killed writer's entry reaches A and B.
#[test]
fn an_entry_only_a_down_site_holds_is_never_written_over_by_the_next_writer() {
    let state = tempfile::tempdir().unwrap();
    let (killed, killed_bytes) = entry_by(2, "the killed writer");
    let [a, b, c] = three_sites_and_a_killed_writer(
        state.path(),
        &killed,
        &["memory:a", "memory:b", "memory:c"],
    );
    c.put(&killed, &killed_bytes).unwrap();
    let c_switch = Switchable::new(c.clone());
    c_switch.set_down(true);
    let open = || {
        let sites: Vec<Arc<dyn Site>> = vec![a.clone(), b.clone(), c_switch.clone()];
        embassy_sites::ReplicatedSite::new(sites, 1)
            .unwrap()
            .with_queue(state.path())
            .unwrap()
    };
    let vault = open();
    // The second writer's view of the ledger: the sites up, entry 1 the head.
    let (first, _) = entry_by(1, "the first writer");
    let listed: Vec<String> = vault
        .list("ledger/reg/")
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(listed, vec![first]);
    let (ours, ours_bytes) = entry_by(2, "the second writer");
    let put = vault.put(&ours, &ours_bytes);
    for site in [&a, &b] {
        assert!(
            !site.lock().contains_key(&ours),
            "{}: the second writer's entry 2 was written while C, down, held the killed \
             writer's entry 2 ({put:?})",
            site.location()
        );
    }
    assert!(put.is_err(), "an entry no site took is not acknowledged");
    drop(vault);
    // C comes back: the next run's catch-up brings the killed writer's entry to A and B.
    c_switch.set_down(false);
    let vault = open();
    let reports = vault.drain_queues(&Silent).unwrap();
    for site in [&a, &b, &c] {
        assert_eq!(
            entries_at(site, 2),
            vec![killed.clone()],
            "{}: {reports:?}",
            site.location()
        );
    }
    for r in &reports {
        assert_eq!(r.remaining, 0, "{r:?}");
    }
}

/// The other side of the rule above: a writer killed while it stored an entry that reached no
/// site, sent only to A and B (C down for its run, so C cannot hold it), does not hold up the
/// next writer while C is still down.
#[test]
fn a_dead_writers_entry_that_landed_nowhere_does_not_hold_up_the_next_writer() {
    let state = tempfile::tempdir().unwrap();
    let (killed, _) = entry_by(2, "the killed writer");
    let [a, b, c] =
        three_sites_and_a_killed_writer(state.path(), &killed, &["memory:a", "memory:b"]);
    let c_switch = Switchable::new(c.clone());
    c_switch.set_down(true);
    let sites: Vec<Arc<dyn Site>> = vec![a.clone(), b.clone(), c_switch.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    vault.mark_down("memory:c");
    let (ours, ours_bytes) = entry_by(2, "the second writer");
    vault.put(&ours, &ours_bytes).unwrap();
    for site in [&a, &b] {
        assert_eq!(
            entries_at(site, 2),
            vec![ours.clone()],
            "{}",
            site.location()
        );
    }
    drop(vault);
    // C back: it gets the second writer's entry, and the dead writer's is settled (nowhere).
    c_switch.set_down(false);
    let sites: Vec<Arc<dyn Site>> = vec![a.clone(), b.clone(), c_switch.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    let reports = vault.drain_queues(&Silent).unwrap();
    assert_eq!(entries_at(&c, 2), vec![ours.clone()], "{reports:?}");
    for r in &reports {
        assert_eq!(r.remaining, 0, "{r:?}");
    }
}

/// The writer's side of the rule above: before a ledger entry goes out, the session file names
/// it and the sites it goes to, so that a writer killed during the write leaves that behind.
#[derive(Debug)]
struct SeesSession(
    Arc<MemorySite>,
    std::path::PathBuf,
    std::sync::Mutex<Vec<String>>,
);

impl Site for SeesSession {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let mut sessions = String::new();
        for f in std::fs::read_dir(&self.1).unwrap() {
            sessions.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
        }
        self.2.lock().unwrap().push(sessions);
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

#[test]
fn a_writer_names_the_entry_and_its_sites_in_its_session_before_the_entry_goes_out() {
    let state = tempfile::tempdir().unwrap();
    let sessions = state.path().join("queues").join("sessions");
    let seen = Arc::new(SeesSession(
        Arc::new(MemorySite::named("memory:a")),
        sessions.clone(),
        std::sync::Mutex::new(Vec::new()),
    ));
    let other = Arc::new(MemorySite::named("memory:b"));
    let sites: Vec<Arc<dyn Site>> = vec![seen.clone(), other.clone()];
    let vault = embassy_sites::ReplicatedSite::new(sites, 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    let (entry, bytes) = entry_by(1, "the writer");
    vault.put(&entry, &bytes).unwrap();
    let keys = ["memory:a", "memory:b"].map(embassy_sites::queue::holder_key);
    let line = format!("\t{entry} {},{}\n", keys[0], keys[1]);
    let seen_then = seen.2.lock().unwrap().clone();
    assert!(seen_then[0].contains(&line), "{seen_then:?}");
    // Settled (stored at both sites), it is no longer named: the session stays small.
    let (second, second_bytes) = entry_by(2, "the writer");
    vault.put(&second, &second_bytes).unwrap();
    let seen_then = seen.2.lock().unwrap().clone();
    assert!(!seen_then[1].contains(&line), "{seen_then:?}");
    assert!(seen_then[1].contains(&second), "{seen_then:?}");
    for f in std::fs::read_dir(&sessions).unwrap() {
        let now = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert_eq!(now, "memory:a\nmemory:b\n");
    }
    drop(vault);
    assert_eq!(
        std::fs::read_dir(&sessions).unwrap().count(),
        0,
        "a clean end"
    );
}

type Meanwhile = Box<dyn FnOnce() + Send>;

/// A memory site that runs `meanwhile` (another writer) the first time `place` is listed.
#[derive(Debug)]
struct Hooked {
    inner: Arc<MemorySite>,
    place: String,
    meanwhile: std::sync::Mutex<Option<HookFn>>,
}

struct HookFn(Meanwhile);

impl std::fmt::Debug for HookFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another writer")
    }
}

impl Site for Hooked {
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
        let listed = self.inner.list(prefix)?;
        if prefix == self.place {
            let meanwhile = self.meanwhile.lock().unwrap().take();
            if let Some(HookFn(other_writer)) = meanwhile {
                other_writer();
            }
        }
        Ok(listed)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.inner.delete(path)
    }
}

/// Issue 19, two writers at once, on one host: an agent writing to A and B, and beside it
/// `embassy backup --site B --site A` given the agent's state folder. The host's ledger lock was
/// keyed by the whole location ("memory:a + memory:b" against "memory:b + memory:a"), so the two
/// never took turns: the interleaving attacked has Y list entry 2's place (free) and X append
/// its entry 2 whole before Y puts its own. Now an append takes one lock per site, in one order:
/// X waits for Y's turn, then finds Y's entry 2 and stops before writing anything.
#[test]
fn writers_of_one_host_take_turns_whatever_order_their_sites_are_given_in() {
    use embassy_core::format::manifest::{VersionKind, VersionStats};
    use embassy_core::history::ledger::{self, Event};
    let locks = tempfile::tempdir().unwrap();
    ledger::use_lock_folder(locks.path().to_path_buf());
    let version = |n: u8| Event::VersionAdded {
        wal_start: None,
        manifest: ObjectId::of(&[n]),
        kind: VersionKind::Stream,
        captured_at_ns: i64::from(n),
        stats: VersionStats::default(),
    };
    let key = embassy_core::keys::RootSecret::generate().writer_signing_key(0);
    let a = Arc::new(MemorySite::named("memory:a"));
    let b = Arc::new(MemorySite::named("memory:b"));
    let x_sites: Vec<Arc<dyn Site>> = vec![a.clone(), b.clone()];
    let x = Arc::new(embassy_sites::ReplicatedSite::new(x_sites, 2).unwrap());
    let first = ledger::append(x.as_ref(), &key, "reg", None, version(1)).unwrap();

    let place = format!("{}{:016}-", layout::ledger_prefix("reg"), 2);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let x_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished_in_ys_turn = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let meanwhile: Meanwhile = {
        let (x, key, first) = (x.clone(), key.clone(), first.clone());
        let (x_done, finished) = (x_done.clone(), finished_in_ys_turn.clone());
        Box::new(move || {
            let done = x_done.clone();
            std::thread::spawn(move || {
                let r = ledger::append(x.as_ref(), &key, "reg", Some(&first), version(2));
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                done_tx.send(r).unwrap();
            });
            // Y holds its turn for half a second: X must wait for it.
            std::thread::sleep(std::time::Duration::from_millis(500));
            finished.store(
                x_done.load(std::sync::atomic::Ordering::SeqCst),
                std::sync::atomic::Ordering::SeqCst,
            );
        })
    };
    let hooked = Arc::new(Hooked {
        inner: b.clone(),
        place: place.clone(),
        meanwhile: std::sync::Mutex::new(Some(HookFn(meanwhile))),
    });
    let y_sites: Vec<Arc<dyn Site>> = vec![hooked, a.clone()];
    let y = embassy_sites::ReplicatedSite::new(y_sites, 2).unwrap();
    let ys = ledger::append(&y, &key, "reg", Some(&first), version(3));
    let xs = done_rx.recv().unwrap();
    assert!(
        !finished_in_ys_turn.load(std::sync::atomic::Ordering::SeqCst),
        "writer X appended entry 2 while writer Y held its turn at the same sites (X: {xs:?}, \
         Y: {ys:?})"
    );
    let ys = ys.unwrap();
    assert!(xs.is_err(), "X found Y's entry 2 and stopped: {xs:?}");
    for site in [&a, &b] {
        let held: Vec<String> = site
            .list(&place)
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(held, vec![layout::ledger_entry("reg", 2, &ys.id)]);
    }
}
