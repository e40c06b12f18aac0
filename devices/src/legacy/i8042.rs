//! The i8042 keyboard controller with a PS/2 keyboard behind it.
//!
//! A Linux guest probes the controller and the keyboard at boot; every
//! question left unanswered costs it a timeout (hundreds of milliseconds
//! each, seconds in all). So the controller answers at once: its
//! self-tests pass, its command byte reads back, and the keyboard
//! acknowledges commands, identifies itself and passes its reset test,
//! with an interrupt on IRQ 1 for each byte, as the driver expects. There
//! are no keystrokes (the console is the serial port) and no PS/2 mouse.
//! The CPU-reset command (0xfe, what `reboot=k` sends) ends the VM.
//!
//! vm-superio's i8042 handles only the reset; answering the probes is what
//! this one is for.

use std::collections::VecDeque;

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, VmExitRequest};

const DATA_PORT_OFFSET: u64 = 0;
const COMMAND_PORT_OFFSET: u64 = 4;

/// Status: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status: the system flag (POST passed).
const STATUS_SYSTEM: u8 = 0x04;
/// Status: the last write went to the command port.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Status: keyboard not inhibited.
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 0x01;
/// Command byte: system flag.
const CTR_SYSTEM: u8 = 0x04;
/// Command byte: keyboard clock disabled.
const CTR_KBD_DISABLED: u8 = 0x10;
/// Command byte: aux clock disabled.
const CTR_AUX_DISABLED: u8 = 0x20;
/// Command byte: scancode translation.
const CTR_XLATE: u8 = 0x40;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
/// Answer of a port test when nothing is attached (clock line stuck low).
const PORT_TEST_NO_DEVICE: u8 = 0x01;

const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
const KBD_CMD_IDENTIFY: u8 = 0xf2;
const KBD_CMD_TYPEMATIC: u8 = 0xf3;
const KBD_CMD_RESET: u8 = 0xff;
/// A standard MF2 keyboard with translation.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Scancode set 2, reported when asked.
const KBD_SCANCODE_SET: u8 = 0x02;

/// Most bytes the guest can leave unread: a bound on what a guest that
/// keeps issuing commands without reading can make us hold.
const OUTPUT_QUEUE_MAX: usize = 16;

/// What the next data-port write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A byte for the keyboard.
    Keyboard,
    /// The new command byte.
    CommandByte,
    /// The output port value (bit 0 clear resets the CPU).
    OutputPort,
    /// A byte to place in the output buffer as if from the keyboard.
    KeyboardBuffer,
    /// A byte for the (absent) aux device, or for its output buffer.
    Aux,
    /// The argument of a keyboard command (LEDs, scancode set, typematic).
    KeyboardArgument(u8),
}

/// The i8042 device on the port-I/O bus at 0x60..=0x64.
pub struct I8042<T: Trigger> {
    exit: VmExitRequest,
    irq: T,
    command_byte: u8,
    pending: Pending,
    last_was_command: bool,
    output: VecDeque<u8>,
}

impl<T: Trigger> std::fmt::Debug for I8042<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("command_byte", &self.command_byte)
            .field("pending", &self.pending)
            .field("output", &self.output)
            .finish()
    }
}

