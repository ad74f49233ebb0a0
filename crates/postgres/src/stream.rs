//! stream (under construction).
