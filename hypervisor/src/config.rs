//! What a VM is made of: [`VmConfig`] and its builder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::seccomp::SeccompMode;
use devices::virtio::fs::handler::DEFAULT_BATCH_POLL;
use devices::virtio::fs::pool::MAX_POOL_SIZE;
use fsredirect::{FsConfig, ShareSpec};

use crate::boot::mptable::MAX_CPUS;
use crate::layout::CMDLINE_MAX_SIZE;

/// The command line used when none is given: serial console, reboot via
/// the keyboard controller, reboot at once on panic, only warnings and worse from the kernel on
/// the console (`quiet`: every console byte is a VM exit, and the boot log alone doubled the
/// time to `/init`; `--append loglevel=7` brings it back), no PS/2 aux probe.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux";
/// Guest memory when none is given.
pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;
/// Smallest guest memory we accept.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Largest guest memory we accept (1 TiB).
pub const MAX_MEM_SIZE: u64 = 1 << 40;

/// Errors in a VM description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No kernel was given.
    #[error("no kernel image given; pass --kernel PATH (build the default one with guest-images/build-guest.sh)")]
    NoKernel,
    /// Memory size outside the accepted range or badly aligned.
    #[error("guest memory of {0} bytes is not usable: give a multiple of 4 KiB between 16 MiB and 1 TiB, e.g. --mem 512M")]
    MemSize(u64),
    /// A memory size that does not parse.
    #[error("cannot read memory size {0:?}: give a number with an optional unit K, M, G or T (e.g. 128M, 2G, 1T); a bare number means MiB")]
    MemSyntax(String),
    /// A vCPU count outside the accepted range.
    #[error("{0} vCPUs is not usable: give 1 to {MAX_CPUS}")]
    Vcpus(u32),
    /// A request pool larger than a queue may have.
    #[error(
        "a request pool of {0} threads per share queue is not usable: give 0 (none) to \
         {MAX_POOL_SIZE}, e.g. --fs-thread-pool-size 4"
    )]
    RequestPool(usize),
    /// Two shares with one tag.
    #[error("two shares have the tag {0:?}; give each share its own tag")]
    DuplicateTag(String),
    /// linux-loader refuses the command line: in practice, it is too long.
    #[error(
        "the kernel command line is not usable: it must fit in {CMDLINE_MAX_SIZE} bytes, counting \
         the entries the VMM adds for its devices and a terminating NUL; shorten --cmdline or \
         --append"
    )]
    Cmdline(#[source] linux_loader::cmdline::Error),
}

/// Parses a memory size such as `128M`, `2G`, `512MiB`, `65536K` or `256` (MiB).
pub fn parse_mem_size(text: &str) -> Result<u64, ConfigError> {
    let syntax = || ConfigError::MemSyntax(text.to_owned());
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| syntax())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(syntax()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or(ConfigError::MemSize(u64::MAX))
}

/// Where guest console output goes.
#[derive(Clone, Default)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A writer of the caller's (e.g. a file or an in-memory buffer in tests).
    Writer(Arc<Mutex<dyn Write + Send>>),
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleOutput::Stdout => write!(f, "Stdout"),
            ConsoleOutput::Writer(_) => write!(f, "Writer(..)"),
        }
    }
}

