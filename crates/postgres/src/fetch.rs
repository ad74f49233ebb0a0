//! fetch (under construction).
