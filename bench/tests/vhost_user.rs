//! The vhost-user front-end driver against real back-end processes: our `hypervisor
//! vhost-user-fs` (passthrough and redirecting) and, when built, virtiofsd. Each test
//! starts its back-end on a fresh share holding known files, connects, sends INIT, and
//! checks that LOOKUP, GETATTR and READ of a known file return its attributes and bytes.
//!
//! A back-end binary that is not there makes its test count as ignored ("skipped,
//! because ..."), never as passed: `hypervisor` is looked for in this target directory
//! (`cargo build -p hypervisor` first, same profile, else release), virtiofsd in
//! `$VIRTIOFSD` or `build/virtiofsd/bin/virtiofsd` (`bench/build-virtiofsd.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bench::fuse_wire::{self, ROOT};
use bench::vhost_bench::{file_contents, file_name, prepare_run_dir, Backend, Launch, Peer};
use bench::vhost_frontend::{Call, FrontendConfig, VhostFrontend};
use fuse_backend_rs::abi::fuse_abi::Opcode;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

const FILES: usize = 8;

fn skipped(why: String) -> Result<Completion, Failed> {
    println!("skipped, because {why}");
    Ok(Completion::ignored_with(format!("skipped, because {why}")))
}

/// `hypervisor` in this test's target directory: the same profile first, then release.
fn hypervisor() -> Result<PathBuf, String> {
    our_binary("hypervisor")
}

/// `fsredirect` (its `dehydrate` fills the redirecting share of a server not run as root),
/// looked for as `hypervisor` is.
fn fsredirect() -> Result<PathBuf, String> {
    our_binary("fsredirect")
}

/// Our binary `name` in this test's target directory: the same profile first, then release.
fn our_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no test executable path: {e}"))?;
    // target/<profile>/deps/vhost_user-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test executable is not in target/<profile>/deps")?;
    let candidates = [
        profile_dir.join(name),
        profile_dir.with_file_name("release").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no {name} binary at {} (run cargo build -p {name} first)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
}

fn virtiofsd() -> Result<PathBuf, String> {
    let path = std::env::var_os("VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/virtiofsd/bin/virtiofsd")
        });
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no virtiofsd at {} (bench/build-virtiofsd.sh builds it)",
            path.display()
        ))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A back-end serving a share of known files, and the front-end connected to it.
struct Served {
    tmp: tempfile::TempDir,
    backend: Backend,
    fe: VhostFrontend,
}

/// Starts `peer` on a fresh share of [`FILES`] known files and connects to it; `Err` is the
/// test's outcome when it cannot run here.
fn serve(peer: Peer) -> Result<Served, Result<Completion, Failed>> {
    let hv = match hypervisor() {
        Ok(p) => p,
        Err(why) if !peer.is_virtiofsd() => return Err(skipped(why)),
        Err(_) => PathBuf::new(),
    };
    let vfsd = if peer.is_virtiofsd() {
        match virtiofsd() {
            Ok(p) => Some(p),
            Err(why) => return Err(skipped(why)),
        }
    } else {
        None
    };
    let tool = match fsredirect() {
        Ok(p) => p,
        Err(why) if peer.redirects() && peer.unprivileged() => return Err(skipped(why)),
        Err(_) => PathBuf::new(),
    };
    if !is_root() {
        // Both back-ends keep inodes as file handles, which needs CAP_DAC_READ_SEARCH, and
        // only root may start one as another user.
        return Err(skipped(
            "the back-ends need root for file-handle inodes, and to be started as nobody".into(),
        ));
    }
    let start = || -> Result<Served, Failed> {
        let tmp = tempfile::tempdir()?;
        let share = tmp.path().join("share");
        let store = tmp.path().join("store");
        prepare_run_dir(peer, tmp.path(), FILES, 1, &tool)?;
        let launch = Launch {
            hypervisor: &hv,
            virtiofsd: vfsd.as_deref(),
            sandbox: "namespace",
        };
        let backend = Backend::start(
            peer,
            launch,
            &share,
            &store,
            &tmp.path().join("vu.sock"),
            &tmp.path().join("backend.log"),
        )?;
        let fe = VhostFrontend::connect(&tmp.path().join("vu.sock"), &FrontendConfig::default())?;
        Ok(Served { tmp, backend, fe })
    };
    start().map_err(Err)
}

/// Runs `test` on `peer` serving a fresh share, or says why it cannot run here.
fn with_served(
    peer: Peer,
    test: impl FnOnce(Served) -> Result<Completion, Failed>,
) -> Result<Completion, Failed> {
    match serve(peer) {
        Ok(served) => test(served),
        Err(outcome) => outcome,
    }
}

