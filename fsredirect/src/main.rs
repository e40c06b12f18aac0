//! `fsredirect`: host tools for the redirecting file system. Argument parsing only: each
//! subcommand calls [`fsredirect::mount`] or [`fsredirect::tools`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fsredirect::mount::{Mount, MountOptions};
use fsredirect::tools::output::{render, Outcome, Progress, EXIT_ERROR};
use fsredirect::tools::{check, gc, hydrate, inspect, repair, ToolError};
use fsredirect::{FsConfig, ShareSpec};

const TOOLS_HELP: &str = "\
Every tool but mount takes the share as the VMM does, with a store:
  --share tag=NAME,dir=GUEST_TREE,store=STORE[,volume=V][,policy=...]
and works only while no server (a VM, a vhost-user daemon or `fsredirect mount`) uses the
volume: it takes the volume lock and says which process holds it otherwise.

Exit codes of the tools: 0 clean (or done), 1 findings (disagreements, a dry run with
something to do, a file that is not ok), 2 usage error or the tool could not run.
Add --json to any tool for one JSON document on stdout; progress and the final count of
long walks go to stderr.";

#[derive(Parser)]
#[command(
    version,
    about = "Host tools for the redirecting file system",
    after_help = TOOLS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every tool takes.
#[derive(Args)]
struct ToolArgs {
    /// Share description: tag=NAME,dir=GUEST_TREE,store=STORE[,volume=V][,policy=...].
    #[arg(long, value_name = "SPEC")]
    share: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a share on the host through /dev/fuse until SIGINT or SIGTERM.
    ///
    /// Either `mount --share tag=T,dir=GUEST[,store=STORE][,volume=V] MOUNTPOINT`
    /// or `mount GUEST_TREE [STORE] MOUNTPOINT [--volume V]`.
    #[command(after_help = "\
Examples:
  fsredirect mount --share tag=data,dir=/srv/guest,store=/srv/store /mnt/data
  fsredirect mount /srv/guest /srv/store /mnt/data --volume data
  fsredirect mount /srv/guest /mnt/plain        # passthrough

Exit codes: 0 unmounted cleanly, 1 error.")]
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
        /// Most guest-tree inodes kept open (O_PATH) for fast GETATTR, the most recently
        /// used; 0 turns them off (default: a quarter of RLIMIT_NOFILE, at most 65,536).
        #[arg(long)]
        max_hot_inodes: Option<usize>,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Show what one file of a share is and whether it is healthy.
    ///
    /// Kind (stub, inline, special, directory, symlink), where its data is, apparent and
    /// stored sizes, hard links on both sides, the recorded path and its state.
    #[command(after_help = "\
PATH is relative to the share root, or absolute inside the guest tree.

Examples:
  fsredirect inspect --share tag=data,dir=/srv/guest,store=/srv/store docs/a.txt
  fsredirect inspect --share tag=data,dir=/srv/guest,store=/srv/store /srv/guest/docs/a.txt --json

Exit codes: 0 the file is ok, 1 it has problems, 2 error (no such file, volume in use, ...).")]
    Inspect {
        #[command(flatten)]
        args: ToolArgs,
        /// The file: relative to the share root, or absolute inside the guest tree.
        path: PathBuf,
    },
    /// Check that every stub agrees with its stored object and every object has a stub.
    ///
    /// Reports objects missing, sizes that differ, stubs holding data, objects that are not
    /// private regular files, objects without a stub, hard links not mirrored, objects shared
    /// by two files and unreadable metadata; out-of-date recorded paths are notes. Changes
    /// nothing.
    #[command(after_help = "\
Examples:
  fsredirect verify --share tag=data,dir=/srv/guest,store=/srv/store
  fsredirect verify --share tag=data,dir=/srv/guest,store=/srv/store,volume=v1 --json

Exit codes: 0 every stub agrees, 1 disagreements found, 2 error.")]
    Verify {
        #[command(flatten)]
        args: ToolArgs,
    },
    /// Fix what verify finds, from either side, and report each action.
    ///
    /// Runs the recovery a server would first if the last one did not stop cleanly. Nothing
    /// is deleted: what is taken out of the way goes to <store>/.fsredirect/<volume>/lost+found.
    /// A size mismatch on a cleanly stopped volume is settled for the stored object (the guest
    /// reads it); an object that is gone is recreated as zeros of the stub's size and reported.
    #[command(after_help = "\
Examples:
  fsredirect repair --share tag=data,dir=/srv/guest,store=/srv/store --dry-run
  fsredirect repair --share tag=data,dir=/srv/guest,store=/srv/store
  fsredirect verify --share tag=data,dir=/srv/guest,store=/srv/store   # now clean

Exit codes: 0 the share is consistent (with --dry-run: nothing to do), 1 something is left
(with --dry-run: repairs planned), 2 error.")]
    Repair {
        #[command(flatten)]
        args: ToolArgs,
        /// Only say what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete stored objects nobody names and leftovers of the orphan area.
    ///
    /// Objects without a stub (unless a stub's record names them: repair first), the orphan
    /// area, and store directories left empty without a guest-tree directory; reports the
    /// bytes reclaimed. lost+found is never touched.
    #[command(after_help = "\
Examples:
  fsredirect gc --share tag=data,dir=/srv/guest,store=/srv/store --dry-run
  fsredirect gc --share tag=data,dir=/srv/guest,store=/srv/store --json

Exit codes: 0 done (with --dry-run: nothing to collect), 1 with --dry-run: something to
collect, 2 error.")]
    Gc {
        #[command(flatten)]
        args: ToolArgs,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Turn a stub back into an ordinary file in the guest tree and remove its object.
    ///
    /// Crash-safe: the data is written beside the stub, fsync'd and renamed over it; the
    /// object is removed last. Owner, mode, times and the guest's xattrs are kept.
    #[command(after_help = "\
Examples:
  fsredirect hydrate --share tag=data,dir=/srv/guest,store=/srv/store docs/a.txt
  fsredirect hydrate --share tag=data,dir=/srv/guest,store=/srv/store /srv/guest/big.img

Exit codes: 0 done (or already inline), 2 error (the message says how to proceed).")]
    Hydrate {
        #[command(flatten)]
        args: ToolArgs,
        /// The file: relative to the share root, or absolute inside the guest tree.
        path: PathBuf,
    },
    /// Turn an ordinary file of the guest tree into a stub whose data is in the store.
    ///
    /// Crash-safe: the object is written and fsync'd first, then the file gets its metadata
    /// and loses its data blocks in place (inode, owner, mode, times and xattrs are kept).
    #[command(after_help = "\
Examples:
  fsredirect dehydrate --share tag=data,dir=/srv/guest,store=/srv/store docs/a.txt

Exit codes: 0 done (or already a stub), 2 error (the message says how to proceed).")]
    Dehydrate {
        #[command(flatten)]
        args: ToolArgs,
        /// The file: relative to the share root, or absolute inside the guest tree.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The tools report what they do themselves; recovery's own log lines would repeat it.
    let default_filter = match cli.command {
        Command::Mount { .. } => "info",
        _ => "warn,fsredirect::recover=off",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    match cli.command {
        Command::Mount {
            share,
            paths,
            volume,
            max_store_fds,
            max_hot_inodes,
            threads,
        } => match mount(
            share,
            paths,
            volume,
            FsConfig {
                max_store_fds,
                max_hot_inodes,
                ..FsConfig::default()
            },
            threads,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                print_error("mount", e.as_ref());
                ExitCode::FAILURE
            }
        },
        Command::Inspect { args, path } => run_tool("inspect", false, &args, |share, _| {
            Ok(Box::new(inspect::inspect(share, &path)?))
        }),
        Command::Verify { args } => run_tool("verify", true, &args, |share, progress| {
            Ok(Box::new(check::verify(share, &mut || progress.step())?))
        }),
        Command::Repair { args, dry_run } => run_tool("repair", true, &args, |share, progress| {
            Ok(Box::new(repair::repair(share, dry_run, &mut || {
                progress.step()
            })?))
        }),
        Command::Gc { args, dry_run } => run_tool("gc", true, &args, |share, progress| {
            Ok(Box::new(gc::gc(share, dry_run, &mut || progress.step())?))
        }),
        Command::Hydrate { args, path } => run_tool("hydrate", false, &args, |share, _| {
            Ok(Box::new(hydrate::hydrate(share, &path)?))
        }),
        Command::Dehydrate { args, path } => run_tool("dehydrate", false, &args, |share, _| {
            Ok(Box::new(hydrate::dehydrate(share, &path)?))
        }),
    }
}

/// Parses the share, runs `tool`, prints its report (or error) and turns it into the exit
/// code documented in `--help`; a tool that `walks` the share ends with the count walked.
fn run_tool(
    name: &'static str,
    walks: bool,
    args: &ToolArgs,
    tool: impl FnOnce(&ShareSpec, &mut Progress) -> Result<Box<dyn Outcome>, ToolError>,
) -> ExitCode {
    let mut progress = Progress::new(name);
    let result = ShareSpec::parse(&args.share)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        .and_then(|share| tool(&share, &mut progress).map_err(|e| Box::new(e) as _));
    match result {
        Ok(outcome) => {
            if walks {
                progress.finish();
            }
            print!("{}", render(outcome.as_ref(), args.json));
            ExitCode::from(outcome.status().code())
        }
        Err(e) => {
            print_error(name, e.as_ref());
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "error": error_chain(e.as_ref()) })
                );
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

fn print_error(name: &str, e: &dyn std::error::Error) {
    eprintln!("fsredirect {name}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
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
    fs: FsConfig,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (share, mountpoint) = share_from_args(share, paths, volume)?;
    // Before the server opens (or makes) anything.
    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!("mount point {} is not a directory", mountpoint.display()).into())
        }
        Err(e) => {
            return Err(format!(
                "mount point {}: {e}; create it first (mkdir -p)",
                mountpoint.display()
            )
            .into())
        }
    }
    // The guest's descriptor budget is derived from this limit.
    if let Err(e) = fsredirect::fdbudget::raise_nofile_limit() {
        log::warn!("cannot raise RLIMIT_NOFILE: {e}");
    }
    let signals = block_termination_signals()?;
    let opts = MountOptions { threads, fs };
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
