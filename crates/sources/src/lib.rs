//! Sources of versions: file trees ([`files`]) and byte streams or commands ([`stream`]).

pub mod files;
pub mod metadata;
pub mod stream;
