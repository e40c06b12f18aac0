//! Extended attributes reached through the server's own descriptors
//! (`FsConfig::xattrs_by_descriptor`, `xattrs.rs`): the same answers as through the
//! passthrough layer, for every kind of node, known by a path or not.

use std::fs::File;

use super::*;
use crate::beneath::ProcSelfFd;
use crate::fs::nodes::Identity;
use crate::fs::xattrs::Reached;

fn by_descriptor() -> FsConfig {
    FsConfig {
        xattrs_by_descriptor: true,
        inode_file_handles: false,
        ..FsConfig::default()
    }
}

/// A share (redirecting with `store`) serving extended attributes by descriptor, or `None`
/// on a kernel without `getxattrat`, where the server must refuse to start so.
fn fixture_by_descriptor(store: bool) -> Option<Fixture> {
    if ProcSelfFd::open().unwrap().has_xattr_at() {
        return Some(fixture_with(store, by_descriptor()));
    }
    let tmp = tempfile::tempdir().unwrap();
    let share = ShareSpec::parse(&format!("tag=t,dir={}", tmp.path().display())).unwrap();
    let err = RedirectFs::new(&share, by_descriptor()).err();
    assert!(matches!(err, Some(FsError::NoXattrAt(_))), "{err:?}");
    println!("this kernel has no getxattrat: checked that the server refuses to start");
    None
}

fn value(reply: GetxattrReply) -> Vec<u8> {
    match reply {
        GetxattrReply::Value(v) => v,
        GetxattrReply::Count(n) => panic!("asked for the value, got a count of {n}"),
    }
}

fn names(reply: ListxattrReply) -> Vec<u8> {
    match reply {
        ListxattrReply::Names(v) => v,
        ListxattrReply::Count(n) => panic!("asked for the names, got a count of {n}"),
    }
}

/// 1. On a redirecting share, write a file and give it a guest attribute; list, read, size
///    and remove it as the guest would.
/// 2. The redirect metadata is on the stub, hidden from the guest, and after a restart (which
///    reads it back through the same route) the file's bytes come from the store.
#[test]
fn guest_attributes_and_the_redirect_metadata_go_through_own_descriptors() {
    let Some(fx) = fixture_by_descriptor(true) else {
        return;
    };
    let entry = fx.write_file(ROOT_INODE, "f", b"stored bytes");
    fx.fs
        .setxattr(&fx.ctx, entry.inode, &c("user.mine"), b"value", 0)
        .unwrap();
    assert_eq!(
        host_xattr(&fx.guest.join("f"), "user.mine").unwrap(),
        b"value"
    );
    let meta = host_xattr(&fx.guest.join("f"), fx.fs.meta_name.to_str().unwrap()).unwrap();
    assert_eq!(meta, b"R1vol\0f");
    let list = names(fx.fs.listxattr(&fx.ctx, entry.inode, 4096).unwrap());
    assert_eq!(list, b"user.mine\0");
    let got = fx.fs.getxattr(&fx.ctx, entry.inode, &c("user.mine"), 64);
    assert_eq!(value(got.unwrap()), b"value");
    match fx
        .fs
        .getxattr(&fx.ctx, entry.inode, &c("user.mine"), 0)
        .unwrap()
    {
        GetxattrReply::Count(n) => assert_eq!(n, 5),
        GetxattrReply::Value(v) => panic!("asked for the size, got {v:?}"),
    }
    let small = fx.fs.getxattr(&fx.ctx, entry.inode, &c("user.mine"), 2);
    assert_eq!(errno_of(small), libc::ERANGE);
    fx.fs
        .removexattr(&fx.ctx, entry.inode, &c("user.mine"))
        .unwrap();
    let gone = fx.fs.getxattr(&fx.ctx, entry.inode, &c("user.mine"), 64);
    assert_eq!(errno_of(gone), libc::ENODATA);

    let fx = fx.restart(by_descriptor());
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"stored bytes");
    fx.assert_mirror();
}

/// A symlink whose target does not exist: its own attributes are listed, never its
/// target's (which would fail with ENOENT), and the root's too.
#[test]
fn a_dangling_symlink_and_the_root_have_their_own_attributes() {
    let Some(fx) = fixture_by_descriptor(false) else {
        return;
    };
    let link = fx
        .fs
        .symlink(&fx.ctx, &c("nowhere"), ROOT_INODE, &c("l"))
        .unwrap();
    assert!(fx.fs.listxattr(&fx.ctx, link.inode, 4096).is_ok());
    let missing = errno_of(fx.fs.getxattr(&fx.ctx, link.inode, &c("user.x"), 64));
    assert!(
        matches!(missing, libc::ENODATA | libc::EOPNOTSUPP),
        "errno {missing}"
    );
    fx.fs
        .setxattr(&fx.ctx, ROOT_INODE, &c("user.at-root"), b"r", 0)
        .unwrap();
    assert_eq!(host_xattr(&fx.guest, "user.at-root").unwrap(), b"r");
}

