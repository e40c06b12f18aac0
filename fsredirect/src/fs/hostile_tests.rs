//! Requests as a hostile guest sends them: out of the kernel's usual order, racing each other,
//! across a server restart, under descriptor pressure, from a server with and without file
//! handles. Each test pins one way the engine once lost or leaked data.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Barrier};

use super::*;

/// Node identities by host inode number, as a server not running as root has them.
fn without_file_handles() -> FsConfig {
    FsConfig {
        inode_file_handles: false,
        ..FsConfig::default()
    }
}

/// Descriptors of this process open on deleted files below `dir`.
fn open_deleted_below(dir: &Path) -> usize {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with(&prefix) && t.ends_with(" (deleted)"))
        .count()
}

/// 1. GETATTR a file, rename another file over it, FORGET it, create new files: without file
///    handles a new file may get the dead file's node id (its host inode number is reused).
/// 2. Every new file is empty, and its writes land in its own object.
#[test]
fn new_file_never_sees_a_renamed_over_files_bytes() {
    let fx = fixture_with(true, without_file_handles());
    for round in 0..20 {
        let victim = fx.write_file(ROOT_INODE, "victim", b"the victim's private bytes");
        fx.fs.getattr(&fx.ctx, victim.inode, None).unwrap();
        let a = fx.write_file(ROOT_INODE, "a", b"a");
        fx.fs
            .rename(&fx.ctx, ROOT_INODE, &c("a"), ROOT_INODE, &c("victim"), 0)
            .unwrap();
        fx.fs.forget(&fx.ctx, victim.inode, 1);
        fx.fs.forget(&fx.ctx, a.inode, 1);
        let name = format!("new{round}");
        let (entry, handle) = fx.create(ROOT_INODE, &name);
        assert_eq!(
            fx.size(entry.inode),
            0,
            "round {round}: a new file has a size"
        );
        assert_eq!(fx.read(entry.inode, handle, 0, 4096), b"", "round {round}");
        fx.write(entry.inode, handle, 0, b"new");
        fx.fs.fsync(&fx.ctx, entry.inode, false, handle).unwrap();
        fx.release(entry.inode, handle);
        assert_eq!(std::fs::read(fx.volume.join(&name)).unwrap(), b"new");
        fx.fs.forget(&fx.ctx, entry.inode, 1);
        fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("victim")).unwrap();
    }
    fx.assert_mirror();
}

/// 1. Overwrite a file by rename twenty times (what an editor's save does), as root would.
/// 2. No descriptor stays open on an overwritten object, so their space is given back.
#[test]
fn overwritten_objects_are_not_kept_open() {
    let fx = redirecting();
    let target = fx.write_file(ROOT_INODE, "doc", b"v0");
    fx.fs.getattr(&fx.ctx, target.inode, None).unwrap();
    for i in 1..=20 {
        let tmp = fx.write_file(ROOT_INODE, "doc.tmp", format!("v{i}").as_bytes());
        fx.fs.getattr(&fx.ctx, tmp.inode, None).unwrap();
        fx.fs
            .rename(&fx.ctx, ROOT_INODE, &c("doc.tmp"), ROOT_INODE, &c("doc"), 0)
            .unwrap();
    }
    assert_eq!(fx.read_file(ROOT_INODE, "doc"), b"v20");
    assert_eq!(open_deleted_below(&fx.volume), 0);
    assert_eq!(open_deleted_below(&fx.control), 0);
    fx.assert_mirror();
}

/// `ln d2/b d1/a` (12 bytes, "shared bytes"), then a restart with `cfg`, after which the
/// server knows only `d1` and `d1/a` (looked up): `d2/b` is on disk, unknown to it.
fn hard_link_known_by_one_name(cfg: impl Fn() -> FsConfig) -> (Fixture, Entry, Entry) {
    let fx = fixture_with(true, cfg());
    let d1 = fx.mkdir(ROOT_INODE, "d1");
    let d2 = fx.mkdir(ROOT_INODE, "d2");
    let b = fx.write_file(d2.inode, "b", b"shared bytes");
    fx.fs.link(&fx.ctx, b.inode, d1.inode, &c("a")).unwrap();
    let fx = fx.restart(cfg());
    let d1 = fx.lookup(ROOT_INODE, "d1").unwrap();
    let a = fx.lookup(d1.inode, "a").unwrap();
    (fx, d1, a)
}

/// 1. `ln d2/b d1/a`, restart the server, look up and open only `d1/a`.
/// 2. Unlink `d1/a` (the server knows no other name now) and touch other files, so that
///    cached descriptors are evicted (one store descriptor at most).
/// 3. The open descriptor still reads and writes the data, and `d2/b` sees the write.
#[test]
fn open_hard_link_keeps_working_after_restart_and_unlink() {
    let cfg = || FsConfig {
        max_store_fds: 1,
        ..FsConfig::default()
    };
    let (fx, d1, a) = hard_link_known_by_one_name(cfg);
    let handle = fx.open(a.inode, libc::O_RDWR);
    fx.fs.unlink(&fx.ctx, d1.inode, &c("a")).unwrap();
    fx.write_file(ROOT_INODE, "other1", b"x");
    fx.write_file(ROOT_INODE, "other2", b"y");
    assert_eq!(fx.read(a.inode, handle, 0, 100), b"shared bytes");
    fx.write(a.inode, handle, 0, b"SHARED");
    fx.release(a.inode, handle);
    let d2 = fx.lookup(ROOT_INODE, "d2").unwrap();
    assert_eq!(fx.read_file(d2.inode, "b"), b"SHARED bytes");
    fx.assert_mirror();
}

