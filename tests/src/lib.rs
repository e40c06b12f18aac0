//! Helpers shared by the end-to-end tests.

pub mod pattern;
pub mod pjdfstest;
pub mod qemu;
pub mod share_disk;
pub mod testhost;
