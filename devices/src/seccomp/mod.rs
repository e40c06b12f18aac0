//! seccomp-bpf filters, one per kind of thread, built with rust-vmm's `seccompiler`.
//!
//! Every thread that reads bytes a guest (or a vhost-user front-end) controls installs the
//! filter of its [`ThreadRole`] before it reads any: the vCPUs, the event loop, the virtio-fs
//! queue workers, the vhost-user server. A filter lets through the calls of its role's allow
//! list and treats every other call as the [`SeccompMode`] says: end the whole process
//! (`kill`, the default), end it after naming the call (`trap`), or let it through and have
//! the kernel log it (`log`). Filters only narrow: a thread started by a filtered thread
//! keeps its parent's filter under its own.

mod allow;
pub mod names;
mod spawn;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use allow::{allowed, kvm_ioctl, Allowed};
pub use spawn::{spawn_confined, SpawnError};

/// The exit status of a process that a `trap` filter stopped (128 + SIGSYS, what a shell
/// shows for a process the `kill` filter ended).
pub const TRAP_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// What a filter does with a call outside its allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// The kernel ends the whole process with SIGSYS.
    #[default]
    Kill,
    /// The call is let through and the kernel logs it (`dmesg`: `type=1326 ... syscall=N`).
    Log,
    /// The process names the call on standard error and exits with [`TRAP_EXIT_CODE`].
    Trap,
    /// No filter.
    None,
}

impl SeccompMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [SeccompMode; 4] = [
        SeccompMode::Kill,
        SeccompMode::Log,
        SeccompMode::Trap,
        SeccompMode::None,
    ];

    /// The mode's name on the command line.
    pub fn word(self) -> &'static str {
        match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Trap => "trap",
            SeccompMode::None => "none",
        }
    }

    fn mismatch_action(self) -> Option<SeccompAction> {
        match self {
            SeccompMode::Kill => Some(SeccompAction::KillProcess),
            SeccompMode::Log => Some(SeccompAction::Log),
            SeccompMode::Trap => Some(SeccompAction::Trap),
            SeccompMode::None => None,
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SeccompMode::ALL
            .into_iter()
            .find(|mode| mode.word() == s)
            .ok_or_else(|| format!("unknown seccomp mode {s:?}: give kill, log, trap or none"))
    }
}

/// The kinds of thread, each with its own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// A vCPU: KVM_RUN and the device emulation in its exits.
    Vcpu,
    /// The VMM's event loop: console input, stop requests.
    EventLoop,
    /// A virtio-fs queue worker, in the VMM or in the vhost-user back-end.
    FsWorker,
    /// The vhost-user back-end's own threads: the front-end's messages, starting the queue
    /// workers, ending a session.
    VhostUserServer,
}

impl ThreadRole {
    /// The role's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::EventLoop => "event-loop",
            ThreadRole::FsWorker => "fs-worker",
            ThreadRole::VhostUserServer => "vhost-user-server",
        }
    }

    fn from_index(index: u8) -> Option<Self> {
        [
            ThreadRole::Vcpu,
            ThreadRole::EventLoop,
            ThreadRole::FsWorker,
            ThreadRole::VhostUserServer,
        ]
        .get(usize::from(index))
        .copied()
    }

    fn index(self) -> u8 {
        self as u8
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in the allow list).
    #[error("cannot build the seccomp filter of the {role} threads: {detail}")]
    Build {
        /// The role.
        role: &'static str,
        /// seccompiler's message.
        detail: String,
    },
    /// The kernel refused the filter.
    #[error(
        "cannot install the seccomp filter of the {role} threads: {detail}. Use a kernel with \
         CONFIG_SECCOMP_FILTER, or run with --seccomp none"
    )]
    Install {
        /// The role.
        role: &'static str,
        /// The kernel's answer.
        detail: String,
    },
}

/// The compiled filter of `role` in `mode`; `None` in mode `none`.
pub fn filter(role: ThreadRole, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let Some(mismatch) = mode.mismatch_action() else {
        return Ok(None);
    };
    let build_error = |detail: String| SeccompError::Build {
        role: role.name(),
        detail,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in allowed(role) {
        match call {
            Allowed::Any(n) => {
                rules.insert(n, Vec::new());
            }
            Allowed::ArgIn {
                syscall,
                arg,
                values,
            } => {
                let mut alternatives = Vec::with_capacity(values.len());
                for &value in values {
                    let condition = SeccompCondition::new(
                        arg,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        u64::from(value),
                    )
                    .map_err(|e| build_error(e.to_string()))?;
                    alternatives.push(
                        SeccompRule::new(vec![condition])
                            .map_err(|e| build_error(e.to_string()))?,
                    );
                }
                rules.insert(syscall, alternatives);
            }
        }
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build_error(e.to_string()))?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| build_error(e.to_string()))
}

/// Installs the filter of `role` in `mode` on the calling thread (nothing in mode `none`).
/// It also sets no_new_privs, which a filter requires of a process without
/// CAP_SYS_ADMIN. In mode `trap` the process's SIGSYS handler is installed first.
pub fn confine_current_thread(role: ThreadRole, mode: SeccompMode) -> Result<(), SeccompError> {
    let start = std::time::Instant::now();
    let Some(program) = filter(role, mode)? else {
        return Ok(());
    };
    let built = start.elapsed();
    install_prepared(role, mode, &program)?;
    // What a filter costs a thread's start, for whoever looks at start-up time (-vv).
    log::debug!(
        "{} thread: seccomp filter of {} instructions built in {} µs, installed in {} µs",
        role.name(),
        program.len(),
        built.as_micros(),
        (start.elapsed() - built).as_micros()
    );
    Ok(())
}

