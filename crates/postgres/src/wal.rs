//! wal (under construction).
