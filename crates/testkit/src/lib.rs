//! The Data Embassy test kit (dev-only, never published): what the test files of every crate
//! share, in one place instead of a copy per file or `#[path]` includes.
//!
//! - [`memory::MemorySite`]: a site in memory, with fault injection, for unit-ish tests;
//! - [`conformance::run`]: the site conformance suite, one set of checks run on every `Site`;
//! - [`moto`]: a real S3 server (moto) on loopback; [`s3`] (feature `sites`): S3 sites on it;
//! - [`proxy::FaultProxy`]: a fault-injecting TCP proxy; [`hostile::HostileS3`]: a lying endpoint;
//! - [`pg`]: a real PostgreSQL 15 cluster in a temporary directory, and restored servers;
//! - [`cli`]: the `embassy` binary run with a temporary home, vault, state and key;
//! - [`pty::Pty`]: a program on a real pseudo-terminal (prompts, typing without echo).
//!
//! Missing parts (moto, PostgreSQL, openssl) make a test fail loudly with how to install them;
//! nothing here skips.

pub mod agent;
pub mod cli;
pub mod conformance;
pub mod hostile;
pub mod memory;
pub mod moto;
pub mod pg;
pub mod proxy;
pub mod pty;
#[cfg(feature = "sites")]
pub mod s3;
pub mod status_page;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
