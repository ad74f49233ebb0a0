//! The two framings the format uses around CBOR (see `docs/format.md`):
//! `magic (8) | u32 LE length | CBOR header | ...` for objects with a plaintext header (indexes,
//! manifests), and `magic (8) | u32 LE length | CBOR | Ed25519 signature (64)` for signed objects
//! (ledger entries, checkpoints, cosignatures).

use ed25519_dalek::SigningKey;
use serde::{de::DeserializeOwned, Serialize};

use crate::cbor;
use crate::error::{Error, Result};
use crate::keys;

/// Reads the plaintext CBOR header of an object named `what`; returns it and where the rest
/// starts. At least `tail` bytes must follow the header.
pub(crate) fn header<T: DeserializeOwned>(
    magic: &[u8; 8],
    what: &str,
    path: &str,
    bytes: &[u8],
    tail: usize,
) -> Result<(T, usize)> {
    if bytes.len() < 12 || &bytes[..8] != magic {
        return Err(Error::corrupt(
            path,
            format!("not {what} (bad magic or too short)"),
        ));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    let end = 12usize
        .checked_add(len)
        .filter(|&e| e.checked_add(tail).is_some_and(|t| t <= bytes.len()))
        .ok_or_else(|| Error::corrupt(path, format!("{what}: header length out of range")))?;
    let value = cbor::from_slice(&bytes[12..end]).map_err(|e| Error::corrupt(path, e))?;
    Ok((value, end))
}

/// Encodes and signs a value under a domain-separation label.
pub(crate) fn encode_signed<T: Serialize>(
    magic: &[u8; 8],
    label: &[u8],
    value: &T,
    key: &SigningKey,
) -> Vec<u8> {
    let body = cbor::to_vec(value);
    let signature = keys::sign(key, label, &body);
    let mut out = Vec::with_capacity(12 + body.len() + 64);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&signature);
    out
}

/// Decodes a signed object named `what` and checks its signature against `signer_of(value)`.
pub(crate) fn decode_signed<T: DeserializeOwned>(
    magic: &[u8; 8],
    label: &[u8],
    what: &str,
    path: &str,
    bytes: &[u8],
    signer_of: impl Fn(&T) -> [u8; 32],
) -> Result<T> {
    if bytes.len() < 12 + 64 || &bytes[..8] != magic {
        return Err(Error::corrupt(
            path,
            format!("not {what} (bad magic or too short)"),
        ));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    if 12usize.checked_add(len).and_then(|n| n.checked_add(64)) != Some(bytes.len()) {
        return Err(Error::corrupt(
            path,
            format!("{what}: length does not match"),
        ));
    }
    let body = &bytes[12..12 + len];
    let value: T = cbor::from_slice(body).map_err(|e| Error::corrupt(path, e))?;
    if !keys::verify_signature(&signer_of(&value), label, body, &bytes[12 + len..]) {
        return Err(Error::corrupt(
            path,
            format!("{what}: signature does not verify"),
        ));
    }
    Ok(value)
}
