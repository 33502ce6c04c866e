//! An item's identity for de-duplication: the 16 bytes an id (or `id@time`) is kept as in
//! the delivered-id set and in KV.

use rsa::sha2::{Digest, Sha256};

/// The 16 bytes an id is kept as: a 32-hex-digit Sentry event id exactly, anything else as
/// the first 16 bytes of its SHA-256.
pub fn seen_key(id: &str) -> [u8; 16] {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut key = [0u8; 16];
    let hex = id.as_bytes();
    let parsed = hex.len() == 32
        && hex.chunks_exact(2).enumerate().all(|(i, pair)| {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => {
                    key[i] = h << 4 | l;
                    true
                }
                _ => false,
            }
        });
    if !parsed {
        key.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    }
    key
}
