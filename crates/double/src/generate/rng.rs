//! Deterministic randomness for names, ids, pixels and filler: xoshiro256++ and FNV-1a.
//!
//! The products' bytes and MD5s must be the same on every run and every machine, whatever the
//! version of `rand`; so the generator carries its own few lines of PRNG and hash.

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// xoshiro256++ seeded through splitmix64. Our own few lines rather than `rand`'s `SmallRng`,
/// whose algorithm may change between rand versions: the products' bytes (and MD5s) must not.
pub(super) struct Xoshiro([u64; 4]);

impl Xoshiro {
    pub(super) fn new(seed: u64) -> Xoshiro {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Xoshiro([next(), next(), next(), next()])
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform enough below `n` (the modulo bias is < 2^-40 for our small `n`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}