/// 1. Open with O_APPEND and append; the guest then clears O_APPEND with fcntl(F_SETFL).
/// 2. `pwrite(fd, "B", 0)` overwrites the first byte, as on any local file system.
#[test]
fn clearing_o_append_after_open_is_honoured() {
    for fx in [redirecting(), passthrough()] {
        let (entry, handle) = fx.create(ROOT_INODE, "f");
        fx.release(entry.inode, handle);
        let append = libc::O_WRONLY | libc::O_APPEND;
        let handle = fx.open(entry.inode, append);
        fx.write_with_flags(entry.inode, handle, 0, b"0123456789", append);
        fx.write_with_flags(entry.inode, handle, 0, b"AAAA", append);
        fx.write_with_flags(entry.inode, handle, 0, b"B", libc::O_WRONLY);
        fx.release(entry.inode, handle);
        assert_eq!(fx.read_file(ROOT_INODE, "f"), b"B123456789AAAA");
    }
}

/// 1. MKNOD(S_IFREG) on the name of an existing redirected file.
/// 2. EEXIST, and the file's stored bytes are untouched.
#[test]
fn mknod_on_an_existing_name_keeps_its_data() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"precious");
    let r = fx
        .fs
        .mknod(&fx.ctx, ROOT_INODE, &c("f"), libc::S_IFREG | 0o644, 0, 0);
    assert_eq!(errno_of(r), libc::EEXIST);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"precious");
    fx.assert_mirror();
}

/// 1. WRITE (128 KiB at 0) and SETATTR (size 0) of one file, in flight together, many times.
/// 2. After each pair the stub's apparent size equals the stored object's size.
#[test]
fn write_racing_a_truncate_leaves_stub_and_object_agreeing() {
    let fx = Arc::new(redirecting());
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let data = vec![7u8; 128 * 1024];
    for round in 0..200 {
        let start = Arc::new(Barrier::new(2));
        let writer = {
            let (fx, start, data) = (fx.clone(), start.clone(), data.clone());
            std::thread::spawn(move || {
                start.wait();
                fx.write(entry.inode, handle, 0, &data);
            })
        };
        start.wait();
        fx.truncate(entry.inode, 0);
        writer.join().unwrap();
        let stub = std::fs::metadata(fx.guest.join("f")).unwrap().len();
        let object = std::fs::metadata(fx.volume.join("f")).unwrap().len();
        assert_eq!(stub, object, "round {round}: stub and object disagree");
    }
    fx.release(entry.inode, handle);
    fx.assert_mirror();
}

/// What a host user finds in the guest tree and the store for `rel`: whether any host file
/// holding bytes carries setuid/setgid bits or file capabilities.
fn host_privileged_data(fx: &Fixture, rel: &str) -> Vec<String> {
    let mut found = Vec::new();
    for path in [fx.guest.join(rel), fx.volume.join(rel)] {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.len() == 0 || !has_data_extent(&path) {
            continue;
        }
        if meta.permissions().mode() & 0o6000 != 0 {
            found.push(format!("{} has mode {:o}", path.display(), meta.mode()));
        }
        if host_xattr(&path, "security.capability").is_some() {
            found.push(format!("{} has file capabilities", path.display()));
        }
    }
    found
}

fn chmod(fx: &Fixture, inode: u64, mode: u32) -> io::Result<libc::stat64> {
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
    attr.st_mode = mode;
    fx.fs
        .setattr(&fx.ctx, inode, attr, None, SetattrValid::MODE)
        .map(|(st, _)| st)
}

/// 1. On a share that keeps small files inline, the guest creates a file with mode 4755,
///    chmods another one to 6755 after writing it, and gives a third file capabilities.
/// 2. The guest sees its modes; no host file holding the guest's bytes is setuid, setgid or
///    carries capabilities (the bytes moved into the store, whose objects are private).
#[test]
fn guest_cannot_plant_a_privileged_executable_on_the_host() {
    let fx = fixture_for(Some("min-size:1M"), FsConfig::default());
    let payload = b"\x7fELF pretend this is a shell";

    let (entry, handle, _, _) = fx
        .fs
        .create(
            &fx.ctx,
            ROOT_INODE,
            &c("born-setuid"),
            create_in(0o4755, libc::O_RDWR),
        )
        .unwrap();
    fx.write(entry.inode, handle.unwrap(), 0, payload);
    fx.release(entry.inode, handle.unwrap());
    let st = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap().0;
    assert_eq!(st.st_mode & 0o7777, 0o4755);

    let later = fx.write_file(ROOT_INODE, "made-setuid", payload);
    let st = chmod(&fx, later.inode, libc::S_IFREG | 0o6755).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o6755);
    assert_eq!(fx.read_file(ROOT_INODE, "made-setuid"), payload);

    let capable = fx.write_file(ROOT_INODE, "capable", payload);
    // A version 2 capability set granting CAP_SETUID.
    let mut caps = vec![0u8; 20];
    caps[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    caps[4] = 1 << 7;
    match fx
        .fs
        .setxattr(&fx.ctx, capable.inode, &c("security.capability"), &caps, 0)
    {
        Ok(()) => {}
        // A server without CAP_SETFCAP cannot set capabilities on any host file.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !fx.fs.file_handles => {}
        Err(e) => panic!("setting capabilities: {e}"),
    }
    assert_eq!(fx.read_file(ROOT_INODE, "capable"), payload);

    for rel in ["born-setuid", "made-setuid", "capable"] {
        assert_eq!(host_privileged_data(&fx, rel), Vec::<String>::new());
        let object = std::fs::metadata(fx.volume.join(rel)).unwrap();
        assert_eq!(
            object.mode() & 0o7777,
            0o600,
            "{rel}: stored object not private"
        );
    }
    fx.assert_mirror();
}

