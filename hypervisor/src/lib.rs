//! Hypervisor.
