//! Sources of versions: file trees ([`files`]) and byte streams or commands ([`stream`]), checks
//! of a restored copy against its version ([`check`]), and
//! the environment commands run in ([`env`]), and which paths of a tree a backup stores or a
//! restore writes ([`selection`]).

pub mod check;
pub mod env;

pub mod files;
pub mod metadata;
pub mod relation;
mod resync;
pub mod selection;
pub mod stream;
