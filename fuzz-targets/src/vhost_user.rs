//! The vhost-user message stream of a front-end into our vhost-user-fs back-end.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use devices::virtio::fs::handler::FuseSession;
use devices::virtio::fs::vhost_user::VhostUserFsBackend;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::bytes::Bytes;
use crate::{pool_threads, share};

/// Size of the memory file handed with every message that takes one (the guest memory a
/// SET_MEM_TABLE or ADD_MEM_REG maps, a log area, an inflight area).
pub const MEM_FILE_SIZE: u64 = 0x4_0000;
/// Longest message body sent (the vhost crate's own limit is 4 KiB).
const MAX_BODY: usize = 0x1000;
/// Most memory files attached to one SET_MEM_TABLE (the protocol allows 8 regions).
const MAX_REGIONS: usize = 8;
/// The back-end's queues: hiprio and one request queue.
const QUEUES: usize = 2;
/// How long to wait for a queue worker to take a kick.
const KICK_WAIT: Duration = Duration::from_millis(20);

/// vhost-user request codes that carry descriptors (vhost-user protocol, "Front-end
/// message types").
mod req {
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GPU_SET_SOCKET: u32 = 33;
    pub const ADD_MEM_REG: u32 = 37;
    pub const SET_DEVICE_STATE_FD: u32 = 42;
}

/// The vring-index message flag meaning "no descriptor attached".
const VRING_NOFD: u64 = 0x100;

fn listener() -> &'static Mutex<(Listener, PathBuf)> {
    static LISTENER: OnceLock<Mutex<(Listener, PathBuf)>> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let path = share::scratch().join("vhost-user.sock");
        let listener = Listener::new(&path, true).expect("cannot listen on the fuzz socket");
        Mutex::new((listener, path))
    })
}

fn memory_file(image: &[u8]) -> File {
    // SAFETY: a NUL-terminated name and no flags; the call only creates a descriptor.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest-memory".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned this descriptor, owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_FILE_SIZE)
        .expect("cannot size the memory file");
    let len = image.len().min(MEM_FILE_SIZE as usize);
    file.write_all_at(&image[..len], 0)
        .expect("cannot write the memory image");
    file
}

/// What the client keeps alive while the back-end may use it.
#[derive(Default)]
struct Attached {
    kicks: Vec<EventFd>,
    others: Vec<EventFd>,
    sockets: Vec<UnixStream>,
}

impl Attached {
    /// The descriptors a real front-end sends with message `request` whose body is `body`.
    fn fds_for(&mut self, request: u32, body: &[u8], memory: &File) -> Vec<RawFd> {
        let eventfd = || EventFd::new(EFD_NONBLOCK).expect("cannot create an eventfd");
        let index = |body: &[u8]| {
            let mut raw = [0u8; 8];
            let n = body.len().min(8);
            raw[..n].copy_from_slice(&body[..n]);
            u64::from_le_bytes(raw)
        };
        match request {
            req::SET_MEM_TABLE => {
                let mut raw = [0u8; 4];
                let n = body.len().min(4);
                raw[..n].copy_from_slice(&body[..n]);
                let regions = (u32::from_le_bytes(raw) as usize).min(MAX_REGIONS);
                vec![memory.as_raw_fd(); regions]
            }
            req::SET_LOG_BASE
            | req::SET_LOG_FD
            | req::SET_INFLIGHT_FD
            | req::ADD_MEM_REG
            | req::SET_DEVICE_STATE_FD => vec![memory.as_raw_fd()],
            req::SET_VRING_KICK | req::SET_VRING_CALL | req::SET_VRING_ERR => {
                if index(body) & VRING_NOFD != 0 {
                    return Vec::new();
                }
                let fd = eventfd();
                let raw = fd.as_raw_fd();
                if request == req::SET_VRING_KICK {
                    self.kicks.push(fd);
                } else {
                    self.others.push(fd);
                }
                vec![raw]
            }
            req::SET_BACKEND_REQ_FD | req::GPU_SET_SOCKET => {
                let (ours, theirs) = UnixStream::pair().expect("cannot create a socket pair");
                let raw = theirs.as_raw_fd();
                self.sockets.extend([ours, theirs]);
                vec![raw]
            }
            _ => Vec::new(),
        }
    }
}

