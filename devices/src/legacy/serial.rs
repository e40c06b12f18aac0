//! The 8250 UART used as the guest console, on vm-superio's emulation.

use std::io::{self, Write};

use log::warn;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// An interrupt line backed by an eventfd (registered with KVM as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Wakes the console's input pump when the guest has drained the UART's
/// receive FIFO, so queued keystrokes can flow again.
#[derive(Debug)]
pub struct InputSpaceNotifier(pub EventFd);

impl SerialEvents for InputSpaceNotifier {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // EAGAIN means the counter is saturated: the pump wakes anyway.
        let _ = self.0.write(1);
    }
}

/// The UART on the port-I/O bus, writing the guest's output to `W`.
pub struct SerialPort<W: Write + Send> {
    uart: Serial<EventFdTrigger, InputSpaceNotifier, W>,
    /// Output errors seen so far; only the first is logged.
    output_errors: u64,
}

impl<W: Write + Send> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort")
            .field("output_errors", &self.output_errors)
            .finish()
    }
}

impl<W: Write + Send> SerialPort<W> {
    /// Creates the UART: `interrupt` raises its IRQ, `input_space` is written
    /// when the receive FIFO empties, guest output goes to `out`.
    pub fn new(interrupt: EventFd, input_space: EventFd, out: W) -> Self {
        Self {
            uart: Serial::with_events(
                EventFdTrigger(interrupt),
                InputSpaceNotifier(input_space),
                out,
            ),
            output_errors: 0,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO
    /// (possibly 0: call again after the input-space eventfd fires).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(count) => count,
            Err(err) => {
                warn!("console: could not pass input to the guest: {err:?}");
                0
            }
        }
    }

    /// The writer receiving guest output.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialPort<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match u8::try_from(offset) {
            Ok(offset) if data.len() == 1 => self.uart.read(offset),
            // The UART has byte-wide registers only.
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(err) = self.uart.write(offset, *value) {
            // A closed stdout must not stop the guest; say so once.
            if self.output_errors == 0 {
                warn!("console: guest output is being dropped: {err:?}");
            }
            self.output_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;
    const IER_RX_AVAILABLE: u8 = 0x01;

    fn port() -> (SerialPort<Vec<u8>>, EventFd, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let space = EventFd::new(EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(
            irq.try_clone().unwrap(),
            space.try_clone().unwrap(),
            Vec::new(),
        );
        (port, irq, space)
    }

    #[test]
    fn guest_writes_reach_the_output() {
        let (mut port, _, _) = port();

        for byte in b"hi\n" {
            port.write(DATA, &[*byte]);
        }

        assert_eq!(port.output(), b"hi\n");
    }

    #[test]
    fn host_input_is_readable_by_the_guest_and_raises_the_irq() {
        let (mut port, irq, _) = port();
        port.write(IER, &[IER_RX_AVAILABLE]);

        assert_eq!(port.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        port.read(LSR, &mut lsr);
        let mut byte = [0u8];
        port.read(DATA, &mut byte);

        assert_eq!(lsr[0] & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(byte, *b"x");
        assert!(irq.read().is_ok(), "the receive interrupt fired");
    }

    #[test]
    fn draining_the_fifo_signals_input_space() {
        let (mut port, _, space) = port();
        port.enqueue_input(b"ab");

        port.read(DATA, &mut [0u8]);
        assert!(space.read().is_err(), "one byte still queued");
        port.read(DATA, &mut [0u8]);

        assert_eq!(space.read().unwrap(), 1);
    }

    #[test]
    fn a_full_fifo_accepts_nothing_more() {
        let (mut port, _, _) = port();
        let big = vec![b'a'; 4096];

        let first = port.enqueue_input(&big);
        let second = port.enqueue_input(&big);

        assert!(first > 0 && first < big.len());
        assert_eq!(second, 0);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let (mut port, _, _) = port();
        let mut data = [0u8; 2];

        port.read(LSR, &mut data);
        port.write(DATA, b"ab");

        assert_eq!(data, [0xff, 0xff]);
        assert!(port.output().is_empty());
    }
}
