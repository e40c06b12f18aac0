//! The reproducible byte stream of the guest's `fsr-pattern` tool
//! (guest-images/guest/fsr-pattern.c), so that the host knows what a guest file must hold
//! without trusting the path its bytes took.

/// `len` bytes of stream `seed`: xorshift64* with state `seed * 0x9E3779B97F4A7C15 + 1`, each
/// step giving the 8 little-endian bytes of the product.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    if state == 0 {
        state = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_guest_tool() {
        // First bytes of `fsr-pattern write FILE 1000003 7`, read with xxd.
        assert_eq!(
            pattern(7, 16),
            [
                0xf1, 0x69, 0xc3, 0xf2, 0xa8, 0xd0, 0x52, 0xbf, 0xfa, 0x08, 0xe3, 0x7e, 0xae, 0x79,
                0xb2, 0xe7
            ]
        );
    }

    #[test]
    fn a_prefix_is_the_shorter_stream() {
        assert_eq!(pattern(3, 1000)[..], pattern(3, 300_000)[..1000]);
        assert_eq!(pattern(3, 13).len(), 13);
        assert_ne!(pattern(3, 64), pattern(4, 64));
    }
}