/// 1. A privileged file in the store is truncated below the inline threshold.
/// 2. It stays in the store: the policy never brings it back into a host file with its bits.
#[test]
fn privileged_file_stays_in_the_store_whatever_the_policy() {
    let fx = fixture_for(Some("min-size:16"), FsConfig::default());
    let (entry, handle, _, _) = fx
        .fs
        .create(
            &fx.ctx,
            ROOT_INODE,
            &c("s"),
            create_in(0o2755, libc::O_RDWR),
        )
        .unwrap();
    fx.write(entry.inode, handle.unwrap(), 0, &[1u8; 64]);
    fx.release(entry.inode, handle.unwrap());
    fx.truncate(entry.inode, 4);
    assert_eq!(host_privileged_data(&fx, "s"), Vec::<String>::new());
    assert_eq!(std::fs::read(fx.volume.join("s")).unwrap(), [1u8; 4]);
    fx.assert_mirror();
}

/// 1. The guest fills its descriptor budget with OPENDIRs that it never releases.
/// 2. More OPENDIRs and OPENs get EMFILE; the server's own work (lookups of known names,
///    writes through an open handle, which need store descriptors) goes on.
/// 3. Releasing one handle makes room again.
#[test]
fn guest_descriptor_budget_never_starves_the_server() {
    let fx = fixture_with(
        true,
        FsConfig {
            max_guest_fds: Some(40),
            ..FsConfig::default()
        },
    );
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let mut dirs = Vec::new();
    loop {
        match fx.fs.opendir(&fx.ctx, ROOT_INODE, 0) {
            Ok((Some(h), _)) => dirs.push(h),
            Ok((None, _)) => panic!("opendir without a handle"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
                break;
            }
        }
        assert!(dirs.len() <= 40, "the budget did not stop the guest");
    }
    // The open file holds one descriptor, and without file handles its node one more.
    let node = usize::from(!fx.fs.file_handles);
    assert_eq!(dirs.len(), 39 - node);
    assert_eq!(
        errno_of(fx.fs.open(&fx.ctx, entry.inode, libc::O_RDONLY as u32, 0)),
        libc::EMFILE
    );
    fx.write(entry.inode, handle, 0, b"still served");
    assert!(fx.lookup(ROOT_INODE, "f").is_ok());
    fx.fs
        .releasedir(&fx.ctx, ROOT_INODE, 0, dirs.pop().unwrap())
        .unwrap();
    let again = fx.open(entry.inode, libc::O_RDONLY);
    assert_eq!(fx.read(entry.inode, again, 0, 100), b"still served");
    assert_eq!(fx.fs.guest_fds(), (40, 40));
}

/// 1. Without file handles every inode the guest looks up costs the server a descriptor.
/// 2. Lookups of new inodes past the budget get EMFILE; FORGET gives the descriptors back.
#[test]
fn lookups_without_file_handles_are_bounded() {
    let fx = fixture_with(
        true,
        FsConfig {
            inode_file_handles: false,
            max_guest_fds: Some(30),
            ..FsConfig::default()
        },
    );
    for i in 0..40 {
        std::fs::write(fx.guest.join(format!("plain{i}")), b"p").unwrap();
    }
    let mut known = Vec::new();
    for i in 0..40 {
        match fx.lookup(ROOT_INODE, &format!("plain{i}")) {
            Ok(e) => known.push(e.inode),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EMFILE)),
        }
    }
    assert_eq!(known.len(), 30);
    assert_eq!(fx.fs.guest_fds().0, 30);
    for inode in known {
        fx.fs.forget(&fx.ctx, inode, 1);
    }
    assert_eq!(fx.fs.guest_fds().0, 0);
    assert!(fx.lookup(ROOT_INODE, "plain39").is_ok());
}

/// 1. With the default budget (from RLIMIT_NOFILE), the guest opens a file, then opens the
///    root directory until it is refused.
/// 2. The refusal is the guest's own EMFILE, and the server still serves the open file
///    (store and stub descriptors come from its reserve). With file handles it also still
///    creates directories; without, each new node costs a descriptor, so MKDIR waits for a
///    release like an open does.
#[test]
fn guest_opendirs_up_to_the_process_limit_leave_the_server_room() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let (_, limit) = fx.fs.guest_fds();
    let mut dirs = Vec::new();
    let refusal = loop {
        match fx.fs.opendir(&fx.ctx, ROOT_INODE, 0) {
            Ok((h, _)) => dirs.push(h.unwrap()),
            Err(e) => break e,
        }
        assert!(
            dirs.len() <= limit,
            "opendirs went past the budget of {limit}"
        );
    };
    assert_eq!(refusal.raw_os_error(), Some(libc::EMFILE));
    fx.write(entry.inode, handle, 0, b"served");
    fx.fs.fsync(&fx.ctx, entry.inode, false, handle).unwrap();
    if fx.fs.file_handles {
        fx.mkdir(ROOT_INODE, "d");
    } else {
        let r = fx.fs.mkdir(&fx.ctx, ROOT_INODE, &c("d"), 0o755, 0);
        assert_eq!(errno_of(r), libc::EMFILE);
        let last = dirs.pop().unwrap();
        fx.fs.releasedir(&fx.ctx, ROOT_INODE, 0, last).unwrap();
        fx.mkdir(ROOT_INODE, "d");
    }
    assert_eq!(fx.read(entry.inode, handle, 0, 10), b"served");
    fx.release(entry.inode, handle);
}

