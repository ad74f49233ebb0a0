//! `ops::open::open_vault` wraps every site in the retry layer, and a cancelled run stops
//! retrying: against an S3 endpoint nobody listens on (connection refused, a transient failure),
//! opening retries for about 1.5 s or more, but at once gives up when the run's cancellation
//! switch is set.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_ops::open::{open_vault, OpenOptions};

fn refused_location() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    format!("s3://nobody/v?endpoint=http://127.0.0.1:{port}&region=us-east-1")
}

fn open_for(cancel: Option<Arc<AtomicBool>>) -> (Duration, String) {
    // One test in this binary: setting the environment cannot race another thread.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let state = tempfile::tempdir().expect("a temporary folder");
    let mut options = OpenOptions::new(vec![refused_location()], state.path().to_path_buf());
    options.cancel = cancel;
    let t = Instant::now();
    let err = open_vault(&options).expect_err("nobody listens there");
    (t.elapsed(), err.to_string())
}

#[test]
fn opening_retries_transient_failures_until_the_run_is_cancelled() {
    let (retried, err) = open_for(None);
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(
        retried >= Duration::from_millis(1500),
        "no retries: {retried:?} ({err})"
    );
    let (cancelled, err) = open_for(Some(Arc::new(AtomicBool::new(true))));
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(
        cancelled < Duration::from_millis(500),
        "a cancelled run kept retrying: {cancelled:?} ({err})"
    );
}
