//! Seed inputs: small well-formed sessions that reach deep code at once, from which the
//! fuzzers start (`fuzz/run.sh` writes them into an empty corpus) and which the replay test
//! runs too.

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FallocateIn, FsyncIn, GetattrIn, GetxattrIn, LinkIn, LseekIn, MkdirIn, MknodIn,
    OpenIn, ReadIn, ReleaseIn, RenameIn, SetattrIn, SetxattrIn, WriteIn,
};
use vm_memory::ByteValued;

use crate::bytes::push_frame;
use crate::fuse::{names_body, op, Session, ROOT};
use crate::virtio_mmio::Op;

/// One seed input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// A file name for it.
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
}

/// The seeds of the target called `target` (none for an unknown name).
pub fn for_target(target: &str) -> Vec<Seed> {
    match target {
        "fuse_request" => fuse_request(),
        "virtio_mmio" => virtio_mmio(),
        "vhost_user" => vhost_user(),
        "share_spec" => share_spec(),
        _ => Vec::new(),
    }
}

/// The first node id and handle a fresh share hands out.
const FIRST_NODE: u64 = 2;
const FIRST_HANDLE: u64 = 1;

fn create(name: &str) -> (CreateIn, [&str; 1]) {
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    (args, [name])
}

fn write_body(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let write = WriteIn {
        fh,
        offset,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(data);
    body
}

/// FUSE sessions, each an INIT and then one family of requests.
pub fn fuse_sessions() -> Vec<(&'static str, Session)> {
    let mut out = Vec::new();

    let mut s = Session::init();
    s.push(op::GETATTR, ROOT, GetattrIn::default().as_slice())
        .push(op::STATFS, ROOT, &[])
        .push(op::ACCESS, ROOT, &[7, 0, 0, 0, 0, 0, 0, 0])
        .push(op::OPENDIR, ROOT, OpenIn::default().as_slice());
    let read = ReadIn {
        fh: FIRST_HANDLE,
        size: 4096,
        ..Default::default()
    };
    s.push(op::READDIR, ROOT, read.as_slice());
    let release = ReleaseIn {
        fh: FIRST_HANDLE,
        ..Default::default()
    };
    s.push(op::RELEASEDIR, ROOT, release.as_slice());
    out.push(("root", s));

    let mut s = Session::init();
    let (args, name) = create("a");
    s.push_named(op::CREATE, ROOT, args, &name).push(
        op::WRITE,
        FIRST_NODE,
        &write_body(FIRST_HANDLE, 0, b"hello, store"),
    );
    let read = ReadIn {
        fh: FIRST_HANDLE,
        size: 64,
        ..Default::default()
    };
    s.push(op::READ, FIRST_NODE, read.as_slice());
    let setattr = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 5,
        ..Default::default()
    };
    s.push(op::SETATTR, FIRST_NODE, setattr.as_slice());
    let fsync = FsyncIn {
        fh: FIRST_HANDLE,
        ..Default::default()
    };
    s.push(op::FSYNC, FIRST_NODE, fsync.as_slice());
    let fallocate = FallocateIn {
        fh: FIRST_HANDLE,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    };
    s.push(op::FALLOCATE, FIRST_NODE, fallocate.as_slice());
    let lseek = LseekIn {
        fh: FIRST_HANDLE,
        offset: 0,
        whence: 3, // SEEK_DATA
        padding: 0,
    };
    s.push(op::LSEEK, FIRST_NODE, lseek.as_slice()).push(
        op::FLUSH,
        FIRST_NODE,
        &[
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let release = ReleaseIn {
        fh: FIRST_HANDLE,
        ..Default::default()
    };
    s.push(op::RELEASE, FIRST_NODE, release.as_slice())
        .push(op::LOOKUP, ROOT, &names_body(&["a"]))
        .push(op::OPEN, FIRST_NODE, &[2, 0, 0, 0, 0, 0, 0, 0])
        .push(op::UNLINK, ROOT, &names_body(&["a"]));
    out.push(("file-data", s));

    let mut s = Session::init();
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0o022,
    };
    s.push_named(op::MKDIR, ROOT, mkdir, &["d"]);
    let (args, name) = create("f");
    s.push_named(op::CREATE, FIRST_NODE, args, &name)
        .push(
            op::WRITE,
            FIRST_NODE + 1,
            &write_body(FIRST_HANDLE, 0, b"x"),
        )
        .push_named(
            op::RENAME,
            FIRST_NODE,
            RenameIn { newdir: ROOT },
            &["f", "g"],
        )
        .push_named(
            op::LINK,
            ROOT,
            LinkIn {
                oldnodeid: FIRST_NODE + 1,
            },
            &["h"],
        )
        .push(op::UNLINK, ROOT, &names_body(&["g"]))
        .push(op::RMDIR, ROOT, &names_body(&["d"]));
    let mut body = 2u64.to_le_bytes().to_vec(); // FORGET count
    body.truncate(8);
    s.push(op::FORGET, FIRST_NODE + 1, &body);
    let mut rename2 = ROOT.to_le_bytes().to_vec();
    rename2.extend_from_slice(&1u32.to_le_bytes()); // RENAME_NOREPLACE
    rename2.extend_from_slice(&0u32.to_le_bytes());
    rename2.extend_from_slice(&names_body(&["h", "i"]));
    s.push(op::RENAME2, ROOT, &rename2);
    out.push(("namespace", s));

    let mut s = Session::init();
    let mut symlink = names_body(&["l"]);
    symlink.extend_from_slice(&names_body(&["a"]));
    s.push(op::SYMLINK, ROOT, &symlink)
        .push(op::READLINK, FIRST_NODE, &[]);
    let fifo = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        rdev: 0,
        umask: 0o022,
        padding: 0,
    };
    s.push_named(op::MKNOD, ROOT, fifo, &["p"]);
    let regular = MknodIn {
        mode: libc::S_IFREG | 0o600,
        ..fifo
    };
    s.push_named(op::MKNOD, ROOT, regular, &["r"])
        .push_named(op::MKNOD, ROOT, regular, &["r"]);
    out.push(("special", s));

    let mut s = Session::init();
    let (args, name) = create("x");
    s.push_named(op::CREATE, ROOT, args, &name);
    let mut setxattr = SetxattrIn { size: 1, flags: 0 }.as_slice().to_vec();
    setxattr.extend_from_slice(&names_body(&["user.k"]));
    setxattr.push(b'v');
    s.push(op::SETXATTR, FIRST_NODE, &setxattr)
        .push_named(
            op::GETXATTR,
            FIRST_NODE,
            GetxattrIn {
                size: 64,
                padding: 0,
            },
            &["user.k"],
        )
        .push(
            op::LISTXATTR,
            FIRST_NODE,
            GetxattrIn {
                size: 64,
                padding: 0,
            }
            .as_slice(),
        )
        .push(op::REMOVEXATTR, FIRST_NODE, &names_body(&["user.k"]))
        .push_named(
            op::GETXATTR,
            FIRST_NODE,
            GetxattrIn {
                size: 64,
                padding: 0,
            },
            &["trusted.fsredirect"],
        );
    out.push(("xattr", s));

    let mut s = Session::default();
    s.push(op::GETATTR, ROOT, &[0; 16]);
    let mut init = Session::init();
    s.requests.append(&mut init.requests);
    s.push(op::LOOKUP, ROOT, b"..\0")
        .push(op::LOOKUP, ROOT, b"a/b\0")
        .push(op::GETATTR, 0xdead_beef, &[0; 16])
        .push(
            op::BATCH_FORGET,
            0,
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .push(op::DESTROY, 0, &[])
        .push(op::GETATTR, ROOT, &[0; 16]);
    out.push(("protocol", s));
    out
}

/// [`fuse_sessions`] as inputs of the `fuse_request` target, plus malformed requests.
pub fn fuse_request() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = fuse_sessions()
        .into_iter()
        .map(|(name, session)| {
            let mut bytes = Vec::new();
            for request in &session.requests {
                push_frame(&mut bytes, request);
            }
            Seed { name, bytes }
        })
        .collect();
    let mut bytes = Vec::new();
    let init = &Session::init().requests[0];
    push_frame(&mut bytes, init);
    push_frame(&mut bytes, &init[..8]);
    let mut lying = Session::default();
    lying.push(op::LOOKUP, ROOT, b"x\0");
    let mut request = lying.requests.remove(0);
    request[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    push_frame(&mut bytes, &request);
    seeds.push(Seed {
        name: "malformed",
        bytes,
    });
    seeds
}

/// Driver sequences for the `virtio_mmio` target.
pub fn virtio_mmio() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (name, session) in fuse_sessions() {
        let mut bytes = Vec::new();
        Op::BringUp { flags: 0 }.encode(&mut bytes);
        for request in &session.requests {
            Op::Push {
                queue: 1,
                reply_len: 4096,
                request,
            }
            .encode(&mut bytes);
            Op::Notify { queue: 1 }.encode(&mut bytes);
        }
        seeds.push(Seed { name, bytes });
    }

    // EVENT_IDX and indirect descriptors, several requests per notification, hiprio, reset.
    let mut bytes = Vec::new();
    Op::BringUp { flags: 3 }.encode(&mut bytes);
    let session = &fuse_sessions()[0].1;
    for request in &session.requests {
        Op::Push {
            queue: 1,
            reply_len: 512,
            request,
        }
        .encode(&mut bytes);
    }
    Op::Notify { queue: 1 }.encode(&mut bytes);
    Op::Push {
        queue: 0,
        reply_len: 0,
        request: &session.requests[0],
    }
    .encode(&mut bytes);
    Op::Notify { queue: 0 }.encode(&mut bytes);
    Op::Config {
        offset: 0,
        len: 8,
        write: false,
    }
    .encode(&mut bytes);
    Op::Reset.encode(&mut bytes);
    seeds.push(Seed {
        name: "event-idx",
        bytes,
    });

    // Register by register, with mistakes: setup before FEATURES_OK, a bad size, a ring
    // outside memory, then an indirect descriptor pointing at the request.
    let mut bytes = Vec::new();
    for (reg, value) in [
        (0x70 / 4, 1u32),
        (0x38 / 4, 15),
        (0x70 / 4, 3),
        (0x24 / 4, 1),
        (0x20 / 4, 1),
        (0x70 / 4, 11),
        (0x30 / 4, 1),
        (0x38 / 4, 16),
        (0x80 / 4, 0x100_0000),
        (0x44 / 4, 1),
    ] {
        Op::WriteReg { reg, value }.encode(&mut bytes);
    }
    for reg in [
        0,
        1,
        2,
        3,
        4,
        0x34 / 4,
        0x44 / 4,
        0x60 / 4,
        0x70 / 4,
        0xfc / 4,
    ] {
        Op::ReadReg { reg }.encode(&mut bytes);
    }
    Op::BringUp { flags: 2 }.encode(&mut bytes);
    // Queue 1's first descriptor points at an indirect table at 0x8000 holding the
    // request (INIT, at 0x9000) and a reply buffer.
    let descs = |list: &[(u64, u32, u16, u16)]| -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len, flags, next) in list {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
        }
        out
    };
    let init = &Session::init().requests[0];
    let indirect = descs(&[(0x9000, init.len() as u32, 1, 1), (0xa000, 256, 2, 0)]);
    let head = descs(&[(0x8000, indirect.len() as u32, 4, 0)]);
    for (addr, data) in [
        (0x9000u16, &init[..]),
        (0x8000, &indirect),
        (0x2000, &head),
        (0x2802, &[1, 0][..]),
    ] {
        Op::WriteMem {
            addr: addr / 2,
            bytes: data,
        }
        .encode(&mut bytes);
    }
    Op::Notify { queue: 1 }.encode(&mut bytes);
    seeds.push(Seed {
        name: "registers",
        bytes,
    });
    seeds
}