/// Installs `program`, built by [`filter`] for `role` and `mode`, on the calling thread
/// (building a filter once and installing it later keeps the build out of a measurement).
pub fn install_prepared(
    role: ThreadRole,
    mode: SeccompMode,
    program: &BpfProgram,
) -> Result<(), SeccompError> {
    if mode == SeccompMode::Trap {
        install_sigsys_handler();
    }
    install_panic_hook();
    THREAD_ROLE.with(|r| r.set(role.index()));
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
        role: role.name(),
        detail: e.to_string(),
    })
}

thread_local! {
    /// The role whose filter the thread installed, for the SIGSYS handler (u8::MAX: none).
    static THREAD_ROLE: std::cell::Cell<u8> = const { std::cell::Cell::new(u8::MAX) };
}

/// Installs, once per process, a panic hook that reports a filtered thread's panic without
/// a backtrace, and hands every other thread's to the hook it replaces.
///
/// Printing a backtrace (`RUST_BACKTRACE=1`) reads the current directory and the program's
/// debug information: calls no filter allows, which would turn a panic the thread's owner
/// catches (a virtio-fs worker asks for a device reset) into the end of the process. A
/// program that sets its own hook later should do the same for threads under a filter.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let role = THREAD_ROLE
                .try_with(|r| ThreadRole::from_index(r.get()))
                .ok()
                .flatten();
            let Some(role) = role else {
                return previous(info);
            };
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            eprintln!(
                "thread '{}' ({} filter) panicked at {location}:\n{message}\n(no backtrace: \
                 a thread under a seccomp filter may not read what one needs)",
                std::thread::current().name().unwrap_or("unnamed"),
                role.name(),
            );
        }));
    });
}

/// Installs the SIGSYS handler that names a trapped call and ends the process (once per
/// process).
fn install_sigsys_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value; every field we rely on is set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised and outlives the call; the handler only calls
        // async-signal-safe functions (write, _exit).
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
        if rc != 0 {
            log::warn!(
                "cannot install the SIGSYS handler: {}; a trapped call will end the process \
                 without naming itself",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Byte offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: after si_signo, si_errno,
/// si_code and padding (16 bytes) comes `_sigsys { void *_call_addr; int _syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(
    _signo: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler, and a SIGSYS
    // from seccomp fills its `_sigsys` member; the read stays inside the 128-byte struct.
    let number = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    // SAFETY: the third argument of a SA_SIGINFO handler is the interrupted thread's
    // ucontext_t; its saved registers hold the call's first three arguments.
    let args = unsafe {
        let gregs = &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
        [
            gregs[libc::REG_RDI as usize] as u64,
            gregs[libc::REG_RSI as usize] as u64,
            gregs[libc::REG_RDX as usize] as u64,
        ]
    };
    let role = THREAD_ROLE
        .try_with(|r| ThreadRole::from_index(r.get()))
        .ok()
        .flatten();
    let mut message = MessageBuffer::new();
    trap_message(&mut message, i64::from(number), args, role);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, message.bytes().as_ptr().cast(), message.bytes().len());
        libc::_exit(TRAP_EXIT_CODE);
    }
}

/// Writes what the trap handler says about call `number`, whose first arguments were
/// `args`, made by a thread of `role`.
fn trap_message(out: &mut MessageBuffer, number: i64, args: [u64; 3], role: Option<ThreadRole>) {
    out.push("seccomp: a ");
    out.push(role.map_or("filtered", ThreadRole::name));
    out.push(" thread made system call ");
    out.push(names::syscall_name(number).unwrap_or("unknown"));
    out.push(" (");
    out.push_number(number);
    out.push(", arguments");
    for arg in args {
        out.push(" ");
        out.push_hex(arg);
    }
    out.push("), which its filter forbids; stopping. This is a bug: please report it with this line (--seccomp log lets such calls through and logs them)\n");
}

/// A fixed buffer a signal handler can format into without allocating.
struct MessageBuffer {
    bytes: [u8; 320],
    len: usize,
}

impl MessageBuffer {
    fn new() -> Self {
        Self {
            bytes: [0; 320],
            len: 0,
        }
    }

    /// Appends `text`, cut at the buffer's end.
    fn push(&mut self, text: &str) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
    }

    fn push_number(&mut self, number: i64) {
        let mut digits = [0u8; 20];
        let mut n = number.unsigned_abs();
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if number < 0 {
            self.push("-");
        }
        // The digits are ASCII.
        self.push(std::str::from_utf8(&digits[start..]).unwrap_or("?"));
    }

    fn push_hex(&mut self, value: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 18];
        text[..2].copy_from_slice(b"0x");
        let mut len = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let digit = ((value >> (shift * 4)) & 0xf) as usize;
            if digit != 0 || started || shift == 0 {
                started = true;
                text[len] = DIGITS[digit];
                len += 1;
            }
        }
        // The digits are ASCII.
        self.push(std::str::from_utf8(&text[..len]).unwrap_or("?"));
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests;
