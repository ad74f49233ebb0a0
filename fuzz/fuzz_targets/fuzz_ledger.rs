#![no_main]
//! See `embassy_fuzz::ledger` for what this target feeds to which parser.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    embassy_fuzz::ledger(data);
});