/// The guest address where the `vhost_user` seed maps the memory file.
const VU_USER_BASE: u64 = 0x7000_0000;

fn vu_message(out: &mut Vec<u8>, request: u32, body: &[u8]) {
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // version 1
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Layout of request queue 1 in the `vhost_user` seeds' memory: descriptor table, avail
/// ring, used ring (16 entries each), then the requests; replies go high, past the image.
const VU_DESC: u64 = 0;
const VU_AVAIL: u64 = 0x100;
const VU_USED: u64 = 0x140;
const VU_REQUESTS: u64 = 0x200;
const VU_REPLIES: u64 = 0x2_0000;

/// A memory image with one chain per request (at most 8) on request queue 1.
fn vu_memory(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut image = vec![0u8; VU_REQUESTS as usize];
    let put = |image: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let at = at as usize;
        if image.len() < at + bytes.len() {
            image.resize(at + bytes.len(), 0);
        }
        image[at..at + bytes.len()].copy_from_slice(bytes);
    };
    let count = requests.len().min(8);
    for (i, request) in requests.iter().take(count).enumerate() {
        let req = image.len() as u64;
        put(&mut image, req, request);
        let reply = VU_REPLIES + 0x200 * i as u64;
        let slot = 2 * i as u16;
        for (k, (addr, len, flags, next)) in [
            (req, request.len() as u32, 1u16, slot + 1),
            (reply, 0x200u32, 2u16, 0u16),
        ]
        .into_iter()
        .enumerate()
        {
            let mut desc = addr.to_le_bytes().to_vec();
            desc.extend_from_slice(&len.to_le_bytes());
            desc.extend_from_slice(&flags.to_le_bytes());
            desc.extend_from_slice(&next.to_le_bytes());
            put(
                &mut image,
                VU_DESC + 16 * (u64::from(slot) + k as u64),
                &desc,
            );
        }
        put(&mut image, VU_AVAIL + 4 + 2 * i as u64, &slot.to_le_bytes());
    }
    put(&mut image, VU_AVAIL + 2, &(count as u16).to_le_bytes());
    image
}

