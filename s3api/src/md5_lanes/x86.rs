//! MD5's compression function on 16 (AVX-512) or 8 (AVX-512VL) independent streams at once, one
//! stream per 32-bit vector lane. MD5 is a chain of dependent steps, so one stream leaves most of
//! a core idle; running the same step for many streams side by side costs little more than one.

use std::arch::x86_64::*;

use super::{BLOCK, compress_blocks};

/// The 64 additive constants of MD5 (RFC 1321).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// Whether this CPU runs the kernels of this module.
pub fn supported() -> bool {
    // (AVX2 too, which the kernels' 256-bit loads use: every CPU with AVX-512 has it, but a
    // virtual machine may report features as it likes.)
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
}

/// One MD5 step on every lane: `w = x + rol(w + f(x, y, z) + m[word] + K[i], s)`, with the
/// round function `f` given as a ternary-logic immediate.
macro_rules! md5_step {
    (($add:ident, $set1:ident, $tern:ident, $rol:ident), $m:ident, $imm:literal, $w:ident, $x:ident, $y:ident, $z:ident, $word:expr, $i:expr, $s:literal) => {
        let t = $add($w, $add($m[$word], $set1(K[$i] as i32)));
        $w = $add($x, $rol::<$s>($add(t, $tern::<$imm>($x, $y, $z))));
    };
}

/// One of MD5's four rounds (16 steps) on every lane; `word(i)` picks the message word of step `i`.
macro_rules! md5_round {
    ($ops:tt, $m:ident, $a:ident, $b:ident, $c:ident, $d:ident, $imm:literal, $base:expr, $word:expr, $s0:literal, $s1:literal, $s2:literal, $s3:literal) => {
        for q in 0..4 {
            let i = $base + 4 * q;
            md5_step!($ops, $m, $imm, $a, $b, $c, $d, $word(i), i, $s0);
            md5_step!($ops, $m, $imm, $d, $a, $b, $c, $word(i + 1), i + 1, $s1);
            md5_step!($ops, $m, $imm, $c, $d, $a, $b, $word(i + 2), i + 2, $s2);
            md5_step!($ops, $m, $imm, $b, $c, $d, $a, $word(i + 3), i + 3, $s3);
        }
    };
}

/// The 64 steps of one block for every lane at once: `m[w]` holds message word `w` of each lane.
/// The round functions are ternary-logic immediates: F = b ? c : d (0xCA), G = d ? b : c (0xE4),
/// H = b ^ c ^ d (0x96), I = c ^ (b | !d) (0x39). `ops` names the vector add, broadcast, ternary
/// logic and rotate of the vector width.
macro_rules! md5_block {
    (($add:ident, $set1:ident, $tern:ident, $rol:ident), $m:ident, $a:ident, $b:ident, $c:ident, $d:ident) => {{
        let (sa, sb, sc, sd) = ($a, $b, $c, $d);
        md5_round!(
            ($add, $set1, $tern, $rol),
            $m,
            $a,
            $b,
            $c,
            $d,
            0xCA,
            0,
            |i: usize| i % 16,
            7,
            12,
            17,
            22
        );
        md5_round!(
            ($add, $set1, $tern, $rol),
            $m,
            $a,
            $b,
            $c,
            $d,
            0xE4,
            16,
            |i: usize| (5 * i + 1) % 16,
            5,
            9,
            14,
            20
        );
        md5_round!(
            ($add, $set1, $tern, $rol),
            $m,
            $a,
            $b,
            $c,
            $d,
            0x96,
            32,
            |i: usize| (3 * i + 5) % 16,
            4,
            11,
            16,
            23
        );
        md5_round!(
            ($add, $set1, $tern, $rol),
            $m,
            $a,
            $b,
            $c,
            $d,
            0x39,
            48,
            |i: usize| (7 * i) % 16,
            6,
            10,
            15,
            21
        );
        $a = $add($a, sa);
        $b = $add($b, sb);
        $c = $add($c, sc);
        $d = $add($d, sd);
    }};
}

/// Transposes a 16×16 matrix of 32-bit words held as 16 rows: row `l` (lane `l`'s block)
/// becomes column `l`, so that vector `w` holds word `w` of every lane.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // SAFETY: register-only AVX-512F operations; the caller runs with AVX-512F enabled.
    unsafe {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let b = 4 * i;
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for h in 0..2 {
            let b = 8 * h;
            for i in 0..4 {
                t[b + i] = _mm512_shuffle_i32x4::<0x88>(r[b + i], r[b + 4 + i]);
                t[b + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(r[b + i], r[b + 4 + i]);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[8 + i]);
            r[8 + i] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[8 + i]);
        }
    }
}

