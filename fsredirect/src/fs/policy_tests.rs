//! Placement transitions under a share policy: each direction, with handles open across the
//! move, through renames, and after a crash in the middle of one.

use std::os::unix::fs::{FileExt, MetadataExt};

use super::*;
use crate::intent::Intent;
use crate::store::Store;

fn with_policy(policy: &str) -> Fixture {
    fixture_for(Some(policy), FsConfig::default())
}

impl Fixture {
    fn meta_of(&self, rel: &str) -> Option<Vec<u8>> {
        host_xattr(&self.guest.join(rel), self.fs.meta_name.to_str().unwrap())
    }

    /// The file at `rel` is inline: data in the guest tree, no metadata, no object.
    fn assert_inline(&self, rel: &str, data: &[u8]) {
        assert_eq!(self.meta_of(rel), None, "{rel} has redirect metadata");
        assert!(!self.volume.join(rel).exists(), "{rel} has a stored object");
        assert_eq!(std::fs::read(self.guest.join(rel)).unwrap(), data);
        self.assert_mirror();
    }

    /// The file at `rel` is redirected: a sparse stub with metadata, the data in the store.
    fn assert_redirected(&self, rel: &str, data: &[u8]) {
        assert!(
            self.meta_of(rel).is_some(),
            "{rel} has no redirect metadata"
        );
        assert_eq!(std::fs::read(self.volume.join(rel)).unwrap(), data);
        let stub = self.guest.join(rel);
        assert_eq!(std::fs::metadata(&stub).unwrap().len(), data.len() as u64);
        assert!(!has_data_extent(&stub), "{rel}: stub holds data");
        self.assert_mirror();
    }

    fn host_ino(&self, inode: u64) -> u64 {
        self.fs.getattr(&self.ctx, inode, None).unwrap().0.st_ino
    }

    fn rename(&self, old: &str, new: &str) {
        self.fs
            .rename(&self.ctx, ROOT_INODE, &c(old), ROOT_INODE, &c(new), 0)
            .unwrap();
    }
}

#[test]
fn new_file_below_min_size_is_inline() {
    let fx = with_policy("min-size:4K");
    fx.write_file(ROOT_INODE, "small", b"tiny");
    fx.assert_inline("small", b"tiny");
    assert_eq!(fx.read_file(ROOT_INODE, "small"), b"tiny");
}

#[test]
fn write_crossing_min_size_moves_file_into_store_under_its_open_handle() {
    let fx = with_policy("min-size:4K");
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let ino = fx.host_ino(entry.inode);
    fx.write(entry.inode, handle, 0, &[1u8; 3000]);
    fx.assert_inline("f", &[1u8; 3000]);
    fx.write(entry.inode, handle, 3000, &[2u8; 2000]);
    let mut want = vec![1u8; 3000];
    want.extend_from_slice(&[2u8; 2000]);
    fx.assert_redirected("f", &want);
    // Same inode, same size, and the handle opened inline keeps reading and writing.
    assert_eq!(fx.host_ino(entry.inode), ino);
    assert_eq!(fx.size(entry.inode), 5000);
    assert_eq!(fx.read(entry.inode, handle, 0, 10_000), want);
    fx.write(entry.inode, handle, 5000, b"tail");
    want.extend_from_slice(b"tail");
    fx.release(entry.inode, handle);
    fx.assert_redirected("f", &want);
}

#[test]
fn an_appending_write_crossing_min_size_moves_the_file_whatever_offset_it_names() {
    let fx = with_policy("min-size:4K");
    let (entry, handle) = fx.create(ROOT_INODE, "log");
    fx.write(entry.inode, handle, 0, &[1u8; 3000]);
    fx.assert_inline("log", &[1u8; 3000]);
    // A hostile offset: the write still lands at the end, and the file is 5000 bytes long.
    fx.write_with_flags(entry.inode, handle, 0, &[2u8; 2000], libc::O_APPEND);
    let mut want = vec![1u8; 3000];
    want.extend_from_slice(&[2u8; 2000]);
    fx.release(entry.inode, handle);
    fx.assert_redirected("log", &want);
}

