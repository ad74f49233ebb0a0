//! One module per command: its clap arguments and its run function (parse -> ops -> render).

pub mod agent;
pub mod backup;
pub mod diff;
pub mod drill;
pub mod find;
pub mod group;
pub mod history;
pub mod init;
pub mod keys;
pub mod ls;
pub mod mount;
pub mod restore;
pub mod serve;
pub mod stats;
pub mod status;
pub mod sync;
pub mod verify;
pub mod versions;
pub mod witness;
