//! Helpers shared by the end-to-end tests.

pub mod qemu;
pub mod testhost;
