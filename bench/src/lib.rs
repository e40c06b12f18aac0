//! Benchmarks of the virtio-fs request path, every figure a ratio against a baseline
//! measured in the same run (docs/architecture.md#measuring-performance): the redirecting
//! share against a plain passthrough share, and both against the host's own syscalls (the
//! limit).
//!
//! The parts:
//! - [`workload`]: the device itself, driven in-process by a simulated driver ([`driver`])
//!   that puts FUSE requests on a real split virtqueue in real guest memory and runs the
//!   device's own queue loop over `RedirectFs`;
//! - [`fio`]: the real Linux FUSE client, fio through `fsredirect mount`;
//! - [`guest`]: a real guest under QEMU's software CPU on our vhost-user back-end, a
//!   passthrough share against a redirecting one;
//! - [`vmm`]: the `hypervisor` process: start-up to the first KVM_RUN, and its memory
//!   beyond guest RAM;
//! - [`vhost_bench`]: virtiofsd and our `hypervisor vhost-user-fs` on the same FUSE request
//!   stream from a vhost-user front-end in this process ([`vhost_frontend`]), and that stream
//!   as the host's own calls ([`vhost_host`]);
//! - [`boot`] (optional, slow): VMM start to guest `/init`, in the emulated VT-x test host
//!   where there is no hardware virtualization.
//!
//! [`report`] turns the figures into `BENCHMARKS.md` and an SVG chart, and checks them
//! against the performance budget.
//!
//! ```
//! use bench::stats::median;
//! // Rounds interleave the targets; each figure is the median over rounds.
//! assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
//! ```

#![deny(missing_docs)]

pub mod boot;
pub mod driver;
pub mod fio;
pub mod fuse_wire;
pub mod guest;
pub mod machine;
pub mod report;
pub mod ring;
pub mod runner;
pub mod stats;
pub mod unprivileged;
pub mod vhost_bench;
pub mod vhost_frontend;
pub mod vhost_host;
pub mod vmm;
pub mod workload;

/// Turns an I/O error into a [`BenchError::Io`] that says what was being done (`what`).
pub(crate) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A host call failed.
    #[error("{what} failed")]
    Io {
        /// The call and its input.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The simulated driver or the device's queue misbehaved.
    #[error("virtio-fs driver: {0}")]
    Driver(String),
    /// A vhost-user message to a back-end failed.
    #[error("vhost-user {what} failed")]
    VhostUser {
        /// The message or step.
        what: &'static str,
        /// The vhost crate's error.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user back-end process could not be started or did not come up.
    #[error("vhost-user back-end: {0}")]
    Backend(String),
    /// A FUSE request got an error reply.
    #[error("FUSE {op:?} failed with errno {errno}")]
    Fuse {
        /// The opcode (kept as is: the request floor's BMAP gets this error on every call, and
        /// formatting it there cost about 5% of that request's time).
        op: fuse_backend_rs::abi::fuse_abi::Opcode,
        /// The positive errno.
        errno: i32,
    },
    /// A share could not be set up.
    #[error("share setup: {0}")]
    Setup(String),
    /// fio failed or printed something unexpected.
    #[error("fio: {0}")]
    Fio(String),
    /// `fsredirect mount` failed.
    #[error("fsredirect mount: {0}")]
    Mount(String),
    /// The guest under QEMU failed.
    #[error("guest under QEMU: {0}")]
    Guest(String),
    /// The VMM measurement failed.
    #[error("VMM start-up and memory: {0}")]
    Vmm(String),
    /// The boot-time batch failed.
    #[error("boot time: {0}")]
    Boot(String),
}

/// A `Result` with a [`BenchError`].
pub type Result<T> = std::result::Result<T, BenchError>;
