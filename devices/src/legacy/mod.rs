//! Legacy PC devices on the port-I/O bus: the things a Linux guest probes
//! for during boot, emulated just enough that it never waits on them.

mod cmos;
mod exit_port;
mod i8042;
mod serial;

pub use cmos::{Cmos, HostClock, WallClock};
pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::{EventFdTrigger, InputSpaceNotifier, SerialPort};

/// Port-I/O base of the first 8250 UART (COM1).
pub const COM1_PORT: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const COM1_LEN: u16 = 8;
/// Legacy interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// Legacy interrupt line of the PS/2 keyboard.
pub const I8042_KBD_IRQ: u32 = 1;
/// Port-I/O base of the i8042 keyboard controller (data port 0x60, command port 0x64).
pub const I8042_PORT: u16 = 0x60;
/// Ports the i8042 decodes: 0x60 to 0x64.
pub const I8042_LEN: u16 = 5;
/// Port-I/O base of the CMOS/RTC (index port 0x70, data port 0x71).
pub const CMOS_PORT: u16 = 0x70;
/// Ports the CMOS decodes.
pub const CMOS_LEN: u16 = 2;
/// The exit port: a one-byte `outb` here ends the VM with that byte as exit code.
pub const EXIT_PORT: u16 = 0xf4;
/// Ports the exit port decodes.
pub const EXIT_PORT_LEN: u16 = 1;