/// A complete description of a VM, made by [`VmConfig::builder`], which checks it.
///
/// ```
/// use hypervisor::VmConfig;
/// use fsredirect::ShareSpec;
///
/// let config = VmConfig::builder("build/guest/vmlinux")
///     .initrd("build/guest/initramfs.cpio.gz")
///     .mem_size(256 << 20)
///     .vcpus(2)
///     .share(ShareSpec::parse("tag=data,dir=/srv/guest,store=/srv/store")?)
///     .build()?;
/// assert_eq!(config.vcpus, 2);
/// assert_eq!(config.shares[0].tag, "data");
/// // Mistakes are refused before anything runs: two shares with one tag, say.
/// let twice = VmConfig::builder("build/guest/vmlinux")
///     .share(ShareSpec::parse("tag=data,dir=/srv/a")?)
///     .share(ShareSpec::parse("tag=data,dir=/srv/b")?)
///     .build();
/// assert!(twice.is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (the VMM appends device entries to it).
    pub cmdline: String,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Where the guest console's output goes.
    pub console_output: ConsoleOutput,
    /// Whether the VMM's standard input feeds the guest console.
    pub console_input: bool,
    /// Host directories shared with the guest through virtio-fs, each
    /// mounted at /mnt/TAG by the guest's /init.
    pub shares: Vec<ShareSpec>,
    /// Run even on a software-virtualized /dev/kvm (only PVM-aware guest
    /// kernels run well there); otherwise the VMM explains and refuses.
    pub allow_software_kvm: bool,
    /// What the seccomp filters of the threads the VMM starts (vCPUs, event loop, virtio-fs
    /// workers) do with a call they do not allow (default: end the process). The calling
    /// program's own threads are never filtered.
    pub seccomp: SeccompMode,
    /// Whether the shares reach guest-tree inodes by file handle (the default when run as
    /// root: host descriptors stay bounded whatever the guest looks up). Off, each inode the
    /// guest knows holds an `O_PATH` descriptor instead, and the share workers also limit
    /// themselves with Landlock to their tree and store: what a process without
    /// CAP_DAC_READ_SEARCH does, such as one in the sandbox (`hypervisor run --sandbox`).
    pub share_file_handles: bool,
    /// How long a share's queue that has just served several requests keeps looking for the
    /// guest's next ones before it asks to be kicked (default [`DEFAULT_BATCH_POLL`]; zero:
    /// never). See `devices::virtio::fs::VirtioFs::with_batch_poll`.
    pub fs_batch_poll: Duration,
    /// Threads serving each share's request queue side by side (default 0: the queue's own
    /// thread serves its requests one at a time). See
    /// `devices::virtio::fs::VirtioFs::with_request_pool` for when a pool pays off.
    pub fs_request_pool: usize,
}

impl VmConfig {
    /// Starts describing a VM that boots `kernel`.
    pub fn builder(kernel: impl Into<PathBuf>) -> VmConfigBuilder {
        VmConfigBuilder {
            kernel: Some(kernel.into()),
            ..VmConfigBuilder::default()
        }
    }
}

/// Builds a [`VmConfig`], checking every value.
///
/// ```
/// use hypervisor::VmConfig;
///
/// let config = VmConfig::builder("build/guest/vmlinux")
///     .initrd("build/guest/initramfs.cpio.gz")
///     .mem_size(256 << 20)
///     .vcpus(2)
///     .cmdline("console=ttyS0 reboot=k panic=-1 fsr.scenario=exit fsr.arg=3")
///     .build()
///     .unwrap();
/// assert_eq!(config.vcpus, 2);
/// ```
#[derive(Debug, Default)]
pub struct VmConfigBuilder {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    mem_size: Option<u64>,
    vcpus: Option<u32>,
    console_output: ConsoleOutput,
    console_input: Option<bool>,
    shares: Vec<ShareSpec>,
    allow_software_kvm: bool,
    seccomp: SeccompMode,
    share_file_handles: Option<bool>,
    fs_batch_poll: Option<Duration>,
    fs_request_pool: usize,
}

impl VmConfigBuilder {
    /// Sets what the VMM's seccomp filters do with a forbidden call (default:
    /// [`SeccompMode::Kill`]; [`SeccompMode::None`] installs none).
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// Sets how long a share's queue polls for more requests after a batch (default
    /// [`DEFAULT_BATCH_POLL`]; zero turns it off); see [`VmConfig::fs_batch_poll`].
    pub fn fs_batch_poll(mut self, poll: Duration) -> Self {
        self.fs_batch_poll = Some(poll);
        self
    }

    /// Sets how many threads serve each share's request queue side by side (default 0:
    /// none, the queue's own thread serves them); see [`VmConfig::fs_request_pool`].
    pub fn fs_request_pool(mut self, threads: usize) -> Self {
        self.fs_request_pool = threads;
        self
    }

