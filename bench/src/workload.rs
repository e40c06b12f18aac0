//! The device-level workload, run the same way against three targets: the virtio-fs
//! device over a redirecting `RedirectFs`, the device over a passthrough `RedirectFs` (no
//! store), and direct host syscalls on a plain directory (the limit).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsredirect::{FsConfig, RedirectFs, ShareSpec};

use crate::driver::{Driver, MAX_IO, ROOT};
use crate::stats::Latencies;
use crate::{io_err, BenchError, Result};

/// Size of one random I/O.
pub const RAND_IO: usize = 4096;

/// Which path the operations take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Direct syscalls on a host directory.
    Host,
    /// The virtio-fs device over a share without a store.
    Passthrough,
    /// The virtio-fs device over a redirecting share.
    Redirect,
}

impl TargetKind {
    /// All targets, in the order they run within a round.
    pub const ALL: [TargetKind; 3] = [
        TargetKind::Host,
        TargetKind::Passthrough,
        TargetKind::Redirect,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Host => "host syscalls",
            TargetKind::Passthrough => "passthrough",
            TargetKind::Redirect => "redirect",
        }
    }
}

/// The sizes of one workload run.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSize {
    /// Bytes written then read sequentially, in 1 MiB requests.
    pub seq_bytes: u64,
    /// Number of 4 KiB random reads, and of random writes.
    pub rand_ops: usize,
    /// Number of files created, looked up, stat'ed and unlinked.
    pub files: usize,
    /// Number of full listings of the directory holding those files.
    pub listings: usize,
}

/// The metadata operations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOp {
    /// Create and open a new file.
    Create,
    /// Look a name up.
    Lookup,
    /// Attributes of a known inode.
    Getattr,
    /// Look the same name up again once its node is in use (what the kernel does to
    /// revalidate a name whose entry timed out).
    LookupAgain,
    /// Remove a name.
    Unlink,
    /// Open, list to the end and close the directory.
    Readdir,
}

impl MetaOp {
    /// All metadata operations, in report order.
    pub const ALL: [MetaOp; 6] = [
        MetaOp::Create,
        MetaOp::Lookup,
        MetaOp::Getattr,
        MetaOp::LookupAgain,
        MetaOp::Unlink,
        MetaOp::Readdir,
    ];

    /// Name for tables.
    pub fn name(self) -> &'static str {
        match self {
            MetaOp::Create => "create",
            MetaOp::Lookup => "lookup",
            MetaOp::Getattr => "getattr",
            MetaOp::LookupAgain => "lookup again",
            MetaOp::Unlink => "unlink",
            MetaOp::Readdir => "readdir",
        }
    }
}

/// The figures of one target in one round.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Sequential 1 MiB writes, bytes per second.
    pub seq_write: f64,
    /// Sequential 1 MiB reads, bytes per second.
    pub seq_read: f64,
    /// 4 KiB random reads per second.
    pub rand_read: f64,
    /// 4 KiB random writes per second.
    pub rand_write: f64,
    /// Per metadata operation (in `MetaOp::ALL` order): the latencies.
    pub meta: Vec<Latencies>,
    /// Latencies of a request answered without any host call (none for the host).
    pub floor: Latencies,
}

/// The first line of [`Figures::encode`]'s text.
const FIGURES_MAGIC: &str = "fsr-bench-figures 1";

