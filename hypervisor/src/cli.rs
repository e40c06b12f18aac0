//! The command line of the `hypervisor` binary. Every option maps onto the
//! library's [`crate::VmConfig`]; `main.rs` only parses and runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use devices::virtio::fs::handler::DEFAULT_BATCH_POLL;
use devices::virtio::fs::pool::MAX_POOL_SIZE;
use fsredirect::ShareSpec;

use crate::config::{self, ConfigError, VmConfig, DEFAULT_CMDLINE};
use crate::sandbox::SandboxMode;
use crate::SeccompMode;

const EXAMPLES: &str = "\
Examples:
  Boot the default guest (built by guest-images/build-guest.sh) with the default
  redirecting share (vm-data/default/tree over vm-data/default/store, at /mnt/data):
    hypervisor
  Boot a kernel with an initramfs, 2 vCPUs and 512 MiB:
    hypervisor run --kernel build/guest/vmlinux --initrd build/guest/initramfs.cpio.gz \\
        --vcpus 2 --mem 512M
  Share a host directory (plain passthrough), mounted in the guest at /mnt/data:
    hypervisor run --share tag=data,dir=/srv/data
  Share a directory whose file data is redirected into a block store:
    hypervisor run --share tag=data,dir=/srv/guest-tree,store=/srv/store
  Run a named guest scenario and return its exit code:
    hypervisor run --append 'fsr.scenario=exit fsr.arg=3'; echo $?
  Run the VMM in a sandbox (as root) that holds only the kernel, initramfs, /dev/kvm and
  the shares:
    hypervisor run --sandbox namespace --share tag=data,dir=/srv/guest-tree,store=/srv/store

In the guest console, type Ctrl-A then x to stop the VM (Ctrl-A Ctrl-A sends Ctrl-A).
The guest ends the VM with an exit code by writing it to I/O port 0xf4 (see docs/guest-protocol.md).";

/// A minimal KVM virtual machine monitor with a redirecting virtio-fs device.
#[derive(Debug, Parser)]
#[command(name = "hypervisor", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, accepted without the subcommand too.
    #[command(flatten)]
    pub run: RunArgs,
    /// More log output: -v for progress, -vv for debugging (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest and attach its serial console to this terminal.
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Serve a share to another VMM (QEMU) as a vhost-user virtio-fs back-end.
    #[command(after_help = crate::vhost_user::EXAMPLES)]
    VhostUserFs(crate::vhost_user::VhostUserFsArgs),
}

/// Options of `hypervisor run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Guest kernel: uncompressed ELF vmlinux or bzImage [default: build/guest/vmlinux]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs [default with the default kernel: build/guest/initramfs.cpio.gz]
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Extra kernel parameters appended to the command line
    #[arg(long, value_name = "TEXT")]
    pub append: Vec<String>,
    /// Guest memory, with unit K, M, G or T (a bare number is MiB)
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = config::parse_mem_size)]
    pub mem: u64,
    /// Number of vCPUs
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Shares a host directory through virtio-fs, mounted in the guest at /mnt/TAG.
    #[arg(
        long,
        value_name = "SPEC",
        value_parser = parse_share,
        help = "Share a host directory through virtio-fs, mounted in the guest at /mnt/TAG \
                (repeatable): tag=TAG,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...]"
    )]
    pub share: Vec<ShareSpec>,
    /// Boot even on a software-virtualized /dev/kvm (kvm_pvm), where only PVM-aware guest
    /// kernels run well; without it the VMM explains and names the test-host command
    #[arg(long)]
    pub allow_software_kvm: bool,
    /// Do not add the default share (vm-data/default, mounted at /mnt/data) to the default guest
    #[arg(long)]
    pub no_default_share: bool,
    /// What the seccomp filters of the vCPU, event-loop and virtio-fs threads do with a system
    /// call they do not allow: kill (end the VMM), trap (name the call, then exit 159), log
    /// (let it through; the kernel logs it, see dmesg), none (no filters)
    #[arg(long, value_name = "MODE", default_value = "kill", value_parser = parse_seccomp)]
    pub seccomp: SeccompMode,
    /// Where the VMM runs: none, or namespace (new mount, pid, IPC and network namespaces
    /// holding only the kernel, initramfs, /dev/kvm and the shares; shares served without
    /// file handles, their workers limited by Landlock; capabilities cut; not run as root,
    /// in a user namespace of its own, which the host must allow)
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = parse_vmm_sandbox)]
    pub sandbox: SandboxMode,
    /// How long, in microseconds, a share's queue that has just served several requests keeps
    /// looking for the guest's next ones before it asks to be kicked: spares a guest with many
    /// requests in flight a kick (a VM exit) and a wake-up per batch, for up to this much CPU
    /// time per batch. 0 turns it off (cores shared with the vCPUs)
    #[arg(long, value_name = "MICROSECONDS",
          default_value_t = DEFAULT_BATCH_POLL.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub fs_batch_poll_us: u64,
    /// Threads serving each share's request queue side by side (as virtiofsd's
    /// --thread-pool-size), for hosts whose requests block for long (slow or network
    /// storage) with cores to spare; otherwise the hand-over between threads costs about what
    /// a request does. 0: the queue's own thread serves them one at a time
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_POOL_SIZE as u64))]
    pub fs_thread_pool_size: u64,
}

