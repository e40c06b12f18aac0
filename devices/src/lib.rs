//! Emulated devices for the `hypervisor` VMM.
//!
//! Devices here are plain structs: they know nothing of KVM, threads or file
//! descriptors beyond the small traits they are given, so each one can be
//! driven from a unit test. The VMM owns the [`bus::Bus`]es, places devices on
//! them and forwards the vCPUs' port-I/O and MMIO exits.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use devices::bus::Bus;
//! use devices::legacy::ExitPort;
//! use devices::VmExitRequest;
//!
//! let exit = VmExitRequest::new().unwrap();
//! let mut io_bus = Bus::new();
//! io_bus
//!     .insert(Arc::new(Mutex::new(ExitPort::new(exit.clone()))), 0xf4, 1)
//!     .unwrap();
//! io_bus.write(0xf4, &[3]);
//! assert_eq!(exit.reason(), Some(devices::ExitReason::GuestExitCode(3)));
//! ```

#![deny(missing_docs)]

pub mod bus;
pub mod confine;
pub mod exit;
pub mod legacy;
pub mod ratelimit;
pub mod seccomp;
pub mod virtio;

pub use exit::{ExitReason, VmExitRequest};