/// Sends every message of the input; stops at the first the back-end no longer reads.
fn send_all(client: &UnixStream, bytes: &mut Bytes<'_>, memory: &File, attached: &mut Attached) {
    while !bytes.is_empty() {
        let header = bytes.take(12);
        let mut raw = [0u8; 12];
        raw[..header.len()].copy_from_slice(header);
        let request = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(raw[8..].try_into().expect("4 bytes")) as usize;
        let body = bytes.take(size.min(MAX_BODY));
        let fds = attached.fds_for(request, body, memory);
        let sent = match client.send_with_fds(&[header, body], &fds) {
            Ok(sent) => sent,
            Err(_) => return,
        };
        let mut message = header.to_vec();
        message.extend_from_slice(body);
        if sent < message.len() && (&*client).write_all(&message[sent..]).is_err() {
            return;
        }
    }
}

fn kick_taken(kick: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: kick.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    !(ret > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Runs `data` as a front-end would against a fresh back-end (one request queue) over a
/// fresh file system on the fuzz share.
///
/// The input is a frame (a little-endian u16 length and that many bytes: the guest memory
/// image, copied into the memory file) and then vhost-user messages: a 12-byte header
/// (request, flags, size) and `size` bytes of body, cut at 4 KiB or at the end of the
/// input. Messages that carry descriptors get them as a front-end sends them: the memory
/// file, new eventfds, or a socket. At the end every kick eventfd is written once and
/// given a moment to be served; then the connection closes and the back-end's threads are
/// joined.
///
/// The entry point is vhost-user-backend's `VhostUserDaemon` (its request handler reads the
/// socket) over our `VhostUserFsBackend`, which is what the `hypervisor vhost-user-fs`
/// daemon runs for each front-end. An input of odd length gets a back-end whose request
/// queue is served by a pool (`--thread-pool-size`; [`crate::POOL_THREADS`]).
pub fn vhost_user(data: &[u8]) {
    static IGNORE_SIGPIPE: Once = Once::new();
    IGNORE_SIGPIPE.call_once(|| {
        // SAFETY: setting a signal to SIG_IGN installs no handler code. A back-end that
        // hung up must show up as EPIPE, not end the process.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
    // The socket lives as long as the process, so it is open before the run starts.
    let run = share::begin_after(|| {
        listener();
    });
    run_input(data);
    run.finish_leaving_eventfds(QUEUES);
}

fn run_input(data: &[u8]) {
    let fs = share::fresh();
    let mut bytes = Bytes::new(data);
    let memory = memory_file(bytes.frame());
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let session = Arc::new(FuseSession::new(fs.clone()));
    let backend = VhostUserFsBackend::new(session, "fuzz", QUEUES - 1, mem.clone())
        .and_then(|backend| backend.with_request_pool(pool_threads(data)))
        .expect("the fuzz back-end is valid");
    let mut daemon = VhostUserDaemon::new("fuzz".to_owned(), Arc::new(backend), mem)
        .expect("cannot start the back-end's workers");
    let mut guard = listener().lock().unwrap_or_else(|p| p.into_inner());
    let client = UnixStream::connect(&guard.1).expect("cannot connect to the fuzz socket");
    daemon
        .start(&mut guard.0)
        .expect("cannot accept the fuzz connection");
    drop(guard);

    let mut attached = Attached::default();
    send_all(&client, &mut bytes, &memory, &mut attached);
    for kick in &attached.kicks {
        let _ = kick.write(1);
        let deadline = Instant::now() + KICK_WAIT;
        while !kick_taken(kick) && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    // Errors here are the back-end refusing the stream, which is its job.
    let _ = daemon.wait();
    drop(daemon);
    drop(attached);
    drop(fs);
}
