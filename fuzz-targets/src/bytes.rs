//! Reading structured values out of fuzz input: every read succeeds, short input reads as
//! zeros, so any byte string decodes to some sequence of operations.

/// A cursor over fuzz input.
#[derive(Debug, Clone)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A frame: a little-endian u16 length, then that many bytes (fewer at the end).
    pub fn frame(&mut self) -> &'a [u8] {
        let len = self.u16();
        self.take(usize::from(len))
    }
}

/// Appends `bytes` as a frame that [`Bytes::frame`] reads back.
pub fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("a frame holds at most 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_reads_as_zeros() {
        let mut bytes = Bytes::new(&[1, 2, 3]);

        assert_eq!(bytes.u16(), 0x0201);
        assert_eq!(bytes.u32(), 3);
        assert_eq!(bytes.u8(), 0);
        assert!(bytes.is_empty());
    }

    #[test]
    fn frames_round_trip_and_a_lying_length_is_cut() {
        let mut out = Vec::new();
        push_frame(&mut out, b"abc");
        out.extend_from_slice(&[9, 0, b'x']);
        let mut bytes = Bytes::new(&out);

        assert_eq!(bytes.frame(), b"abc");
        assert_eq!(bytes.frame(), b"x");
        assert_eq!(bytes.frame(), b"");
    }
}
