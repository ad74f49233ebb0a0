//! The adversarial-site suite: a [`HostileSite`] plays the site operator (or an intruder there)
//! on a real vault in a real [`LocalSite`] folder, one attack per test, and every client is its
//! own machine: `Vault::open(site).with_state(StateStore::open(own dir, vault id))`.
//!
//! The hostile site scripts what each client sees: it hides paths, serves other bytes at a path,
//! serves an older copy of the whole vault taken earlier, or shows different objects to
//! different clients. It never holds keys, so it can only rearrange what honest writers stored.
//!
//! Each test asserts the exact detection (error variant or problem text: "rollback", "fork",
//! "missing", "replay", "does not chain", "not signed", the dataset, sequence numbers and ids),
//! that nothing panics, and that restores never hand out wrong bytes. Honest cases assert that
//! nothing is reported lost when it is not. Known limits (what no client can detect without
//! outside state) are asserted as they are, and counted separately in the tally that the suite
//! prints at the end (straight to stderr, so it shows without `--nocapture`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify::{self, VerifyReport};
use embassy_core::format::config::VaultConfig;
use embassy_core::format::layout;
use embassy_core::format::manifest;
use embassy_core::history::checkpoint;
use embassy_core::history::ledger::{self, Event, Record};
use embassy_core::history::state::StateStore;
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_core::Error;
use embassy_sites::LocalSite;
use embassy_sources::stream;

// ---------------------------------------------------------------------------------------------
// The hostile site
// ---------------------------------------------------------------------------------------------

/// The script key that applies to every client.
const EVERYONE: &str = "*";

/// What the site does for one client (or for [`EVERYONE`]).
#[derive(Default)]
struct View {
    /// Paths it pretends not to hold: exact paths, or prefixes ending in `/`.
    hidden: Vec<String>,
    /// Bytes it serves at a path instead of what is stored (or in addition, when nothing is).
    served: BTreeMap<String, Vec<u8>>,
    /// An older copy of the whole vault it serves (and writes to) instead of the real one.
    snapshot: Option<Arc<LocalSite>>,
    /// Prefixes under which it refuses writes (a site failing mid-backup).
    refused_puts: Vec<String>,
}

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Script {
    views: HashMap<String, View>,
    /// One-shot actions run when a client lists exactly this prefix (to interleave operations).
    hooks: Vec<(String, String, Hook)>,
}

impl Script {
    fn view(&mut self, client: &str) -> &mut View {
        self.views.entry(client.to_string()).or_default()
    }
}

/// A `Site` that wraps the real [`LocalSite`] of a vault and lies to each client as scripted.
#[derive(Clone)]
struct HostileSite {
    real: Arc<LocalSite>,
    client: String,
    location: String,
    script: Arc<Mutex<Script>>,
}

impl std::fmt::Debug for HostileSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostileSite({})", self.location)
    }
}

fn matches(rule: &str, path: &str) -> bool {
    path == rule || (rule.ends_with('/') && path.starts_with(rule))
}

impl HostileSite {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(&self) -> [String; 2] {
        [EVERYONE.to_string(), self.client.clone()]
    }

    fn hidden(&self, path: &str) -> bool {
        let script = self.script();
        self.keys().iter().any(|k| {
            script
                .views
                .get(k)
                .is_some_and(|v| v.hidden.iter().any(|r| matches(r, path)))
        })
    }

    /// The substitute bytes for a path, the client's own rule first.
    fn served(&self, path: &str) -> Option<Vec<u8>> {
        let script = self.script();
        self.keys().iter().rev().find_map(|k| {
            script
                .views
                .get(k)
                .and_then(|v| v.served.get(path).cloned())
        })
    }

    fn all_served(&self) -> BTreeMap<String, Vec<u8>> {
        let script = self.script();
        let mut out = BTreeMap::new();
        for k in self.keys() {
            if let Some(v) = script.views.get(&k) {
                out.extend(v.served.clone());
            }
        }
        out
    }

    /// What the client is served from: a snapshot, or the real folder.
    fn backend(&self) -> Arc<LocalSite> {
        let script = self.script();
        self.keys()
            .iter()
            .rev()
            .find_map(|k| script.views.get(k).and_then(|v| v.snapshot.clone()))
            .unwrap_or_else(|| self.real.clone())
    }

    fn not_found(&self, path: &str) -> SiteError {
        SiteError::NotFound {
            site: self.location.clone(),
            path: path.to_string(),
        }
    }
}

