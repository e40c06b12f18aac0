//! The `hypervisor` binary: parses the command line and runs the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hypervisor::cli::{Cli, Command};
use hypervisor::sandbox::{self, Entered, Exposed, SandboxMode};
use hypervisor::signals::StopEvent;
use hypervisor::{Vm, VmConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("hypervisor: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<u8, Box<dyn std::error::Error>> {
    // Each share lets its guest hold descriptors up to a budget derived from this limit.
    match fsredirect::fdbudget::raise_nofile_limit() {
        Ok(limit) => log::debug!("RLIMIT_NOFILE: {limit}"),
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    if let Some(Command::VhostUserFs(args)) = &cli.command {
        return Ok(hypervisor::vhost_user::run(args)?);
    }
    let args = cli.run_args();
    let config = args.to_config()?;
    let default_share = args.default_share();
    // Every input, then the host, before anything is created: a mistake costs nothing.
    hypervisor::vm::preflight(&config, default_share.as_ref())?;
    if let Some(share) = default_share {
        hypervisor::config::create_share_dirs(&share)?;
        let store = share.store.as_ref().map(|s| s.root.display().to_string());
        eprintln!(
            "hypervisor: VM data folder {}: guest tree {}, store {} (in the guest: /mnt/{})",
            hypervisor::config::default_vm_data_dir().display(),
            share.dir.display(),
            store.unwrap_or_default(),
            share.tag
        );
    }
    if args.sandbox != SandboxMode::None {
        return run_sandboxed(config, args.sandbox);
    }
    let status = Vm::new(config)?.run()?;
    // Exit codes are one byte; signals map to 128+n, which fits.
    Ok(u8::try_from(status.code).unwrap_or(1))
}

/// Runs the VM in the sandbox ([`hypervisor::sandbox`]): this process stays outside as its
/// supervisor, passing stop signals on, and ends with the VMM's exit code.
fn run_sandboxed(
    mut config: VmConfig,
    mode: SandboxMode,
) -> Result<u8, Box<dyn std::error::Error>> {
    // Inside, the working directory is the new root and /sys is out of sight: paths are made
    // absolute and the host is examined here.
    let canonical = |path: &Path| -> Result<PathBuf, std::io::Error> {
        std::fs::canonicalize(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    config.kernel = canonical(&config.kernel)?;
    config.initrd = config.initrd.as_deref().map(canonical).transpose()?;
    for share in &mut config.shares {
        share.dir = canonical(&share.dir)?;
        if let Some(store) = &mut share.store {
            store.root = canonical(&store.root)?;
        }
    }
    // Without CAP_DAC_READ_SEARCH inside, a file handle opens nothing.
    config.share_file_handles = false;
    let host_kind = hypervisor::host::detect();
    let mut exposed = vec![Exposed::read_only(&config.kernel)];
    exposed.extend(config.initrd.iter().map(Exposed::read_only));
    let kvm = Path::new("/dev/kvm");
    // Without it, the VMM inside says so as it would outside.
    if kvm.exists() {
        exposed.push(Exposed::read_write(kvm));
    }
    for share in &config.shares {
        sandbox::check_tree_free(&share.dir).map_err(|e| hypervisor::VmError::Share {
            tag: share.tag.clone(),
            source: e.into(),
        })?;
        exposed.push(Exposed::read_write(&share.dir));
        if let Some(store) = &share.store {
            exposed.push(Exposed::read_write(&store.root));
        }
    }
    let stop = StopEvent::install()?;
    match sandbox::enter(mode, &exposed)? {
        Entered::Supervisor(supervisor) => {
            let forwarded = || match StopEvent::last_signal() {
                0 => libc::SIGTERM,
                signo => signo,
            };
            let code = supervisor.wait(stop.event(), forwarded)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Entered::Sandboxed => {
            // The VM installs its own stop-signal handling.
            drop(stop);
            log::info!("{}", sandbox::describe_current(mode));
            let status = Vm::new(config)?.host_kind(host_kind).run()?;
            Ok(u8::try_from(status.code).unwrap_or(1))
        }
    }
}

/// Logs to standard error, in colour on a terminal.
///
/// Threads under a seccomp filter log too (a vCPU, the virtio-fs workers), and env_logger's
/// own standard-error target asks whether the stream is a terminal at every line: an ioctl
/// those filters forbid, which ended the VMM at its first logged line on a terminal. So the
/// question is asked once, here, before any filter, and the lines go through a plain pipe
/// to standard error. `RUST_LOG_STYLE` (always, never) still decides when set; `NO_COLOR`
/// turns colour off.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;

    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    builder.format_timestamp_millis();
    if std::env::var_os("RUST_LOG_STYLE").is_none() {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.write_style(match colour {
            true => env_logger::WriteStyle::Always,
            false => env_logger::WriteStyle::Never,
        });
    }
    builder
        .target(env_logger::Target::Pipe(Box::new(std::io::stderr())))
        .init();
}