/// 1. A redirecting server stores a file and stops.
/// 2. The tree is then served without its store (passthrough), or with another store: the
///    stub keeps its size, but opening or truncating it fails with EIO, never reads zeros or
///    takes data into the stub.
/// 3. Served with its store again, the file reads its bytes and verify is clean.
#[test]
fn stub_served_without_its_store_is_an_error_not_zeros() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"redirected bytes");
    let guest = fx.guest.clone();
    let tmp = fx._tmp.path().to_path_buf();
    let fx = fx.restart(FsConfig::default());
    drop(fx.fs);
    for spec in [
        format!("tag=t,dir={}", guest.display()),
        format!(
            "tag=t,dir={},store={}/other",
            guest.display(),
            tmp.display()
        ),
    ] {
        let fs = RedirectFs::new(&ShareSpec::parse(&spec).unwrap(), FsConfig::default()).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let entry = fs.lookup(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
        assert_eq!(entry.attr.st_size, 16, "{spec}");
        let r = fs.open(&fx.ctx, entry.inode, libc::O_RDWR as u32, 0);
        assert_eq!(errno_of(r), libc::EIO, "{spec}");
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let attr: libc::stat64 = unsafe { std::mem::zeroed() };
        let r = fs.setattr(&fx.ctx, entry.inode, attr, None, SetattrValid::SIZE);
        assert_eq!(errno_of(r), libc::EIO, "{spec}");
    }
    let fs = RedirectFs::new(&fx.share, FsConfig::default()).unwrap();
    let fx = Fixture { fs, ..fx };
    fx.fs.init(FsOptions::empty()).unwrap();
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"redirected bytes");
    fx.assert_mirror();
}

/// 1. A session opens files and directories, unlinks an open file, and ends without
///    releasing anything (DESTROY, as when a vhost-user front-end goes away).
/// 2. The next session starts with nothing held: the budget is empty, the orphan is gone,
///    and its handles are unknown.
#[test]
fn an_ended_session_gives_everything_back() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "gone");
    fx.write(entry.inode, handle, 0, b"bytes");
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("gone")).unwrap();
    fx.create(ROOT_INODE, "kept");
    fx.fs.opendir(&fx.ctx, ROOT_INODE, 0).unwrap();
    assert!(fx.fs.guest_fds().0 >= 3);
    assert_eq!(fx.orphans(), 1);
    fx.fs.destroy();
    fx.fs.init(FsOptions::empty()).unwrap();
    assert_eq!(fx.fs.guest_fds().0, 0);
    assert_eq!(fx.orphans(), 0);
    let r = fx.fs.read(
        &fx.ctx,
        entry.inode,
        handle,
        &mut MemSink::default(),
        10,
        0,
        None,
        0,
    );
    assert_eq!(errno_of(r), libc::EBADF);
    assert!(fx.lookup(ROOT_INODE, "kept").is_ok());
    fx.assert_mirror();
}

/// 1. Rename a file onto its own name, and onto another hard link of itself.
/// 2. rename(2) does nothing: every name stays, and a later LINK onto one says EEXIST.
///
/// (Found by the adversarial driver: the server forgot the name and answered ENOENT.)
#[test]
fn renaming_a_file_onto_itself_keeps_its_names() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "a", b"one file");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), ROOT_INODE, &c("a"), 0)
        .unwrap();
    fx.fs
        .link(&fx.ctx, entry.inode, ROOT_INODE, &c("b"))
        .unwrap();
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), ROOT_INODE, &c("b"), 0)
        .unwrap();
    let r = fx.fs.link(&fx.ctx, entry.inode, ROOT_INODE, &c("b"));
    assert_eq!(errno_of(r), libc::EEXIST);
    assert_eq!(fx.read_file(ROOT_INODE, "a"), b"one file");
    assert_eq!(fx.read_file(ROOT_INODE, "b"), b"one file");
    fx.assert_mirror();
}

/// 1. Open a redirected file, then FORGET its node (the kernel never does while the file is
///    open; a hostile guest may).
/// 2. Writes through the handle still resize the stub with the object: verify is clean.
///
/// (Found by the adversarial driver: the stub kept its size and the WRITE said EBADF.)
#[test]
fn forgetting_an_open_files_node_keeps_stub_and_object_agreeing() {
    for cfg in [FsConfig::default(), without_file_handles()] {
        let fx = fixture_with(true, cfg);
        let (entry, handle) = fx.create(ROOT_INODE, "e");
        fx.fs.forget(&fx.ctx, entry.inode, 1);
        fx.write(entry.inode, handle, 0, &[5u8; 4584]);
        assert_eq!(std::fs::metadata(fx.guest.join("e")).unwrap().len(), 4584);
        fx.release(entry.inode, handle);
        fx.assert_mirror();
        assert_eq!(fx.read_file(ROOT_INODE, "e"), vec![5u8; 4584]);
    }
}