impl Site for HostileSite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let refused = {
            let script = self.script();
            self.keys().iter().any(|k| {
                script
                    .views
                    .get(k)
                    .is_some_and(|v| v.refused_puts.iter().any(|r| matches(r, path)))
            })
        };
        if refused {
            return Err(SiteError::Permanent {
                site: self.location.clone(),
                operation: "put",
                path: path.to_string(),
                message: "the site refuses the write".into(),
            });
        }
        self.backend().put(path, bytes)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        if self.hidden(path) {
            return Err(self.not_found(path));
        }
        match self.served(path) {
            Some(bytes) => Ok(bytes),
            None => self.backend().get(path),
        }
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        if self.hidden(path) {
            return Err(self.not_found(path));
        }
        match self.served(path) {
            Some(bytes) => {
                let end = offset.checked_add(len).filter(|&e| e <= bytes.len() as u64);
                match end {
                    Some(end) => Ok(bytes[offset as usize..end as usize].to_vec()),
                    None => Err(SiteError::Permanent {
                        site: self.location.clone(),
                        operation: "get",
                        path: path.to_string(),
                        message: "range beyond the end of the object".into(),
                    }),
                }
            }
            None => self.backend().get_range(path, offset, len),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        let hook = {
            let mut script = self.script();
            let at = script
                .hooks
                .iter()
                .position(|(c, p, _)| *c == self.client && p == prefix);
            at.map(|i| script.hooks.remove(i).2)
        };
        if let Some(hook) = hook {
            hook();
        }
        let served = self.all_served();
        let mut out: Vec<ObjectInfo> = self
            .backend()
            .list(prefix)?
            .into_iter()
            .filter(|i| !self.hidden(&i.path))
            .map(|mut i| {
                if let Some(bytes) = served.get(&i.path) {
                    i.size = bytes.len() as u64;
                }
                i
            })
            .collect();
        for (path, bytes) in &served {
            if path.starts_with(prefix)
                && !self.hidden(path)
                && !out.iter().any(|i| &i.path == path)
            {
                out.push(ObjectInfo {
                    path: path.clone(),
                    size: bytes.len() as u64,
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.backend().delete(path)
    }
}

// ---------------------------------------------------------------------------------------------
// A vault, its site and its clients
// ---------------------------------------------------------------------------------------------

struct World {
    tmp: tempfile::TempDir,
    real: Arc<LocalSite>,
    script: Arc<Mutex<Script>>,
    root: RootSecret,
    vault_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl World {
    fn new() -> Self {
        Self::with_witnesses(&[], 0)
    }

    /// A vault whose restores trust checkpoints cosigned by `quorum` of `witnesses`.
    fn with_witnesses(witnesses: &[[u8; 32]], quorum: u32) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let real = Arc::new(LocalSite::new(tmp.path().join("site")).unwrap());
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.witnesses = witnesses.iter().map(|w| hex(w)).collect();
        config.witness_quorum = quorum;
        config.create(real.as_ref(), &root).unwrap();
        Self {
            vault_id: config.vault_id,
            tmp,
            real,
            script: Arc::default(),
            root,
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The site as `client` reaches it.
    fn site(&self, client: &str) -> Arc<dyn Site> {
        Arc::new(HostileSite {
            real: self.real.clone(),
            client: client.to_string(),
            location: format!("{} (as served to {client})", self.real.location()),
            script: self.script.clone(),
        })
    }

    /// A machine: the vault through the hostile site, with the machine's own state folder.
    fn client(&self, name: &str) -> Vault {
        let vault = Vault::open(self.site(name)).unwrap();
        let state =
            StateStore::open(&self.tmp.path().join("state").join(name), &self.vault_id).unwrap();
        vault.with_state(state)
    }

    fn keyring(&self, vault: &Vault) -> Keyring {
        Keyring::from_root(RootSecret::from_bytes(self.root.expose()), vault.config()).unwrap()
    }

    fn backup(&self, vault: &Vault, dataset: &str, data: &[u8]) -> Version {
        self.try_backup(vault, dataset, data)
            .unwrap_or_else(|e| panic!("honest backup of {dataset} failed: {e}"))
    }

    fn try_backup(
        &self,
        vault: &Vault,
        dataset: &str,
        data: &[u8],
    ) -> embassy_core::Result<Version> {
        stream::backup_reader(vault, &self.keyring(vault), dataset, data, "test", &Silent)
    }

    /// Restores a stream version; returns what was written even when it failed.
    fn restore(
        &self,
        vault: &Vault,
        dataset: &str,
        selector: Option<&str>,
    ) -> (embassy_core::Result<Version>, Vec<u8>) {
        let mut out = Vec::new();
        let result = vault.find_version(dataset, selector).and_then(|version| {
            let keys = self.keyring(vault).dataset(dataset)?;
            let reader = VersionReader::open(vault.site().clone(), keys, &version)?;
            stream::restore_to(&reader, &mut out, &Silent)?;
            Ok(version)
        });
        (result, out)
    }

    fn hide(&self, client: &str, path: impl Into<String>) {
        self.script().view(client).hidden.push(path.into());
    }

    fn serve(&self, client: &str, path: impl Into<String>, bytes: Vec<u8>) {
        self.script().view(client).served.insert(path.into(), bytes);
    }

    /// Drops every rule for a client.
    fn reset(&self, client: &str) {
        self.script().views.remove(client);
    }

    fn stored(&self, path: &str) -> Vec<u8> {
        self.real.get(path).unwrap()
    }

    /// Checkpoint paths in the real folder, oldest first.
    fn checkpoints(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .real
            .list(checkpoint::CHECKPOINTS)
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        paths.sort();
        paths
    }

    /// Copies the real folder as it is now (the site's "backup" of itself, served later).
    fn snapshot(&self, name: &str) -> Arc<LocalSite> {
        let to = self.tmp.path().join(name);
        copy_dir(&self.tmp.path().join("site"), &to);
        Arc::new(LocalSite::new(to).unwrap())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "tmp" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Deterministic, incompressible test content.
fn payload(tag: &str, n: u64) -> Vec<u8> {
    let mut s = n ^ tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = Vec::with_capacity(48 * 1024);
    while out.len() < 48 * 1024 {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn entry_path(dataset: &str, record: &Record) -> String {
    layout::ledger_entry(dataset, record.entry.seq, &record.id)
}

/// The first 16 hex digits of an id, as state problems print them.
fn id16(id: &ObjectId) -> String {
    id.to_hex()[..16].to_string()
}

fn verify_report(vault: &Vault) -> VerifyReport {
    verify::verify(vault, None, &Silent).expect("verify runs to the end")
}

/// As `embassy witness`: verify without keys, then cosign the newest checkpoint.
fn witness(vault: &Vault, key: &RootSecret) -> Result<ObjectId, Vec<String>> {
    let report = verify_report(vault);
    if !report.is_ok() {
        return Err(report.problems);
    }
    let (histories, _) = vault.histories().unwrap();
    let (checkpoints, _) = vault.checkpoints(&histories).unwrap();
    let newest = checkpoints.last().expect("a checkpoint to cosign");
    checkpoint::cosign(
        vault.site().as_ref(),
        &newest.id,
        &checkpoint::witness_signing_key(key),
    )
    .unwrap();
    Ok(newest.id)
}

fn witness_public(key: &RootSecret) -> [u8; 32] {
    checkpoint::witness_signing_key(key)
        .verifying_key()
        .to_bytes()
}

/// The id part of a checkpoint path.
fn checkpoint_id(path: &str) -> ObjectId {
    layout::id_in_path(path).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tally
// ---------------------------------------------------------------------------------------------

/// Number of `#[test]` functions below: the last one to finish prints the final tally.
const TESTS: usize = 16;

static FINISHED: AtomicUsize = AtomicUsize::new(0);
static TRIED: AtomicUsize = AtomicUsize::new(0);
static DETECTED: AtomicUsize = AtomicUsize::new(0);
static LIMITS: AtomicUsize = AtomicUsize::new(0);
static HONEST: AtomicUsize = AtomicUsize::new(0);

/// Records what one test tried and found, and prints it when the test ends (also on failure).
struct Tally {
    test: &'static str,
    lines: Vec<String>,
}

impl Tally {
    fn new(test: &'static str) -> Self {
        Self {
            test,
            lines: Vec::new(),
        }
    }

    /// Asserts that `text` (an error or a verify problem) names the dataset and every needle,
    /// and counts the attack as detected.
    fn detected(&mut self, attack: &str, dataset: &str, text: &str, needles: &[&str]) {
        TRIED.fetch_add(1, Ordering::SeqCst);
        assert!(
            text.contains(dataset),
            "{attack}: the report does not name dataset {dataset}: {text}"
        );
        for needle in needles {
            assert!(
                text.contains(needle),
                "{attack}: the report does not say {needle:?}: {text}"
            );
        }
        DETECTED.fetch_add(1, Ordering::SeqCst);
        self.lines
            .push(format!("  detected  {attack}\n            -> {text}"));
    }

    /// An attack whose detection the test asserted itself (a refusal rather than a message).
    fn confirmed(&mut self, attack: &str, how: &str) {
        TRIED.fetch_add(1, Ordering::SeqCst);
        DETECTED.fetch_add(1, Ordering::SeqCst);
        self.lines
            .push(format!("  detected  {attack}\n            -> {how}"));
    }

    /// A documented limit: what this client cannot detect, asserted as it is.
    fn limit(&mut self, what: &str) {
        TRIED.fetch_add(1, Ordering::SeqCst);
        LIMITS.fetch_add(1, Ordering::SeqCst);
        self.lines.push(format!("  LIMIT     {what}"));
    }

    /// An honest case checked for false alarms.
    fn honest(&mut self, what: &str) {
        HONEST.fetch_add(1, Ordering::SeqCst);
        self.lines.push(format!("  honest    {what}"));
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let status = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        let mut text = format!("[adversary] {} ({status})\n", self.test);
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == TESTS {
            text.push_str(&format!(
                "[adversary] TALLY: {} attacks tried, {} detected, {} known limits (undetectable \
                 without outside state, asserted as documented), {} honest checks without a false alarm\n",
                TRIED.load(Ordering::SeqCst),
                DETECTED.load(Ordering::SeqCst),
                LIMITS.load(Ordering::SeqCst),
                HONEST.load(Ordering::SeqCst)
            ));
        }
        // Straight to the process's stderr: the test harness captures only print! macros.
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

fn history_problem(result: embassy_core::Result<Vec<Record>>, dataset: &str) -> String {
    match result {
        Err(e) => {
            match &e {
                Error::History { dataset: d, .. } => {
                    assert_eq!(d, dataset, "the error names the wrong dataset: {e}")
                }
                other => panic!("expected a history problem for {dataset}, got: {other}"),
            }
            assert!(e.is_integrity());
            e.to_string()
        }
        Ok(h) => panic!(
            "the attack on {dataset} went unnoticed: {} entries verified",
            h.len()
        ),
    }
}

fn problems_about<'a>(report: &'a VerifyReport, needle: &str) -> Vec<&'a String> {
    report
        .problems
        .iter()
        .filter(|p| p.contains(needle))
        .collect()
}

/// A noise line of a verify report that contains `needle`.
fn one_noise(report: &VerifyReport, needle: &str) -> String {
    let found: Vec<&String> = report.noise.iter().filter(|p| p.contains(needle)).collect();
    assert!(
        !found.is_empty(),
        "verify does not report {needle:?} as noise: {:?} (problems {:?})",
        report.noise,
        report.problems
    );
    found[0].clone()
}

fn one_problem(report: &VerifyReport, needle: &str) -> String {
    let found = problems_about(report, needle);
    assert!(
        !found.is_empty(),
        "verify does not report {needle:?}: {:?}",
        report.problems
    );
    found[0].clone()
}

// ---------------------------------------------------------------------------------------------
// 1. Deleting the newest version
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_01_delete_newest_version() {
    let mut t = Tally::new("1. the site deletes the newest version's ledger entry");
    let w = World::new();
    let a = w.client("a");
    w.backup(&a, "population", &payload("p", 1));
    let v2 = w.backup(&a, "population", &payload("p", 2));
    let head = a.history("population").unwrap();
    assert_eq!(head.len(), 2);
    let entry2 = entry_path("population", &head[1]);

    w.hide(EVERYONE, entry2.clone());

    // A machine that saw entry 2 detects the rollback, on every read path.
    let text = history_problem(a.history("population"), "population");
    t.detected(
        "newest entry deleted, seen by a client with state (history)",
        "population",
        &text,
        &[
            "rollback",
            "entry 2",
            &id16(&v2.ledger_id),
            "entries up to 1",
        ],
    );
    let err = a.versions("population").unwrap_err();
    assert!(err.to_string().contains("rollback"), "{err}");
    let (restored, out) = w.restore(&a, "population", None);
    let err = restored.unwrap_err();
    assert!(
        err.is_integrity() && err.to_string().contains("rollback"),
        "{err}"
    );
    assert!(out.is_empty());
    let report = verify_report(&a);
    let text = one_problem(&report, "rollback");
    t.detected(
        "newest entry deleted, seen by a client with state (verify)",
        "population",
        &text,
        &["entry 2"],
    );

    // A fresh machine finds it through the checkpoint written after version 2.
    let fresh = w.client("fresh");
    assert_eq!(fresh.history("population").unwrap().len(), 1);
    let report = verify_report(&fresh);
    let cp2 = checkpoint_id(w.checkpoints().last().unwrap());
    let text = one_problem(&report, "rollback");
    t.detected(
        "newest entry deleted, fresh client, through the checkpoint (verify)",
        "population",
        &text,
        &[
            &cp2.short(),
            "says entry 2",
            &v2.ledger_id.short(),
            "only entries up to 1",
        ],
    );
    // Documented limit: without witnesses, restore and versions read the ledger only; a fresh
    // machine restores version 1 as the latest. `verify` (above) is what catches it.
    let (restored, out) = w.restore(&fresh, "population", None);
    assert_eq!(restored.unwrap().seq, 1);
    assert_eq!(out, payload("p", 1));
    t.limit(
        "fresh client, no witness quorum: restore/versions trust the ledger and return version 1 \
         as latest (only verify consults checkpoints); the bytes restored are version 1's, intact",
    );

    // The data was never lost: the site still holds it, and an honest view serves it again.
    w.reset(EVERYONE);
    assert_eq!(a.history("population").unwrap().len(), 2);
    let (restored, out) = w.restore(&a, "population", None);
    assert_eq!(restored.unwrap().seq, 2);
    assert_eq!(out, payload("p", 2));
    t.honest("the hidden entry served again: no alarm, version 2 restores");
}

// ---------------------------------------------------------------------------------------------
// 2. Deleting an old version (a gap)
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_02_delete_old_entry_gap() {
    let mut t = Tally::new("2. the site deletes an old version's ledger entry (a gap)");
    let w = World::new();
    let a = w.client("a");
    for n in 1..=4 {
        w.backup(&a, "land", &payload("l", n));
    }
    let history = a.history("land").unwrap();
    w.hide(EVERYONE, entry_path("land", &history[1]));

    // A gap is damage: verify fails, the versions before it stay readable (the longest prefix
    // that can be proved), and the newest is never served as if it were version 1.
    for (who, client) in [
        ("client with state", &a),
        ("fresh client", &w.client("fresh")),
    ] {
        let h = client.history_full("land").unwrap();
        assert_eq!(h.records.len(), 1, "{who}: the accepted prefix is entry 1");
        let report = verify_report(client);
        let text = one_problem(&report, "gap");
        t.detected(
            &format!("entry 2 of 4 deleted, {who} (verify)"),
            "land",
            &text,
            &["entry 2 is missing", "entries 3..4"],
        );
        let (restored, out) = w.restore(client, "land", Some("1"));
        assert_eq!(restored.unwrap().seq, 1);
        assert_eq!(out, payload("l", 1));
        t.honest(&format!("{who}: version 1, before the gap, still restores"));
        let (restored, out) = w.restore(client, "land", Some("latest"));
        let err = restored.unwrap_err();
        assert!(err.is_integrity(), "{err}");
        assert!(out.is_empty());
        t.detected(
            &format!("entry 2 of 4 deleted, {who} (restore latest refuses)"),
            "land",
            &err.to_string(),
            &[
                "newest version cannot be proved",
                "entry 2 is missing",
                "land@1",
            ],
        );
        let (restored, out) = w.restore(client, "land", Some("3"));
        assert!(restored.is_err());
        assert!(out.is_empty());
    }
    // The first entry too.
    w.reset(EVERYONE);
    w.hide(EVERYONE, entry_path("land", &history[0]));
    let fresh2 = w.client("fresh2");
    let text = one_problem(&verify_report(&fresh2), "gap");
    t.detected(
        "entry 1 deleted, fresh client",
        "land",
        &text,
        &["entry 1 is missing", "entries 2..4"],
    );
    let err = fresh2.find_version("land", None).unwrap_err();
    assert!(err.is_integrity(), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. Rolling the whole site back to an older copy
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_03_whole_site_rollback() {
    let mut t = Tally::new("3. the site rolls the whole vault back to a copy taken earlier");
    let witness_key = RootSecret::generate();
    let w = World::with_witnesses(&[witness_public(&witness_key)], 1);
    let a = w.client("a");
    let wit = w.client("witness");
    w.backup(&a, "tax", &payload("t", 1));
    witness(&wit, &witness_key).unwrap();
    let old_copy = w.snapshot("copy-after-v1");
    let v2 = w.backup(&a, "tax", &payload("t", 2));
    witness(&wit, &witness_key).unwrap();
    assert!(verify_report(&a).is_ok());
    assert_eq!(a.witnessed_head("tax").unwrap(), Some(2));

    // From now on every client is served the copy (and writes land in it).
    w.script().view(EVERYONE).snapshot = Some(old_copy);

    let text = history_problem(a.history("tax"), "tax");
    t.detected(
        "whole-site rollback, client with state (history)",
        "tax",
        &text,
        &["rollback", "entry 2", &id16(&v2.ledger_id)],
    );
    let report = verify_report(&a);
    let text = one_problem(&report, "replay");
    assert!(text.contains("newest checkpoint at the site"), "{text}");
    let text = one_problem(&report, "dataset tax");
    t.detected(
        "whole-site rollback, client with state (verify)",
        "tax",
        &text,
        &["rollback"],
    );
    let err = witness(&wit, &witness_key).unwrap_err().join("\n");
    t.detected(
        "whole-site rollback, the witness refuses to cosign",
        "tax",
        &err,
        &["rollback"],
    );

    // A fresh machine sees a consistent older vault: the known limit.
    let fresh = w.client("fresh");
    assert!(verify_report(&fresh).is_ok());
    assert_eq!(fresh.history("tax").unwrap().len(), 1);
    assert_eq!(fresh.witnessed_head("tax").unwrap(), Some(1));
    let (restored, out) = w.restore(&fresh, "tax", None);
    assert_eq!(restored.unwrap().seq, 1);
    assert_eq!(out, payload("t", 1));
    t.limit(
        "fresh client on a whole-site rollback: verify OK, latest = version 1 (authentic, \
         witnessed); needs outside state (its own heads, or witness cosignatures kept elsewhere)",
    );

    // A writer that lost its state writes on the rolled-back site: a new entry 2 that no
    // witness will cosign, so witness-quorum restores keep refusing it.
    let b = w.client("b-rebuilt-home");
    let v2b = w.backup(&b, "tax", &payload("t", 22));
    assert_eq!(v2b.seq, 2);
    let err = witness(&wit, &witness_key).unwrap_err().join("\n");
    t.detected(
        "a new entry 2 written on the rolled-back site, the witness (state) refuses",
        "tax",
        &err,
        &["fork", "entry 2"],
    );
    let fresh2 = w.client("fresh2");
    assert_eq!(fresh2.versions("tax").unwrap().len(), 2);
    assert_eq!(
        fresh2.witnessed_head("tax").unwrap(),
        Some(1),
        "restores without --unwitnessed stop at the witnessed version 1; version 2 (seq {}) is \
         refused",
        v2b.seq
    );
    t.confirmed(
        "a version written on the rolled-back site is never witnessed",
        "witnessed head of tax stays 1 while the site serves 2: restores without --unwitnessed refuse it",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Reordering entries
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_04_reorder_entries() {
    let mut t = Tally::new("4. the site reorders ledger entries");
    let w = World::new();
    let a = w.client("a");
    for n in 1..=3 {
        w.backup(&a, "cadastre", &payload("c", n));
    }
    let h = a.history("cadastre").unwrap();
    let (p2, p3) = (entry_path("cadastre", &h[1]), entry_path("cadastre", &h[2]));
    let (b2, b3) = (w.stored(&p2), w.stored(&p3));

    // a) Swap the two files' names: each entry under the other's sequence number.
    let renamed2 = layout::ledger_entry("cadastre", 2, &h[2].id);
    let renamed3 = layout::ledger_entry("cadastre", 3, &h[1].id);
    w.hide(EVERYONE, p2.clone());
    w.hide(EVERYONE, p3.clone());
    w.serve(EVERYONE, renamed2.clone(), b3.clone());
    w.serve(EVERYONE, renamed3, b2.clone());
    // Each moved object is noise (it holds another sequence than its name): the history ends at
    // entry 1, which the client's state and the checkpoints (naming entry 3) show is a rollback.
    let text = history_problem(a.history("cadastre"), "cadastre");
    t.detected(
        "entries 2 and 3 swapped by name, client with state",
        "cadastre",
        &text,
        &["rollback", "entry 3"],
    );
    let report = verify_report(&w.client("f1"));
    let text = one_noise(&report, "holds sequence 3");
    t.detected(
        "entries 2 and 3 swapped by name, fresh client (noise)",
        "cadastre",
        &text,
        &[&renamed2],
    );
    let text = one_problem(&report, "rollback");
    t.detected(
        "entries 2 and 3 swapped by name, fresh client (checkpoint)",
        "cadastre",
        &text,
        &["says entry", "only entries up to 1"],
    );

    // b) Swap the two files' bytes, names kept.
    w.reset(EVERYONE);
    w.serve(EVERYONE, p2.clone(), b3);
    w.serve(EVERYONE, p3, b2);
    let report = verify_report(&w.client("f2"));
    let text = one_noise(&report, "do not hash");
    t.detected(
        "entries 2 and 3 swapped by content (noise)",
        "cadastre",
        &text,
        &[&p2],
    );
    let text = one_problem(&report, "rollback");
    t.detected(
        "entries 2 and 3 swapped by content (checkpoint)",
        "cadastre",
        &text,
        &["says entry", "only entries up to 1"],
    );

    // c) Splice: a valid entry 2 from another branch under the honest entry 3.
    w.reset(EVERYONE);
    w.hide("b", p2.clone());
    w.hide("b", entry_path("cadastre", &h[2]));
    let b = w.client("b");
    let other2 = w.backup(&b, "cadastre", &payload("c", 20));
    assert_eq!(other2.seq, 2);
    w.reset("b");
    w.hide(EVERYONE, p2);
    let report = verify_report(&w.client("f3"));
    let text = one_noise(&report, "does not chain to the accepted history");
    t.detected(
        "entry 2 replaced by a validly signed entry 2 of another branch (entry 3 is noise)",
        "cadastre",
        &text,
        &[&entry_path("cadastre", &h[2])],
    );
    let text = one_problem(&report, "fork");
    t.detected(
        "entry 2 replaced by a validly signed entry 2 of another branch (checkpoint)",
        "cadastre",
        &text,
        &[
            "says entry 2 is",
            &h[1].id.short(),
            &other2.ledger_id.short(),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Substituting manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_05_substitute_manifest() {
    let mut t = Tally::new("5. the site substitutes manifests from elsewhere");
    let w = World::new();
    let a = w.client("a");
    let land = w.backup(&a, "land", &payload("land", 1));
    let tax = w.backup(&a, "tax", &payload("tax", 1));
    let other = World::new();
    let oa = other.client("a");
    let foreign = other.backup(&oa, "land", &payload("foreign", 1));

    let land_path = layout::manifest("land", &land.manifest);
    let tax_bytes = w.stored(&layout::manifest("tax", &tax.manifest));
    let foreign_bytes = other.stored(&layout::manifest("land", &foreign.manifest));

    for (what, bytes) in [
        (
            "a validly encrypted manifest of another dataset of the vault",
            &tax_bytes,
        ),
        (
            "a validly encrypted manifest of another vault (same dataset name)",
            &foreign_bytes,
        ),
    ] {
        w.reset(EVERYONE);
        w.serve(EVERYONE, land_path.clone(), bytes.clone());
        let client = w.client("fresh");
        let report = verify_report(&client);
        let text = one_problem(&report, &format!("{land_path}: bytes do not hash"));
        t.detected(
            &format!("{what} at the original path (verify)"),
            "land",
            &text,
            &["substituted"],
        );
        // The substitute's own references are not followed: no index is accused of being
        // missing because a foreign manifest names it.
        assert!(
            problems_about(&report, "missing").is_empty(),
            "a substituted manifest's references are reported missing: {:?}",
            report.problems
        );
        let (restored, out) = w.restore(&client, "land", None);
        let err = restored.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { path, .. } if *path == land_path),
            "{err}"
        );
        assert!(
            out.is_empty(),
            "restore wrote bytes from a substituted manifest"
        );
        t.detected(
            &format!("{what} at the original path (restore)"),
            "land",
            &err.to_string(),
            &["do not hash"],
        );
    }

    // Trick: move tax's (validly signed) ledger entry 1 into land's ledger, hiding land's own.
    w.reset(EVERYONE);
    let land_entry = &a.history("land").unwrap()[0];
    let tax_entry = &a.history("tax").unwrap()[0];
    w.hide(EVERYONE, entry_path("land", land_entry));
    w.serve(
        EVERYONE,
        layout::ledger_entry("land", 1, &tax_entry.id),
        w.stored(&entry_path("tax", tax_entry)),
    );
    let client = w.client("fresh-2");
    assert!(client.history("land").unwrap().is_empty());
    let report = verify_report(&client);
    let text = one_noise(&report, "an entry of dataset tax");
    t.detected(
        "another dataset's ledger entry (naming its manifest) moved into this ledger (noise)",
        "land",
        &text,
        &["ledger/land/0000000000000001-"],
    );
    let text = one_problem(&report, "rollback");
    t.detected(
        "another dataset's ledger entry moved into this ledger, the real one hidden (checkpoint)",
        "land",
        &text,
        &["says entry 1", "no history for it"],
    );
    let (restored, out) = w.restore(&client, "land", None);
    assert!(restored.is_err());
    assert!(out.is_empty());

    // Trick: transplant a whole foreign version (entry, manifest, index, pack, all under their
    // own hash names) from the other vault, hiding the real entry.
    w.reset(EVERYONE);
    w.hide(EVERYONE, entry_path("land", land_entry));
    for info in other.real.list("").unwrap() {
        let foreign_object = [
            "ledger/land/",
            "manifests/land/",
            "index/land/",
            "packs/land/",
        ]
        .iter()
        .any(|p| info.path.starts_with(p));
        if foreign_object {
            w.serve(EVERYONE, info.path.clone(), other.stored(&info.path));
        }
    }
    // The foreign entry is rejected (not signed by a signer of this vault): what is left is an
    // empty history, which the checkpoints (and a client's state) show to be a rollback.
    let client = w.client("fresh-3");
    let h = client.history_full("land").unwrap();
    assert!(h.records.is_empty());
    assert_eq!(h.rejected.len(), 1, "{:?}", h.rejected);
    let report = verify_report(&client);
    let text = one_noise(&report, "rejected");
    t.detected(
        "a whole version transplanted from another vault (its entry is rejected as noise)",
        "land",
        &text,
        &["entry 1", "not (or no longer) a signer"],
    );
    let text = one_problem(&report, "rollback");
    t.detected(
        "a whole version transplanted from another vault (the real one is missing)",
        "land",
        &text,
        &["says entry 1", &land.ledger_id.short(), "no history for it"],
    );
    let (restored, out) = w.restore(&client, "land", None);
    assert!(restored.is_err());
    assert!(out.is_empty());
    let text = history_problem(a.history("land"), "land");
    t.detected(
        "a whole version transplanted from another vault, client with state",
        "land",
        &text,
        &["rollback", "entry 1"],
    );

    // Second line of defence, for a reference the site cannot forge (it would need a signed
    // entry): even when a ledger entry named a foreign manifest, the manifest would not open.
    w.reset(EVERYONE);
    let keyring = w.keyring(&a);
    let land_keys = keyring.dataset("land").unwrap();
    let err = manifest::decode(&land_keys, "tax-manifest", &tax_bytes).unwrap_err();
    assert!(
        err.to_string()
            .contains("dataset tax presented as dataset land"),
        "{err}"
    );
    let err = manifest::decode(&land_keys, "foreign-manifest", &foreign_bytes).unwrap_err();
    assert!(matches!(err, Error::WrongKey(_)), "{err}");
    // Tax's manifest relabelled with land's plaintext header: the AEAD and HPKE bindings fail.
    let land_bytes = w.stored(&land_path);
    let (_, land_end) = manifest::decode_header("land", &land_bytes).unwrap();
    let (_, tax_end) = manifest::decode_header("tax", &tax_bytes).unwrap();
    let mut relabelled = land_bytes[..land_end].to_vec();
    relabelled.extend_from_slice(&tax_bytes[tax_end..]);
    let relabelled_id = ObjectId::of(&relabelled);
    a.site()
        .put(&layout::manifest("land", &relabelled_id), &relabelled)
        .unwrap();
    let forged = Version {
        manifest: relabelled_id,
        ..land.clone()
    };
    let err = match VersionReader::open(a.site().clone(), land_keys, &forged) {
        Err(e) => e,
        Ok(_) => panic!("a relabelled manifest opened"),
    };
    t.detected(
        "another dataset's manifest relabelled with this dataset's header (AEAD binding)",
        "land",
        &err.to_string(),
        &["manifest"],
    );
    assert!(err.is_integrity(), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 6. A fork: different histories for different clients
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_06_fork() {
    let mut t = Tally::new("6. the site forks a history: v2 to client A, v2' to client B");
    let witness_key = RootSecret::generate();
    let w = World::with_witnesses(&[witness_public(&witness_key)], 1);
    let a = w.client("a");
    let wit = w.client("witness");
    w.backup(&a, "court", &payload("court", 1));
    witness(&wit, &witness_key).unwrap();
    let before_v2 = w.checkpoints();
    let v2 = w.backup(&a, "court", &payload("court", 2));
    let cp_a = w.checkpoints().last().unwrap().clone();
    assert!(!before_v2.contains(&cp_a));
    let cp_a_id = checkpoint_id(&cp_a);
    assert_eq!(witness(&wit, &witness_key).unwrap(), cp_a_id);
    let cosigs_a = format!("{}{}/", checkpoint::COSIGNATURES, cp_a_id);

    // The site hides v2 (and what proves it) from a second writer machine, which writes v2'.
    let v2_path = layout::ledger_entry("court", 2, &v2.ledger_id);
    for p in [v2_path.clone(), cp_a.clone(), cosigs_a.clone()] {
        w.hide("b", p);
    }
    let b = w.client("b");
    let v2b = w.backup(&b, "court", &payload("court", 22));
    assert_eq!(v2b.seq, 2);
    assert_ne!(v2b.ledger_id, v2.ledger_id);
    let cp_b = w.checkpoints().last().unwrap().clone();
    let v2b_path = layout::ledger_entry("court", 2, &v2b.ledger_id);
    for p in [v2b_path.clone(), cp_b.clone()] {
        w.hide("a", p);
    }
    // Both entries are really stored: each client sees only its own.
    assert_eq!(a.history("court").unwrap()[1].id, v2.ledger_id);
    assert_eq!(b.history("court").unwrap()[1].id, v2b.ledger_id);

    // Anyone who is shown both sees the fork.
    // Both are signed by the writer key and each is named by a checkpoint of that key: no rule
    // decides, so the fork is unresolved: the history ends at entry 1, verify fails.
    let both = w.client("c-sees-both");
    let h = both.history_full("court").unwrap();
    assert_eq!(h.records.len(), 1);
    assert!(h.conflict.is_some());
    let text = one_problem(&verify_report(&both), "fork");
    t.detected(
        "a client shown both entries 2",
        "court",
        &text,
        &[
            "fork",
            "compete at sequence 2",
            &v2.ledger_id.short(),
            &v2b.ledger_id.short(),
        ],
    );

    // A, which verified v2, is later served B's branch.
    w.reset("a");
    for p in [v2_path.clone(), cp_a.clone(), cosigs_a.clone()] {
        w.hide("a", p);
    }
    let text = history_problem(a.history("court"), "court");
    t.detected(
        "client A (state saw v2) later served v2'",
        "court",
        &text,
        &[
            "fork",
            "entry 2",
            &id16(&v2b.ledger_id),
            &id16(&v2.ledger_id),
        ],
    );
    // So is the witness, which saw v2: it refuses to cosign B's branch.
    w.reset("witness");
    for p in [v2_path.clone(), cp_a.clone(), cosigs_a.clone()] {
        w.hide("witness", p);
    }
    let err = witness(&wit, &witness_key).unwrap_err().join("\n");
    t.detected(
        "the witness (state saw v2) served v2': refuses to cosign",
        "court",
        &err,
        &["fork", "entry 2"],
    );

    // B, with a witness quorum of 1: v2' is not witnessed, so restores stop at v1.
    assert_eq!(b.witnessed_head("court").unwrap(), Some(1));
    assert_eq!(b.versions("court").unwrap().last().unwrap().seq, 2);
    t.confirmed(
        "client B (quorum 1) cannot restore v2' as trusted",
        "witnessed head of court stays 1: restores without --unwitnessed refuse seq 2",
    );
    // Moving the witness's cosignature of A's checkpoint under B's checkpoint does not help:
    // a cosignature counts for the checkpoint it signs, not for where it is stored.
    let cosig = w
        .real
        .list(&cosigs_a)
        .unwrap()
        .pop()
        .expect("the witness cosigned A's checkpoint");
    let name = cosig.path.rsplit('/').next().unwrap().to_string();
    w.serve(
        "b",
        format!(
            "{}{}/{name}",
            checkpoint::COSIGNATURES,
            checkpoint_id(&cp_b)
        ),
        w.stored(&cosig.path),
    );
    assert_eq!(b.witnessed_head("court").unwrap(), Some(1));
    t.confirmed(
        "a witness cosignature moved under B's checkpoint",
        "not counted for it: witnessed head of court still 1",
    );

    // B's view with A's cosigned checkpoint left visible (the site cannot forge it away from
    // everyone forever): verify reports the fork, and a trusted restore refuses.
    let d = w.client("d");
    w.hide("d", v2_path);
    w.hide("d", cp_b);
    let report = verify_report(&d);
    let text = one_problem(&report, "fork");
    t.detected(
        "fresh client D served v2' beside A's witnessed checkpoint (verify)",
        "court",
        &text,
        &[
            &cp_a_id.short(),
            "says entry 2 is",
            &v2.ledger_id.short(),
            &v2b.ledger_id.short(),
        ],
    );
    let err = d.witnessed_head("court").unwrap_err();
    t.detected(
        "fresh client D served v2' beside A's witnessed checkpoint (trusted restore)",
        "court",
        &err.to_string(),
        &["fork", "entry 2"],
    );
    assert!(err.is_integrity());
}

// ---------------------------------------------------------------------------------------------
// 7. Replaying an old checkpoint
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_07_replay_checkpoint() {
    let mut t = Tally::new("7. the site replays an old checkpoint");
    let w = World::new();
    let a = w.client("a");
    w.backup(&a, "pensions", &payload("pe", 1));
    let cp1 = w.checkpoints().last().unwrap().clone();
    w.backup(&a, "pensions", &payload("pe", 2));
    let cp2 = w.checkpoints().last().unwrap().clone();
    assert!(verify_report(&a).is_ok()); // remembers checkpoint 2

    w.hide(EVERYONE, cp2.clone());
    let report = verify_report(&a);
    let text = one_problem(&report, "replay");
    t.detected(
        "newer checkpoints hidden, the older one served",
        "",
        &text,
        &[
            "newest checkpoint at the site is",
            &checkpoint_id(&cp1).short(),
            &checkpoint_id(&cp2).to_hex()[..8],
        ],
    );

    w.hide(EVERYONE, checkpoint::CHECKPOINTS.to_string());
    let report = verify_report(&a);
    let text = one_problem(&report, "replay");
    t.detected(
        "every checkpoint hidden",
        "",
        &text,
        &["holds no checkpoint", &checkpoint_id(&cp2).to_hex()[..8]],
    );

    // The old checkpoint's bytes under a newer time, to pass it off as the newest.
    w.reset(EVERYONE);
    w.hide(EVERYONE, cp2.clone());
    let (_, rest) = cp2.split_once('/').unwrap();
    let (newer_time, _) = rest.split_once('-').unwrap();
    let disguised = format!(
        "{}{newer_time}-{}",
        checkpoint::CHECKPOINTS,
        checkpoint_id(&cp1)
    );
    w.hide(EVERYONE, cp1.clone());
    w.serve(EVERYONE, disguised.clone(), w.stored(&cp1));
    let report = verify_report(&w.client("fresh"));
    let text = one_noise(&report, &disguised);
    t.detected(
        "an old checkpoint stored under a newer time",
        "",
        &text,
        &["stored under another time"],
    );

    // Another vault's checkpoint.
    w.reset(EVERYONE);
    let other = World::new();
    other.backup(&other.client("a"), "pensions", &payload("x", 1));
    let foreign = other.checkpoints().pop().unwrap();
    w.serve(EVERYONE, foreign.clone(), other.stored(&foreign));
    let report = verify_report(&w.client("fresh-2"));
    let text = one_noise(&report, &foreign);
    t.detected(
        "another vault's checkpoint",
        "",
        &text,
        &[&format!("checkpoint of vault {}", other.vault_id)],
    );
    t.limit(
        "a fresh client cannot tell a replayed checkpoint when the ledgers are rolled back with \
         it (see attack 3)",
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Truncating or flipping bits of a ledger object
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_08_damage_ledger_object() {
    let mut t = Tally::new("8. the site truncates or flips bits of a ledger entry");
    let w = World::new();
    let a = w.client("a");
    for n in 1..=3 {
        w.backup(&a, "treasury", &payload("tr", n));
    }
    let h = a.history("treasury").unwrap();
    let p2 = entry_path("treasury", &h[1]);
    let original = w.stored(&p2);
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x04;
    let truncated = original[..original.len() - 9].to_vec();

    for (what, bytes) in [
        ("truncated", truncated),
        ("one bit flipped", flipped.clone()),
    ] {
        w.reset(EVERYONE);
        w.serve(EVERYONE, p2.clone(), bytes);
        for (who, client) in [
            ("client with state", &a),
            ("fresh client", &w.client("fresh")),
        ] {
            // The damaged entry 2 cannot be accepted: the history ends at entry 1, and the
            // entry 3 beyond it proves a gap (damage), named with the damaged object.
            let h = client.history_full("treasury").unwrap();
            assert_eq!(h.records.len(), 1, "{who}");
            let report = verify_report(client);
            let text = one_problem(&report, &p2);
            t.detected(
                &format!("entry 2 {what}, {who}"),
                "treasury",
                &text,
                &["gap", "entry 2 is missing", &p2, "do not hash"],
            );
            // The checkpoint is not turned into a second, wrong accusation of rollback.
            assert!(
                problems_about(&report, "rollback").is_empty(),
                "a damaged entry is reported as a rollback: {:?}",
                report.problems
            );
        }
    }

    // Flipped and stored under the new bytes' hash (so the name checks out): the signature
    // does not.
    w.reset(EVERYONE);
    let mut resigned = original.clone();
    let last = resigned.len() - 1;
    resigned[last] ^= 0x01;
    let renamed = layout::ledger_entry("treasury", 2, &ObjectId::of(&resigned));
    w.hide(EVERYONE, p2);
    w.serve(EVERYONE, renamed.clone(), resigned);
    let report = verify_report(&w.client("fresh-2"));
    let text = one_problem(&report, &renamed);
    t.detected(
        "entry 2 flipped and renamed to its new hash",
        "treasury",
        &text,
        &["gap", "signature does not verify"],
    );
    // Damage in a checkpoint is named too.
    w.reset(EVERYONE);
    let cp = w.checkpoints().pop().unwrap();
    let mut bytes = w.stored(&cp);
    bytes[20] ^= 0x80;
    w.serve(EVERYONE, cp.clone(), bytes);
    let report = verify_report(&w.client("fresh-3"));
    let text = one_noise(&report, &cp);
    t.detected(
        "a checkpoint with one bit flipped",
        "checkpoints/",
        &text,
        &["do not hash"],
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Dropping a log range in the middle
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_09_drop_log_range() {
    let mut t = Tally::new("9. the site drops a log range in the middle");
    let w = World::new();
    let a = w.client("a");
    let base = w.backup(&a, "registry-db", &payload("db", 1));
    let key = w.root.writer_signing_key(0);
    let mut head = a.history("registry-db").unwrap().pop();
    for i in 0..3u64 {
        let record = ledger::append(
            a.site().as_ref(),
            &key,
            "registry-db",
            head.as_ref(),
            Event::LogRangeAdded {
                manifest: base.manifest,
                timeline: 1,
                start: 0x100_0000 * (i + 1),
                end: 0x100_0000 * (i + 2),
                captured_at_ns: 1_000 + i as i64,
                history: None,
            },
        )
        .unwrap();
        head = Some(record);
    }
    let h = a.history("registry-db").unwrap();
    assert_eq!(h.len(), 4);
    assert!(verify_report(&a).is_ok());

    w.hide(EVERYONE, entry_path("registry-db", &h[2])); // the middle range (seq 3)
    for (who, client) in [
        ("client with state", &a),
        ("fresh client", &w.client("fresh")),
    ] {
        assert_eq!(client.history("registry-db").unwrap().len(), 2);
        let text = one_problem(&verify_report(client), "gap");
        t.detected(
            &format!("log range 2 of 3 dropped, {who}"),
            "registry-db",
            &text,
            &["entry 3 is missing", "entries 4..4"],
        );
        let err = client.find_version("registry-db", None).unwrap_err();
        assert!(err.is_integrity(), "{err}");
    }
    // The newest range dropped instead: a rollback for whoever saw it.
    w.reset(EVERYONE);
    w.hide(EVERYONE, entry_path("registry-db", &h[3]));
    let text = history_problem(a.history("registry-db"), "registry-db");
    t.detected(
        "newest log range dropped, client with state",
        "registry-db",
        &text,
        &["rollback", "entry 4"],
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Revoked and unknown signers
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_10_revoked_and_unknown_signers() {
    let mut t = Tally::new("10. entries signed by a revoked or never-added key");
    let w = World::new();
    let a = w.client("a");
    let base = w.backup(&a, "identity", &payload("id", 1));
    let root_key = w.root.root_signing_key();
    let host_key = RootSecret::generate().writer_signing_key(0);
    let site = a.site().clone();
    let log = |n: u64| Event::LogRangeAdded {
        manifest: base.manifest,
        timeline: 1,
        start: n,
        end: n + 1,
        captured_at_ns: n as i64,
        history: None,
    };
    let head = a.history("identity").unwrap().pop();
    let added = ledger::append(
        site.as_ref(),
        &root_key,
        "identity",
        head.as_ref(),
        Event::SignerAdded {
            key: host_key.verifying_key().to_bytes(),
            role: "host-b".into(),
            rights: embassy_core::history::rights::Right::sealing(false),
        },
    )
    .unwrap();
    let by_host =
        ledger::append(site.as_ref(), &host_key, "identity", Some(&added), log(1)).unwrap();
    assert_eq!(
        a.history("identity").unwrap().len(),
        3,
        "an added signer may append"
    );
    let revoked = ledger::append(
        site.as_ref(),
        &root_key,
        "identity",
        Some(&by_host),
        Event::SignerRevoked {
            key: host_key.verifying_key().to_bytes(),
            reason: "host-b decommissioned".into(),
        },
    )
    .unwrap();
    assert_eq!(a.history("identity").unwrap().len(), 4);
    let late =
        ledger::append(site.as_ref(), &host_key, "identity", Some(&revoked), log(2)).unwrap();
    assert_eq!(late.entry.seq, 5);
    // And carries on after its rejected entry.
    let later = ledger::append(site.as_ref(), &host_key, "identity", Some(&late), log(3)).unwrap();
    let host_hex = hex(&host_key.verifying_key().to_bytes()[..8]);
    for (who, client) in [
        ("client with state", &a),
        ("fresh client", &w.client("fresh")),
    ] {
        let h = client.history_full("identity").unwrap();
        assert_eq!(
            h.records.len(),
            4,
            "no entry of the revoked signer is accepted"
        );
        let rejected: Vec<(u64, ObjectId)> = h.rejected.iter().map(|r| (r.seq, r.id)).collect();
        assert_eq!(rejected, vec![(5, late.id), (6, later.id)]);
        let text = format!(
            "dataset identity: entry 5 rejected: {}",
            h.rejected[0].reason
        );
        t.detected(
            &format!("entry appended by a revoked signer, {who} (history)"),
            "identity",
            &text,
            &[&host_hex, "not (or no longer) a signer"],
        );
        // Noise, not damage: verify passes and names each rejected entry.
        let report = verify_report(client);
        assert!(report.is_ok(), "{:?}", report.problems);
        let text = one_noise(&report, &late.id.short());
        t.detected(
            &format!("entry appended by a revoked signer, {who} (verify)"),
            "identity",
            &text,
            &["entry 5", "rejected", &host_hex],
        );
        let text = one_noise(&report, &later.id.short());
        assert!(
            text.contains("rejected") && text.contains("continues rejected entry"),
            "{text}"
        );
        // The honest data is intact: version 1 restores.
        let (restored, out) = w.restore(client, "identity", None);
        assert_eq!(restored.unwrap().seq, 1);
        assert_eq!(out, payload("id", 1));
    }
    // The honest writer carries on at sequence 5, past the rejected entry: no fork.
    let v5 = w.backup(&a, "identity", &payload("id", 5));
    assert_eq!(v5.seq, 5);
    let (restored, out) = w.restore(&w.client("fresh-after"), "identity", None);
    assert_eq!(restored.unwrap().seq, 5);
    assert_eq!(out, payload("id", 5));
    t.honest("the honest writer appends past a rejected entry; its version restores");

    // A key never added.
    let w2 = World::new();
    let a2 = w2.client("a");
    w2.backup(&a2, "identity", &payload("id", 2));
    let stranger = RootSecret::generate().writer_signing_key(0);
    let head = a2.history("identity").unwrap().pop();
    let foreign = ledger::append(
        a2.site().as_ref(),
        &stranger,
        "identity",
        head.as_ref(),
        log(3),
    )
    .unwrap();
    let h = w2.client("fresh").history_full("identity").unwrap();
    assert_eq!(h.records.len(), 1);
    assert_eq!(h.rejected.len(), 1);
    let report = verify_report(&w2.client("fresh-2"));
    assert!(report.is_ok(), "{:?}", report.problems);
    let text = one_noise(&report, &foreign.id.short());
    t.detected(
        "entry signed by a key never added",
        "identity",
        &text,
        &["entry 2", "rejected", "not (or no longer) a signer"],
    );

    // Adding a signer needs the root key, not a writer key.
    let w3 = World::new();
    let a3 = w3.client("a");
    w3.backup(&a3, "identity", &payload("id", 3));
    let head = a3.history("identity").unwrap().pop();
    let sneaky = ledger::append(
        a3.site().as_ref(),
        &w3.root.writer_signing_key(0),
        "identity",
        head.as_ref(),
        Event::SignerAdded {
            key: stranger.verifying_key().to_bytes(),
            role: "sneaky".into(),
            rights: embassy_core::history::rights::Right::sealing(false),
        },
    )
    .unwrap();
    let report = verify_report(&w3.client("fresh"));
    assert!(report.is_ok(), "{:?}", report.problems);
    let text = one_noise(&report, &sneaky.id.short());
    t.detected(
        "signer added by a writer key",
        "identity",
        &text,
        &[
            "entry 2",
            "rejected",
            "signer added",
            "not the vault's root key",
        ],
    );
    assert_eq!(w3.client("fresh-2").history("identity").unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 11. Deleting a whole dataset
// ---------------------------------------------------------------------------------------------

#[test]
fn attack_11_delete_dataset() {
    let mut t = Tally::new("11. the site deletes a whole dataset");
    let w = World::new();
    let a = w.client("a");
    w.backup(&a, "court", &payload("court", 1));
    let c2 = w.backup(&a, "court", &payload("court", 2));
    w.backup(&a, "gazette", &payload("g", 1));
    let (ok, failed) = a.histories().unwrap();
    assert_eq!((ok.len(), failed.len()), (2, 0));

    for prefix in [
        "ledger/court/",
        "manifests/court/",
        "index/court/",
        "packs/court/",
    ] {
        w.hide(EVERYONE, prefix);
    }
    let (ok, failed) = a.histories().unwrap();
    assert!(ok.contains_key("gazette") && !ok.contains_key("court"));
    assert_eq!(failed.len(), 1, "{failed:?}");
    t.detected(
        "dataset deleted, client with state (histories)",
        "court",
        &failed[0].to_string(),
        &[
            "deleted",
            "no longer holds this dataset",
            "entry 2",
            &id16(&c2.ledger_id),
        ],
    );
    let report = verify_report(&a);
    let text = one_problem(&report, "no longer holds");
    t.detected(
        "dataset deleted, client with state (verify)",
        "court",
        &text,
        &["deleted"],
    );
    let text = history_problem(a.history("court"), "court");
    t.detected(
        "dataset deleted, client with state (history of it)",
        "court",
        &text,
        &["rollback", "no history"],
    );
    // A fresh client learns it from the checkpoints.
    let fresh = w.client("fresh");
    let report = verify_report(&fresh);
    let text = one_problem(&report, "dataset court");
    t.detected(
        "dataset deleted, fresh client, through the checkpoint (verify)",
        "court",
        &text,
        &["rollback", "no history for it"],
    );
    // Gazette is intact and not reported.
    assert!(
        problems_about(&report, "gazette").is_empty(),
        "{:?}",
        report.problems
    );
    t.honest("the untouched dataset beside it is not reported");
    // With the checkpoints gone too, a fresh client cannot know the dataset existed.
    w.hide(EVERYONE, checkpoint::CHECKPOINTS);
    assert!(verify_report(&w.client("fresh-2")).is_ok());
    t.limit(
        "a dataset deleted together with every checkpoint is invisible to a fresh client \
         (needs its own state, or checkpoints/witnesses kept elsewhere)",
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Honest cases: no false alarms
// ---------------------------------------------------------------------------------------------

#[test]
fn honest_12a_interrupted_backups_leave_no_false_alarm() {
    let mut t = Tally::new("12a. honest: interrupted-backup leftovers");
    let w = World::new();
    let a = w.client("a");
    let v1 = w.backup(&a, "population", &payload("p", 1));
    // A backup cut off before its ledger entry: the site refuses the write of the entry.
    w.script()
        .view("a")
        .refused_puts
        .push("ledger/".to_string());
    let err = w
        .try_backup(&a, "population", &payload("p", 2))
        .unwrap_err();
    assert!(err.to_string().contains("refuses"), "{err}");
    // One cut off before its manifest.
    w.reset("a");
    w.script()
        .view("a")
        .refused_puts
        .push("manifests/".to_string());
    assert!(w.try_backup(&a, "population", &payload("p", 3)).is_err());
    w.reset("a");
    // A stray staging file of the local-folder site.
    std::fs::write(w.tmp.path().join("site/tmp/0123456789abcdef.part"), b"half").unwrap();

    let v2 = w.backup(&a, "population", &payload("p", 2)); // reuses the leftovers
    let v3 = w.backup(&a, "population", &payload("p", 3));
    assert_eq!((v1.seq, v2.seq, v3.seq), (1, 2, 3));
    assert_eq!(
        v2.stats.new_chunks, 1,
        "only the new root tree: the interrupted run's data chunk is reused"
    );
    for client in [&a, &w.client("fresh")] {
        let report = verify_report(client);
        assert!(report.is_ok(), "{:?}", report.problems);
        assert!(
            !report.unreferenced.is_empty(),
            "the unreferenced manifest is listed"
        );
        for n in 1..=3u64 {
            let (restored, out) = w.restore(client, "population", Some(&n.to_string()));
            assert_eq!(restored.unwrap().seq, n);
            assert_eq!(out, payload("p", n));
        }
    }
    let deep = verify::verify(&a, Some(&w.keyring(&a)), &Silent).unwrap();
    assert!(deep.is_ok(), "{:?}", deep.problems);
    t.honest("verify (keyless and deep) OK with leftovers; every version restores");
}

#[test]
fn honest_12b_two_clients_alternating() {
    let mut t = Tally::new("12b. honest: two machines alternating backups on two datasets");
    let witness_key = RootSecret::generate();
    let w = World::with_witnesses(&[witness_public(&witness_key)], 1);
    let clients = [w.client("a"), w.client("b")];
    let wit = w.client("witness");
    let datasets = ["land", "tax"];
    let mut expected: BTreeMap<(&str, u64), Vec<u8>> = BTreeMap::new();
    for round in 0..3u64 {
        for (i, client) in clients.iter().enumerate() {
            let dataset = datasets[(i + round as usize) % 2];
            let n = round * 10 + i as u64;
            let v = w.backup(client, dataset, &payload(dataset, n));
            expected.insert((dataset, v.seq), payload(dataset, n));
            for c in clients.iter().chain([&wit]) {
                let report = verify_report(c);
                assert!(report.is_ok(), "false alarm: {:?}", report.problems);
                let (_, failed) = c.histories().unwrap();
                assert!(failed.is_empty(), "false alarm: {failed:?}");
            }
        }
        witness(&wit, &witness_key).unwrap();
    }
    for client in clients.iter().chain([&w.client("fresh")]) {
        for dataset in datasets {
            let head = client.versions(dataset).unwrap().last().unwrap().seq;
            assert_eq!(
                client.witnessed_head(dataset).unwrap(),
                Some(head),
                "the witnessed checkpoint names both datasets; each one's head is trusted"
            );
        }
        for ((dataset, seq), data) in &expected {
            let (restored, out) = w.restore(client, dataset, Some(&seq.to_string()));
            assert_eq!(restored.unwrap().seq, *seq);
            assert_eq!(&out, data);
        }
    }
    t.honest("6 alternating backups, 3 machines verifying after each: no alarm");
    t.honest("witness quorum 1 with two datasets: every version witnessed and restorable");
}

#[test]
fn honest_12c_verify_during_a_backup() {
    let mut t = Tally::new("12c. honest: a verify that runs while another machine backs up");
    let w = World::new();
    let a = w.client("a");
    w.backup(&a, "land", &payload("l", 1));
    w.backup(&a, "tax", &payload("t", 1));
    let verifier = w.client("verifier");
    assert!(verify_report(&verifier).is_ok());

    // The backup lands after verify listed the vault but before it read the ledgers, then
    // (second run) after it read the ledgers but before it read the checkpoints.
    for (n, prefix) in [(2u64, layout::LEDGER_ROOT), (3, checkpoint::CHECKPOINTS)] {
        let (writer, keyring) = (w.client("a"), w.keyring(&a));
        w.script().hooks.push((
            "verifier".into(),
            prefix.into(),
            Box::new(move || {
                stream::backup_reader(
                    &writer,
                    &keyring,
                    "land",
                    &payload("l", n)[..],
                    "t",
                    &Silent,
                )
                .unwrap();
            }),
        ));
        let report = verify_report(&verifier);
        assert!(w.script().hooks.is_empty(), "the backup ran inside verify");
        assert!(
            report.is_ok(),
            "a backup during verify is reported as damage: {:?}",
            report.problems
        );
        t.honest(&format!(
            "backup landing while verify reads {prefix}: no false alarm"
        ));
    }
    // A deep verify (with keys) during a backup: the new version's packs were not listed.
    let (writer, keyring) = (w.client("a"), w.keyring(&a));
    w.script().hooks.push((
        "verifier".into(),
        layout::LEDGER_ROOT.into(),
        Box::new(move || {
            stream::backup_reader(&writer, &keyring, "tax", &payload("t", 2)[..], "t", &Silent)
                .unwrap();
        }),
    ));
    let report = verify::verify(&verifier, Some(&w.keyring(&a)), &Silent).unwrap();
    assert!(w.script().hooks.is_empty());
    assert!(report.is_ok(), "{:?}", report.problems);
    t.honest("backup landing while verify --deep reads ledger/: no false alarm");
    let report = verify::verify(&verifier, Some(&w.keyring(&a)), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(verifier.history("land").unwrap().len(), 3);
    assert_eq!(verifier.history("tax").unwrap().len(), 2);
}

#[test]
fn honest_12e_witnessed_restore_during_a_backup() {
    let mut t =
        Tally::new("12e. honest: a witnessed restore while a version is stored and cosigned");
    let witness_key = RootSecret::generate();
    let w = World::with_witnesses(&[witness_public(&witness_key)], 1);
    let a = w.client("a");
    w.backup(&a, "land", &payload("l", 1));
    witness(&w.client("witness"), &witness_key).unwrap();
    let restorer = w.client("restorer");
    assert_eq!(restorer.witnessed_head("land").unwrap(), Some(1));
    // Version 2 is stored and cosigned after the restorer read the history, before it reads
    // the checkpoints (their cosignatures are listed first).
    let (writer, keyring, wit) = (w.client("a"), w.keyring(&a), w.client("witness"));
    let key = RootSecret::from_bytes(witness_key.expose());
    w.script().hooks.push((
        "restorer".into(),
        checkpoint::COSIGNATURES.into(),
        Box::new(move || {
            stream::backup_reader(
                &writer,
                &keyring,
                "land",
                &payload("l", 2)[..],
                "t",
                &Silent,
            )
            .unwrap();
            witness(&wit, &key).unwrap();
        }),
    ));
    let head = restorer.witnessed_head("land");
    assert!(
        w.script().hooks.is_empty(),
        "the backup ran inside the witness check"
    );
    assert_eq!(
        head.unwrap(),
        Some(2),
        "a version witnessed meanwhile is no contradiction"
    );
    t.honest("version stored and cosigned during a witnessed restore: no false alarm");
}

#[test]
fn honest_12d_hostile_site_that_tells_the_truth() {
    let mut t = Tally::new("12d. honest: the harness itself raises no alarm when it does not lie");
    let w = World::new();
    let a = w.client("a");
    let b = w.client("b");
    for n in 1..=3 {
        w.backup(&a, "gazette", &payload("g", n));
        w.backup(&b, "registry", &payload("r", n));
    }
    // Scripted rules for other clients and paths that do not exist change nothing.
    w.hide("someone-else", "ledger/");
    w.hide(EVERYONE, "ledger/gazette/0000000000000009-");
    for client in [&a, &b, &w.client("fresh")] {
        let report = verify_report(client);
        assert!(report.is_ok(), "{:?}", report.problems);
        assert!(report.unreferenced.is_empty(), "{:?}", report.unreferenced);
        let (ok, failed) = client.histories().unwrap();
        assert_eq!((ok.len(), failed.len()), (2, 0));
    }
    t.honest("3 machines, 6 versions, scripted rules that do not apply: no alarm");
}