    /// Sets whether the shares reach inodes by file handle (default: when run as root); see
    /// [`VmConfig::share_file_handles`].
    pub fn share_file_handles(mut self, enabled: bool) -> Self {
        self.share_file_handles = Some(enabled);
        self
    }

    /// Runs even on a software-virtualized /dev/kvm (default: refuse and explain).
    pub fn allow_software_kvm(mut self, allow: bool) -> Self {
        self.allow_software_kvm = allow;
        self
    }

    /// Adds a virtio-fs share (see [`ShareSpec::parse`]).
    pub fn share(mut self, share: ShareSpec) -> Self {
        self.shares.push(share);
        self
    }

    /// Sets the initramfs.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Sets the whole kernel command line (default: [`DEFAULT_CMDLINE`]).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// Sets guest memory in bytes (default: 128 MiB).
    pub fn mem_size(mut self, bytes: u64) -> Self {
        self.mem_size = Some(bytes);
        self
    }

    /// Sets the number of vCPUs (default: 1).
    pub fn vcpus(mut self, count: u32) -> Self {
        self.vcpus = Some(count);
        self
    }

    /// Sends guest console output to `writer` instead of standard output.
    pub fn console_output(mut self, writer: Arc<Mutex<dyn Write + Send>>) -> Self {
        self.console_output = ConsoleOutput::Writer(writer);
        self
    }

    /// Whether standard input feeds the guest console (default: true).
    pub fn console_input(mut self, enabled: bool) -> Self {
        self.console_input = Some(enabled);
        self
    }

    /// Checks every value and returns the configuration.
    pub fn build(self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.ok_or(ConfigError::NoKernel)?;
        let mem_size = self.mem_size.unwrap_or(DEFAULT_MEM_SIZE);
        if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&mem_size) || mem_size % 4096 != 0 {
            return Err(ConfigError::MemSize(mem_size));
        }
        let vcpus = self.vcpus.unwrap_or(1);
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|n| (1..=MAX_CPUS).contains(n))
            .ok_or(ConfigError::Vcpus(vcpus))?;
        let cmdline = self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        crate::boot::parse_cmdline(&cmdline).map_err(ConfigError::Cmdline)?;
        if self.fs_request_pool > MAX_POOL_SIZE {
            return Err(ConfigError::RequestPool(self.fs_request_pool));
        }
        let mut tags = std::collections::HashSet::new();
        for share in &self.shares {
            if !tags.insert(share.tag.as_str()) {
                return Err(ConfigError::DuplicateTag(share.tag.clone()));
            }
        }
        Ok(VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline,
            mem_size,
            vcpus,
            console_output: self.console_output,
            console_input: self.console_input.unwrap_or(true),
            shares: self.shares,
            allow_software_kvm: self.allow_software_kvm,
            seccomp: self.seccomp,
            share_file_handles: self
                .share_file_handles
                .unwrap_or_else(|| FsConfig::default().inode_file_handles),
            fs_batch_poll: self.fs_batch_poll.unwrap_or(DEFAULT_BATCH_POLL),
            fs_request_pool: self.fs_request_pool,
        })
    }
}

/// The root of the source tree this binary was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Tag of the default share (mounted in the guest at /mnt/data).
pub const DEFAULT_SHARE_TAG: &str = "data";

/// The VM data folder of the default VM: the default share's guest tree
/// (`tree/`) and block store (`store/`).
pub fn default_vm_data_dir() -> PathBuf {
    workspace_root().join("vm-data").join("default")
}

/// Creates the directories a share serves, if missing.
pub fn create_share_dirs(share: &ShareSpec) -> std::io::Result<()> {
    std::fs::create_dir_all(&share.dir)?;
    if let Some(store) = &share.store {
        std::fs::create_dir_all(&store.root)?;
    }
    Ok(())
}