#[test]
fn space_preallocated_past_the_end_while_inline_does_not_stay_in_the_stub() {
    let fx = with_policy("min-size:4K");
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 0, &[1u8; 3000]);
    // Blocks past the end, as `fallocate --keep-size` makes them.
    let keep_size = libc::FALLOC_FL_KEEP_SIZE as u32;
    fx.fs
        .fallocate(&fx.ctx, entry.inode, handle, keep_size, 0, 1 << 20)
        .unwrap();
    fx.write(entry.inode, handle, 3000, &[2u8; 2000]);
    // The object grows over that range, and the stub with it.
    fx.write(entry.inode, handle, 5000, &[3u8; 100_000]);
    fx.release(entry.inode, handle);
    let stub = fx.guest.join("f");
    // Read on the host (a backup, say): preallocated blocks would now hold cached pages,
    // which is data.
    assert_eq!(std::fs::read(&stub).unwrap(), vec![0u8; 105_000]);
    let mut want = vec![1u8; 3000];
    want.extend_from_slice(&[2u8; 2000]);
    want.extend_from_slice(&[3u8; 100_000]);
    fx.assert_redirected("f", &want);
}

#[test]
fn truncate_below_min_size_moves_file_back_inline_under_its_open_handle() {
    let fx = with_policy("min-size:4K");
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 0, &[5u8; 8192]);
    fx.assert_redirected("f", &[5u8; 8192]);
    let ino = fx.host_ino(entry.inode);
    fx.truncate(entry.inode, 100);
    fx.assert_inline("f", &[5u8; 100]);
    assert_eq!(fx.host_ino(entry.inode), ino);
    assert_eq!(fx.read(entry.inode, handle, 0, 10_000), vec![5u8; 100]);
    fx.write(entry.inode, handle, 100, b"more");
    fx.release(entry.inode, handle);
    let mut want = vec![5u8; 100];
    want.extend_from_slice(b"more");
    fx.assert_inline("f", &want);
}

#[test]
fn file_moving_both_ways_keeps_its_bytes() {
    let fx = with_policy("min-size:1K");
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let mut want = Vec::new();
    for round in 0..3u8 {
        let chunk: Vec<u8> = (0..1500).map(|i| (i as u8) ^ round).collect();
        fx.write(entry.inode, handle, 0, &chunk);
        want = chunk;
        fx.assert_redirected("f", &want);
        fx.truncate(entry.inode, 10);
        want.truncate(10);
        fx.assert_inline("f", &want);
    }
    assert_eq!(fx.read(entry.inode, handle, 0, 100), want);
    fx.release(entry.inode, handle);
}

#[test]
fn open_with_trunc_moves_redirected_file_inline() {
    let fx = with_policy("min-size:1K");
    let entry = fx.write_file(ROOT_INODE, "f", &[9u8; 2048]);
    fx.assert_redirected("f", &[9u8; 2048]);
    let handle = fx.open(entry.inode, libc::O_RDWR | libc::O_TRUNC);
    fx.assert_inline("f", b"");
    fx.write(entry.inode, handle, 0, b"fresh");
    fx.release(entry.inode, handle);
    fx.assert_inline("f", b"fresh");
}

#[test]
fn rename_across_an_exclude_rule_moves_the_file_and_keeps_mtime() {
    let fx = with_policy("exclude:tmp/**");
    let tmp = fx.mkdir(ROOT_INODE, "tmp");
    let entry = fx.write_file(ROOT_INODE, "f", b"payload");
    fx.assert_redirected("f", b"payload");
    let handle = fx.open(entry.inode, libc::O_RDWR);
    let mtime = std::fs::metadata(fx.guest.join("f")).unwrap().mtime();
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("f"), tmp.inode, &c("f"), 0)
        .unwrap();
    fx.assert_inline("tmp/f", b"payload");
    assert_eq!(
        std::fs::metadata(fx.guest.join("tmp/f")).unwrap().mtime(),
        mtime
    );
    assert_eq!(fx.read(entry.inode, handle, 0, 100), b"payload");
    fx.fs
        .rename(&fx.ctx, tmp.inode, &c("f"), ROOT_INODE, &c("back"), 0)
        .unwrap();
    fx.assert_redirected("back", b"payload");
    assert_eq!(
        std::fs::metadata(fx.guest.join("back")).unwrap().mtime(),
        mtime
    );
    fx.write(entry.inode, handle, 7, b"!");
    fx.release(entry.inode, handle);
    fx.assert_redirected("back", b"payload!");
}

