//! Identifiers: object ids (hash of stored bytes) and chunk ids (keyed hash of plaintext).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "serde_bytes")] pub [u8; 32]);

        impl $name {
            /// Lower-case hex, as used in paths and reports.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 bytes in hex, for people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Parses 64 hex digits.
            pub fn from_hex(text: &str) -> Result<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out).map_err(|_| {
                    Error::invalid(format!("'{text}' is not a 64-digit hex {}", stringify!($name)))
                })?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hash_id!(
    /// Name of a stored object: the unkeyed BLAKE3 hash of its stored bytes, so anyone can check
    /// an object against its name without keys (invariant 2).
    ObjectId
);
hash_id!(
    /// Name of a chunk of plaintext: BLAKE3 keyed with the dataset's chunk-id key, so a site cannot
    /// confirm a guess of content (invariant 1).
    ChunkId
);

impl ObjectId {
    /// The id of these stored bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}