/// Transposes an 8×8 matrix of 32-bit words held as 8 rows (see [`transpose16`]).
#[inline(always)]
unsafe fn transpose8(r: &mut [__m256i; 8]) {
    // SAFETY: register-only AVX2 operations; the caller runs with AVX-512VL (so AVX2) enabled.
    unsafe {
        let mut t = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..2 {
            let b = 4 * i;
            r[b] = _mm256_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm256_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm256_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm256_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for i in 0..4 {
            t[i] = _mm256_permute2x128_si256::<0x20>(r[i], r[4 + i]);
            t[4 + i] = _mm256_permute2x128_si256::<0x31>(r[i], r[4 + i]);
        }
        *r = t;
    }
}

/// Runs each input (whole blocks) into its state, up to 16 streams side by side. Inputs of
/// unequal lengths, more than 16 streams, or a CPU without the kernels: one stream at a time.
pub fn compress_streams(states: &mut [[u32; 4]], inputs: &[&[u8]]) {
    let blocks = inputs.first().map_or(0, |i| i.len() / BLOCK);
    let fits = states.len() == inputs.len()
        && (2..=16).contains(&inputs.len())
        && inputs.iter().all(|i| i.len() == blocks * BLOCK)
        && supported();
    if !fits {
        for (state, input) in states.iter_mut().zip(inputs) {
            compress_blocks(state, input);
        }
        return;
    }
    if inputs.len() <= 8 {
        let (mut lanes, pointers) = to_lanes::<8>(states, inputs);
        // SAFETY: `supported()` holds and every pointer reaches `blocks` whole blocks (checked
        // above; spare lanes repeat the first input).
        unsafe { compress8(&mut lanes, &pointers, blocks) };
        from_lanes(&lanes, states);
    } else {
        let (mut lanes, pointers) = to_lanes::<16>(states, inputs);
        // SAFETY: as above.
        unsafe { compress16(&mut lanes, &pointers, blocks) };
        from_lanes(&lanes, states);
    }
}

/// Per-stream states and inputs as the kernels take them: word-major states, one pointer per
/// lane (spare lanes repeat the first stream).
fn to_lanes<const N: usize>(
    states: &[[u32; 4]],
    inputs: &[&[u8]],
) -> ([[u32; N]; 4], [*const u8; N]) {
    let mut lanes = [[0u32; N]; 4];
    let mut pointers = [inputs[0].as_ptr(); N];
    for (l, (state, input)) in states.iter().zip(inputs).enumerate() {
        pointers[l] = input.as_ptr();
        for (word, value) in lanes.iter_mut().zip(state) {
            word[l] = *value;
        }
    }
    (lanes, pointers)
}

/// Writes the kernels' word-major states back per stream.
fn from_lanes<const N: usize>(lanes: &[[u32; N]; 4], states: &mut [[u32; 4]]) {
    for (l, state) in states.iter_mut().enumerate() {
        *state = [lanes[0][l], lanes[1][l], lanes[2][l], lanes[3][l]];
    }
}

/// Defines a kernel: `blocks` 64-byte blocks of each of `N` lanes through MD5, on vectors of
/// `N` 32-bit words. `state[0..4]` are the a, b, c, d words of every lane; `message(lanes, j)`
/// gives block `j` of every lane, word-major.
macro_rules! md5_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $n:literal, $message:ident,
     $load:ident, $store:ident, $ops:tt) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        unsafe fn $name(state: &mut [[u32; $n]; 4], lanes: &[*const u8; $n], blocks: usize) {
            // SAFETY: the caller guarantees the CPU features and that every lane pointer
            // reaches `blocks * BLOCK` bytes; the state arrays are one vector each (unaligned
            // loads and stores).
            unsafe {
                let mut a = $load(state[0].as_ptr().cast());
                let mut b = $load(state[1].as_ptr().cast());
                let mut c = $load(state[2].as_ptr().cast());
                let mut d = $load(state[3].as_ptr().cast());
                for j in 0..blocks {
                    let m = $message(lanes, j);
                    md5_block!($ops, m, a, b, c, d);
                }
                $store(state[0].as_mut_ptr().cast(), a);
                $store(state[1].as_mut_ptr().cast(), b);
                $store(state[2].as_mut_ptr().cast(), c);
                $store(state[3].as_mut_ptr().cast(), d);
            }
        }
    };
}

