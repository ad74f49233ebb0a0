//! The test harness itself starts a real PostgreSQL 15, runs SQL and pgbench.

use embassy_testkit::pg::{PgOptions, PgServer};

#[test]
fn harness_starts_postgres_runs_sql_and_pgbench() {
    let pg = PgServer::start(PgOptions::default());
    assert_eq!(pg.psql("SHOW wal_level"), "replica");
    assert_eq!(
        pg.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'embassy'"),
        "t"
    );
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    pg.pgbench(&["-c", "2", "-t", "20"]);
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_branches"), "1");
    let lsn = pg.current_lsn();
    assert!(lsn > 0x100_0000, "WAL advanced: {lsn:X}");
    pg.kill9();
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    pg.start_server();
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_branches"), "1");
}
