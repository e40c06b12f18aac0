//! `hypervisor`: a minimal KVM virtual machine monitor built from rust-vmm
//! crates, which boots Linux guests (ELF vmlinux or bzImage) with a serial
//! console and the devices in the `devices` crate.
//!
//! Everything the `hypervisor` binary does is available here: describe a VM
//! with [`VmConfig::builder`], run it with [`Vm::run`], get an [`ExitStatus`].
//!
//! ```no_run
//! use hypervisor::{Vm, VmConfig};
//!
//! let config = VmConfig::builder("build/guest/vmlinux")
//!     .initrd("build/guest/initramfs.cpio.gz")
//!     .vcpus(2)
//!     .build()?;
//! let status = Vm::new(config)?.run()?;
//! println!("guest stopped: {status}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod cpuid;
pub mod host;
pub mod layout;
pub mod memory;
pub mod sandbox;
pub mod signals;
pub mod terminal;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio_devices;
pub mod vm;

pub use config::{ConfigError, VmConfig, VmConfigBuilder};
pub use devices::seccomp::SeccompMode;
pub use devices::ExitReason;
pub use vm::{ExitStatus, Vm, VmError};