/// Where guest-images/build-guest.sh puts its outputs.
pub fn default_guest_dir() -> PathBuf {
    workspace_root().join("build").join("guest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_units() {
        assert_eq!(parse_mem_size("128M"), Ok(128 << 20));
        assert_eq!(parse_mem_size("2G"), Ok(2 << 30));
        assert_eq!(parse_mem_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_mem_size("65536k"), Ok(64 << 20));
        assert_eq!(parse_mem_size("256"), Ok(256 << 20));
    }

    #[test]
    fn memory_size_garbage_is_refused_with_the_input() {
        for bad in ["", "M", "12X", "-5M", "1.5G"] {
            assert_eq!(
                parse_mem_size(bad),
                Err(ConfigError::MemSyntax(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_request_pool_larger_than_a_queue_may_have_is_refused_with_the_range() {
        let too_many = VmConfig::builder("k")
            .fs_request_pool(MAX_POOL_SIZE + 1)
            .build()
            .map(drop)
            .unwrap_err();
        assert_eq!(too_many, ConfigError::RequestPool(MAX_POOL_SIZE + 1));
        assert!(too_many.to_string().contains("--fs-thread-pool-size"));
        let most = VmConfig::builder("k")
            .fs_request_pool(MAX_POOL_SIZE)
            .build()
            .unwrap();
        assert_eq!(most.fs_request_pool, MAX_POOL_SIZE);
    }

    #[test]
    fn the_whole_advertised_range_parses_up_to_one_tib() {
        assert_eq!(parse_mem_size("1T"), Ok(MAX_MEM_SIZE));
        assert_eq!(parse_mem_size("1024G"), Ok(MAX_MEM_SIZE));
        let config = VmConfig::builder("k")
            .mem_size(MAX_MEM_SIZE)
            .build()
            .unwrap();
        assert_eq!(config.mem_size, 1 << 40);
        assert!(VmConfig::builder("k")
            .mem_size(MAX_MEM_SIZE + 4096)
            .build()
            .is_err());
    }

    #[test]
    fn memory_size_overflow_is_refused() {
        assert!(matches!(
            parse_mem_size("99999999999999999G"),
            Err(ConfigError::MemSize(_))
        ));
    }

    #[test]
    fn defaults_are_one_vcpu_128_mib_and_the_default_cmdline() {
        let config = VmConfig::builder("vmlinux").build().unwrap();

        assert_eq!((config.vcpus, config.mem_size), (1, 128 << 20));
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert!(config.console_input);
    }

    #[test]
    fn too_little_or_unaligned_memory_is_refused() {
        let small = VmConfig::builder("k").mem_size(8 << 20).build();
        let odd = VmConfig::builder("k").mem_size((64 << 20) + 1).build();

        assert_eq!(small.unwrap_err(), ConfigError::MemSize(8 << 20));
        assert!(matches!(odd, Err(ConfigError::MemSize(_))));
    }

    #[test]
    fn vcpu_count_must_be_between_1_and_254() {
        assert_eq!(
            VmConfig::builder("k").vcpus(0).build().unwrap_err(),
            ConfigError::Vcpus(0)
        );
        assert_eq!(
            VmConfig::builder("k").vcpus(300).build().unwrap_err(),
            ConfigError::Vcpus(300)
        );
        assert!(VmConfig::builder("k").vcpus(254).build().is_ok());
    }

    #[test]
    fn duplicate_share_tags_are_refused() {
        let share = ShareSpec::parse("tag=data,dir=/srv/a").unwrap();
        let other = ShareSpec::parse("tag=data,dir=/srv/b").unwrap();

        let err = VmConfig::builder("k")
            .share(share)
            .share(other)
            .build()
            .unwrap_err();

        assert_eq!(err, ConfigError::DuplicateTag("data".into()));
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let long = "x".repeat(4096);
        let err = VmConfig::builder("k").cmdline(long).build().unwrap_err();
        // linux-loader's reason stays reachable as the source.
        assert!(
            matches!(err, ConfigError::Cmdline(_)) && std::error::Error::source(&err).is_some(),
            "{err:?}"
        );
    }
}