#[test]
fn include_rule_keeps_other_files_inline() {
    let fx = with_policy("include:*.bin");
    fx.write_file(ROOT_INODE, "a.bin", b"binary");
    fx.write_file(ROOT_INODE, "a.txt", b"text");
    fx.assert_redirected("a.bin", b"binary");
    fx.assert_inline("a.txt", b"text");
    fx.rename("a.txt", "b.bin");
    fx.assert_redirected("b.bin", b"text");
    fx.rename("a.bin", "c.txt");
    fx.assert_inline("c.txt", b"binary");
}

#[test]
fn exchange_rename_settles_both_files() {
    let fx = with_policy("include:*.bin");
    fx.write_file(ROOT_INODE, "x.bin", b"one");
    fx.write_file(ROOT_INODE, "y.txt", b"two");
    fx.fs
        .rename(
            &fx.ctx,
            ROOT_INODE,
            &c("x.bin"),
            ROOT_INODE,
            &c("y.txt"),
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
    fx.assert_redirected("x.bin", b"two");
    fx.assert_inline("y.txt", b"one");
}

#[test]
fn hard_linked_file_keeps_its_placement() {
    let fx = with_policy("min-size:1K");
    let entry = fx.write_file(ROOT_INODE, "f", b"small");
    fx.fs
        .link(&fx.ctx, entry.inode, ROOT_INODE, &c("g"))
        .unwrap();
    let handle = fx.open(entry.inode, libc::O_RDWR);
    fx.write(entry.inode, handle, 0, &[1u8; 4096]);
    fx.release(entry.inode, handle);
    assert_eq!(fx.meta_of("f"), None);
    assert_eq!(std::fs::read(fx.guest.join("g")).unwrap(), vec![1u8; 4096]);
    fx.assert_mirror();
}

#[test]
fn special_files_are_never_moved() {
    let fx = with_policy("min-size:1K");
    fx.fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    fx.rename("p", "q");
    assert!(fx.meta_of("q").unwrap().starts_with(b"S1"));
}

#[test]
fn mknod_of_regular_file_follows_the_policy() {
    let fx = with_policy("exclude:*.log");
    fx.fs
        .mknod(
            &fx.ctx,
            ROOT_INODE,
            &c("a.log"),
            libc::S_IFREG | 0o644,
            0,
            0,
        )
        .unwrap();
    fx.fs
        .mknod(
            &fx.ctx,
            ROOT_INODE,
            &c("a.dat"),
            libc::S_IFREG | 0o644,
            0,
            0,
        )
        .unwrap();
    fx.assert_inline("a.log", b"");
    fx.assert_redirected("a.dat", b"");
}

#[test]
fn placement_notes_list_files_the_policy_would_place_elsewhere() {
    let fx = with_policy("min-size:1K");
    let entry = fx.write_file(ROOT_INODE, "f", b"small");
    fx.fs
        .link(&fx.ctx, entry.inode, ROOT_INODE, &c("g"))
        .unwrap();
    let handle = fx.open(entry.inode, libc::O_RDWR);
    fx.write(entry.inode, handle, 0, &[1u8; 2048]);
    fx.release(entry.inode, handle);
    fx.write_file(ROOT_INODE, "ok", b"small");
    let notes = crate::placement::placement_notes(&fx.share).unwrap();
    let mut paths: Vec<_> = notes.iter().map(|n| n.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, vec![PathBuf::from("f"), PathBuf::from("g")]);
    assert!(notes.iter().all(|n| !n.redirected && n.size == 2048));
}

/// The paths a crash simulation works on.
struct Dead<'a> {
    guest: &'a Path,
    volume: &'a Path,
    store: &'a Store,
}

/// Stops the server of `fx`, runs `crash` on the share as a server killed mid-move would
/// leave it (its intent record stays), then starts a server, which recovers.
fn crash_then_restart(fx: Fixture, crash: impl FnOnce(&Dead)) -> Fixture {
    let Fixture {
        _tmp,
        share,
        guest,
        volume,
        control,
        fs,
        ctx,
    } = fx;
    drop(fs);
    let store = Store::open(&share.store.as_ref().unwrap().root, "vol").unwrap();
    crash(&Dead {
        guest: &guest,
        volume: &volume,
        store: &store,
    });
    drop(store);
    std::fs::remove_file(control.join("clean")).unwrap();
    let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    assert!(std::fs::read_dir(control.join("intent"))
        .unwrap()
        .next()
        .is_none());
    Fixture {
        _tmp,
        share,
        guest,
        volume,
        control,
        fs,
        ctx,
    }
}