/// 1. LINK a redirected file into a parent that is a regular file (ENOTDIR).
/// 2. The store gains no directory of that name, so a later rename onto the name works.
///
/// (Found by the adversarial driver: the stray store directory made that rename EISDIR.)
#[test]
fn a_refused_link_leaves_no_directory_in_the_store() {
    // Small files inline: "c" has no store path, so the store could make a directory there.
    let fx = fixture_for(Some("min-size:1K"), FsConfig::default());
    let big = vec![9u8; 2048];
    let target = fx.write_file(ROOT_INODE, "b", &big);
    let not_dir = fx.write_file(ROOT_INODE, "c", b"a small file");
    let r = fx.fs.link(&fx.ctx, target.inode, not_dir.inode, &c("a"));
    assert_eq!(errno_of(r), libc::ENOTDIR);
    assert!(
        !fx.volume.join("c").exists(),
        "the store made c/ for the refused link"
    );
    fx.write_file(ROOT_INODE, "-", &big);
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("-"), ROOT_INODE, &c("c"), 0)
        .unwrap();
    assert_eq!(fx.read_file(ROOT_INODE, "c"), big);
    fx.assert_mirror();
}

/// 1. SETATTR of a directory with a new mode and a size (the kernel never sends a size for a
///    directory; a hostile guest may).
/// 2. EISDIR, and the directory keeps its mode: nothing of a refused request is applied.
///
/// (Found by the adversarial driver as an unprivileged server: the root lost its x bits.)
#[test]
fn a_refused_setattr_changes_nothing() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
    attr.st_mode = libc::S_IFDIR | 0o602;
    attr.st_size = 1893;
    let r = fx.fs.setattr(
        &fx.ctx,
        dir.inode,
        attr,
        None,
        SetattrValid::MODE | SetattrValid::SIZE,
    );
    assert_eq!(errno_of(r), libc::EISDIR);
    let st = fx.fs.getattr(&fx.ctx, dir.inode, None).unwrap().0;
    assert_eq!(st.st_mode & 0o7777, 0o755);
}

/// 1. Make a directory, a special file and a symlink, then make each again (as any server:
///    as root, and as nobody in the unprivileged run of the unit tests).
/// 2. The second attempt says EEXIST, never EPERM.
///
/// (Found by the adversarial driver: a server without root answered EPERM.)
#[test]
fn creating_an_existing_name_says_eexist() {
    let fx = redirecting();
    fx.mkdir(ROOT_INODE, "d");
    let r = fx.fs.mkdir(&fx.ctx, ROOT_INODE, &c("d"), 0o755, 0);
    assert_eq!(errno_of(r), libc::EEXIST);
    fx.fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    let r = fx
        .fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0);
    assert_eq!(errno_of(r), libc::EEXIST);
    fx.fs
        .symlink(&fx.ctx, &c("target"), ROOT_INODE, &c("l"))
        .unwrap();
    let r = fx.fs.symlink(&fx.ctx, &c("target"), ROOT_INODE, &c("l"));
    assert_eq!(errno_of(r), libc::EEXIST);
}

/// 1. Create and open a file twice, FORGET its node while it is open (as a hostile guest may),
///    and write with O_SYNC through the second handle.
/// 2. The write succeeds: an open file keeps its node and the names it is known by, so its
///    stub is still reached to take the new size and to be synced.
#[test]
fn a_synced_write_after_forgetting_an_open_files_node_succeeds() {
    for fx in [redirecting(), fixture_with(true, without_file_handles())] {
        let (entry, first) = fx.create(ROOT_INODE, "f");
        let second = fx.open(entry.inode, libc::O_RDWR | libc::O_SYNC);
        fx.fs.forget(&fx.ctx, entry.inode, u64::MAX);
        let flags = libc::O_RDWR | libc::O_SYNC;
        fx.write_with_flags(entry.inode, second, 60_000, b"synced", flags);
        assert_eq!(fx.size(entry.inode), 60_006);
        fx.release(entry.inode, first);
        fx.release(entry.inode, second);
        assert_eq!(&fx.read_file(ROOT_INODE, "f")[60_000..], b"synced");
        fx.assert_mirror();
    }
}

/// 1. FORGET, with a count beyond what it holds, an open file's node while the file is open;
///    look it up again, then release the file.
/// 2. The node the kernel holds from the second lookup still works: a FORGET takes away no
///    more references than the kernel held when it came.
#[test]
fn a_forget_beyond_the_references_held_spares_a_later_lookup() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.fs.forget(&fx.ctx, entry.inode, u64::MAX);
    let again = fx.lookup(ROOT_INODE, "f").unwrap();
    assert_eq!(again.inode, entry.inode);
    fx.release(entry.inode, handle);
    fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
    let handle = fx.open(entry.inode, libc::O_RDWR);
    fx.write(entry.inode, handle, 0, b"still here");
    fx.release(entry.inode, handle);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"still here");
}