/// Parses a `--sandbox` value, for clap.
pub fn parse_sandbox(mode: &str) -> Result<SandboxMode, String> {
    mode.parse()
}

/// Parses `run`'s `--sandbox` value, for clap: chroot confines one share's server, not a VMM.
pub fn parse_vmm_sandbox(mode: &str) -> Result<SandboxMode, String> {
    match mode.parse()? {
        SandboxMode::Chroot => Err(
            "chroot is for `hypervisor vhost-user-fs` only: one root cannot hold a VMM's \
             kernel, /dev/kvm and every share; give namespace or none"
                .into(),
        ),
        mode => Ok(mode),
    }
}

/// Parses a `--seccomp` value, for clap.
pub fn parse_seccomp(mode: &str) -> Result<SeccompMode, String> {
    mode.parse()
}

/// Parses a `--share` value with the one share parser, for clap.
pub fn parse_share(spec: &str) -> Result<ShareSpec, String> {
    ShareSpec::parse(spec).map_err(|e| e.to_string())
}

impl RunArgs {
    /// Turns the options into a VM configuration; the default guest image is
    /// found from the source tree the binary was built in.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let guest_dir = config::default_guest_dir();
        let (kernel, initrd) = match &self.kernel {
            Some(kernel) => (kernel.clone(), self.initrd.clone()),
            None => (
                guest_dir.join("vmlinux"),
                Some(
                    self.initrd
                        .clone()
                        .unwrap_or_else(|| guest_dir.join("initramfs.cpio.gz")),
                ),
            ),
        };
        let mut cmdline = self.cmdline.clone();
        for extra in &self.append {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let mut builder = VmConfig::builder(kernel)
            .allow_software_kvm(self.allow_software_kvm)
            .seccomp(self.seccomp)
            .fs_batch_poll(std::time::Duration::from_micros(self.fs_batch_poll_us))
            // At most MAX_POOL_SIZE, by the parser.
            .fs_request_pool(self.fs_thread_pool_size as usize)
            .cmdline(cmdline)
            .mem_size(self.mem)
            .vcpus(self.vcpus);
        if let Some(initrd) = initrd {
            builder = builder.initrd(initrd);
        }
        for share in &self.share {
            builder = builder.share(share.clone());
        }
        if let Some(share) = self.default_share() {
            builder = builder.share(share);
        }
        builder.build()
    }

    /// The default share: given to the default guest when no `--share` is,
    /// so `cargo run --release` boots with a redirecting share mounted at
    /// /mnt/data whose tree and store live in the VM data folder.
    pub fn default_share(&self) -> Option<ShareSpec> {
        if self.kernel.is_some() || !self.share.is_empty() || self.no_default_share {
            return None;
        }
        let data = config::default_vm_data_dir();
        ShareSpec::parse(&format!(
            "tag={},dir={},store={}",
            config::DEFAULT_SHARE_TAG,
            data.join("tree").display(),
            data.join("store").display()
        ))
        .ok()
    }
}

