//! The fuzz targets: every parser that takes guest (or front-end) bytes, as plain functions.
//!
//! Each function takes arbitrary bytes and must return normally, whatever they are: a panic,
//! a hang or a memory error is a finding. The cargo-fuzz crate in `fuzz/` only calls these
//! functions, and this crate's `replay` test runs every committed corpus and regression input
//! through them, so `cargo test` checks the findings without an instrumented build.
//!
//! | target | what the bytes are | entry point |
//! |---|---|---|
//! | [`fuse_request`] | FUSE requests, one after another | the device's FUSE session over a [`fsredirect::RedirectFs`] |
//! | [`virtio_mmio`] | MMIO register accesses, guest memory writes, notifications | [`devices::virtio::MmioTransport`] over the virtio-fs device |
//! | [`vhost_user`] | vhost-user messages from a front-end (plus a guest memory image) | vhost-user-backend's request handler over our back-end |
//! | [`share_spec`] | a share description and a path to match | [`fsredirect::ShareSpec::parse`], [`fsredirect::Policy::parse`] |
//!
//! ```
//! // The empty input, and an INIT followed by a GETATTR of the root.
//! fuzz_targets::fuse_request(&[]);
//! for seed in fuzz_targets::seeds::fuse_request() {
//!     fuzz_targets::fuse_request(&seed.bytes);
//! }
//! ```

#![deny(missing_docs)]

pub mod bounded;
pub mod bytes;
pub mod fuse;
pub mod seeds;
pub mod share;

mod fuse_request;
mod share_spec;
mod vhost_user;
mod virtio_mmio;

pub use fuse_request::fuse_request;
pub use share_spec::share_spec;
pub use vhost_user::vhost_user;
pub use virtio_mmio::{virtio_mmio, Op as MmioOp};

/// A target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Threads of the request pool that the queue-serving targets ([`virtio_mmio`],
/// [`vhost_user`]) give an input of odd length, so that the pooled queue loop meets the same
/// inputs as the queue's own thread, without a byte of the input spent on choosing.
pub const POOL_THREADS: usize = 2;

/// The request pool a queue-serving target gives `input`: [`POOL_THREADS`] threads for an
/// input of odd length, none (0) otherwise.
fn pool_threads(input: &[u8]) -> usize {
    if input.len() % 2 == 1 {
        POOL_THREADS
    } else {
        0
    }
}

/// Every target, by name.
pub const TARGETS: [Target; 4] = [
    ("fuse_request", fuse_request),
    ("virtio_mmio", virtio_mmio),
    ("vhost_user", vhost_user),
    ("share_spec", share_spec),
];
