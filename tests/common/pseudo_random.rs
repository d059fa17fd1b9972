//! Deterministic pseudo-random bytes (xorshift64) for test and benchmark data: a seed always
//! gives the same bytes, and data that a bug shifts or swaps does not compare equal by chance.

#![allow(dead_code)]

/// Fills `buf` from the xorshift64 state `x`, advancing it (a zero state is taken as 1).
pub fn fill(buf: &mut [u8], x: &mut u64) {
    if *x == 0 {
        *x = 1;
    }
    for byte in buf {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *byte = *x as u8;
    }
}

/// `len` bytes from `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill(&mut out, &mut (seed | 1));
    out
}