impl<T: Trigger> I8042<T> {
    /// Creates the controller; `irq` raises IRQ 1, a guest reset is
    /// reported through `exit`.
    pub fn new(exit: VmExitRequest, irq: T) -> Self {
        Self {
            exit,
            irq,
            command_byte: CTR_KBD_INT | CTR_SYSTEM | CTR_XLATE | CTR_AUX_DISABLED,
            pending: Pending::Keyboard,
            last_was_command: false,
            output: VecDeque::new(),
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM | STATUS_UNLOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    /// Queues bytes for the guest; `from_keyboard` bytes raise IRQ 1 when
    /// the guest enabled it.
    fn push_output(&mut self, bytes: &[u8], from_keyboard: bool) {
        let was_empty = self.output.is_empty();
        for &byte in bytes {
            if self.output.len() < OUTPUT_QUEUE_MAX {
                self.output.push_back(byte);
            }
        }
        if was_empty && from_keyboard {
            self.raise_keyboard_irq();
        }
    }

    fn raise_keyboard_irq(&self) {
        if self.command_byte & CTR_KBD_INT != 0 && !self.output.is_empty() {
            // An irqfd that cannot be written leaves the guest polling;
            // its driver copes, so the error is not worth a log line.
            let _ = self.irq.trigger();
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        // One byte per interrupt: announce the next one.
        self.raise_keyboard_irq();
        byte
    }

    fn write_command(&mut self, command: u8) {
        self.last_was_command = true;
        self.pending = Pending::Keyboard;
        match command {
            CMD_READ_CTR => self.push_output(&[self.command_byte], false),
            CMD_WRITE_CTR => self.pending = Pending::CommandByte,
            CMD_DISABLE_AUX => self.command_byte |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.command_byte &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX => self.push_output(&[PORT_TEST_NO_DEVICE], false),
            CMD_SELF_TEST => self.push_output(&[SELF_TEST_PASSED], false),
            CMD_TEST_KBD => self.push_output(&[PORT_TEST_PASSED], false),
            CMD_DISABLE_KBD => self.command_byte |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.command_byte &= !CTR_KBD_DISABLED,
            // A20 enabled, reset line high.
            CMD_READ_OUTPUT_PORT => self.push_output(&[0x03], false),
            CMD_WRITE_OUTPUT_PORT => self.pending = Pending::OutputPort,
            CMD_WRITE_KBD_BUFFER => self.pending = Pending::KeyboardBuffer,
            CMD_WRITE_AUX_BUFFER | CMD_WRITE_AUX => self.pending = Pending::Aux,
            CMD_RESET_CPU => self.exit.request(ExitReason::GuestReset),
            // Other commands (pulse other output lines, read test inputs,
            // ...) do nothing here.
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.last_was_command = false;
        let pending = std::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::CommandByte => self.command_byte = byte,
            Pending::OutputPort => {
                // Bit 0 is the CPU reset line, active low.
                if byte & 0x01 == 0 {
                    self.exit.request(ExitReason::GuestReset);
                }
            }
            Pending::KeyboardBuffer => self.push_output(&[byte], true),
            // No mouse: what is sent to it is dropped, as on a PC without one.
            Pending::Aux => {}
            Pending::KeyboardArgument(command) => self.keyboard_argument(command, byte),
            Pending::Keyboard => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, command: u8) {
        match command {
            KBD_CMD_RESET => self.push_output(&[KBD_ACK, KBD_SELF_TEST_PASSED], true),
            KBD_CMD_IDENTIFY => self.push_output(&[KBD_ACK, KBD_ID[0], KBD_ID[1]], true),
            KBD_CMD_ECHO => self.push_output(&[KBD_ECHO], true),
            KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_TYPEMATIC => {
                self.pending = Pending::KeyboardArgument(command);
                self.push_output(&[KBD_ACK], true);
            }
            // Enable, disable, set defaults and the rest: acknowledged.
            0xe0..=0xff => self.push_output(&[KBD_ACK], true),
            // Not a command at all.
            _ => self.push_output(&[KBD_RESEND], true),
        }
    }

    fn keyboard_argument(&mut self, command: u8, argument: u8) {
        if command == KBD_CMD_SCANCODE_SET && argument == 0 {
            self.push_output(&[KBD_ACK, KBD_SCANCODE_SET], true);
        } else {
            self.push_output(&[KBD_ACK], true);
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_PORT_OFFSET => self.read_data(),
            COMMAND_PORT_OFFSET => self.status(),
            // 0x61..0x63 belong to other devices (the PIT handles 0x61 in KVM).
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_PORT_OFFSET => self.write_data(value),
            COMMAND_PORT_OFFSET => self.write_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Counts interrupts.
    #[derive(Clone, Default)]
    struct Irq(Arc<AtomicU32>);

    impl Irq {
        fn count(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Trigger for Irq {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn device() -> (I8042<Irq>, VmExitRequest, Irq) {
        let exit = VmExitRequest::new().unwrap();
        let irq = Irq::default();
        (I8042::new(exit.clone(), irq.clone()), exit, irq)
    }

    fn command(dev: &mut I8042<Irq>, cmd: u8) {
        dev.write(COMMAND_PORT_OFFSET, &[cmd]);
    }

    fn data_out(dev: &mut I8042<Irq>, byte: u8) {
        dev.write(DATA_PORT_OFFSET, &[byte]);
    }

    fn status(dev: &mut I8042<Irq>) -> u8 {
        let mut s = [0u8];
        dev.read(COMMAND_PORT_OFFSET, &mut s);
        s[0]
    }

    fn read_all(dev: &mut I8042<Irq>) -> Vec<u8> {
        let mut bytes = Vec::new();
        while status(dev) & STATUS_OUTPUT_FULL != 0 {
            let mut b = [0u8];
            dev.read(DATA_PORT_OFFSET, &mut b);
            bytes.push(b[0]);
        }
        bytes
    }

    #[test]
    fn reset_command_stops_the_vm_as_a_reset() {
        let (mut dev, exit, _) = device();

        command(&mut dev, CMD_RESET_CPU);

        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn output_port_with_reset_line_low_stops_the_vm() {
        let (mut dev, exit, _) = device();

        command(&mut dev, CMD_WRITE_OUTPUT_PORT);
        data_out(&mut dev, 0x02);

        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn controller_self_tests_pass_at_once() {
        let (mut dev, exit, _) = device();

        command(&mut dev, CMD_SELF_TEST);
        let self_test = read_all(&mut dev);
        command(&mut dev, CMD_TEST_KBD);
        let port_test = read_all(&mut dev);

        assert_eq!((self_test, port_test), (vec![0x55], vec![0x00]));
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn command_byte_reads_back_what_was_written() {
        let (mut dev, _, _) = device();

        command(&mut dev, CMD_WRITE_CTR);
        data_out(&mut dev, 0x47);
        command(&mut dev, CMD_READ_CTR);

        assert_eq!(read_all(&mut dev), vec![0x47]);
    }

    #[test]
    fn keyboard_reset_acks_passes_and_interrupts_per_byte() {
        let (mut dev, _, irq) = device();

        data_out(&mut dev, KBD_CMD_RESET);
        assert_eq!(irq.count(), 1, "first byte announced");
        let bytes = read_all(&mut dev);

        assert_eq!(bytes, vec![KBD_ACK, KBD_SELF_TEST_PASSED]);
        assert_eq!(
            irq.count(),
            2,
            "second byte announced after the first was read"
        );
    }

    #[test]
    fn keyboard_identifies_as_mf2() {
        let (mut dev, _, _) = device();

        data_out(&mut dev, KBD_CMD_IDENTIFY);

        assert_eq!(read_all(&mut dev), vec![KBD_ACK, 0xab, 0x83]);
    }

    #[test]
    fn commands_with_an_argument_ack_both_bytes() {
        let (mut dev, _, _) = device();

        data_out(&mut dev, KBD_CMD_SET_LEDS);
        data_out(&mut dev, 0x07);
        data_out(&mut dev, KBD_CMD_SCANCODE_SET);
        data_out(&mut dev, 0);

        assert_eq!(
            read_all(&mut dev),
            vec![KBD_ACK, KBD_ACK, KBD_ACK, KBD_ACK, 0x02]
        );
    }

    #[test]
    fn no_interrupt_when_the_guest_disabled_it() {
        let (mut dev, _, irq) = device();
        command(&mut dev, CMD_WRITE_CTR);
        data_out(&mut dev, CTR_SYSTEM);

        data_out(&mut dev, KBD_CMD_RESET);

        assert_eq!(irq.count(), 0);
    }

    #[test]
    fn aux_port_reports_no_mouse_and_swallows_its_bytes() {
        let (mut dev, _, _) = device();

        command(&mut dev, CMD_TEST_AUX);
        let test = read_all(&mut dev);
        command(&mut dev, CMD_WRITE_AUX);
        data_out(&mut dev, 0xff);

        assert_eq!(test, vec![PORT_TEST_NO_DEVICE]);
        assert!(read_all(&mut dev).is_empty());
    }

    #[test]
    fn unread_output_is_bounded() {
        let (mut dev, _, _) = device();

        for _ in 0..10_000 {
            data_out(&mut dev, KBD_CMD_IDENTIFY);
        }

        assert_eq!(read_all(&mut dev).len(), OUTPUT_QUEUE_MAX);
    }

    #[test]
    fn status_says_a_byte_is_waiting_only_when_one_is() {
        let (mut dev, _, _) = device();
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);

        command(&mut dev, CMD_SELF_TEST);

        assert_ne!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(status(&mut dev) & 0x02, 0, "input buffer never full");
    }
}