fn place_record(d: &Dead, rel: &str) {
    let intent = Intent::Place {
        path: rel.as_bytes().to_vec(),
        guest_ino: std::fs::metadata(d.guest.join(rel)).unwrap().ino(),
    };
    std::mem::forget(d.store.intents().begin(&intent).unwrap());
}

fn meta_name() -> &'static std::ffi::CStr {
    crate::meta::own_xattr_name()
}

#[test]
fn move_into_store_interrupted_before_metadata_keeps_the_file_inline() {
    let fx = with_policy("min-size:1K");
    fx.write_file(ROOT_INODE, "f", b"inline data");
    let fx = crash_then_restart(fx, |d| {
        place_record(d, "f");
        // The object was being written when the server died.
        std::fs::write(d.volume.join("f"), b"inline").unwrap();
    });
    fx.assert_inline("f", b"inline data");
}

#[test]
fn move_interrupted_with_metadata_and_stub_data_punches_the_stub() {
    let fx = with_policy("min-size:1K");
    fx.write_file(ROOT_INODE, "f", &[4u8; 2048]);
    fx.assert_redirected("f", &[4u8; 2048]);
    let fx = crash_then_restart(fx, |d| {
        place_record(d, "f");
        // A move inline that wrote half the data into the stub, or a move into the store
        // that set the metadata but had not punched the stub yet.
        std::fs::File::options()
            .write(true)
            .open(d.guest.join("f"))
            .unwrap()
            .write_all_at(&[4u8; 1024], 0)
            .unwrap();
    });
    fx.assert_redirected("f", &[4u8; 2048]);
}

#[test]
fn move_inline_interrupted_after_metadata_removal_drops_the_object() {
    let fx = with_policy("min-size:1K");
    fx.write_file(ROOT_INODE, "f", &[6u8; 2048]);
    let fx = crash_then_restart(fx, |d| {
        place_record(d, "f");
        std::fs::write(d.guest.join("f"), [6u8; 2048]).unwrap();
        let p = CString::new(d.guest.join("f").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings.
        let res = unsafe { libc::lremovexattr(p.as_ptr(), meta_name().as_ptr()) };
        assert_eq!(res, 0);
    });
    fx.assert_inline("f", &[6u8; 2048]);
}

#[test]
fn reads_during_moves_back_and_forth_never_see_missing_bytes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let fx = std::sync::Arc::new(with_policy("min-size:4K"));
    let (entry, writer) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, writer, 0, &[7u8; 100]);
    let reader = fx.open(entry.inode, libc::O_RDONLY);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let cycles = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mover = {
        let (fx, stop, cycles) = (fx.clone(), stop.clone(), cycles.clone());
        std::thread::spawn(move || {
            let mut moves = 0;
            while !stop.load(Ordering::Relaxed) {
                // Into the store (write past min-size), back inline (truncate below it).
                fx.write(entry.inode, writer, 0, &[7u8; 8192]);
                fx.truncate(entry.inode, 100);
                moves += 2;
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            moves
        })
    };
    // At least 2000 reads, and on until the mover has moved the file both ways a few times
    // (each move syncs: on a busy disk 2000 reads can be over before the first one).
    let started = std::time::Instant::now();
    let mut round = 0;
    while round < 2000
        || (cycles.load(Ordering::Relaxed) < 3
            && started.elapsed() < std::time::Duration::from_secs(60))
    {
        round += 1;
        let data = fx.read(entry.inode, reader, 0, 8192);
        // The file holds 100 to 8192 bytes of 7s at any instant (a write extends it page by
        // page): a zero is a byte read from a punched stub or a missing object.
        assert!(
            (100..=8192).contains(&data.len()),
            "round {round}: {}",
            data.len()
        );
        assert!(data.iter().all(|&b| b == 7), "round {round}: read zeros");
    }
    stop.store(true, Ordering::Relaxed);
    let moves = mover.join().unwrap();
    assert!(moves > 0);
    fx.release(entry.inode, reader);
    fx.release(entry.inode, writer);
    fx.assert_inline("f", &[7u8; 100]);
}