/// Front-end sessions for the `vhost_user` target.
pub fn vhost_user() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let sessions = fuse_sessions();
    for (name, requests) in [
        ("init", &sessions[0].1.requests),
        ("file-data", &sessions[1].1.requests),
    ] {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, &vu_memory(requests));
        let features = 1u64 << 32 | 1 << 30; // VERSION_1, PROTOCOL_FEATURES
        vu_message(&mut bytes, 1, &[]); // GET_FEATURES
        vu_message(&mut bytes, 15, &[]); // GET_PROTOCOL_FEATURES
        vu_message(&mut bytes, 16, &u64s(&[1 | 1 << 9])); // MQ, CONFIG
        vu_message(&mut bytes, 3, &[]); // SET_OWNER
        vu_message(&mut bytes, 2, &u64s(&[features]));
        vu_message(&mut bytes, 17, &[]); // GET_QUEUE_NUM
        let mut config = u32s(&[0, 40, 0]);
        config.resize(12 + 40, 0);
        vu_message(&mut bytes, 24, &config); // GET_CONFIG
        let mut table = u32s(&[1, 0]);
        table.extend_from_slice(&u64s(&[0, 0x4_0000, VU_USER_BASE, 0]));
        vu_message(&mut bytes, 5, &table); // SET_MEM_TABLE
        vu_message(&mut bytes, 8, &u32s(&[1, 16])); // SET_VRING_NUM
        let mut addr = u32s(&[1, 0]);
        addr.extend_from_slice(&u64s(&[
            VU_USER_BASE + VU_DESC,
            VU_USER_BASE + VU_USED,
            VU_USER_BASE + VU_AVAIL,
            0,
        ]));
        vu_message(&mut bytes, 9, &addr); // SET_VRING_ADDR
        vu_message(&mut bytes, 10, &u32s(&[1, 0])); // SET_VRING_BASE
        vu_message(&mut bytes, 13, &u64s(&[1])); // SET_VRING_CALL
        vu_message(&mut bytes, 12, &u64s(&[1])); // SET_VRING_KICK
        vu_message(&mut bytes, 18, &u32s(&[1, 1])); // SET_VRING_ENABLE
        seeds.push(Seed { name, bytes });
    }
    let mut bytes = Vec::new();
    push_frame(&mut bytes, &[]);
    vu_message(&mut bytes, 1, &[]);
    vu_message(&mut bytes, 11, &u32s(&[0, 0])); // GET_VRING_BASE
    vu_message(&mut bytes, 36, &[]); // GET_MAX_MEM_SLOTS
    let mut region = u64s(&[0]);
    region.extend_from_slice(&u64s(&[0x1000, 0x1000, VU_USER_BASE, 0]));
    vu_message(&mut bytes, 37, &region); // ADD_MEM_REG
    vu_message(&mut bytes, 38, &region); // REM_MEM_REG
    vu_message(&mut bytes, 4, &[]); // RESET_OWNER
    vu_message(&mut bytes, 0xdead, &[0x5a; 16]);
    seeds.push(Seed {
        name: "odd-requests",
        bytes,
    });
    seeds
}

/// Share descriptions and policies for the `share_spec` target.
pub fn share_spec() -> Vec<Seed> {
    [
        ("passthrough", &b"tag=root,dir=/srv/guest"[..]),
        ("store", b"tag=data,dir=/srv/g,store=/srv/s,volume=v1"),
        (
            "policy",
            b"tag=t,dir=g/../h,store=/srv/s,policy=include:*.bin;exclude:tmp/**;min-size:64K\0tmp/a.bin",
        ),
        ("globs", b"include:/big;exclude:**/cache/*;include:[!a-c]?x\\*\0d/cache/x"),
        ("classes", b"exclude:[^a-z0-9]*;include:[a-]*;min-size:2GiB\0-x"),
        ("bad", b"tag=a b,dir=,store"),
        ("all", b"all\0x"),
    ]
    .into_iter()
    .map(|(name, bytes)| Seed {
        name,
        bytes: bytes.to_vec(),
    })
    .collect()
}