impl Cli {
    /// The `run` options, whether given with or without the subcommand.
    pub fn run_args(&self) -> &RunArgs {
        match &self.command {
            Some(Command::Run(args)) => args,
            Some(Command::VhostUserFs(_)) | None => &self.run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("hypervisor").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_means_run_with_the_default_guest() {
        let config = parse(&[]).run_args().to_config().unwrap();

        assert!(config.kernel.ends_with("build/guest/vmlinux"));
        assert!(config
            .initrd
            .unwrap()
            .ends_with("build/guest/initramfs.cpio.gz"));
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn share_queues_have_no_request_pool_unless_asked_and_at_most_the_largest() {
        assert_eq!(
            parse(&[]).run_args().to_config().unwrap().fs_request_pool,
            0
        );
        let asked = parse(&["run", "--fs-thread-pool-size", "4"]);
        assert_eq!(asked.run_args().to_config().unwrap().fs_request_pool, 4);
        let too_many = MAX_POOL_SIZE + 1;
        let wrong =
            Cli::try_parse_from(["hypervisor", "--fs-thread-pool-size", &too_many.to_string()])
                .unwrap_err();
        assert!(
            wrong.to_string().contains("--fs-thread-pool-size"),
            "{wrong}"
        );
    }

    #[test]
    fn run_has_no_sandbox_unless_asked() {
        assert_eq!(parse(&[]).run_args().sandbox, SandboxMode::None);
        let asked = parse(&["run", "--sandbox", "namespace"]);
        assert_eq!(asked.run_args().sandbox, SandboxMode::Namespace);
        let wrong = Cli::try_parse_from(["hypervisor", "--sandbox", "jail"]).unwrap_err();
        assert!(
            wrong.to_string().contains("give namespace, chroot or none"),
            "{wrong}"
        );
        let chroot = Cli::try_parse_from(["hypervisor", "--sandbox", "chroot"]).unwrap_err();
        assert!(
            chroot
                .to_string()
                .contains("chroot is for `hypervisor vhost-user-fs` only"),
            "{chroot}"
        );
    }

    #[test]
    fn share_queues_poll_after_a_batch_unless_told_not_to() {
        let default = parse(&[]).run_args().to_config().unwrap();
        assert_eq!(default.fs_batch_poll, DEFAULT_BATCH_POLL);
        let off = parse(&["--fs-batch-poll-us", "0"]).run_args().to_config();
        assert_eq!(off.unwrap().fs_batch_poll, std::time::Duration::ZERO);
        let long = Cli::try_parse_from(["hypervisor", "--fs-batch-poll-us", "20000"]).unwrap_err();
        assert!(long.to_string().contains("0..=10000"), "{long}");
    }

    #[test]
    fn run_options_work_with_and_without_the_subcommand() {
        for args in [
            &["run", "--vcpus", "2", "--mem", "1G"][..],
            &["--vcpus", "2", "--mem", "1G"],
        ] {
            let config = parse(args).run_args().to_config().unwrap();
            assert_eq!((config.vcpus, config.mem_size), (2, 1 << 30), "{args:?}");
        }
    }

    #[test]
    fn default_guest_gets_the_default_share_unless_told_otherwise() {
        let default = parse(&[]).run_args().to_config().unwrap();
        let explicit = parse(&["--share", "tag=a,dir=/srv/a"])
            .run_args()
            .to_config()
            .unwrap();
        let refused = parse(&["--no-default-share"])
            .run_args()
            .to_config()
            .unwrap();

        assert_eq!(default.shares.len(), 1);
        assert_eq!(default.shares[0].tag, "data");
        assert!(default.shares[0].dir.ends_with("vm-data/default/tree"));
        assert!(default.shares[0].store.is_some());
        assert_eq!(explicit.shares.len(), 1);
        assert_eq!(explicit.shares[0].tag, "a");
        assert!(refused.shares.is_empty());
    }

    #[test]
    fn explicit_kernel_has_no_default_initrd() {
        let config = parse(&["run", "--kernel", "/k"])
            .run_args()
            .to_config()
            .unwrap();
        assert_eq!(config.initrd, None);
    }

    #[test]
    fn append_adds_to_the_command_line() {
        let config = parse(&["--append", "fsr.scenario=exit", "--append", "fsr.arg=3"])
            .run_args()
            .to_config()
            .unwrap();

        assert_eq!(
            config.cmdline,
            format!("{DEFAULT_CMDLINE} fsr.scenario=exit fsr.arg=3")
        );
    }

    #[test]
    fn bad_memory_size_is_a_parse_error_naming_the_input() {
        let err = Cli::try_parse_from(["hypervisor", "--mem", "lots"]).unwrap_err();
        assert!(err.to_string().contains("lots"), "{err}");
    }

    #[test]
    fn shares_are_parsed_by_the_share_parser() {
        let cli = parse(&[
            "--share",
            "tag=a,dir=/srv/a",
            "--share",
            "tag=b,dir=/srv/b,store=/srv/s",
        ]);

        let config = cli.run_args().to_config().unwrap();

        assert_eq!(config.shares.len(), 2);
        assert_eq!(config.shares[1].store.as_ref().unwrap().volume, "b");
    }

    #[test]
    fn bad_share_is_a_parse_error() {
        assert!(Cli::try_parse_from(["hypervisor", "--share", "dir=/x"]).is_err());
    }

    #[test]
    fn zero_vcpus_is_refused() {
        let err = parse(&["--vcpus", "0"]).run_args().to_config().unwrap_err();
        assert_eq!(err, ConfigError::Vcpus(0));
    }
}
