//! status (under construction).
