//! CBOR (RFC 8949) encoding of the structured parts of objects.

use serde::{de::DeserializeOwned, Serialize};

/// Encodes a value; serialising our own types into a Vec cannot fail.
pub(crate) fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec has no I/O error, and our types have no unserialisable parts.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        unreachable!("CBOR encoding of an in-memory value failed: {e}");
    }
    out
}

/// Decodes a value, with a description of what went wrong.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("malformed CBOR: {e}"))
}
