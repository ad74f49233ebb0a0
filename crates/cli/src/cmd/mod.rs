//! One module per command: its clap arguments and its run function (parse -> ops -> render).

pub mod agent;
pub mod backup;
pub mod history;
pub mod init;
pub mod keys;
pub mod restore;
pub mod status;
pub mod sync;
pub mod verify;
pub mod versions;
pub mod witness;