/// 1. `f` gets a second name behind the server's back (`hidden`), which it never learns.
/// 2. The guest renames `g` over `f`: no name the server knows leads to `f`'s node any more,
///    while the kernel still holds it.
/// 3. That node's attributes are still its own: set and read through the node, seen on the
///    host through `hidden`.
#[test]
fn a_node_no_known_path_leads_to_keeps_its_attributes() {
    let Some(fx) = fixture_by_descriptor(false) else {
        return;
    };
    let f = fx.write_file(ROOT_INODE, "f", b"f's bytes");
    std::fs::hard_link(fx.guest.join("f"), fx.guest.join("hidden")).unwrap();
    fx.write_file(ROOT_INODE, "g", b"g's bytes");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("g"), ROOT_INODE, &c("f"), 0)
        .unwrap();
    fx.fs
        .setxattr(&fx.ctx, f.inode, &c("user.orphan"), b"still mine", 0)
        .unwrap();
    let got = fx.fs.getxattr(&fx.ctx, f.inode, &c("user.orphan"), 64);
    assert_eq!(value(got.unwrap()), b"still mine");
    assert_eq!(
        host_xattr(&fx.guest.join("hidden"), "user.orphan").unwrap(),
        b"still mine"
    );
    assert!(host_xattr(&fx.guest.join("f"), "user.orphan").is_none());
}

/// Inodes held as file handles leave no descriptor to find a node by: refused at start.
#[test]
fn attributes_by_descriptor_with_file_handle_inodes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let share = ShareSpec::parse(&format!("tag=t,dir={}", tmp.path().display())).unwrap();
    let cfg = FsConfig {
        inode_file_handles: true,
        ..by_descriptor()
    };
    let err = RedirectFs::new(&share, cfg).err();
    assert!(
        matches!(err, Some(FsError::XattrsNeedDescriptorInodes)),
        "{err:?}"
    );
}

#[test]
fn a_record_longer_than_the_first_read_is_read_whole_at_a_first_lookup() {
    // No record the server writes is that long; a host user may set one. Read whole, it does
    // not decode, and the file is served as the plain file it then is, as by any other read.
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"stored");
    let fx = fx.restart(FsConfig::default());
    let path = CString::new(fx.guest.join("f").into_os_string().into_encoded_bytes()).unwrap();
    let value = vec![b'x'; 3000];
    // SAFETY: NUL-terminated path and name, and a buffer of the length given.
    let res = unsafe {
        libc::setxattr(
            path.as_ptr(),
            fx.fs.meta_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(res, 0, "{}", io::Error::last_os_error());
    let entry = fx.lookup(ROOT_INODE, "f").unwrap();
    assert_eq!(entry.attr.st_size, 6);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), vec![0u8; 6]);
}

/// 1. On a redirecting share with file handles, the first LOOKUP's route reads a file's
///    redirect record by its name in the server's descriptor of the directory.
/// 2. A host process then renames another redirected file onto that name, between the
///    lookup that found the first file and the read: the value read is the other file's, and
///    the route must not give it to the first file's node. It answers `None`, so the caller
///    reads through the node's file handle.
/// 3. Without file handles the route does not apply at all (`None`), as under `nobody`.
#[test]
fn a_record_read_by_name_counts_only_while_the_name_leads_to_the_node() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "a", b"first");
    fx.write_file(ROOT_INODE, "b", b"second");
    let dir = File::open(&fx.guest).unwrap();
    let found = Identity::of(&crate::beneath::stat_name(&dir, &c("a")).unwrap());
    let read = |name: &str, node: Identity| {
        let mut buf = Vec::new();
        let at = Reached::Child(ROOT_INODE, &c(name), node);
        fx.fs
            .getxattr_by_entry(at, fx.fs.meta_name, 4096, &mut buf)
            .map(|len| (len.unwrap(), buf))
    };
    if !(fx.fs.file_handles && fx.fs.xattr_at) {
        assert!(read("a", found).is_none(), "a route that does not apply");
        println!("no file handles or no getxattrat here: checked that the route is not taken");
        return;
    }
    let (len, value) = read("a", found).expect("the name leads to the node");
    assert_eq!(&value[..len], b"R1vol\0a");

    std::fs::rename(fx.guest.join("b"), fx.guest.join("a")).unwrap();
    assert!(
        read("a", found).is_none(),
        "the record of the file now named `a` was given to the node the lookup found"
    );
}
