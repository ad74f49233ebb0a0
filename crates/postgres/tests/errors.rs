//! Wrong connection settings, a missing slot, `wal_level` too low, no WAL senders, no
//! REPLICATION privilege: each is a clear typed error saying what to change. And the
//! authentication paths that must work: SCRAM-SHA-256, md5, trust over a Unix socket.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::replication::{ConnConfig, ReplicationConnection};
use embassy_postgres::stream::{StreamConfig, WalStreamer};
use embassy_postgres::PgError;
use embassy_sites::local::LocalSite;
use embassy_testkit::pg::{free_port, PgOptions, PgServer, REPL_PASSWORD};

fn connect(conninfo: &str) -> Result<ReplicationConnection, PgError> {
    ReplicationConnection::connect(&ConnConfig::parse(conninfo).unwrap())
}

fn expect_err(conninfo: &str) -> PgError {
    match connect(conninfo) {
        Ok(_) => panic!("connecting with {conninfo:?} succeeded"),
        Err(e) => e,
    }
}

/// A new vault on a local-folder site under `dir`, and its keyring.
fn vault_at(dir: &std::path::Path) -> (Vault, Keyring) {
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    (vault, keyring)
}

/// Streams dataset `registry` from `pg` through `slot`, without reconnecting: an error ends the run.
fn stream_config(pg: &PgServer, slot: &str) -> StreamConfig {
    let mut cfg = StreamConfig::new("registry", ConnConfig::parse(&pg.conninfo()).unwrap(), slot);
    cfg.reconnect = false;
    cfg
}

#[test]
fn connection_errors_say_what_to_change() {
    let pg = PgServer::start(PgOptions::default());

    // Nothing listens on this port.
    let e = expect_err(&format!(
        "host=127.0.0.1 port={} user=embassy password=x",
        free_port()
    ));
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    let m = e.to_string();
    assert!(m.contains("cannot connect") && m.contains("port="), "{m}");

    // Wrong password.
    let e = expect_err(&pg.conninfo_tcp("embassy", "wrong"));
    assert!(matches!(e, PgError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("check password="), "{e}");

    // No password at all.
    let e = expect_err(&format!("host=127.0.0.1 port={} user=embassy", pg.port()));
    assert!(matches!(e, PgError::Auth { .. }), "{e:?}");

    // A role without REPLICATION.
    let e = expect_err(&pg.conninfo_tcp("plain", REPL_PASSWORD));
    assert!(matches!(e, PgError::NoReplicationPrivilege { .. }), "{e:?}");
    assert!(
        e.to_string().contains("ALTER ROLE \"plain\" REPLICATION"),
        "{e}"
    );

    // SCRAM-SHA-256, md5 and trust over the Unix socket all work.
    for conninfo in [
        pg.conninfo(),
        pg.conninfo_tcp("embassy_md5", REPL_PASSWORD),
        pg.conninfo_socket(),
    ] {
        let mut c = connect(&conninfo).unwrap_or_else(|e| panic!("{conninfo}: {e}"));
        let sys = c.identify_system().unwrap();
        assert_eq!(sys.timeline, 1);
        assert!(sys.xlogpos.0 > 0);
        assert!(!sys.system_id.is_empty());
    }

    // A missing slot, when the streamer may not create it.
    let dir = tempfile::tempdir().unwrap();
    let (vault, keyring) = vault_at(dir.path());
    let cfg = stream_config(&pg, "nosuchslot");
    let e = WalStreamer::run(&cfg, &vault, &keyring, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(e, PgError::MissingSlot { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("pg_create_physical_replication_slot('nosuchslot'"),
        "{e}"
    );
    // An invalid slot name is refused before it reaches the server.
    let cfg = StreamConfig::new(
        "registry",
        ConnConfig::parse(&pg.conninfo()).unwrap(),
        "Bad-Name",
    );
    let e = WalStreamer::run(&cfg, &vault, &keyring, &AtomicBool::new(false)).unwrap_err();
    assert!(
        e.to_string().contains("not a valid replication slot name"),
        "{e}"
    );
    // Bad connection strings.
    assert!(ConnConfig::parse("host=x bogus=1")
        .unwrap_err()
        .to_string()
        .contains("unknown key 'bogus'"));
}

#[test]
fn wal_level_minimal_is_reported_as_such() {
    // PostgreSQL refuses to start with wal_level = minimal and WAL senders, so such a server
    // runs with max_wal_senders = 0.
    let pg = PgServer::start(PgOptions {
        wal_level: "minimal".into(),
        max_wal_senders: 0,
        ..PgOptions::default()
    });
    let e = expect_err(&pg.conninfo());
    assert!(matches!(e, PgError::WalLevelTooLow { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("set wal_level = replica (or logical) in postgresql.conf and restart"),
        "{e}"
    );
}

#[test]
fn no_wal_senders_is_reported_as_such() {
    let pg = PgServer::start(PgOptions {
        max_wal_senders: 0,
        ..PgOptions::default()
    });
    let e = expect_err(&pg.conninfo());
    assert!(matches!(e, PgError::NoWalSenders { .. }), "{e:?}");
    assert!(e.to_string().contains("raise max_wal_senders"), "{e}");
}

/// The slot was dropped (and recreated) while the streamer was away, and the server removed the
/// WAL the vault needs next: a clear error saying WAL was lost and a new base backup is needed,
/// instead of silently streaming with a gap.
#[test]
fn wal_removed_from_the_server_is_reported_not_skipped() {
    let pg = PgServer::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (vault, keyring) = vault_at(dir.path());
    let mut cfg = stream_config(&pg, "embassy_wal");
    cfg.create_slot = true;
    // Stream a little, then stop.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| WalStreamer::run(&cfg, &vault, &keyring, &stop));
        pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
        std::thread::sleep(std::time::Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let p = h.join().unwrap().unwrap();
        assert!(p.durable.0 > 0);
    });
    // Someone drops the slot; the server moves on and removes the old segments.
    pg.psql("SELECT pg_drop_replication_slot('embassy_wal')");
    for _ in 0..3 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 200000)");
        pg.psql("SELECT pg_switch_wal()");
        pg.psql("CHECKPOINT");
    }
    let e = WalStreamer::run(&cfg, &vault, &keyring, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(e, PgError::WalGone { .. }), "{e:?}");
    assert!(e.to_string().contains("take a new base backup"), "{e}");
}

/// WAL of one dataset comes from one cluster: streaming another server into it is refused.
#[test]
fn another_cluster_is_refused() {
    let a = PgServer::start(PgOptions::default());
    let b = PgServer::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (vault, keyring) = vault_at(dir.path());
    let config = |pg: &PgServer| {
        let mut cfg = stream_config(pg, "embassy_wal");
        cfg.create_slot = true;
        cfg
    };
    let stop = AtomicBool::new(false);
    let cfg = config(&a);
    std::thread::scope(|s| {
        let h = s.spawn(|| WalStreamer::run(&cfg, &vault, &keyring, &stop));
        a.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
        std::thread::sleep(std::time::Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(h.join().unwrap().unwrap().durable.0 > 0);
    });
    let e = WalStreamer::run(&config(&b), &vault, &keyring, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(e, PgError::OtherCluster { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("point --conninfo at the dataset's own server"),
        "{e}"
    );
}
