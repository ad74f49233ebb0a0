#![no_main]
//! See `embassy_fuzz::wal_records` for what this target feeds to which parser.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    embassy_fuzz::wal_records(data);
});
