//! In-memory request data for driving a [`RedirectFs`](crate::RedirectFs) without a FUSE
//! transport: what a guest writes comes from a byte buffer, what it reads goes into one. Used
//! by this crate's tests and by programs that embed the engine (host tools, test harnesses).

use std::io::{self, Read, Write};

use fuse_backend_rs::api::filesystem::{ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// The data of a WRITE request: hands its bytes to the file system in order.
#[derive(Debug)]
pub struct MemSource(io::Cursor<Vec<u8>>);

impl MemSource {
    /// A source that yields `data`.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Self(io::Cursor::new(data.into()))
    }
}

impl Read for MemSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl ZeroCopyReader for MemSource {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut buf = vec![0; count];
        let n = self.0.read(&mut buf)?;
        // SAFETY: `buf` outlives the slice, which is used only inside this call.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(&mut buf[..n]) };
        f.write_at_volatile(slice, off)
    }
}

/// The reply buffer of a READ request: collects what the file system returns.
#[derive(Debug, Default)]
pub struct MemSink(Vec<u8>);

impl MemSink {
    /// The bytes collected so far.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes collected, consuming the sink.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl Write for MemSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for MemSink {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut buf = vec![0; count];
        // SAFETY: `buf` outlives the slice, which is used only inside this call.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(&mut buf) };
        let n = f.read_at_volatile(slice, off)?;
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn available_bytes(&self) -> usize {
        usize::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn source_writes_and_sink_reads_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp.path().join("f"))
            .unwrap();
        let mut src = MemSource::new(b"hello world".to_vec());
        assert_eq!(src.read_to(&mut file, 11, 3).unwrap(), 11);
        let mut sink = MemSink::default();
        assert_eq!(sink.write_from(&mut file, 64, 0).unwrap(), 14);
        assert_eq!(sink.bytes(), b"\0\0\0hello world");
        assert_eq!(sink.into_bytes().len(), 14);
    }
}
