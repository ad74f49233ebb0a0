//! Consistency groups end to end on two real PostgreSQL 15 clusters and a file tree, with the
//! real `embassy` program: both clusters' WAL streamed by `embassy pg stream`, a client that
//! commits person N to cluster `people` and then company N (referring to person N) to cluster
//! `companies`, group points taken under that load (`embassy group point`), and
//! `embassy restore --group G --at latest` bringing all three members back to one point.
//!
//! The invariant that tests one instant: the group lists `companies` before `people` (a
//! dataset before the ones it refers to), so companies' restore point is created first. The
//! client writes person N before company N, so at any moment the companies cluster holds at
//! most the people cluster's N: restored, every company finds its person (no dangling
//! reference), both clusters stop exactly at their restore points (their logs say so), and
//! the people cluster lies within the counters the client had committed before and after the
//! point was asked for. A points list that offered a forged (unsigned) entry or a point whose
//! WAL never became durable would pick the wrong point and break one of these.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::Vault;
use embassy_core::history::ledger::{self, Event, GroupMember, GroupPoint};
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::RootSecret;
use embassy_postgres::replication::{ConnConfig, ReplicationConnection};
use embassy_sites::LocalSite;
use embassy_testkit::cli::{postgres_home, PASS};
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const GROUP: &str = "registries";

/// A vault, key file and passphrase file in a folder owned by `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
}