/// Checks what the driver reads back of a known file from `peer`.
fn known_file_attributes(served: Served, peer: Peer, depth: usize) -> Result<Completion, Failed> {
    let Served {
        tmp,
        backend,
        mut fe,
    } = served;
    let share = tmp.path().join("share");
    let redirect = peer.redirects();

    let name = file_name(3);
    let want = file_contents(3);
    let host = std::fs::metadata(share.join(&name))?;
    let (node, looked_up) = fe.lookup(ROOT, &name)?;
    let attr = fe.getattr(node)?;
    let fh = fe.open(node, libc::O_RDONLY)?;
    let read = fe.read(node, fh, 0, 4096)?;
    fe.call(Opcode::Release, node, &fuse_wire::release_in(fh))?;
    let missing = fe.lookup(ROOT, "no-such-file");
    // Several GETATTRs in flight at once, each checked.
    let mut sizes = Vec::new();
    fe.pipeline(
        4 * depth,
        depth,
        |_| Call::new(Opcode::Getattr, node, fuse_wire::getattr_in()),
        |_, reply| {
            sizes.push(fuse_wire::attr_out(reply.bytes)?.attr.size);
            Ok(())
        },
    )?;
    let counters = fe.counters();
    drop(fe);
    backend.finish(Duration::from_secs(5))?;

    use std::os::unix::fs::MetadataExt;
    assert_eq!(looked_up.size, want.len() as u64, "{peer:?} LOOKUP size");
    assert_eq!(attr.size, want.len() as u64, "{peer:?} GETATTR size");
    assert_eq!(attr.mode, host.mode(), "{peer:?} mode");
    assert_eq!(attr.ino, looked_up.ino, "{peer:?} ino");
    if !redirect {
        assert_eq!(
            attr.ino,
            host.ino(),
            "{peer:?} passes the host inode through"
        );
    }
    assert_eq!(read, want, "{peer:?} READ");
    if redirect {
        // The bytes came from the store: the guest tree keeps a stub without data blocks.
        assert_eq!(host.blocks(), 0, "{peer:?}: {name} is a stub");
        let object = tmp
            .path()
            .join("store")
            .join(bench::vhost_bench::TAG)
            .join(&name);
        assert_eq!(
            std::fs::read(&object)?,
            want,
            "{peer:?}: {}",
            object.display()
        );
    }
    assert!(
        matches!(missing, Err(bench::BenchError::Fuse { errno, .. }) if errno == libc::ENOENT),
        "{peer:?}: {missing:?}"
    );
    assert_eq!(sizes, vec![want.len() as u64; 4 * depth]);
    // INIT, LOOKUP, GETATTR, OPEN, READ, RELEASE, LOOKUP, then the GETATTRs.
    assert_eq!(counters.requests, 7 + 4 * depth as u64);
    assert!(counters.kicks >= 1 && counters.kicks <= counters.requests);
    assert!(counters.interrupts >= 1);
    Ok(Completion::Completed)
}

/// Descriptors any process holds on `path` after it was unlinked.
fn held_after_unlink(path: &Path) -> usize {
    let wanted = format!("{} (deleted)", path.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.flatten())
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.as_os_str().to_string_lossy() == wanted)
        .count()
}

/// A file created, written, released and unlinked is let go by the back-end once the
/// driver FORGETs it, as a guest kernel does: the benchmark's sequential writes rely on it
/// (a back-end holding a descriptor per node would keep 256 MiB of page cache otherwise).
fn forget_lets_an_unlinked_file_go(served: Served, peer: Peer) -> Result<Completion, Failed> {
    let Served {
        tmp,
        backend,
        mut fe,
    } = served;
    let reply = fe.call(Opcode::Create, ROOT, &fuse_wire::create_in("gone"))?;
    let (entry, fh) = fuse_wire::create_out(&reply)?;
    fe.pipeline(
        1,
        1,
        |_| Call::write(entry.nodeid, fh, 0, 4096),
        |_, _| Ok(()),
    )?;
    fe.call(Opcode::Release, entry.nodeid, &fuse_wire::release_in(fh))?;
    fe.call(Opcode::Unlink, ROOT, &fuse_wire::name_in("gone"))?;
    let path = tmp.path().join("share/gone");
    let before = held_after_unlink(&path);
    fe.forget(entry.nodeid, 1)?;
    let after = held_after_unlink(&path);
    drop(fe);
    backend.finish(Duration::from_secs(5))?;
    if matches!(
        peer,
        Peer::OursPassthrough | Peer::OursPassthroughUnprivileged
    ) {
        // Confined, or not root, ours holds a descriptor per node (no file handles): the
        // case FORGET is for, and what shows this test can fail.
        assert_eq!(before, 1, "{peer:?} held the unlinked file before FORGET");
    }
    assert_eq!(
        after, 0,
        "{peer:?} still holds the unlinked file after FORGET"
    );
    Ok(Completion::Completed)
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for peer in Peer::ALL {
        for depth in [1, 16] {
            let name = format!(
                "{}_init_lookup_getattr_read_{depth}_in_flight",
                peer.name().replace(' ', "_")
            );
            trials.push(Trial::ignorable_test(name, move || {
                with_served(peer, |served| known_file_attributes(served, peer, depth))
            }));
        }
    }
    for peer in Peer::ALL {
        let name = format!(
            "{}_forget_lets_an_unlinked_file_go",
            peer.name().replace(' ', "_")
        );
        trials.push(Trial::ignorable_test(name, move || {
            with_served(peer, |served| forget_lets_an_unlinked_file_go(served, peer))
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