/// 1. Look up a directory and a file in it; FORGET the directory with a huge count while the
///    file's node is still held (the guest's kernel never does that; a hostile guest can).
/// 2. The file's node still opens, reads, writes and links: the server keeps a directory
///    while it knows names below it, as the kernel does.
#[test]
fn forgetting_a_directory_keeps_the_nodes_below_it_working() {
    for fx in [redirecting(), fixture_with(true, without_file_handles())] {
        let d = fx.mkdir(ROOT_INODE, "d");
        let f = fx.write_file(d.inode, "f", b"below");
        fx.fs.forget(&fx.ctx, d.inode, u64::MAX);
        let handle = fx.open(f.inode, libc::O_RDWR);
        fx.write(f.inode, handle, 5, b"!");
        fx.release(f.inode, handle);
        fx.fs.link(&fx.ctx, f.inode, ROOT_INODE, &c("g")).unwrap();
        assert_eq!(fx.read_file(ROOT_INODE, "g"), b"below!");
        fx.assert_mirror();
    }
}

/// 1. `ln d2/b d1/a`; restart the server; look up only `d1/a`, and unlink it while the
///    kernel still holds its node (the server knows no other name of the file now).
/// 2. The node still reports the file's size, opens, writes and takes a new name, and
///    `d2/b` holds what was written.
#[test]
fn a_node_whose_known_names_are_gone_still_reaches_its_file() {
    for cfg in [FsConfig::default, without_file_handles] {
        let (fx, d1, a) = hard_link_known_by_one_name(cfg);
        fx.fs.unlink(&fx.ctx, d1.inode, &c("a")).unwrap();
        assert_eq!(fx.size(a.inode), 12);
        let handle = fx.open(a.inode, libc::O_RDWR);
        fx.write(a.inode, handle, 0, b"SHARED");
        fx.fs.fsync(&fx.ctx, a.inode, false, handle).unwrap();
        fx.release(a.inode, handle);
        fx.fs.link(&fx.ctx, a.inode, ROOT_INODE, &c("c")).unwrap();
        assert_eq!(fx.read_file(ROOT_INODE, "c"), b"SHARED bytes");
        let d2 = fx.lookup(ROOT_INODE, "d2").unwrap();
        assert_eq!(fx.read_file(d2.inode, "b"), b"SHARED bytes");
        fx.assert_mirror();
        // Once its last name goes, the node holds the object open no more.
        fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("c")).unwrap();
        fx.fs.unlink(&fx.ctx, d2.inode, &c("b")).unwrap();
        assert_eq!(open_deleted_below(&fx.volume), 0);
        fx.assert_mirror();
    }
}

/// 1. A file is written, made read-only (0444) by the guest, opened for writing again (the
///    guest's root may), and its cached descriptors are evicted.
/// 2. A write lands, the stub follows the object and the guest's mode stays 0444. A server
///    not run as root is itself bound by the stub's mode: this is where it once answered
///    EACCES after the bytes had reached the store, leaving the stub behind.
#[test]
fn writing_a_read_only_file_keeps_stub_and_object_agreeing() {
    let small_cache = |cfg: FsConfig| FsConfig {
        max_store_fds: 1,
        ..cfg
    };
    for cfg in [
        small_cache(FsConfig::default()),
        small_cache(without_file_handles()),
    ] {
        let fx = fixture_with(true, cfg);
        let f = fx.write_file(ROOT_INODE, "ro", b"0123");
        chmod(&fx, f.inode, libc::S_IFREG | 0o444).unwrap();
        let handle = fx.open(f.inode, libc::O_WRONLY);
        fx.write_file(ROOT_INODE, "other", b"evicts the cached descriptors");
        fx.write(f.inode, handle, 4, b"4567");
        fx.release(f.inode, handle);
        let st = fx.fs.getattr(&fx.ctx, f.inode, None).unwrap().0;
        assert_eq!(st.st_mode & 0o7777, 0o444);
        assert_eq!(fx.read_file(ROOT_INODE, "ro"), b"01234567");
        fx.assert_mirror();
    }
}

/// 1. OPEN a directory and a file through the passthrough layer, then READ and WRITE them
///    with file flags no program could have (O_DIRECT, O_ASYNC, O_PATH, ...).
/// 2. The requests are answered and the server keeps its own descriptors: fuse-backend-rs
///    once closed a handle's descriptor when applying such flags failed, so its later I/O
///    and release reached whatever file took the number next.
///
/// (Found by fuzzing FUSE requests: the release aborted on a descriptor already closed.)
#[test]
fn impossible_file_flags_on_read_and_write_close_no_descriptor() {
    let odd = (libc::O_NONBLOCK
        | libc::O_SYNC
        | libc::O_DIRECT
        | libc::O_NOFOLLOW
        | libc::O_PATH
        | libc::O_ASYNC) as u32;
    for fx in [
        passthrough(),
        fixture_for(Some("min-size:1M"), FsConfig::default()),
    ] {
        let file = fx.write_file(ROOT_INODE, "f", b"inline bytes");
        let (dir_handle, _, _) = fx.fs.open(&fx.ctx, ROOT_INODE, 0, 0).unwrap();
        let dir_handle = dir_handle.unwrap();
        let read_dir = |flags| {
            let mut sink = MemSink::default();
            fx.fs.read(
                &fx.ctx, ROOT_INODE, dir_handle, &mut sink, 4096, 0, None, flags,
            )
        };
        let _ = read_dir(odd);
        // Still the directory's own descriptor: reading it as a file says EISDIR (not EBADF,
        // nor another file's bytes).
        assert_eq!(errno_of(read_dir(0)), libc::EISDIR);
        let handle = fx.open(file.inode, libc::O_RDWR);
        let mut sink = MemSink::default();
        fx.fs
            .read(&fx.ctx, file.inode, handle, &mut sink, 4096, 0, None, odd)
            .unwrap();
        let n = fx.write_with_flags(file.inode, handle, 0, b"INLINE", libc::O_RDWR | odd as i32);
        assert_eq!(n, 6);
        // Descriptors opened meanwhile would take a closed number.
        fx.write_file(ROOT_INODE, "other", b"other bytes");
        fx.fs
            .release(&fx.ctx, ROOT_INODE, 0, dir_handle, false, false, None)
            .unwrap();
        fx.release(file.inode, handle);
        assert_eq!(fx.read_file(ROOT_INODE, "f"), b"INLINE bytes");
        assert_eq!(fx.read_file(ROOT_INODE, "other"), b"other bytes");
        // Dropping the file system closes every descriptor it owns: none may be gone already.
        drop(fx);
    }
}