/// Block `j` of each of 16 lanes, word-major: one 512-bit row per lane, transposed.
#[inline(always)]
unsafe fn message16(lanes: &[*const u8; 16], j: usize) -> [__m512i; 16] {
    // SAFETY: the kernel's caller guarantees each lane reaches block `j`.
    unsafe {
        let mut m = [_mm512_setzero_si512(); 16];
        for (row, lane) in m.iter_mut().zip(lanes) {
            *row = _mm512_loadu_si512(lane.add(j * BLOCK).cast());
        }
        transpose16(&mut m);
        m
    }
}

/// Block `j` of each of 8 lanes, word-major: two 256-bit rows per lane (words 0-7 and 8-15),
/// each half transposed.
#[inline(always)]
unsafe fn message8(lanes: &[*const u8; 8], j: usize) -> [__m256i; 16] {
    // SAFETY: as in `message16`.
    unsafe {
        let mut low = [_mm256_setzero_si256(); 8];
        let mut high = [_mm256_setzero_si256(); 8];
        for (l, lane) in lanes.iter().enumerate() {
            low[l] = _mm256_loadu_si256(lane.add(j * BLOCK).cast());
            high[l] = _mm256_loadu_si256(lane.add(j * BLOCK + 32).cast());
        }
        transpose8(&mut low);
        transpose8(&mut high);
        let mut m = [_mm256_setzero_si256(); 16];
        m[..8].copy_from_slice(&low);
        m[8..].copy_from_slice(&high);
        m
    }
}

md5_kernel!(
    /// 16 lanes on 512-bit vectors.
    ///
    /// # Safety
    /// The CPU supports AVX-512F ([`supported`]), and each of `lanes` points at
    /// `blocks * 64` readable bytes.
    compress16, "avx512f", 16, message16, _mm512_loadu_si512, _mm512_storeu_si512,
    (_mm512_add_epi32, _mm512_set1_epi32, _mm512_ternarylogic_epi32, _mm512_rol_epi32)
);

md5_kernel!(
    /// 8 lanes on 256-bit vectors: when few streams are hashing, half-width vectors finish each
    /// step sooner on CPUs that split 512-bit operations in two.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX-512VL ([`supported`]), and each of `lanes` points at
    /// `blocks * 64` readable bytes.
    compress8, "avx512f,avx512vl", 8, message8, _mm256_loadu_si256, _mm256_storeu_si256,
    (_mm256_add_epi32, _mm256_set1_epi32, _mm256_ternarylogic_epi32, _mm256_rol_epi32)
);

#[cfg(test)]
mod tests {
    use super::super::INITIAL;
    use super::*;

    fn scalar(data: &[u8]) -> [u32; 4] {
        let mut state = INITIAL;
        let blocks: Vec<[u8; 64]> = data
            .chunks_exact(BLOCK)
            .map(|c| c.try_into().expect("block"))
            .collect();
        md5::block_api::compress(&mut state, &blocks);
        state
    }

    fn streams(count: usize, blocks: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|l| {
                (0..blocks * BLOCK)
                    .map(|i| (i * 31 + l * 7 + i / 977) as u8)
                    .collect()
            })
            .collect()
    }

    /// Both kernels (8 lanes up to 8 streams, 16 beyond), whatever the number of streams, and
    /// the one-at-a-time path past 16 or for unequal inputs.
    #[test]
    fn any_number_of_streams_matches_one_stream_at_a_time() {
        if !supported() {
            eprintln!("this CPU lacks AVX-512F/VL: only the one-stream-at-a-time path is tested");
        }
        for count in 1..=17 {
            let data = streams(count, 37);
            let inputs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let mut states = vec![INITIAL; count];
            compress_streams(&mut states, &inputs);
            for (l, stream) in data.iter().enumerate() {
                assert_eq!(states[l], scalar(stream), "{count} streams, stream {l}");
            }
        }
        let data = streams(3, 4);
        let uneven: Vec<&[u8]> = vec![&data[0], &data[1][..128], &data[2]];
        let mut states = vec![INITIAL; 3];
        compress_streams(&mut states, &uneven);
        assert_eq!(states[0], scalar(&data[0]), "uneven inputs");
        assert_eq!(states[1], scalar(&data[1][..128]), "uneven inputs");
        assert_eq!(states[2], scalar(&data[2]), "uneven inputs");
    }
}
