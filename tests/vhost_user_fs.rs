//! Our virtio-fs device as a vhost-user back-end, driven by a real Linux
//! guest: `hypervisor vhost-user-fs` serves a share to QEMU's
//! `vhost-user-fs-device` (QEMU's software CPU, TCG, so any host will do),
//! the guest runs the `fs-basic` scenario on it, and the host checks what
//! the guest left, on a passthrough share and on a redirecting share.
//!
//! Skipped, with the reason, without `qemu-system-x86_64` (Debian package
//! `qemu-system-x86`) or the guest image (guest-images/build-guest.sh).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::qemu::{self, Daemon, ExitSource, GuestRun, GuestShare, QemuGuest};
use libtest_mimic::{Arguments, Failed, Trial};

/// The path every test here drives, printed with each result.
const PATH: &str = "vhost-user back-end under QEMU TCG";
/// What `fs-basic` leaves in `<share>/fs-basic` (see the scenario's header).
const RENAMED: &[u8] = b"hello from the guest\nappended\n";
const NESTED: &[u8] = b"nested\n";
const BIG_LEN: usize = 1 << 20;

fn main() {
    let args = Arguments::from_args();
    let skip = qemu::unavailable();
    if let Some(why) = &skip {
        println!("vhost_user_fs: QEMU tests skipped, because {why}");
    } else if let Err(why) = qemu::refresh_guest_image() {
        // The image on disk is still usable; a stale scenario shows up as a failure.
        println!("vhost_user_fs: warning: could not refresh the guest image: {why}");
    }
    let qemu_trial = |name: &str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Failed::from)).with_ignored_flag(skip.is_some())
    };
    let chroot_skip = hypervisor::sandbox::check_chroot_support().err();
    if let (None, Some(why)) = (&skip, &chroot_skip) {
        println!("vhost_user_fs: the chroot sandbox trial skipped, because {why}");
    }
    let trials = vec![
        qemu_trial("fs_basic_on_a_passthrough_share", fs_basic_passthrough),
        qemu_trial("fs_basic_on_a_redirecting_share", fs_basic_redirect),
        qemu_trial(
            "fs_basic_on_a_redirecting_share_in_the_chroot_sandbox",
            fs_basic_redirect_chroot,
        )
        .with_ignored_flag(skip.is_some() || chroot_skip.is_some()),
        qemu_trial("fs_tree_on_a_redirecting_share", fs_tree_redirect),
        qemu_trial(
            "fs_basic_with_two_request_queues",
            fs_basic_two_request_queues,
        ),
        qemu_trial(
            "fs_basic_on_a_redirecting_share_served_by_a_thread_pool",
            fs_basic_redirect_thread_pool,
        ),
        qemu_trial(
            "one_looping_daemon_serves_two_boots_in_turn",
            daemon_serves_two_boots,
        ),
        Trial::test("daemon_stops_cleanly_on_sigterm", || {
            daemon_stops_on_sigterm().map_err(Failed::from)
        }),
        Trial::test(
            "a_sandboxed_daemon_on_a_tree_in_use_names_the_holder",
            || busy_tree_is_named().map_err(Failed::from),
        ),
        qemu_trial(
            "daemon_stops_cleanly_on_sigterm_while_a_guest_uses_the_share",
            daemon_stops_on_sigterm_while_connected,
        ),
        qemu_trial(
            "front_end_without_shared_memory_is_told_share_on",
            unshared_memory_is_named,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A fresh temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("fsr-vu-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp directory");
        Self(path)
    }

    fn make(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("create a temp directory");
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn big_contents() -> Vec<u8> {
    b"fsredirect-vhost-user\n"
        .iter()
        .copied()
        .cycle()
        .take(BIG_LEN)
        .collect()
}

/// Runs fs-basic on `share`; checks the guest's side of the run.
fn run_fs_basic(share: GuestShare) -> Result<GuestRun, String> {
    run_scenario(share, "fs-basic")
}

/// Runs `scenario` on `share` with its mount point as argument; checks the
/// guest's side of the run (mounted, passed, exit port, daemon lines).
fn run_scenario(share: GuestShare, scenario: &str) -> Result<GuestRun, String> {
    let mount = share.mount_point();
    let guest = QemuGuest::new(scenario)
        .share(share.clone())
        .arg(&mount)
        .timeout(Duration::from_secs(180));
    let run = guest.run().map_err(|e| format!("{PATH}: {e}"))?;
    let context = || {
        format!(
            "guest serial output (last lines):\n{}\ndaemon output:\n{}",
            run.serial_tail(30),
            run.daemon_logs()
        )
    };
    if !run.has_marker(&format!("@@fsr mount tag={} at={mount} ok", share.tag)) {
        return Err(format!(
            "the guest did not mount {}\n{}",
            share.tag,
            context()
        ));
    }
    if run.exit_code != 0
        || !run.has_marker(&format!("@@fsr scenario {scenario} result=pass code=0"))
    {
        return Err(format!(
            "{scenario} failed in the guest (exit code {})\n{}",
            run.exit_code,
            context()
        ));
    }
    if run.exit_source != ExitSource::ExitPort {
        return Err(format!(
            "the guest's exit code came only from the marker, not the exit port\n{}",
            context()
        ));
    }
    for daemon in &run.daemons {
        let clean = daemon.status.is_some_and(|s| s.success());
        for line in [
            "listening on",
            "front-end connected",
            "front-end disconnected",
        ] {
            if !daemon.log.contains(line) {
                return Err(format!("the daemon never said '{line}'\n{}", context()));
            }
        }
        if !clean {
            return Err(format!(
                "the daemon did not exit 0 after QEMU went ({:?})\n{}",
                daemon.status,
                context()
            ));
        }
    }
    println!(
        "{PATH}: {scenario} passed in {:.1} s (guest exit code {} through the exit port)",
        run.elapsed.as_secs_f64(),
        run.exit_code
    );
    Ok(run)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Checks the files fs-basic leaves under `root` hold the expected bytes.
fn check_contents(root: &Path, what: &str) -> Result<(), String> {
    let expected: [(&str, Vec<u8>); 3] = [
        ("renamed.txt", RENAMED.to_vec()),
        ("sub/nested.txt", NESTED.to_vec()),
        ("big.txt", big_contents()),
    ];
    for (name, want) in expected {
        let path = root.join(name);
        let got = read(&path)?;
        if got != want {
            return Err(format!(
                "{what} {} holds {} bytes that differ from the {} the guest wrote",
                path.display(),
                got.len(),
                want.len()
            ));
        }
    }
    for gone in ["a.txt", "scratch.txt"] {
        let path = root.join(gone);
        if path.symlink_metadata().is_ok() {
            return Err(format!(
                "{what} {} still exists after the guest renamed/deleted it",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Fails unless `path` is a sparse stub of `len` bytes with no data extents.
fn check_stub(path: &Path, len: u64) -> Result<(), String> {
    let meta = path
        .metadata()
        .map_err(|e| format!("no stub at {}: {e}", path.display()))?;
    if meta.len() != len {
        return Err(format!(
            "stub {} has apparent size {}, not {len}",
            path.display(),
            meta.len()
        ));
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let data = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if data != -1 || errno != Some(libc::ENXIO) {
        return Err(format!(
            "stub {} has data extents (SEEK_DATA gave {data}, st_blocks {})",
            path.display(),
            meta.blocks()
        ));
    }
    Ok(())
}

/// 1. Serve an empty guest tree as a plain passthrough share.
/// 2. Boot the guest under QEMU with the share mounted; run fs-basic.
/// 3. On the host, the guest tree holds the files with the guest's bytes,
///    and the renamed and deleted names are gone.
fn fs_basic_passthrough() -> Result<(), String> {
    let tmp = TempDir::new("passthrough");
    let tree = tmp.make("tree");

    run_fs_basic(GuestShare::passthrough("fs0", &tree))?;

    check_contents(&tree.join("fs-basic"), "guest tree file")
}

/// 1. Serve an empty guest tree redirected into volume `vol` of a store.
/// 2. Boot the guest; run fs-tree (300 files; a directory rename, a
///    recursive delete, moves between directories, a hard link, a truncate).
/// 3. On the host, the store mirrors the guest's final tree byte for byte,
///    the hard link is a hard link in the store too, every stub is sparse,
///    and fsredirect's verifier agrees.
fn fs_tree_redirect() -> Result<(), String> {
    let tmp = TempDir::new("tree");
    let tree = tmp.make("tree");
    let store = tmp.make("store");

    run_scenario(GuestShare::redirect("fs0", &tree, &store, "vol"), "fs-tree")?;

    let stored = store.join("vol/fs-tree");
    let stubs = tree.join("fs-tree");
    let mut expected: Vec<(String, String)> = Vec::new();
    for d in (0..10).filter(|&d| d != 1 && d != 2) {
        let dir = if d == 0 {
            "renamed0".to_owned()
        } else {
            format!("d{d}")
        };
        for f in 0..30 {
            let text = if (d, f) == (5, 0) {
                "fil".to_owned()
            } else {
                format!("file {d}/{f}\n")
            };
            expected.push((format!("{dir}/f{f}"), text));
        }
    }
    for f in 0..30 {
        expected.push((format!("d3/g{f}"), format!("file 2/{f}\n")));
    }
    expected.push(("d4/hard0".to_owned(), "file 4/0\n".to_owned()));
    for (name, text) in &expected {
        let got = read(&stored.join(name))?;
        if got != text.as_bytes() {
            return Err(format!(
                "stored {name} holds {:?}, not {text:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        check_stub(&stubs.join(name), text.len() as u64)?;
    }
    for gone in ["d0", "d1", "d2/f0"] {
        for root in [&stored, &stubs] {
            if root.join(gone).symlink_metadata().is_ok() {
                return Err(format!("{} still exists", root.join(gone).display()));
            }
        }
    }
    let count = count_files(&stored)?;
    if count != expected.len() {
        return Err(format!(
            "the store holds {count} files under fs-tree, not {}",
            expected.len()
        ));
    }
    let (a, b) = (
        stored.join("d4/f0").metadata().map_err(|e| e.to_string())?,
        stored
            .join("d4/hard0")
            .metadata()
            .map_err(|e| e.to_string())?,
    );
    if a.ino() != b.ino() {
        return Err("d4/f0 and d4/hard0 are not one file in the store".into());
    }
    let spec = format!(
        "tag=fs0,dir={},store={},volume=vol",
        tree.display(),
        store.display()
    );
    let share = fsredirect::ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
    let mismatches = fsredirect::verify::verify_share(&share)
        .map_err(|e| format!("cannot verify the share: {e}"))?;
    if !mismatches.is_empty() {
        return Err(format!("stubs and stored objects disagree: {mismatches:?}"));
    }
    Ok(())
}

/// Counts the names of regular files under `dir`.
fn count_files(dir: &Path) -> Result<usize, String> {
    let mut count = 0;
    for entry in
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| e.to_string())?;
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if kind.is_dir() {
            count += count_files(&entry.path())?;
        } else if kind.is_file() {
            count += 1;
        }
    }
    Ok(count)
}

/// 1. Serve a redirecting share with two request queues (hiprio plus two
///    worker threads more), QEMU's `num-request-queues=2` to match.
/// 2. Boot the guest under QEMU with the share mounted; run fs-basic.
/// 3. The stored objects hold the guest's bytes.
fn fs_basic_two_request_queues() -> Result<(), String> {
    let tmp = TempDir::new("mq");
    let tree = tmp.make("tree");
    let store = tmp.make("store");

    let run = run_fs_basic(GuestShare::redirect("fs0", &tree, &store, "vol").request_queues(2))?;

    if !run
        .daemons
        .iter()
        .all(|d| d.log.contains("2 request queues"))
    {
        return Err("the daemon did not serve 2 request queues".into());
    }
    check_contents(&store.join("vol/fs-basic"), "stored object")
}

/// 1. Serve an empty guest tree redirected into volume `vol` of a store.
/// 2. Boot the guest under QEMU with the share mounted; run fs-basic.
/// 3. On the host, `<store>/vol/fs-basic/...` holds the guest's bytes; the
///    guest tree holds sparse stubs of the same sizes; the renamed and
///    deleted names are gone on both sides; fsredirect's verifier agrees.
fn fs_basic_redirect() -> Result<(), String> {
    fs_basic_redirect_with("redirect", &[]).map(drop)
}

/// As [`fs_basic_redirect`], the daemon in `--sandbox chroot`: its guest tree is its root,
/// and it reaches the redirect metadata through its own descriptors.
fn fs_basic_redirect_chroot() -> Result<(), String> {
    fs_basic_redirect_with("redirect-chroot", &["--sandbox", "chroot"]).map(drop)
}

/// As [`fs_basic_redirect`], the request queue served by a pool of two threads
/// (`--thread-pool-size 2`), whose replies may come back out of order.
fn fs_basic_redirect_thread_pool() -> Result<(), String> {
    let run = fs_basic_redirect_with("redirect-pool", &["--thread-pool-size", "2"])?;
    if !run
        .daemons
        .iter()
        .all(|d| d.log.contains("served by 2 threads each"))
    {
        return Err("the daemon did not serve its queue with a pool of 2 threads".into());
    }
    Ok(())
}

fn fs_basic_redirect_with(label: &str, daemon_args: &[&str]) -> Result<GuestRun, String> {
    let tmp = TempDir::new(label);
    let tree = tmp.make("tree");
    let store = tmp.make("store");

    let run =
        run_fs_basic(GuestShare::redirect("fs0", &tree, &store, "vol").daemon_args(daemon_args))?;

    let stored = store.join("vol/fs-basic");
    let stubs = tree.join("fs-basic");
    check_contents(&stored, "stored object")?;
    for (name, len) in [
        ("renamed.txt", RENAMED.len()),
        ("sub/nested.txt", NESTED.len()),
        ("big.txt", BIG_LEN),
    ] {
        check_stub(&stubs.join(name), len as u64)?;
    }
    for gone in ["a.txt", "scratch.txt"] {
        if stubs.join(gone).symlink_metadata().is_ok() {
            return Err(format!("stub {gone} still exists in the guest tree"));
        }
    }
    let spec = format!(
        "tag=fs0,dir={},store={},volume=vol",
        tree.display(),
        store.display()
    );
    let share = fsredirect::ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
    let mismatches = fsredirect::verify::verify_share(&share)
        .map_err(|e| format!("cannot verify the share: {e}"))?;
    if !mismatches.is_empty() {
        return Err(format!("stubs and stored objects disagree: {mismatches:?}"));
    }
    Ok(run)
}

/// Runs `scenario` against an already running daemon; checks the guest's side.
fn run_on(daemon: &mut Daemon, share: &GuestShare, scenario: &str) -> Result<GuestRun, String> {
    let mount = share.mount_point();
    let run = QemuGuest::new(scenario)
        .share(share.clone())
        .arg(&mount)
        .timeout(Duration::from_secs(180))
        .run_with(std::slice::from_mut(daemon))
        .map_err(|e| format!("{PATH}: {e}"))?;
    if run.exit_code != 0 {
        return Err(format!(
            "{scenario} failed in the guest (exit code {}); last serial lines:\n{}\ndaemon output:\n{}",
            run.exit_code,
            run.serial_tail(30),
            daemon.log()
        ));
    }
    println!(
        "{PATH}: {scenario} passed in {:.1} s",
        run.elapsed.as_secs_f64()
    );
    Ok(run)
}

/// 1. Start one daemon with `--loop` on a redirecting share.
/// 2. Boot a guest that runs fs-basic; it powers off.
/// 3. Boot a second guest on the same daemon that reads fs-basic's files
///    back and appends to one (fs-readback).
/// 4. The daemon served both (same process, two connections), the store
///    holds both boots' bytes, and SIGTERM ends it cleanly.
fn daemon_serves_two_boots() -> Result<(), String> {
    let tmp = TempDir::new("loop");
    let tree = tmp.make("tree");
    let store = tmp.make("store");
    let share = GuestShare::redirect("fs0", &tree, &store, "vol");
    let mut daemon = Daemon::start(
        &share,
        &tmp.0.join("fs.sock"),
        &tmp.0.join("daemon.log"),
        &["--loop"],
    )
    .map_err(|e| e.to_string())?;

    run_on(&mut daemon, &share, "fs-basic")?;
    run_on(&mut daemon, &share, "fs-readback")?;
    let ended = daemon.stop();

    let connects = ended.log.matches("front-end connected").count();
    if connects != 2 || !ended.status.is_some_and(|s| s.success()) {
        return Err(format!(
            "expected one daemon to serve 2 connections and exit 0 on SIGTERM; \
             it served {connects} and ended with {:?}:\n{}",
            ended.status, ended.log
        ));
    }
    let mut want = RENAMED.to_vec();
    want.extend_from_slice(b"second boot\n");
    let got = read(&store.join("vol/fs-basic/renamed.txt"))?;
    if got != want {
        return Err(format!(
            "the stored renamed.txt holds {:?}, not both boots' bytes",
            String::from_utf8_lossy(&got)
        ));
    }
    check_stub(&tree.join("fs-basic/renamed.txt"), want.len() as u64)
}

/// 1. Start `hypervisor vhost-user-fs` on a share, no front-end.
/// 2. Send SIGTERM once it listens.
/// 3. It exits 0, says why, and removes its socket.
fn daemon_stops_on_sigterm() -> Result<(), String> {
    let tmp = TempDir::new("sigterm");
    let tree = tmp.make("tree");
    let socket = tmp.0.join("fs.sock");
    let bin = qemu::hypervisor_binary().map_err(|e| e.to_string())?;
    let log = tmp.0.join("daemon.log");
    let mut child = passthrough_daemon(&bin, &socket, &tree)
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the daemon did not exit within 30 s of SIGTERM".into());
            }
        }
    };
    let text = String::from_utf8_lossy(&read(&log)?).into_owned();
    if !status.success() || !text.contains("received SIGTERM; stopping") {
        return Err(format!("the daemon ended with {status}; it said:\n{text}"));
    }
    if socket.exists() {
        return Err(format!("{} was left behind", socket.display()));
    }
    Ok(())
}

/// `hypervisor vhost-user-fs` serving `tree` (passthrough, tag fs0) on `socket`, with its
/// defaults and no standard input.
fn passthrough_daemon(bin: &Path, socket: &Path, tree: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("vhost-user-fs")
        .arg("--socket")
        .arg(socket)
        .arg("--share")
        .arg(format!("tag=fs0,dir={}", tree.display()))
        .stdin(Stdio::null());
    command
}

/// 1. This process holds the lock of a guest tree, as a running server does.
/// 2. `hypervisor vhost-user-fs` (sandboxed, the default) on that tree refuses to start,
///    naming this process's pid (which its sandbox's pid namespace could not see), and leaves
///    no socket behind.
fn busy_tree_is_named() -> Result<(), String> {
    let tmp = TempDir::new("busy");
    let tree = tmp.make("tree");
    let socket = tmp.0.join("fs.sock");
    let _held = fsredirect::treelock::open_locked(&tree, fsredirect::treelock::LockMode::Exclusive)
        .map_err(|e| e.to_string())?;
    let bin = qemu::hypervisor_binary().map_err(|e| e.to_string())?;
    let out = passthrough_daemon(&bin, &socket, &tree)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let pid = format!("in use by another server (pid {})", std::process::id());
    if out.status.success() || !said.contains(&pid) {
        return Err(format!(
            "expected a refusal naming {pid:?}; it ended with {} and said:\n{said}",
            out.status
        ));
    }
    if socket.exists() {
        return Err(format!("{} was left behind", socket.display()));
    }
    Ok(())
}

/// Polls `path` until it contains `needle`, for up to `limit`.
fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if std::fs::read(path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 1. Start a daemon and a guest that mounts its share, then waits on the
///    console (the `echo` scenario) with the FUSE session open.
/// 2. Send the daemon SIGTERM.
/// 3. It exits 0 within a few seconds, says why, and removes its socket;
///    the launcher reports the daemon's exit and kills QEMU.
fn daemon_stops_on_sigterm_while_connected() -> Result<(), String> {
    let tmp = TempDir::new("sigterm-connected");
    let tree = tmp.make("tree");
    let share = GuestShare::passthrough("fs0", &tree);
    let socket = tmp.0.join("fs.sock");
    let serial = tmp.0.join("serial.log");
    let mut daemon = Daemon::start(&share, &socket, &tmp.0.join("daemon.log"), &[])
        .map_err(|e| e.to_string())?;
    let pid = daemon.pid();
    let log = daemon.log_path().to_owned();
    let guest = QemuGuest::new("echo")
        .share(share.clone())
        .serial_file(&serial)
        .timeout(Duration::from_secs(120));

    let (run, waited) = std::thread::scope(|scope| {
        let running = scope.spawn(|| guest.run_with(std::slice::from_mut(&mut daemon)));
        let ready = wait_for_text(&serial, "@@fsr echo-ready", Duration::from_secs(100));
        let mounted = wait_for_text(
            &serial,
            "@@fsr mount tag=fs0 at=/mnt/fs0 ok",
            Duration::ZERO,
        );
        let sent = Instant::now();
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) on our own child, reaped only by `daemon`.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let run = running.join().expect("the QEMU thread does not panic");
        (run, (ready && mounted, sent.elapsed()))
    });
    let (guest_was_ready, exit_after) = waited;
    let text = String::from_utf8_lossy(&read(&log)?).into_owned();
    if !guest_was_ready {
        return Err(format!(
            "the guest never mounted the share and waited on the console; serial:\n{}",
            String::from_utf8_lossy(&read(&serial)?)
        ));
    }
    let status = daemon.exited();
    match &run {
        Err(qemu::QemuError::Daemon { what, .. }) if what.contains("while QEMU was running") => {}
        other => {
            return Err(format!(
                "expected the launcher to report the daemon's exit, got {other:?}"
            ))
        }
    }
    if !status.is_some_and(|s| s.success()) || !text.contains("received SIGTERM; stopping") {
        return Err(format!(
            "the daemon ended with {status:?}; it said:\n{text}"
        ));
    }
    if socket.exists() {
        return Err(format!("{} was left behind", socket.display()));
    }
    println!(
        "{PATH}: the daemon stopped {:.2} s after SIGTERM with a guest connected",
        exit_after.as_secs_f64()
    );
    Ok(())
}

/// 1. QEMU boots the guest with a memory backend that is not shared (the README's command
///    line without `share=on`), against a running back-end.
/// 2. The back-end says, when the front-end hands it its memory, that the memory is not
///    shared and how to fix it, instead of leaving the guest to hang in silence.
fn unshared_memory_is_named() -> Result<(), String> {
    let tmp = TempDir::new("unshared");
    let tree = tmp.make("tree");
    let share = GuestShare::passthrough("data", &tree);
    let guest = QemuGuest::new("fs-basic")
        .share(share.clone())
        .arg(&share.mount_point())
        .unshared_memory()
        .timeout(Duration::from_secs(90));
    let socket = tmp.0.join("fs.sock");
    let log = tmp.0.join("daemon.log");
    let mut daemon = Daemon::start(&share, &socket, &log, &[]).map_err(|e| e.to_string())?;
    let outcome = guest.run_with(std::slice::from_mut(&mut daemon));
    let said = daemon.log();
    drop(daemon.stop());
    let wanted = "not shared with this back-end";
    if !(said.contains(wanted) && said.contains("share=on")) {
        return Err(format!(
            "the back-end never said {wanted:?} naming share=on (guest run: {})\ndaemon output:\n{said}",
            match &outcome {
                Ok(run) => format!("exit code {}", run.exit_code),
                Err(e) => e.to_string(),
            }
        ));
    }
    println!(
        "{PATH}: unshared guest memory named by the back-end ({})",
        match &outcome {
            Ok(run) => format!("the guest ended with exit code {}", run.exit_code),
            Err(e) => format!(
                "the run ended: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        }
    );
    Ok(())
}
