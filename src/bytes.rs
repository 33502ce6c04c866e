//! Byte searches on the hot path, sixteen bytes at a time with WebAssembly SIMD (the wasm
//! build enables `simd128`: `.cargo/config.toml`), eight at a time in a `u64` otherwise.
//! Both answer exactly what a byte-at-a-time loop answers (`tests` checks the portable one
//! natively; every page the component parses in the host tests goes through the SIMD one).

/// Bytes that end a plain run inside a JSON string: the closing quote, an escape, and control
/// characters (which JSON forbids raw in strings).
pub static STRING_STOP: [bool; 256] = {
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

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use core::arch::wasm32::*;

    use super::STRING_STOP;

    /// The 16 bytes of `b` from `at` (the caller checked they exist).
    #[inline(always)]
    fn load(b: &[u8], at: usize) -> v128 {
        let block = &b[at..at + 16];
        // SAFETY: `block` is 16 readable bytes; `v128_load` reads unaligned.
        unsafe { v128_load(block.as_ptr().cast()) }
    }

    pub fn is_ascii(b: &[u8]) -> bool {
        let mut any = u8x16_splat(0);
        let mut at = 0;
        while at + 16 <= b.len() {
            any = v128_or(any, load(b, at));
            at += 16;
        }
        u8x16_bitmask(any) == 0 && b[at..].is_ascii()
    }

    pub fn plain_run(b: &[u8]) -> Option<usize> {
        let (quote, escape, space) = (u8x16_splat(b'"'), u8x16_splat(b'\\'), u8x16_splat(0x20));
        let mut at = 0;
        while at + 16 <= b.len() {
            let v = load(b, at);
            let stops = v128_or(
                v128_or(u8x16_eq(v, quote), u8x16_eq(v, escape)),
                u8x16_lt(v, space),
            );
            let mask = u8x16_bitmask(stops);
            if mask != 0 {
                return Some(at + mask.trailing_zeros() as usize);
            }
            at += 16;
        }
        b[at..]
            .iter()
            .position(|&c| STRING_STOP[c as usize])
            .map(|n| at + n)
    }

    pub fn contains_byte(b: &[u8], byte: u8) -> bool {
        let needle = u8x16_splat(byte);
        let mut at = 0;
        while at + 64 <= b.len() {
            let hits = v128_or(
                v128_or(
                    u8x16_eq(load(b, at), needle),
                    u8x16_eq(load(b, at + 16), needle),
                ),
                v128_or(
                    u8x16_eq(load(b, at + 32), needle),
                    u8x16_eq(load(b, at + 48), needle),
                ),
            );
            if v128_any_true(hits) {
                return true;
            }
            at += 64;
        }
        b[at..].contains(&byte)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    use super::STRING_STOP;

    /// A byte repeated in each of a word's eight bytes.
    const fn splat(b: u8) -> u64 {
        0x0101_0101_0101_0101 * b as u64
    }

    fn word(w: &[u8]) -> u64 {
        u64::from_le_bytes(w.try_into().expect("8 bytes"))
    }

    pub fn is_ascii(b: &[u8]) -> bool {
        let mut words = b.chunks_exact(8);
        let mut any = 0u64;
        for w in &mut words {
            any |= word(w);
        }
        any & splat(0x80) == 0 && words.remainder().is_ascii()
    }

    /// In each word, a byte is flagged when it stops the run (the lowest flag is exact;
    /// borrows only reach higher bytes), so the first stop is the lowest flag's byte.
    pub fn plain_run(b: &[u8]) -> Option<usize> {
        let mut at = 0;
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let x = word(w);
            let zero_in = |v: u64| v.wrapping_sub(splat(1)) & !v;
            let quote = zero_in(x ^ splat(b'"'));
            let escape = zero_in(x ^ splat(b'\\'));
            let control = x.wrapping_sub(splat(0x20)) & !x;
            let stops = (quote | escape | control) & splat(0x80);
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

    pub fn contains_byte(b: &[u8], byte: u8) -> bool {
        b.contains(&byte)
    }
}

/// Whether every byte is ASCII (most pages are: the full UTF-8 check runs only on the others).
pub fn is_ascii(b: &[u8]) -> bool {
    imp::is_ascii(b)
}

/// How many bytes of `b` from its start are plain JSON string content: up to the first
/// closing quote, backslash or control character (`None`: no such byte).
pub fn plain_run(b: &[u8]) -> Option<usize> {
    imp::plain_run(b)
}

/// Whether `byte` occurs in `b`.
pub fn contains_byte(b: &[u8], byte: u8) -> bool {
    imp::contains_byte(b, byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_at_a_time_helpers_agree_with_byte_at_a_time() {
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