/// 1. OPEN a plain file, a redirected file and the root directory, OPENDIR the root, and
///    CREATE a new name and an existing one, each with `O_PATH` among the flags; then write
///    and read the files through plain handles.
/// 2. Each is refused with EINVAL, no file is made, and every file keeps its bytes. An
///    `O_PATH` handle once let fuse-backend-rs close its descriptor at the first READ (its
///    `fcntl(F_SETFL)` fails on `O_PATH`): the handle's next WRITE landed in whatever file
///    took the number next.
///
/// (Found by fuzzing FUSE requests: the second READ of such a handle closed a descriptor
/// already closed.)
#[test]
fn opens_for_a_path_only_descriptor_are_refused() {
    let path_only = libc::O_RDWR | libc::O_PATH;
    // Plain files as is, kept inline by the policy, and redirected (by file handle and by
    // descriptor).
    for fx in [
        passthrough(),
        fixture_for(Some("min-size:1M"), FsConfig::default()),
        redirecting(),
        fixture_with(true, without_file_handles()),
    ] {
        let plain = fx.write_file(ROOT_INODE, "plain", b"plain bytes");
        let redirected = fx.write_file(ROOT_INODE, "redirected", b"redirected bytes");
        for inode in [plain.inode, redirected.inode, ROOT_INODE] {
            let opened = fx.fs.open(&fx.ctx, inode, path_only as u32, 0);
            assert_eq!(errno_of(opened.map(drop)), libc::EINVAL, "OPEN of {inode}");
        }
        let opened = fx.fs.opendir(
            &fx.ctx,
            ROOT_INODE,
            (libc::O_PATH | libc::O_DIRECTORY) as u32,
        );
        assert_eq!(errno_of(opened.map(drop)), libc::EINVAL, "OPENDIR");
        for name in ["plain", "new"] {
            let created = fx.fs.create(
                &fx.ctx,
                ROOT_INODE,
                &c(name),
                create_in(0o644, path_only | libc::O_CREAT),
            );
            assert_eq!(
                errno_of(created.map(drop)),
                libc::EINVAL,
                "CREATE of {name}"
            );
        }
        assert_eq!(
            errno_of(fx.fs.lookup(&fx.ctx, ROOT_INODE, &c("new")).map(drop)),
            libc::ENOENT,
            "a refused CREATE makes no file"
        );
        // The files are as they were, and plain opens still read and write them.
        let victim = fx.write_file(ROOT_INODE, "victim", b"the victim's bytes");
        assert_eq!(fx.read_file(ROOT_INODE, "plain"), b"plain bytes");
        assert_eq!(fx.read_file(ROOT_INODE, "redirected"), b"redirected bytes");
        assert_eq!(fx.read_file(ROOT_INODE, "victim"), b"the victim's bytes");
        let handle = fx.open(victim.inode, libc::O_RDWR);
        assert_eq!(
            fx.write_with_flags(victim.inode, handle, 0, b"THE", libc::O_RDWR),
            3
        );
        fx.release(victim.inode, handle);
        assert_eq!(fx.read_file(ROOT_INODE, "victim"), b"THE victim's bytes");
        drop(fx);
    }
}

/// 1. Create a file, FORGET its node (kept while the file is open), then send a 128 KiB WRITE
///    and the RELEASE of the file's only handle at once, many times.
/// 2. After every round the stub's size equals the stored object's: the release, which gives
///    the node up, waits for the write to finish with the stub. (A kernel never sends the
///    two together; the WRITE may fail, but never half done.)
///
/// (Found by the adversarial driver's 10-million-operation run: `verify` saw a stub of 0
/// bytes beside an object of 477.)
#[test]
fn a_release_racing_a_write_leaves_stub_and_object_agreeing() {
    let fx = Arc::new(redirecting());
    let data = vec![9u8; 128 * 1024];
    for round in 0..100 {
        let name = format!("f{round}");
        let (entry, handle) = fx.create(ROOT_INODE, &name);
        fx.fs.forget(&fx.ctx, entry.inode, 1);
        let start = Arc::new(Barrier::new(2));
        let writer = {
            let (fx, start, data) = (fx.clone(), start.clone(), data.clone());
            std::thread::spawn(move || {
                start.wait();
                let _ = fx.try_write(entry.inode, handle, 0, &data, libc::O_RDWR);
            })
        };
        start.wait();
        fx.fs
            .release(&fx.ctx, entry.inode, 0, handle, false, false, None)
            .unwrap();
        writer.join().unwrap();
        let stub = std::fs::metadata(fx.guest.join(&name)).unwrap().len();
        let object = std::fs::metadata(fx.volume.join(&name)).unwrap().len();
        assert_eq!(stub, object, "round {round}: stub and object disagree");
    }
}

