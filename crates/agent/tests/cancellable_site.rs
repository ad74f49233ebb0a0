//! The agent's cancellable site (the wrapper that refuses writes once a run is abandoned) keeps
//! the site contract while it is not cancelled: the site conformance suite over an in-memory site
//! and over a local folder. Once cancelled, writes are refused for good and reads go on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use embassy_agent::run::CancellableSite;
use embassy_core::site::{Put, Site, SiteError};
use embassy_sites::LocalSite;
use embassy_testkit::conformance::{self, Expect};
use embassy_testkit::memory::MemorySite;

fn never_cancelled(inner: Arc<dyn Site>) -> Box<dyn Site> {
    Box::new(CancellableSite::new(
        inner,
        Arc::new(AtomicBool::new(false)),
    ))
}

#[test]
fn cancellable_site_over_memory_passes_conformance() {
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        || never_cancelled(Arc::new(MemorySite::default())),
    );
}

#[test]
fn cancellable_site_over_a_local_folder_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        || {
            let path = dir
                .path()
                .join(format!("vault-{}", n.fetch_add(1, Ordering::Relaxed)));
            never_cancelled(Arc::new(LocalSite::new(path).unwrap()))
        },
    );
}

#[test]
fn a_cancelled_site_refuses_writes_and_still_reads() {
    let inner = Arc::new(MemorySite::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let site = CancellableSite::new(inner.clone(), cancel.clone());
    assert_eq!(site.put("a/1", b"one").unwrap(), Put::Created);
    cancel.store(true, Ordering::SeqCst);
    let refused = site.put("a/2", b"two");
    assert!(
        matches!(refused, Err(SiteError::Permanent { .. })),
        "{refused:?}"
    );
    assert!(inner.lock().get("a/2").is_none(), "a refused write landed");
    assert_eq!(site.get("a/1").unwrap(), b"one");
    assert_eq!(site.get_range("a/1", 1, 2).unwrap(), b"ne");
    assert_eq!(site.list("a/").unwrap().len(), 1);
}
