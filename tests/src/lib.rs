//! Helpers shared by the end-to-end tests.

#![deny(missing_docs)]

pub mod ownership;
pub mod pattern;
pub mod pjdfstest;
pub mod pty;
pub mod qemu;
pub mod share_disk;
pub mod testhost;
