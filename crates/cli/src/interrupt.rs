//! Ctrl-C (SIGINT) and SIGTERM during a backup: the run stops before its version is recorded
//! (every later write is refused, `embassy_ops::open::CancellableSite`), and the user is told
//! so, how much this run already stored, and that running the same backup again reuses it.
//!
//! The run stops at its next write. When none comes within [`STOP_WITHIN`] (a source that
//! sends nothing, or a stretch of data already stored), the process ends then, with the same
//! message: that is safe as long as no ledger entry's write began, and none can begin once the
//! site refuses writes. A second signal ends the process at once.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::Result;
use embassy_ops::open::{OpenOptions, WriteTally};
use serde_json::json;

use crate::output;

/// The exit status after SIGINT (128 + 2, as shells report it).
const EXIT_SIGINT: u8 = crate::exit::INTERRUPTED;
/// The exit status after SIGTERM (128 + 15).
const EXIT_SIGTERM: u8 = crate::exit::TERMINATED;
/// How long a run may take to reach its next write after a signal before the process ends.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// What the signal handlers and the watcher share.
struct Flags {
    cancel: Arc<AtomicBool>,
    terminated: Arc<AtomicBool>,
    tally: Arc<WriteTally>,
    /// The interruption was reported (by the run's end or by the watcher), once.
    reported: AtomicBool,
}

impl Flags {
    /// The exit status when a signal came, else None.
    fn interrupted(&self) -> Option<u8> {
        if !self.cancel.load(Ordering::SeqCst) {
            None
        } else if self.terminated.load(Ordering::SeqCst) {
            Some(EXIT_SIGTERM)
        } else {
            Some(EXIT_SIGINT)
        }
    }

    /// Says (once) that no version of `dataset` was recorded, what this run stored, and that a
    /// rerun reuses it.
    fn say(&self, dataset: &str, json: bool) -> Result<()> {
        if self.reported.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let tally = &self.tally;
        let (objects, packs, bytes) = (tally.objects(), tally.packs(), tally.bytes());
        if json {
            crate::print_json(json!({
                "ok": false,
                "interrupted": true,
                "dataset": dataset,
                "version_recorded": false,
                "objects_stored": objects,
                "packs_stored": packs,
                "bytes_stored": bytes,
            }))?;
        }
        eprintln!(
            "interrupted: no version of {dataset} was recorded. This run stored {} at the \
             sites ({} of data, {} in all); they stay, and running the same backup again reuses \
             them: it stores only what is still missing.",
            output::size(bytes),
            counted(packs, "pack"),
            counted(objects, "object")
        );
        Ok(())
    }
}

/// A backup that Ctrl-C or SIGTERM may interrupt.
pub struct Interruptible {
    flags: Arc<Flags>,
}

impl Interruptible {
    /// Nothing caught yet: [`Interruptible::open_options`] first, [`Interruptible::catch`]
    /// once the passphrase was read (so that Ctrl-C still ends a prompt at once).
    pub fn new() -> Self {
        Self {
            flags: Arc::new(Flags {
                cancel: Arc::new(AtomicBool::new(false)),
                terminated: Arc::new(AtomicBool::new(false)),
                tally: Arc::new(WriteTally::default()),
                reported: AtomicBool::new(false),
            }),
        }
    }

    /// `options` with writes refused once a signal came, and counted.
    pub fn open_options(&self, options: OpenOptions) -> OpenOptions {
        OpenOptions {
            cancel: Some(self.flags.cancel.clone()),
            tally: Some(self.flags.tally.clone()),
            ..options
        }
    }

    /// From now on SIGINT and SIGTERM stop the backup of `dataset` instead of the process (a
    /// second one ends the process); says so on stderr when one comes, and ends the process
    /// itself when the run does not stop within [`STOP_WITHIN`] and has not begun recording.
    pub fn catch(&self, dataset: &str, json: bool) -> Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flags = &self.flags;
        let register = |result: std::io::Result<signal_hook::SigId>| {
            result
                .map(|_| ())
                .map_err(|e| embassy_core::Error::io("installing the Ctrl-C handler", e))
        };
        // The conditional exits first: they see the flag as the previous signal left it.
        register(signal_hook::flag::register_conditional_shutdown(
            SIGINT,
            i32::from(EXIT_SIGINT),
            flags.cancel.clone(),
        ))?;
        register(signal_hook::flag::register_conditional_shutdown(
            SIGTERM,
            i32::from(EXIT_SIGTERM),
            flags.cancel.clone(),
        ))?;
        register(signal_hook::flag::register(
            SIGTERM,
            flags.terminated.clone(),
        ))?;
        register(signal_hook::flag::register(SIGINT, flags.cancel.clone()))?;
        register(signal_hook::flag::register(SIGTERM, flags.cancel.clone()))?;
        let (flags, dataset) = (self.flags.clone(), dataset.to_string());
        let _ = std::thread::Builder::new()
            .name("interrupt".into())
            .spawn(move || watch(&flags, &dataset, json));
        Ok(())
    }

    /// After a backup failed: when a signal stopped it, says that no version was recorded,
    /// what this run stored and that a rerun reuses it, and gives the exit status. None when
    /// no signal came (the failure is the backup's own).
    pub fn report(&self, dataset: &str, json: bool) -> Result<Option<ExitCode>> {
        let Some(code) = self.flags.interrupted() else {
            return Ok(None);
        };
        self.flags.say(dataset, json)?;
        Ok(Some(ExitCode::from(code)))
    }
}

/// Waits for a signal, says it was heard, and ends the process when the run has not stopped
/// within [`STOP_WITHIN`] and no ledger entry's write began (none can begin any more: the site
/// refuses it), so no version of this run can be recorded.
fn watch(flags: &Flags, dataset: &str, json: bool) {
    let code = loop {
        if let Some(code) = flags.interrupted() {
            break code;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("interrupted: stopping before the version is recorded (Ctrl-C again quits at once)");
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if flags.tally.began_recording() || flags.reported.load(Ordering::SeqCst) {
        return; // the run ends by itself and says how
    }
    let _ = flags.say(dataset, json);
    std::process::exit(i32::from(code));
}

/// `1 pack`, `2 packs`.
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
