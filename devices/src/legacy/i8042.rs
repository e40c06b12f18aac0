//! The i8042 keyboard controller, reduced to what ends a VM: the CPU-reset
//! command a guest sends on `reboot` (`reboot=k`).
//!
//! The controller logic is vm-superio's; this wrapper puts it on our bus and
//! turns its reset event into a request to stop the VM.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::{ExitReason, VmExitRequest};

/// Turns the controller's reset line into a VM stop request.
#[derive(Debug, Clone)]
pub struct ResetLine(VmExitRequest);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::GuestReset);
        Ok(())
    }
}

/// The i8042 device on the port-I/O bus at 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// Creates the controller; a guest reset is reported through `exit`.
    pub fn new(exit: VmExitRequest) -> Self {
        Self {
            inner: I8042Device::new(ResetLine(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status 0 (no data, input buffer empty) on every port: the guest's
        // reboot path polls for an empty input buffer and then proceeds.
        let value = self.inner.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            // Infallible: the reset line cannot fail.
            let _ = self.inner.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMAND_PORT_OFFSET: u64 = 4;
    const CMD_RESET_CPU: u8 = 0xfe;

    #[test]
    fn reset_command_stops_the_vm_as_a_reset() {
        let exit = VmExitRequest::new().unwrap();
        let mut i8042 = I8042::new(exit.clone());

        i8042.write(COMMAND_PORT_OFFSET, &[CMD_RESET_CPU]);

        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn other_commands_and_the_data_port_do_not_stop_the_vm() {
        let exit = VmExitRequest::new().unwrap();
        let mut i8042 = I8042::new(exit.clone());

        i8042.write(COMMAND_PORT_OFFSET, &[0xaa]);
        i8042.write(0, &[CMD_RESET_CPU]);

        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn status_reads_report_an_empty_input_buffer() {
        let mut i8042 = I8042::new(VmExitRequest::new().unwrap());
        let mut status = [0xffu8];

        i8042.read(COMMAND_PORT_OFFSET, &mut status);

        assert_eq!(status[0] & 0x02, 0, "input-buffer-full bit must be clear");
    }
}