impl Env {
    fn new() -> Self {
        let (dir, ids) = postgres_home("embassy-group-");
        let env = Env { dir, ids };
        env.run(&["init"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An embassy command as the postgres user.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.arg("--site")
            .arg(self.path("site"))
            .arg("--key-file")
            .arg(self.path("vault.key"))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--quiet")
            .args(args)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_KEY_FILE")
            .env_remove("EMBASSY_STATE_DIR")
            .env_remove("EMBASSY_PASSPHRASE")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .uid(self.ids.0)
            .gid(self.ids.1);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "embassy {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(!out.status.success(), "embassy {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn durable(&self, dataset: &str) -> u64 {
        std::fs::read_to_string(self.path(&format!("durable-{dataset}.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    fn stream(&self, pg: &PgServer, dataset: &str) -> Stopper {
        let log = self.path(&format!("durable-{dataset}.log"));
        let child = self
            .cmd(&[
                "pg",
                "stream",
                dataset,
                "--conninfo",
                &pg.conninfo(),
                "--slot",
                "embassy_wal",
                "--create-slot",
                "--durable-log",
                log.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("embassy runs");
        Stopper(child)
    }

    /// The vault as this test process sees it (no remembered state).
    fn vault(&self) -> Vault {
        Vault::open(Arc::new(LocalSite::new(self.path("site")).unwrap())).unwrap()
    }

    /// The root key, read from the key file `embassy init` wrote.
    fn root(&self) -> RootSecret {
        let path = self.path("vault.key");
        let file = KeyFile::load(&path).unwrap();
        let root = file.open(PASS.as_bytes(), &path).unwrap();
        RootSecret::from_bytes(root.expose())
    }

    fn points(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["--json", "group", "points", GROUP]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["points"].as_array().unwrap().clone()
    }
}

/// Stops a child process (SIGTERM, then wait) when dropped, also when a test fails.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn connect(pg: &PgServer) -> ReplicationConnection {
    ReplicationConnection::connect_plain(&ConnConfig::parse(&pg.conninfo_socket()).unwrap())
        .unwrap()
}

/// The client: person N committed to `people`, then company N (referring to person N)
/// committed to `companies`; the newest N committed to each is published.
struct Client {
    stop: Arc<AtomicBool>,
    people: Arc<AtomicU64>,
    companies: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(people_pg: &PgServer, companies_pg: &PgServer) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let people = Arc::new(AtomicU64::new(0));
        let companies = Arc::new(AtomicU64::new(0));
        let (mut a, mut b) = (connect(people_pg), connect(companies_pg));
        let thread = {
            let (stop, people, companies) = (stop.clone(), people.clone(), companies.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    a.simple_query(&format!("INSERT INTO person VALUES ({n})"))
                        .unwrap();
                    people.store(n, Ordering::SeqCst);
                    b.simple_query(&format!("INSERT INTO company VALUES ({n}, {n})"))
                        .unwrap();
                    companies.store(n, Ordering::SeqCst);
                }
            })
        };
        Client {
            stop,
            people,
            companies,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the client ran without errors");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn max_of(r: &Restored, sql: &str) -> u64 {
    r.try_psql(sql).unwrap().trim().parse().unwrap()
}

#[test]
fn a_group_restores_two_clusters_under_load_to_one_point() {
    let people_pg = PgServer::start(PgOptions::default());
    let companies_pg = PgServer::start(PgOptions::default());
    people_pg.psql("CREATE TABLE person (n bigint PRIMARY KEY)");
    companies_pg.psql("CREATE TABLE company (n bigint PRIMARY KEY, person bigint NOT NULL)");
    for pg in [&people_pg, &companies_pg] {
        // The streaming role may create restore points (docs/operations.md).
        pg.psql("GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO embassy");
    }
    let env = Env::new();
    let streamers = vec![
        env.stream(&people_pg, "people"),
        env.stream(&companies_pg, "companies"),
    ];
    for d in ["people", "companies"] {
        wait_until("the first durable WAL", Duration::from_secs(30), || {
            env.durable(d) > 0
        });
    }
    for (d, pg) in [("people", &people_pg), ("companies", &companies_pg)] {
        env.run(&[
            "pg",
            "base-backup",
            d,
            "--conninfo",
            &pg.conninfo(),
            "--wal-streamed",
        ]);
    }
    // A file member: land parcels.
    let parcels = env.path("parcels");
    std::fs::create_dir_all(&parcels).unwrap();
    std::fs::write(parcels.join("parcel-1.txt"), b"parcel 1: owner person 1").unwrap();
    env.run(&["backup", "parcels", parcels.to_str().unwrap()]);
    // The agent's configuration naming the group (only the group is read by `group point`).
    let config = env.path("embassy.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"state\"\n[keys]\nfile = \"vault.key\"\n\
             passphrase_file = \"pass\"\n[[sites]]\nname = \"here\"\npath = \"site\"\n\
             [[datasets]]\nname = \"companies\"\nsource = {{ postgres = {{ conninfo = \"{}\" }} }}\n\
             mode = \"continuous\"\nrpo = \"1min\"\n\
             [[datasets]]\nname = \"people\"\nsource = {{ postgres = {{ conninfo = \"{}\" }} }}\n\
             mode = \"continuous\"\nrpo = \"1min\"\n\
             [[datasets]]\nname = \"parcels\"\nsource = {{ files = [\"parcels\"] }}\n\
             interval = \"1h\"\nrpo = \"2h\"\n\
             [[groups]]\nname = \"{GROUP}\"\nmembers = [\"companies\", \"people\", \"parcels\"]\n\
             interval = \"5min\"\n",
            companies_pg.conninfo(),
            people_pg.conninfo()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let mut client = Client::start(&people_pg, &companies_pg);
    wait_until("the client's first rows", Duration::from_secs(30), || {
        client.companies.load(Ordering::SeqCst) > 50
    });
    env.run(&["group", "point", GROUP, "--config", config]);
    std::thread::sleep(Duration::from_millis(500));
    // Point 2, the one the restore must reach: the people counter brackets it.
    let people_before = client.people.load(Ordering::SeqCst);
    let started = Instant::now();
    let out = env.run(&["--json", "group", "point", GROUP, "--config", config]);
    let people_after = client.people.load(Ordering::SeqCst);
    let taken: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(taken["number"], 2, "{taken}");
    println!(
        "group point under load: {:.2} s in all, restore points {:.2} ms apart",
        started.elapsed().as_secs_f64(),
        taken["spread_seconds"].as_f64().unwrap() * 1e3
    );
    std::thread::sleep(Duration::from_millis(500));
    client.finish();
    let written = client.people.load(Ordering::SeqCst);
    assert!(written > people_after, "the load went on after the point");

    // A point whose WAL cannot become durable (the companies stream stopped) is not recorded.
    drop(streamers);
    let said = env.fails(&["group", "point", GROUP, "--config", config, "--wait", "2"]);
    assert!(said.contains("did not become durable"), "{said}");
    assert_eq!(env.points().len(), 2);

    // A genuine signer's entry naming WAL the vault never held durably: listed, not offered.
    let vault = env.vault();
    let ledger_name = embassy_core::format::layout::group_ledger(GROUP);
    let history = vault.history(&ledger_name).unwrap();
    let Event::GroupPoint(mut ahead) = history.last().unwrap().entry.event.clone() else {
        panic!("the group's ledger ends with a group point")
    };
    ahead.number = 3;
    for m in &mut ahead.members {
        if let GroupMember::Postgres { lsn, .. } = m {
            *lsn += 256 << 20;
        }
    }
    let signer = env.root().writer_signing_key(0);
    let genuine = ledger::append(
        vault.site().as_ref(),
        &signer,
        &ledger_name,
        history.last(),
        Event::GroupPoint(ahead.clone()),
    )
    .unwrap();
    // A hostile site plants a newer point signed by a key the vault never pinned.
    let forged = GroupPoint {
        number: 4,
        ..history_point(&history)
    };
    let stranger = embassy_core::history::approval::SigningKey::from_bytes(&[7u8; 32]);
    ledger::append(
        vault.site().as_ref(),
        &stranger,
        &ledger_name,
        Some(&genuine),
        Event::GroupPoint(forged),
    )
    .unwrap();
    let listed = env.points();
    let numbers: Vec<u64> = listed
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [1, 2, 3],
        "the forged point is never listed: {listed:?}"
    );
    assert_eq!(listed[2]["restorable"], false, "{listed:?}");
    assert!(
        listed[2]["why_not"]
            .as_str()
            .unwrap()
            .contains("not durable"),
        "{listed:?}"
    );

    // The newest point cannot be restored: the restore refuses (never an older instant in
    // silence) and names point 2's time; asked for that time, every member comes back to 2.
    let root = env.path("restores");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(env.ids.0), Some(env.ids.1)).unwrap();
    let to = root.join("group");
    let said = env.fails(&[
        "restore",
        "--group",
        GROUP,
        "--at",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(said.contains("point 3, cannot be restored"), "{said}");
    let at = said
        .split("point 2, taken at ")
        .nth(1)
        .and_then(|rest| rest.split("Z:").next())
        .map(|t| format!("{t}Z"))
        .unwrap_or_else(|| panic!("no time of point 2 in {said}"));
    let out = env.run(&[
        "--json",
        "restore",
        "--group",
        GROUP,
        "--at",
        &at,
        "--to",
        to.to_str().unwrap(),
    ]);
    let done: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["point"]["number"], 2, "{done}");
    assert_eq!(
        std::fs::read(to.join("parcels/parcel-1.txt")).unwrap(),
        b"parcel 1: owner person 1"
    );
    let people = Restored::start(to.join("people"));
    let companies = Restored::start(to.join("companies"));
    people.wait_open(Duration::from_secs(120));
    companies.wait_open(Duration::from_secs(120));
    let point_name = format!("embassy-group-{GROUP}-2");
    for (r, name) in [(&people, "people"), (&companies, "companies")] {
        let log = r.log();
        assert!(
            log.contains(&format!(
                "recovery stopping at restore point \"{point_name}\""
            )),
            "{name} did not stop at {point_name}: {log}"
        );
    }
    let people_n = max_of(&people, "SELECT coalesce(max(n), 0) FROM person");
    let people_rows = max_of(&people, "SELECT count(*) FROM person");
    let companies_n = max_of(&companies, "SELECT coalesce(max(n), 0) FROM company");
    let companies_rows = max_of(&companies, "SELECT count(*) FROM company");
    println!(
        "restored to point 2: people {people_n} (client had {people_before}..{people_after} \
         around the point, {written} at the end), companies {companies_n}"
    );
    // Each cluster is a prefix of what the client wrote: nothing lost before the point.
    assert_eq!(people_rows, people_n);
    assert_eq!(companies_rows, companies_n);
    // The point lies where it was asked for, not at the end of the WAL.
    assert!(
        (people_before..=people_after).contains(&people_n),
        "people restored to {people_n}, outside {people_before}..={people_after}"
    );
    assert!(people_n < written, "restored to the point, not to the end");
    // The consistent cut: every company refers to a person that exists.
    assert!(
        companies_n <= people_n,
        "company {companies_n} refers to a person the people cluster does not hold ({people_n})"
    );
    assert!(companies_n > 0);

    // The agent takes the group's points on its interval, through the same operation.
    let agent_config = env.path("agent.toml");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("interval = \"5min\"", "interval = \"2s\"")
        .replace("\" } }", "\", slot = \"embassy_wal\" } }");
    assert!(text.contains("slot = \"embassy_wal\""), "{text}");
    std::fs::write(&agent_config, text).unwrap();
    let agent_log = std::fs::File::create(env.path("agent.log")).unwrap();
    let _agent = Stopper(
        env.cmd(&["agent", "--config", agent_config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(agent_log)
            .spawn()
            .unwrap(),
    );
    wait_until("the agent's group point", Duration::from_secs(120), || {
        env.points()
            .iter()
            .any(|p| p["number"] == 4 && p["restorable"] == true)
    });
    // The agent logs the point once its worker reports back (just after the entry is stored).
    wait_until(
        "the agent's log of point 4",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(env.path("agent.log"))
                .unwrap_or_default()
                .contains("group registries: point 4 recorded")
        },
    );
    // The group's ledger verifies like any other; the planted entry is reported, by path.
    let out = env.cmd(&["verify"]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("verify: {said}");
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("dataset group.registries: 4 ledger entries")
            && said.contains("NOISE (ignored): ledger/group.registries/")
            && said.contains("vault OK"),
        "{said}"
    );
}

fn history_point(history: &[embassy_core::history::ledger::Record]) -> GroupPoint {
    match &history.last().unwrap().entry.event {
        Event::GroupPoint(p) => p.clone(),
        other => panic!("not a group point: {other:?}"),
    }
}
