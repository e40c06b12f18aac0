//! `fsredirect`: host tools for the redirecting file system.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fsredirect::mount::{Mount, MountOptions};
use fsredirect::{FsConfig, ShareSpec};

#[derive(Parser)]
#[command(version, about = "Host tools for the redirecting file system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a share on the host through /dev/fuse until SIGINT or SIGTERM.
    ///
    /// Either `mount --share tag=T,dir=GUEST[,store=STORE][,volume=V] MOUNTPOINT`
    /// or `mount GUEST_TREE [STORE] MOUNTPOINT [--volume V]`.
    Mount {
        /// Share description: tag=NAME,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...].
        #[arg(long)]
        share: Option<String>,
        /// With --share: MOUNTPOINT. Otherwise: GUEST_TREE [STORE] MOUNTPOINT.
        #[arg(required = true, num_args = 1..=3)]
        paths: Vec<PathBuf>,
        /// Volume inside the store (default: the tag, "fsredirect" without --share).
        #[arg(long)]
        volume: Option<String>,
        /// Most store descriptors open at once.
        #[arg(long, default_value_t = 256)]
        max_store_fds: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Check, with no server running on it, that every stub of a redirecting share agrees
    /// with its stored object; exits 1 and lists the disagreements if not. Files whose
    /// placement (inline or redirected) differs from the share's policy are listed as notes.
    Verify {
        /// Share description: tag=NAME,dir=GUEST_TREE,store=STORE[,volume=V][,policy=...].
        #[arg(long)]
        share: String,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount {
            share,
            paths,
            volume,
            max_store_fds,
            threads,
        } => mount(share, paths, volume, max_store_fds, threads).map(|()| ExitCode::SUCCESS),
        Command::Verify { share } => verify(&share),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fsredirect: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn verify(share: &str) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let share = ShareSpec::parse(share)?;
    if share.store.is_none() {
        return Err("verify needs a redirecting share (store=...)".into());
    }
    let mismatches = fsredirect::verify::verify_share(&share)?;
    for m in &mismatches {
        println!("{m:?}");
    }
    // Not disagreements: files move when they next change (fsredirect/README.md, Policies).
    for note in fsredirect::placement::placement_notes(&share)? {
        let (is, wants) = match note.redirected {
            true => ("redirected", "inline"),
            false => ("inline", "in the store"),
        };
        println!(
            "note: {} ({} bytes) is {is}; the policy would place it {wants}",
            note.path.display(),
            note.size,
        );
    }
    if mismatches.is_empty() {
        println!("{share}: every stub agrees with its stored object");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{share}: {} disagreement(s)", mismatches.len());
        Ok(ExitCode::FAILURE)
    }
}

fn share_from_args(
    share: Option<String>,
    mut paths: Vec<PathBuf>,
    volume: Option<String>,
) -> Result<(ShareSpec, PathBuf), Box<dyn std::error::Error>> {
    let mountpoint = paths.pop().ok_or("missing MOUNTPOINT")?;
    let spec = match (share, paths.as_slice(), volume) {
        (Some(spec), [], None) => spec,
        (Some(_), [], Some(_)) => return Err("--volume goes inside --share (volume=V)".into()),
        (Some(_), _, _) => return Err("with --share, give only MOUNTPOINT".into()),
        (None, [guest], None) => format!("tag=fsredirect,dir={}", guest.display()),
        (None, [_], Some(_)) => return Err("--volume needs a STORE".into()),
        (None, [guest, store], volume) => format!(
            "tag=fsredirect,dir={},store={},volume={}",
            guest.display(),
            store.display(),
            volume.as_deref().unwrap_or("fsredirect")
        ),
        (None, _, _) => return Err("expected GUEST_TREE [STORE] MOUNTPOINT or --share".into()),
    };
    Ok((ShareSpec::parse(&spec)?, mountpoint))
}

fn mount(
    share: Option<String>,
    paths: Vec<PathBuf>,
    volume: Option<String>,
    max_store_fds: usize,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (share, mountpoint) = share_from_args(share, paths, volume)?;
    let signals = block_termination_signals()?;
    let opts = MountOptions {
        threads,
        fs: FsConfig {
            max_store_fds,
            ..FsConfig::default()
        },
    };
    let mount = Mount::start(&share, &mountpoint, &opts)?;
    let unmounter = mount.unmounter();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `signals` is an initialised set and `sig` a writable int.
            if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting");
            }
            unmounter.unmount();
        })?;
    println!("fsredirect: serving {share} on {}", mountpoint.display());
    mount.wait();
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts, so that only the
/// `sigwait` thread receives them and can unmount cleanly.
fn block_termination_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only reads the set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let res = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if res != 0 {
            return Err(std::io::Error::from_raw_os_error(res));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(paths: &[&str]) -> Vec<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn three_paths_make_a_redirecting_share() {
        let (share, mnt) = share_from_args(None, p(&["/g", "/s", "/m"]), None).unwrap();
        assert_eq!(mnt, PathBuf::from("/m"));
        assert_eq!(share.volume_dir(), Some(PathBuf::from("/s/fsredirect")));
    }

    #[test]
    fn volume_flag_names_the_volume() {
        let (share, _) = share_from_args(None, p(&["/g", "/s", "/m"]), Some("v1".into())).unwrap();
        assert_eq!(share.volume_dir(), Some(PathBuf::from("/s/v1")));
    }

    #[test]
    fn two_paths_make_a_passthrough_share() {
        let (share, _) = share_from_args(None, p(&["/g", "/m"]), None).unwrap();
        assert_eq!(share.store, None);
    }

    #[test]
    fn share_flag_takes_only_the_mountpoint() {
        let spec = Some("tag=t,dir=/g,store=/s".to_string());
        assert!(share_from_args(spec.clone(), p(&["/m"]), None).is_ok());
        assert!(share_from_args(spec, p(&["/g", "/m"]), None).is_err());
    }

    #[test]
    fn volume_without_store_is_refused() {
        assert!(share_from_args(None, p(&["/g", "/m"]), Some("v".into())).is_err());
    }
}
