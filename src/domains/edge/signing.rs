//! Download URLs (pure; the caller passes the time): a package is served at
//! `/api/v1.0/package/<token>/<edge_id>-<YYYYmmddHHMMSS>.tar.gz`, where the
//! token carries what any instance needs to find or rebuild the bytes (the
//! set version the delta starts from, the package's sha256) and when it
//! expires, all signed with HMAC-SHA256 over the token and the file name
//! (so another edge's name, a changed expiry or a guessed token fail).
//!
//! The signature sits in the path, not the query, so the file name the edge
//! sees stays the original's `<edge_id>-<timestamp>.tar.xz` shape
//! (`.tar.gz` here); the original's agents derive a folder name from it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Token layout version.
const VERSION: u8 = 1;
/// version (1) + expires (8) + since (8) + sha256 (32).
const BODY: usize = 49;
/// The signature is truncated to 128 bits.
const MAC: usize = 16;
const NO_SINCE: u64 = u64::MAX;

/// What a download URL grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub edge_id: String,
    /// The set sequence the delta starts after; `None` = the full set.
    pub since: Option<u64>,
    /// The package's sha256, hex.
    pub sha256: String,
    /// Unix seconds.
    pub expires: u64,
}

/// Why a URL is refused (all of them answer 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the download URL is malformed")]
    Malformed,
    #[error("the download URL's signature does not match")]
    Forged,
    #[error("the download URL has expired")]
    Expired,
}

/// `<edge_id>-<YYYYmmddHHMMSS>.tar.gz`, the time in UTC.
pub fn file_name(edge_id: &str, unix_seconds: i64) -> String {
    let stamp = jiff::Timestamp::from_second(unix_seconds.max(0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y%m%d%H%M%S");
    format!("{edge_id}-{stamp}.tar.gz")
}

/// The edge id in a file name made by `file_name`.
pub fn edge_of(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".tar.gz")?;
    let (edge_id, stamp) = stem.rsplit_once('-')?;
    (stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()) && !edge_id.is_empty())
        .then_some(edge_id)
}

fn mac(key: &[u8], body: &[u8], file_name: &str) -> [u8; MAC] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.update(file_name.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0; MAC];
    out.copy_from_slice(&full[..MAC]);
    out
}

/// The token of a grant, for the URL of `file_name`.
///
/// # Panics
/// Never for a sha256 of 64 hex digits (what packages have).
pub fn sign(key: &[u8], grant: &Grant, file_name: &str) -> String {
    let mut body = Vec::with_capacity(BODY + MAC);
    body.push(VERSION);
    body.extend_from_slice(&grant.expires.to_be_bytes());
    body.extend_from_slice(&grant.since.unwrap_or(NO_SINCE).to_be_bytes());
    body.extend_from_slice(&hex_bytes(&grant.sha256).expect("a sha256 is 64 hex digits"));
    let signature = mac(key, &body, file_name);
    body.extend_from_slice(&signature);
    URL_SAFE_NO_PAD.encode(body)
}

/// Checks a token against the file name it was used with, at `now`.
///
/// # Errors
/// Malformed, forged (including another edge's file name) or expired.
pub fn verify(key: &[u8], token: &str, file_name: &str, now: u64) -> Result<Grant, Refusal> {
    let edge_id = edge_of(file_name).ok_or(Refusal::Malformed)?;
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Refusal::Malformed)?;
    if raw.len() != BODY + MAC || raw[0] != VERSION {
        return Err(Refusal::Malformed);
    }
    let (body, signature) = raw.split_at(BODY);
    let expected = mac(key, body, file_name);
    // Constant time: every byte is looked at whatever the first difference.
    let same = expected
        .iter()
        .zip(signature)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if !same {
        return Err(Refusal::Forged);
    }
    let number = |range: std::ops::Range<usize>| {
        u64::from_be_bytes(body[range].try_into().expect("8 bytes"))
    };
    let expires = number(1..9);
    if now > expires {
        return Err(Refusal::Expired);
    }
    let since = Some(number(9..17)).filter(|s| *s != NO_SINCE);
    let sha256: String = body[17..49].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Grant {
        edge_id: edge_id.to_string(),
        since,
        sha256,
        expires,
    })
}

fn hex_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            edge_id: "a1b2c3".into(),
            since: Some(4),
            sha256: "ab".repeat(32),
            expires: 1_000,
        }
    }

    #[test]
    fn names_carry_the_edge_and_a_utc_stamp() {
        let name = file_name("a1-b2", 1_704_067_210);
        assert_eq!(name, "a1-b2-20240101000010.tar.gz");
        assert_eq!(edge_of(&name), Some("a1-b2"));
        assert_eq!(edge_of("a1b2c3.tar.gz"), None);
        assert_eq!(edge_of("-20240101000010.tar.gz"), None);
    }

    #[test]
    fn valid_expired_forged_and_another_edges() {
        let key = b"key";
        let name = file_name("a1b2c3", 0);
        let token = sign(key, &grant(), &name);
        assert_eq!(verify(key, &token, &name, 999), Ok(grant()));
        assert_eq!(verify(key, &token, &name, 1_001), Err(Refusal::Expired));
        assert_eq!(verify(b"other", &token, &name, 999), Err(Refusal::Forged));
        let other_edge = file_name("d4e5f6", 0);
        assert_eq!(verify(key, &token, &other_edge, 999), Err(Refusal::Forged));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1; // a later expiry
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(verify(key, &tampered, &name, 999), Err(Refusal::Forged));
        assert_eq!(verify(key, "!!", &name, 999), Err(Refusal::Malformed));
        assert_eq!(
            verify(key, &token, "x.tar.gz", 999),
            Err(Refusal::Malformed)
        );
        let full = Grant {
            since: None,
            ..grant()
        };
        let token = sign(key, &full, &name);
        assert_eq!(verify(key, &token, &name, 0).unwrap().since, None);
    }
}
