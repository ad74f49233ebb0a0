//! Ctrl-C (SIGINT) and SIGTERM during a backup: the run stops before its version is recorded
//! (every later write is refused, `embassy_ops::open::CancellableSite`), and the user is told
//! so, how much this run already stored, and that running the same backup again reuses it.
//! A second signal ends the process at once.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embassy_core::Result;
use embassy_ops::open::{OpenOptions, WriteTally};
use serde_json::json;

use crate::output;

/// The exit status after SIGINT (128 + 2, as shells report it).
const EXIT_SIGINT: u8 = 130;
/// The exit status after SIGTERM (128 + 15).
const EXIT_SIGTERM: u8 = 143;

/// A backup that Ctrl-C or SIGTERM may interrupt.
pub struct Interruptible {
    cancel: Arc<AtomicBool>,
    terminated: Arc<AtomicBool>,
    tally: Arc<WriteTally>,
}

impl Interruptible {
    /// Nothing caught yet: [`Interruptible::open_options`] first, [`Interruptible::catch`]
    /// once the passphrase was read (so that Ctrl-C still ends a prompt at once).
    pub fn new() -> Self {
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
            terminated: Arc::new(AtomicBool::new(false)),
            tally: Arc::new(WriteTally::default()),
        }
    }

    /// `options` with writes refused once a signal came, and counted.
    pub fn open_options(&self, options: OpenOptions) -> OpenOptions {
        OpenOptions {
            cancel: Some(self.cancel.clone()),
            tally: Some(self.tally.clone()),
            ..options
        }
    }

    /// From now on SIGINT and SIGTERM stop the run instead of the process (a second one ends
    /// the process); says so on stderr when one comes.
    pub fn catch(&self) -> Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let register = |result: std::io::Result<signal_hook::SigId>| {
            result
                .map(|_| ())
                .map_err(|e| embassy_core::Error::io("installing the Ctrl-C handler", e))
        };
        // The conditional exits first: they see the flag as the previous signal left it.
        register(signal_hook::flag::register_conditional_shutdown(
            SIGINT,
            i32::from(EXIT_SIGINT),
            self.cancel.clone(),
        ))?;
        register(signal_hook::flag::register_conditional_shutdown(
            SIGTERM,
            i32::from(EXIT_SIGTERM),
            self.cancel.clone(),
        ))?;
        register(signal_hook::flag::register(
            SIGTERM,
            self.terminated.clone(),
        ))?;
        register(signal_hook::flag::register(SIGINT, self.cancel.clone()))?;
        register(signal_hook::flag::register(SIGTERM, self.cancel.clone()))?;
        let cancel = self.cancel.clone();
        // Said as soon as the signal comes: the run itself stops at its next write.
        let _ = std::thread::Builder::new()
            .name("interrupt".into())
            .spawn(move || {
                while !cancel.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprintln!(
                    "interrupted: stopping before the version is recorded (Ctrl-C again quits at once)"
                );
            });
        Ok(())
    }

    /// The exit status when a signal came, else None.
    pub fn interrupted(&self) -> Option<u8> {
        if !self.cancel.load(Ordering::SeqCst) {
            None
        } else if self.terminated.load(Ordering::SeqCst) {
            Some(EXIT_SIGTERM)
        } else {
            Some(EXIT_SIGINT)
        }
    }

    /// After a backup of `dataset` failed: when a signal stopped it, says that no version was
    /// recorded, what this run stored and that a rerun reuses it, and gives the exit status.
    /// None when no signal came (the failure is the backup's own).
    pub fn report(&self, dataset: &str, json: bool) -> Result<Option<ExitCode>> {
        let Some(code) = self.interrupted() else {
            return Ok(None);
        };
        let (objects, packs, bytes) =
            (self.tally.objects(), self.tally.packs(), self.tally.bytes());
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
        Ok(Some(ExitCode::from(code)))
    }
}

/// `1 pack`, `2 packs`.
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