/// 1. SETATTR of a file's mtime and a FORGET of its node's only reference, in flight
///    together (a kernel never sends both; a hostile guest may), many times, with and
///    without file handles.
/// 2. A SETATTR answered with an error changed nothing: the file keeps its old mtime.
#[test]
fn a_setattr_answered_with_an_error_changed_nothing() {
    for cfg in [FsConfig::default, without_file_handles] {
        let fx = Arc::new(fixture_with(true, cfg()));
        let mut refused = 0;
        for round in 0..300 {
            let name = format!("f{round}");
            let (entry, handle) = fx.create(ROOT_INODE, &name);
            fx.release(entry.inode, handle);
            let path = fx.guest.join(&name);
            let before = std::fs::metadata(&path).unwrap().mtime();
            let start = Arc::new(Barrier::new(2));
            let forgetter = {
                let (fx, start) = (fx.clone(), start.clone());
                // Later and later, so that some FORGETs land inside the SETATTR.
                let delay = std::time::Duration::from_nanos(200 * (round as u64 % 100));
                std::thread::spawn(move || {
                    start.wait();
                    let t = std::time::Instant::now();
                    while t.elapsed() < delay {
                        std::hint::spin_loop();
                    }
                    fx.fs.forget(&fx.ctx, entry.inode, 1);
                })
            };
            // SAFETY: stat64 is plain old data; all-zero is a valid value.
            let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
            attr.st_mtime = 1_000_000 + round;
            start.wait();
            let set = fx
                .fs
                .setattr(&fx.ctx, entry.inode, attr, None, SetattrValid::MTIME);
            forgetter.join().unwrap();
            let after = std::fs::metadata(&path).unwrap().mtime();
            match set {
                Ok(_) => assert_eq!(after, attr.st_mtime, "round {round}: reply ok"),
                Err(e) => {
                    refused += 1;
                    assert_eq!(after, before, "round {round}: {e}, yet the mtime changed");
                }
            }
        }
        eprintln!("{refused} of 300 SETATTRs came after the FORGET");
    }
}

#[test]
fn opening_a_file_as_a_directory_fails_whatever_its_placement() {
    // A kernel never sends O_DIRECTORY for a file; a guest may. A redirected handle that kept
    // it could never be reopened inline: the file's moves out of the store would fail while
    // it stayed open.
    let open_flags = [
        libc::O_RDONLY | libc::O_DIRECTORY,
        libc::O_RDWR | libc::O_TMPFILE,
    ];
    for fx in [redirecting(), passthrough()] {
        let entry = fx.write_file(ROOT_INODE, "f", b"data");
        for flags in open_flags {
            let open = fx.fs.open(&fx.ctx, entry.inode, flags as u32, 0);
            assert_eq!(errno_of(open), libc::ENOTDIR);
            // With O_CREAT: EINVAL, for a name in use and a new one, as Linux answers since
            // 6.4 (an older host kernel would make a file; the server never does).
            for name in ["f", "new"] {
                let args = create_in(0o644, flags | libc::O_CREAT);
                let create = fx.fs.create(&fx.ctx, ROOT_INODE, &c(name), args);
                assert_eq!(errno_of(create), libc::EINVAL, "CREATE {name} {flags:#o}");
            }
        }
    }
}

#[test]
fn truncating_open_of_a_file_whose_last_name_went_changes_nothing() {
    // The kernel may OPEN a node it still holds after its last name went (through
    // /proc/self/fd, say); a guest may with any flags. The object went with the name.
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", &[7u8; 100]);
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
    let flags = (libc::O_RDWR | libc::O_TRUNC) as u32;
    let open = fx.fs.open(&fx.ctx, entry.inode, flags, 0);
    assert_eq!(
        open.map(|_| ()).unwrap_err().raw_os_error(),
        Some(libc::ESTALE)
    );
    // The stub the node still stands for keeps its size: nothing was truncated.
    assert_eq!(fx.size(entry.inode), 100);
}

#[test]
fn a_handle_reads_and_writes_only_as_it_was_opened_whatever_the_placement() {
    // The kernel sends WRITE only through a handle opened for writing, READ through one opened
    // for reading; a guest may send either through any, naming any flags.
    for fx in [redirecting(), passthrough()] {
        let entry = fx.write_file(ROOT_INODE, "f", b"data");
        let reader = fx.open(entry.inode, libc::O_RDONLY);
        let wrote = fx.try_write(entry.inode, reader, 0, b"evil", libc::O_RDWR);
        assert_eq!(errno_of(wrote), libc::EBADF);
        let grown = fx.fs.fallocate(&fx.ctx, entry.inode, reader, 0, 0, 1 << 20);
        assert_eq!(errno_of(grown), libc::EBADF);
        assert_eq!(fx.read_file(ROOT_INODE, "f"), b"data");
        assert_eq!(fx.size(entry.inode), 4);
        fx.release(entry.inode, reader);
        let writer = fx.open(entry.inode, libc::O_WRONLY);
        let mut sink = MemSink::default();
        let read = fx
            .fs
            .read(&fx.ctx, entry.inode, writer, &mut sink, 4, 0, None, 0);
        assert_eq!(errno_of(read), libc::EBADF);
        fx.release(entry.inode, writer);
    }
}
