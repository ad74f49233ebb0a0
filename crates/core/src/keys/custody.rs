//! Custodian shares of the root secret (Shamir's scheme over GF(256), from the audited
//! `vsss-rs`), written as short texts a person can type back.
//!
//! A share text is bech32m (BIP-350) with the prefix `embshare`, which catches typing mistakes,
//! over this payload (52 bytes):
//!
//! ```text
//! version (1) = 1 | split id (8) | threshold K (1) | shares N (1) | share (33: x, y) | check (8)
//! ```
//!
//! `check` is the first 8 bytes of `BLAKE3-derive_key("data-embassy 2026 share check v1", root)`:
//! it proves a reconstruction right, since Shamir's scheme itself turns too few shares into a
//! wrong secret without complaint. For people the text is printed in groups of five characters;
//! spaces are ignored when it is read back.

use bech32::{Bech32m, Hrp};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::keys::RootSecret;

const PREFIX: &str = "embshare";
const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 8 + 1 + 1 + 33 + 8;

/// One custodian's share, parsed.
pub struct Share {
    /// Which split it belongs to.
    pub split_id: [u8; 8],
    /// Shares needed to recover.
    pub threshold: u8,
    /// Shares made.
    pub count: u8,
    /// The Shamir share (identifier byte, then 32 bytes).
    share: Zeroizing<Vec<u8>>,
    check: [u8; 8],
}

impl Share {
    /// The share's number (its Shamir identifier), for people.
    pub fn number(&self) -> u8 {
        self.share[0]
    }
}

