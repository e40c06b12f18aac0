//! The `hypervisor` binary: parses the command line and runs the library.

use std::process::ExitCode;

use clap::Parser;
use hypervisor::cli::{Cli, Command};
use hypervisor::Vm;

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
    let status = Vm::new(config)?.run()?;
    // Exit codes are one byte; signals map to 128+n, which fits.
    Ok(u8::try_from(status.code).unwrap_or(1))
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}
