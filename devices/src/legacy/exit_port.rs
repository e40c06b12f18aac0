//! The exit port: how a guest ends the VM with an exit code.
//!
//! A one-byte write to the port stops the VM and the VMM process exits with
//! that byte as its code (see docs/guest-protocol.md). Reads return 0xff, as
//! an unclaimed ISA port would, so a probe cannot mistake it for hardware.

use crate::bus::BusDevice;
use crate::exit::{ExitReason, VmExitRequest};

/// The exit-port device.
#[derive(Debug)]
pub struct ExitPort {
    exit: VmExitRequest,
}

impl ExitPort {
    /// Creates the device; writes are reported through `exit`.
    pub fn new(exit: VmExitRequest) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // Only the first byte counts, whatever the access width: the
        // protocol is a one-byte outb, and a wider write still ends the VM.
        if let Some(&code) = data.first() {
            self.exit.request(ExitReason::GuestExitCode(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_byte_becomes_exit_code() {
        let exit = VmExitRequest::new().unwrap();
        let mut port = ExitPort::new(exit.clone());

        port.write(0, &[42]);

        assert_eq!(exit.reason(), Some(ExitReason::GuestExitCode(42)));
    }

    #[test]
    fn reads_look_unclaimed_and_do_not_stop_the_vm() {
        let exit = VmExitRequest::new().unwrap();
        let mut port = ExitPort::new(exit.clone());
        let mut data = [0u8; 2];

        port.read(0, &mut data);

        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn empty_write_is_ignored() {
        let exit = VmExitRequest::new().unwrap();
        ExitPort::new(exit.clone()).write(0, &[]);
        assert_eq!(exit.reason(), None);
    }
}
