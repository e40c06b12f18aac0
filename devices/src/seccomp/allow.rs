//! What each kind of thread may call: the allow lists behind the filters.
//!
//! Each list is the system calls a thread of that role makes once it serves a guest (or a
//! front-end), found by tracing the suite and by reading the code it runs; set-up calls made
//! before the filter is installed (opening /dev/kvm, creating the VM, binding the socket,
//! naming the thread) are left out on purpose.

use super::ThreadRole;

/// A system call, allowed with any arguments or only with some values of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Any arguments.
    Any(i64),
    /// Only when argument `arg` (its low 32 bits) is one of `values`.
    ArgIn {
        /// The system call.
        syscall: i64,
        /// Which argument (0-based).
        arg: u8,
        /// The values allowed.
        values: &'static [u32],
    },
}

impl Allowed {
    /// The system call number.
    pub fn syscall(&self) -> i64 {
        match *self {
            Allowed::Any(n) | Allowed::ArgIn { syscall: n, .. } => n,
        }
    }
}

/// KVM ioctl request numbers (Linux `include/uapi/linux/kvm.h`, x86_64) that a vCPU thread
/// makes once running: `_IO(0xAE, 0x80)`, `_IOR(0xAE, 0x81, struct kvm_regs)` (144 bytes),
/// `_IOR(0xAE, 0x83, struct kvm_sregs)` (312 bytes), `_IOWR(0xAE, 0x85, struct
/// kvm_translation)` (24 bytes).
pub mod kvm_ioctl {
    /// KVM_RUN.
    pub const RUN: u32 = 0xAE80;
    /// KVM_GET_REGS: the failure report reads the instruction pointer.
    pub const GET_REGS: u32 = 0x8090_AE81;
    /// KVM_GET_SREGS.
    pub const GET_SREGS: u32 = 0x8138_AE83;
    /// KVM_TRANSLATE: the failure report reads the bytes at the instruction pointer.
    pub const TRANSLATE: u32 = 0xC018_AE85;
}

/// Calls every thread makes: memory, locks, time, signal returns, logging, its own end.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Waiting on eventfds through epoll, and making eventfds.
const EVENTS: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_dup,
];

/// `setxattrat`, `getxattrat`, `listxattrat` and `removexattrat` (Linux 6.13; libc has no
/// names for them yet): a share whose root is its guest tree reaches extended attributes
/// with them (`--sandbox chroot`).
const SYS_XATTRAT: [i64; 4] = [463, 464, 465, 466];

/// What the redirecting file system and fuse-backend-rs's passthrough layer call while
/// serving FUSE requests: the share's files, their metadata and extended attributes, file
/// handles, the credential switch around creations, the descriptor budget.
const FILE_SYSTEM: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_dup3,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readv,
    libc::SYS_lseek,
    libc::SYS_copy_file_range,
    libc::SYS_fadvise64,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lstat,
    libc::SYS_stat,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_readlink,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_access,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_flock,
    libc::SYS_mkdirat,
    libc::SYS_mkdir,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rename,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_chmod,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    SYS_XATTRAT[0],
    SYS_XATTRAT[1],
    SYS_XATTRAT[2],
    SYS_XATTRAT[3],
    libc::SYS_umask,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_prlimit64,
];

/// What a thread needs to start threads (the vhost-user server starts one set of queue
/// workers per front-end) and what a new thread does until its own filter is installed
/// (seccomp and prctl's no_new_privs for that, and its Landlock rules; a filter and a
/// Landlock domain only ever narrow).
const THREADS: &[i64] = &[
    libc::SYS_seccomp,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
];

/// The vhost-user connection: accepting the front-end, its messages with their descriptors,
/// checking its memory files, removing the socket at the end.
const VHOST_USER: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_recvmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
];

/// The vCPU thread's ioctls.
const VCPU_IOCTLS: &[u32] = &[
    kvm_ioctl::RUN,
    kvm_ioctl::GET_REGS,
    kvm_ioctl::GET_SREGS,
    kvm_ioctl::TRANSLATE,
];

/// The allow list of `role`.
pub fn allowed(role: ThreadRole) -> Vec<Allowed> {
    let lists: &[&[i64]] = match role {
        // A vCPU emulates the devices in its exits: the serial port writes the console, a
        // virtio device's activation makes eventfds and hands the queues to their workers.
        ThreadRole::Vcpu => &[COMMON, EVENTS],
        // The event loop reads the console input and eventfds, and writes the serial port's.
        ThreadRole::EventLoop => &[COMMON, EVENTS],
        ThreadRole::FsWorker => &[COMMON, EVENTS, FILE_SYSTEM],
        // The server thread starts the queue workers, whose filter starts as this one.
        ThreadRole::VhostUserServer => &[COMMON, EVENTS, FILE_SYSTEM, THREADS, VHOST_USER],
    };
    let mut allowed: Vec<Allowed> = lists
        .iter()
        .flat_map(|list| list.iter().copied().map(Allowed::Any))
        .collect();
    if role == ThreadRole::Vcpu {
        allowed.push(Allowed::ArgIn {
            syscall: libc::SYS_ioctl,
            arg: 1,
            values: VCPU_IOCTLS,
        });
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [ThreadRole; 4] = [
        ThreadRole::Vcpu,
        ThreadRole::EventLoop,
        ThreadRole::FsWorker,
        ThreadRole::VhostUserServer,
    ];

    #[test]
    fn no_list_names_a_call_twice() {
        for role in ROLES {
            let mut numbers: Vec<i64> = allowed(role).iter().map(Allowed::syscall).collect();
            let before = numbers.len();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), before, "{role:?} names a call twice");
        }
    }

    #[test]
    fn only_file_serving_threads_touch_files_and_only_the_server_starts_threads() {
        let has = |role, call| allowed(role).iter().any(|a| a.syscall() == call);
        for role in [ThreadRole::Vcpu, ThreadRole::EventLoop] {
            assert!(!has(role, libc::SYS_openat), "{role:?}");
            assert!(!has(role, libc::SYS_open_by_handle_at), "{role:?}");
        }
        for role in [
            ThreadRole::Vcpu,
            ThreadRole::EventLoop,
            ThreadRole::FsWorker,
        ] {
            assert!(!has(role, libc::SYS_clone3), "{role:?}");
            assert!(!has(role, libc::SYS_execve), "{role:?}");
            assert!(!has(role, libc::SYS_socket), "{role:?}");
        }
        assert!(ROLES.iter().all(|&role| !has(role, libc::SYS_execve)));
        assert!(ROLES.iter().all(|&role| !has(role, libc::SYS_ptrace)));
        assert!(has(ThreadRole::Vcpu, libc::SYS_ioctl));
        assert!(!has(ThreadRole::FsWorker, libc::SYS_ioctl));
    }

    #[test]
    fn the_server_allows_all_its_queue_workers_need() {
        // Workers inherit the server's filter before adding theirs; filters only narrow.
        let server = allowed(ThreadRole::VhostUserServer);
        for call in allowed(ThreadRole::FsWorker) {
            assert!(server.contains(&call), "{call:?}");
        }
    }
}