fn secret_check(root: &[u8; 32]) -> [u8; 8] {
    let digest = blake3::derive_key("data-embassy 2026 share check v1", root);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Splits the root secret into `count` share texts, any `threshold` of which recover it.
pub fn split(root: &RootSecret, threshold: u8, count: u8) -> Result<Vec<String>> {
    if threshold < 2 || threshold > count {
        return Err(Error::invalid(format!(
            "a {threshold}-of-{count} split is not possible: the threshold must be at least 2 and at most the number of shares"
        )));
    }
    let mut rng = rand_v10::rng();
    let shares =
        vsss_rs::Gf256::split_array(threshold as usize, count as usize, root.expose(), &mut rng)
            .map_err(|e| Error::invalid(format!("splitting the root secret: {e:?}")))?;
    let split_id: [u8; 8] = crate::keys::crypto::random_32()[..8]
        .try_into()
        .unwrap_or_default();
    let check = secret_check(root.expose());
    let hrp = Hrp::parse(PREFIX).map_err(|e| Error::invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(shares.len());
    for mut share in shares {
        let mut payload = Zeroizing::new(Vec::with_capacity(PAYLOAD_LEN));
        payload.push(VERSION);
        payload.extend_from_slice(&split_id);
        payload.push(threshold);
        payload.push(count);
        payload.extend_from_slice(&share);
        payload.extend_from_slice(&check);
        share.zeroize();
        let text =
            bech32::encode::<Bech32m>(hrp, &payload).map_err(|e| Error::invalid(e.to_string()))?;
        out.push(group(&text));
    }
    Ok(out)
}

/// `embshare1qursw pc8qu ...`: groups of five after the prefix, for reading aloud and typing.
fn group(text: &str) -> String {
    let (head, body) = text.split_at(PREFIX.len() + 1);
    let groups: Vec<String> = body
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("{head} {}", groups.join(" "))
}

/// Parses a share text; `label` names it in errors ("share 2").
pub fn parse(text: &str, label: &str) -> Result<Share> {
    let compact: Zeroizing<String> = Zeroizing::new(
        text.split_whitespace()
            .collect::<String>()
            .to_ascii_lowercase(),
    );
    if !compact.starts_with(PREFIX) {
        return Err(Error::invalid(format!(
            "{label} is not a Data Embassy custodian share (it should start with '{PREFIX}1')"
        )));
    }
    let (hrp, payload) = bech32::decode(&compact).map_err(|_| {
        Error::invalid(format!(
            "{label} has a typing mistake (its checksum does not match): compare it with the custodian's copy character by character"
        ))
    })?;
    let payload = Zeroizing::new(payload);
    if hrp.as_str() != PREFIX || payload.len() != PAYLOAD_LEN || payload[0] != VERSION {
        return Err(Error::invalid(format!(
            "{label} is not a share this version of embassy reads (wrong prefix, length or version)"
        )));
    }
    Ok(Share {
        split_id: payload[1..9].try_into().unwrap_or_default(),
        threshold: payload[9],
        count: payload[10],
        share: Zeroizing::new(payload[11..44].to_vec()),
        check: payload[44..52].try_into().unwrap_or_default(),
    })
}

/// Recovers the root secret from share texts (at least the threshold, all of one split).
pub fn recover(texts: &[String]) -> Result<RootSecret> {
    let shares: Vec<Share> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| parse(t, &format!("share {}", i + 1)))
        .collect::<Result<_>>()?;
    let Some(first) = shares.first() else {
        return Err(Error::invalid("no shares given"));
    };
    for (i, s) in shares.iter().enumerate() {
        if s.split_id != first.split_id || s.check != first.check {
            return Err(Error::invalid(format!(
                "share {} (number {}) belongs to another split ({}) than share 1 ({}): a foreign share",
                i + 1,
                s.number(),
                hex::encode(s.split_id),
                hex::encode(first.split_id)
            )));
        }
    }
    let mut numbers: Vec<u8> = shares.iter().map(Share::number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    if numbers.len() != shares.len() {
        return Err(Error::invalid(
            "the same share was given twice: each custodian's share counts once",
        ));
    }
    if shares.len() < first.threshold as usize {
        return Err(Error::invalid(format!(
            "{} shares given, but this split (id {}) needs {} of its {}: ask {} more custodian(s)",
            shares.len(),
            hex::encode(first.split_id),
            first.threshold,
            first.count,
            first.threshold as usize - shares.len()
        )));
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.share.to_vec()).collect();
    let combined = Zeroizing::new(
        vsss_rs::Gf256::combine_array(&raw)
            .map_err(|e| Error::invalid(format!("combining shares: {e:?}")))?,
    );
    for mut r in raw {
        r.zeroize();
    }
    let root = RootSecret::from_slice(&combined[..])
        .ok_or_else(|| Error::invalid("the shares do not hold a 32-byte secret"))?;
    if !crate::keys::crypto::ct_eq(&secret_check(root.expose()), &first.check) {
        return Err(Error::invalid(
            "the shares do not recombine to the secret they were made from: one of them was altered",
        ));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_of_n_recover_and_fewer_fail_clearly() {
        let root = RootSecret::generate();
        let shares = split(&root, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
            let chosen: Vec<String> = pick.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(recover(&chosen).unwrap().expose(), root.expose());
        }
        let all = recover(&shares).unwrap();
        assert_eq!(all.expose(), root.expose());
        let two = recover(&shares[..2]).err().unwrap().to_string();
        assert!(two.contains("needs 3 of its 5"), "{two}");
        let dup = recover(&[shares[0].clone(), shares[0].clone(), shares[1].clone()])
            .err()
            .unwrap()
            .to_string();
        assert!(dup.contains("twice"), "{dup}");
    }

    #[test]
    fn typos_and_foreign_shares_are_named() {
        let root = RootSecret::generate();
        let shares = split(&root, 2, 3).unwrap();
        let mut typo = shares[1].clone().into_bytes();
        let at = typo.len() - 9;
        typo[at] = if typo[at] == b'q' { b'p' } else { b'q' };
        let typo = String::from_utf8(typo).unwrap();
        let e = recover(&[shares[0].clone(), typo])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("share 2 has a typing mistake"), "{e}");
        let other = split(&RootSecret::generate(), 2, 3).unwrap();
        let e = recover(&[shares[0].clone(), other[1].clone()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("share 2") && e.contains("foreign"), "{e}");
        // Spaces and case do not matter.
        let spaced = shares[2].to_uppercase().replace(' ', "  ");
        assert_eq!(
            recover(&[shares[0].clone(), spaced]).unwrap().expose(),
            root.expose()
        );
        assert!(split(&root, 1, 3).is_err());
        assert!(split(&root, 4, 3).is_err());
    }
}
