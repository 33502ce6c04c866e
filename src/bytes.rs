//! Byte searches on the hot path, eight bytes at a time in a `u64` (wasm32 has 64-bit
//! integer operations; its `usize` is four bytes). Each answers exactly what a
//! byte-at-a-time loop answers (`tests`).
//!
//! WebAssembly SIMD (sixteen bytes at a time) was measured here and not kept: parsing a page
//! took the same time (0.93-0.95 ms per 1,000 events either way, best of five runs), and a
//! host that disables SIMD would refuse the whole module.

/// Bytes that end a plain run inside a JSON string: the closing quote, an escape, and control
/// characters (which JSON forbids raw in strings).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A byte repeated in each of a word's eight bytes.
const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

fn word(w: &[u8]) -> u64 {
    u64::from_le_bytes(w.try_into().expect("8 bytes"))
}

/// The high bit of each byte of `v` that is zero (the lowest flag is exact; borrows only
/// reach higher bytes, so a flag above it may be false).
fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(splat(1)) & !v & splat(0x80)
}

/// Whether every byte is ASCII (most pages are: the full UTF-8 check runs only on the others).
pub fn is_ascii(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let mut any = 0u64;
    for w in &mut words {
        any |= word(w);
    }
    any & splat(0x80) == 0 && words.remainder().is_ascii()
}

/// How many bytes of `b` from its start are plain JSON string content: up to the first
/// closing quote, backslash or control character (`None`: no such byte). In each word, a
/// byte is flagged when it stops the run (the lowest flag is exact; borrows only reach
/// higher bytes), so the first stop is the lowest flag's byte.
pub fn plain_run(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let x = word(w);
        let control = x.wrapping_sub(splat(0x20)) & !x & splat(0x80);
        let stops = zero_bytes(x ^ splat(b'"')) | zero_bytes(x ^ splat(b'\\')) | control;
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| STRING_STOP[c as usize])
        .map(|n| at + n)
}

/// Whether `byte` occurs in `b`, four words at a time (`memchr` on wasm32 reads a four-byte
/// `usize` at a time).
pub fn contains_byte(b: &[u8], byte: u8) -> bool {
    let needle = splat(byte);
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        let hit = zero_bytes(word(&block[..8]) ^ needle)
            | zero_bytes(word(&block[8..16]) ^ needle)
            | zero_bytes(word(&block[16..24]) ^ needle)
            | zero_bytes(word(&block[24..]) ^ needle);
        if hit != 0 {
            return true;
        }
    }
    blocks.remainder().contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_at_a_time_helpers_agree_with_byte_at_a_time() {
        // Every byte value at every offset of two blocks, and random mixes (non-ASCII too).
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for b in 0..=255u8 {
            for at in 0..40 {
                let mut v = vec![b'a'; 40];
                v[at] = b;
                cases.push(v);
            }
        }
        for _ in 0..5_000 {
            let len = (next() % 150) as usize;
            let pool = b"ab \"\\\r\n\x01\x1f\x20\x7f\x80\xc3\xa9\xff";
            cases.push(
                (0..len)
                    .map(|_| pool[(next() % pool.len() as u64) as usize])
                    .collect(),
            );
        }
        for case in cases {
            let naive = case.iter().position(|&c| STRING_STOP[c as usize]);
            assert_eq!(plain_run(&case), naive, "{case:?}");
            assert_eq!(is_ascii(&case), case.is_ascii(), "{case:?}");
            for byte in [b'\r', b'"', 0x80, 0xff] {
                assert_eq!(contains_byte(&case, byte), case.contains(&byte), "{case:?}");
            }
        }
    }
}