impl Figures {
    /// The figures as text, for a run in another process (a server run as an ordinary user):
    /// a first line that names the format, the four data figures on one line, then one line
    /// of latencies per metadata operation and one for the request floor.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{FIGURES_MAGIC}\n{} {} {} {}\n",
            self.seq_write, self.seq_read, self.rand_read, self.rand_write
        );
        for latencies in self.meta.iter().chain([&self.floor]) {
            text.push_str(&latencies.to_line());
            text.push('\n');
        }
        text
    }

    /// Reads back what [`Figures::encode`] wrote.
    pub fn decode(text: &str) -> Result<Figures> {
        let bad = |what: &str| BenchError::Driver(format!("unreadable figures: {what}"));
        let mut lines = text.lines();
        if lines.next() != Some(FIGURES_MAGIC) {
            return Err(bad("no header line"));
        }
        let data = lines
            .next()
            .ok_or_else(|| bad("no data line"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<Vec<f64>, _>>()
            .map_err(|e| bad(&format!("data line: {e}")))?;
        let [seq_write, seq_read, rand_read, rand_write] = data[..] else {
            return Err(bad("the data line does not hold four figures"));
        };
        let mut latencies = lines
            .map(|line| Latencies::from_line(line).ok_or_else(|| bad("a latency line")))
            .collect::<Result<Vec<_>>>()?;
        if latencies.len() != MetaOp::ALL.len() + 1 {
            return Err(bad(&format!(
                "{} latency lines where {} were expected",
                latencies.len(),
                MetaOp::ALL.len() + 1
            )));
        }
        let floor = latencies.pop().unwrap_or_default();
        Ok(Figures {
            seq_write,
            seq_read,
            rand_read,
            rand_write,
            meta: latencies,
            floor,
        })
    }
}

/// The operations a target offers; each is timed by the caller.
trait Target {
    fn open_data(&mut self) -> Result<()>;
    fn write(&mut self, offset: u64, len: usize) -> Result<()>;
    fn read(&mut self, offset: u64, len: usize) -> Result<()>;
    fn close_data(&mut self) -> Result<()>;
    fn create(&mut self, i: usize) -> Result<()>;
    fn lookup(&mut self, i: usize) -> Result<()>;
    fn getattr(&mut self, i: usize) -> Result<()>;
    fn unlink(&mut self, i: usize) -> Result<()>;
    fn list(&mut self) -> Result<usize>;
    /// Untimed clean-up between the create and the getattr phases.
    fn after_getattr(&mut self) -> Result<()>;
    /// A request answered without any host call, if the target serves requests (false for
    /// the host itself, which has no request path).
    fn unimplemented(&mut self) -> Result<bool>;
}

fn file_name(i: usize) -> String {
    format!("f{i:06}")
}

/// `res` as a count, or the call's error (`what` names the call) when it is negative.
pub(crate) fn check(res: libc::ssize_t, what: &str) -> Result<usize> {
    if res < 0 {
        Err(BenchError::Io {
            what: what.to_string(),
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(res as usize)
    }
}

/// The host's LOOKUP of `name` in directory `dir`: one `fstatat`, not following a symlink.
pub(crate) fn stat_at(dir: &File, name: &CStr) -> Result<()> {
    fsredirect::beneath::stat_name(dir, name)
        .map(drop)
        .map_err(io_err(format!("fstatat {name:?}")))
}

/// The host's CREATE of `name` in directory `dir`: one `openat` with `O_CREAT | O_EXCL`.
pub(crate) fn create_at(dir: &File, name: &CStr) -> Result<OwnedFd> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid C string and `dir` an open directory.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o644) };
    let fd = check(fd as libc::ssize_t, "openat O_CREAT")?;
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The host's UNLINK of `name` in directory `dir`: one `unlinkat`.
pub(crate) fn unlink_at(dir: &File, name: &CStr) -> Result<()> {
    // SAFETY: `name` is a valid C string and `dir` an open directory.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    check(r as libc::ssize_t, "unlinkat").map(drop)
}

/// `name` as a C string.
pub(crate) fn cname(name: &str) -> CString {
    // Names are generated here and never hold a NUL.
    CString::new(name).expect("generated names hold no NUL")
}

/// Direct syscalls on a host directory.
struct HostTarget {
    dir: PathBuf,
    dirfd: File,
    data: Option<File>,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl HostTarget {
    fn new(dir: &Path) -> Result<Self> {
        let dirfd = File::open(dir).map_err(io_err(format!("open {}", dir.display())))?;
        Ok(HostTarget {
            dir: dir.to_path_buf(),
            dirfd,
            data: None,
            buf: vec![0xa5; MAX_IO],
            fds: Vec::new(),
        })
    }

    fn data(&self) -> Result<&File> {
        self.data
            .as_ref()
            .ok_or_else(|| BenchError::Driver("data file not open".into()))
    }
}

impl Target for HostTarget {
    fn open_data(&mut self) -> Result<()> {
        let path = self.dir.join("data.bin");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        self.data = Some(file);
        Ok(())
    }

    fn write(&mut self, offset: u64, len: usize) -> Result<()> {
        let fd = self.data()?.as_raw_fd();
        // SAFETY: the buffer is valid for `len` <= MAX_IO bytes and outlives the call.
        let n = unsafe { libc::pwrite(fd, self.buf.as_ptr().cast(), len, offset as i64) };
        check(n, "pwrite data.bin").map(drop)
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<()> {
        let fd = self.data()?.as_raw_fd();
        // SAFETY: the buffer is valid and writable for `len` <= MAX_IO bytes.
        let n = unsafe { libc::pread(fd, self.buf.as_mut_ptr().cast(), len, offset as i64) };
        check(n, "pread data.bin").map(drop)
    }

    fn close_data(&mut self) -> Result<()> {
        self.data = None;
        Ok(())
    }

    fn create(&mut self, i: usize) -> Result<()> {
        self.fds
            .push(create_at(&self.dirfd, &cname(&file_name(i)))?);
        Ok(())
    }

    fn lookup(&mut self, i: usize) -> Result<()> {
        stat_at(&self.dirfd, &cname(&file_name(i)))
    }

    fn getattr(&mut self, i: usize) -> Result<()> {
        let fd = self.fds[i].as_raw_fd();
        // SAFETY: a zeroed stat is a valid out-buffer.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` a valid out-pointer.
        let r = unsafe { libc::fstat64(fd, &mut st) };
        check(r as libc::ssize_t, "fstat").map(drop)
    }

    fn after_getattr(&mut self) -> Result<()> {
        self.fds.clear();
        Ok(())
    }

    fn unimplemented(&mut self) -> Result<bool> {
        Ok(false)
    }

    fn unlink(&mut self, i: usize) -> Result<()> {
        unlink_at(&self.dirfd, &cname(&file_name(i)))
    }

    fn list(&mut self) -> Result<usize> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(io_err(format!("list {}", self.dir.display())))?;
        // read_dir skips "." and ".." as the driver's count does.
        Ok(entries.count())
    }
}

/// The virtio-fs device, driven through its queue.
struct DeviceTarget {
    driver: Driver<RedirectFs>,
    data: Option<(u64, u64)>,
    nodes: Vec<u64>,
    /// Handles of created files, released after the timed phases.
    pending: Vec<(u64, u64)>,
}

impl Target for DeviceTarget {
    fn open_data(&mut self) -> Result<()> {
        self.driver.fill_data(0xa5)?;
        self.data = Some(self.driver.create(ROOT, "data.bin")?);
        Ok(())
    }

    fn write(&mut self, offset: u64, len: usize) -> Result<()> {
        let (node, fh) = self
            .data
            .ok_or_else(|| BenchError::Driver("no data file".into()))?;
        let n = self.driver.write(node, fh, offset, len)?;
        if n != len {
            return Err(BenchError::Driver(format!("short write: {n} of {len}")));
        }
        Ok(())
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<()> {
        let (node, fh) = self
            .data
            .ok_or_else(|| BenchError::Driver("no data file".into()))?;
        let n = self.driver.read(node, fh, offset, len)?;
        if n != len {
            return Err(BenchError::Driver(format!("short read: {n} of {len}")));
        }
        Ok(())
    }

    fn close_data(&mut self) -> Result<()> {
        if let Some((node, fh)) = self.data.take() {
            self.driver.release(node, fh, false)?;
        }
        Ok(())
    }

    fn create(&mut self, _i: usize) -> Result<()> {
        let (node, fh) = self.driver.create(ROOT, &file_name(self.nodes.len()))?;
        self.nodes.push(node);
        self.pending.push((node, fh));
        Ok(())
    }

    fn lookup(&mut self, i: usize) -> Result<()> {
        self.driver.lookup(ROOT, &file_name(i)).map(drop)
    }

    fn getattr(&mut self, i: usize) -> Result<()> {
        self.driver.getattr(self.nodes[i])
    }

    fn unimplemented(&mut self) -> Result<bool> {
        self.driver.unimplemented().map(|()| true)
    }

    fn after_getattr(&mut self) -> Result<()> {
        for (node, fh) in std::mem::take(&mut self.pending) {
            self.driver.release(node, fh, false)?;
        }
        Ok(())
    }

    fn unlink(&mut self, i: usize) -> Result<()> {
        self.driver.unlink(ROOT, &file_name(i))
    }

    fn list(&mut self) -> Result<usize> {
        self.driver.list_dir(ROOT)
    }
}

/// A deterministic xorshift generator of random offsets: every target of a part gets the
/// same sequence.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator at the start of the shared sequence.
    pub(crate) fn new() -> Self {
        Rng(0x9e37_79b9_7f4a_7c15)
    }

    /// The next number, below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn throughput(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Writes back the file system holding `dir` (untimed), so that one phase's dirty data does
/// not slow the next phase down.
pub(crate) fn settle(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(io_err(format!("open {}", dir.display())))?;
    // SAFETY: syncfs on an open descriptor has no memory-safety preconditions.
    let r = unsafe { libc::syncfs(file.as_raw_fd()) };
    check(r as libc::ssize_t, "syncfs").map(drop)
}

fn run(target: &mut dyn Target, size: &WorkloadSize, dir: &Path) -> Result<Figures> {
    let mut figures = Figures::default();
    let chunk = MAX_IO as u64;
    let seq_bytes = size.seq_bytes.next_multiple_of(chunk);

    // Data: sequential write, sequential read (page cache warm), random 4 KiB read, write.
    target.open_data()?;
    let start = Instant::now();
    for offset in (0..seq_bytes).step_by(MAX_IO) {
        target.write(offset, MAX_IO)?;
    }
    figures.seq_write = throughput(seq_bytes, start.elapsed());
    let start = Instant::now();
    for offset in (0..seq_bytes).step_by(MAX_IO) {
        target.read(offset, MAX_IO)?;
    }
    figures.seq_read = throughput(seq_bytes, start.elapsed());
    let blocks = seq_bytes / RAND_IO as u64;
    let mut rng = Rng::new();
    let start = Instant::now();
    for _ in 0..size.rand_ops {
        target.read(rng.below(blocks) * RAND_IO as u64, RAND_IO)?;
    }
    figures.rand_read = size.rand_ops as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let start = Instant::now();
    for _ in 0..size.rand_ops {
        target.write(rng.below(blocks) * RAND_IO as u64, RAND_IO)?;
    }
    figures.rand_write = size.rand_ops as f64 / start.elapsed().as_secs_f64().max(1e-9);
    target.close_data()?;
    settle(dir)?;

    // Metadata, one timed call at a time.
    let timed = |n: usize, f: &mut dyn FnMut(usize) -> Result<()>| -> Result<Latencies> {
        let mut lat = Latencies::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            f(i)?;
            lat.push(start.elapsed());
        }
        Ok(lat)
    };
    let create = timed(size.files, &mut |i| target.create(i))?;
    let lookup = timed(size.files, &mut |i| target.lookup(i))?;
    let getattr = timed(size.files, &mut |i| target.getattr(i))?;
    let lookup_again = timed(size.files, &mut |i| target.lookup(i))?;
    target.after_getattr()?;
    let want = size.files + 1; // the files and data.bin
    let readdir = timed(size.listings, &mut |_| {
        let listed = target.list()?;
        if listed != want {
            return Err(BenchError::Driver(format!(
                "listing found {listed} entries, expected {want}"
            )));
        }
        Ok(())
    })?;
    let unlink = timed(size.files, &mut |i| target.unlink(i))?;
    figures.meta = vec![create, lookup, getattr, lookup_again, unlink, readdir];
    if target.unimplemented()? {
        figures.floor = timed(size.files, &mut |_| target.unimplemented().map(drop))?;
    }
    Ok(figures)
}

/// Runs the workload against `kind` in a fresh directory under `base`.
pub fn run_target(kind: TargetKind, base: &Path, size: &WorkloadSize) -> Result<Figures> {
    let guest = base.join("guest");
    let store = base.join("store");
    std::fs::create_dir_all(&guest).map_err(io_err(format!("create {}", guest.display())))?;
    let figures = match kind {
        TargetKind::Host => run(&mut HostTarget::new(&guest)?, size, base)?,
        TargetKind::Passthrough | TargetKind::Redirect => {
            let spec = if kind == TargetKind::Redirect {
                format!(
                    "tag=bench,dir={},store={}",
                    guest.display(),
                    store.display()
                )
            } else {
                format!("tag=bench,dir={}", guest.display())
            };
            let share = ShareSpec::parse(&spec).map_err(|e| BenchError::Setup(e.to_string()))?;
            let fs = RedirectFs::new(&share, FsConfig::default())
                .map_err(|e| BenchError::Setup(format!("{spec}: {e}")))?;
            let mut target = DeviceTarget {
                driver: Driver::new(fs)?,
                data: None,
                nodes: Vec::new(),
                pending: Vec::new(),
            };
            run(&mut target, size, base)?
        }
    };
    std::fs::remove_dir_all(base).map_err(io_err(format!("remove {}", base.display())))?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: WorkloadSize = WorkloadSize {
        seq_bytes: 2 << 20,
        rand_ops: 16,
        files: 8,
        listings: 2,
    };

    #[test]
    fn figures_read_back_as_they_were_written() {
        let lat = |ns: &[u64]| {
            let mut l = Latencies::with_capacity(ns.len());
            ns.iter().for_each(|&n| l.push(Duration::from_nanos(n)));
            l
        };
        let figures = Figures {
            seq_write: 1.5e9,
            seq_read: 2.25e9,
            rand_read: 123456.75,
            rand_write: 0.0,
            meta: MetaOp::ALL.iter().map(|_| lat(&[1, 20, 300])).collect(),
            floor: lat(&[]),
        };

        let back = Figures::decode(&figures.encode()).unwrap();

        assert_eq!(back.encode(), figures.encode());
        assert_eq!(back.rand_read, 123456.75);
        assert_eq!(back.meta[2].quantile_us(0.5), 0.02);
        assert!(back.floor.is_empty());
        for broken in ["", "fsr-bench-figures 1\n1 2 3\n", &figures.encode()[..40]] {
            assert!(Figures::decode(broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn workload_completes_on_every_target() {
        for kind in TargetKind::ALL {
            let tmp = tempfile::tempdir().unwrap();

            let figures = run_target(kind, &tmp.path().join("run"), &TINY).unwrap();

            assert!(
                figures.seq_write > 0.0 && figures.rand_read > 0.0,
                "{kind:?}"
            );
            assert_eq!(figures.meta.len(), MetaOp::ALL.len());
            assert!(!tmp.path().join("run").exists(), "the run cleans up");
        }
    }

    #[test]
    fn redirected_writes_through_the_queue_land_in_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = format!("tag=t,dir={0}/guest,store={0}/store", tmp.path().display());
        std::fs::create_dir(tmp.path().join("guest")).unwrap();
        let share = ShareSpec::parse(&spec).unwrap();
        let mut driver =
            Driver::new(RedirectFs::new(&share, FsConfig::default()).unwrap()).unwrap();
        driver.fill_data(7).unwrap();

        let (node, fh) = driver.create(ROOT, "a").unwrap();
        let written = driver.write(node, fh, 0, 4096).unwrap();
        let read = driver.read(node, fh, 0, 8192).unwrap();
        driver.release(node, fh, false).unwrap();

        assert_eq!((written, read), (4096, 4096));
        let stored = std::fs::read(tmp.path().join("store/t/a")).unwrap();
        assert_eq!(stored, vec![7u8; 4096]);
        assert_eq!(
            std::fs::metadata(tmp.path().join("guest/a")).unwrap().len(),
            4096
        );
    }
}
