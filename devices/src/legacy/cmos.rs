//! The CMOS RTC (MC146818) at ports 0x70/0x71.
//!
//! Linux reads the wall-clock time from here at boot; without an answer it
//! would read garbage or spin waiting for the update-in-progress bit. We
//! report the host's UTC time in BCD, 24-hour mode, never "update in
//! progress", and keep the battery-backed RAM bytes the guest writes.
//! Writes to the time registers are accepted and forgotten: a guest cannot
//! set the host's clock.

use crate::bus::BusDevice;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// The index register's top bit masks NMIs; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; update-in-progress (bit 7) clear.
const STATUS_A_VALUE: u8 = 0x26;
/// Status B: 24-hour mode (bit 1), BCD (bit 2 clear), no interrupts enabled.
const STATUS_B_VALUE: u8 = 0x02;
/// Status D: the battery is good (valid RAM and time).
const STATUS_D_VALUE: u8 = 0x80;

/// A source of wall-clock time, in seconds since the Unix epoch (UTC).
pub trait WallClock: Send {
    /// The current time.
    fn now(&self) -> i64;
}

/// The host's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostClock;

impl WallClock for HostClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// The CMOS device.
#[derive(Debug)]
pub struct Cmos<C: WallClock = HostClock> {
    clock: C,
    index: u8,
    ram: [u8; 128],
}

impl Cmos<HostClock> {
    /// A CMOS reporting the host's clock.
    pub fn new() -> Self {
        Self::with_clock(HostClock)
    }
}

impl Default for Cmos<HostClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: WallClock> Cmos<C> {
    /// A CMOS reporting the time of `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            index: 0,
            ram: [0; 128],
        }
    }

    fn read_register(&self, index: u8) -> u8 {
        match index {
            REG_SECONDS..=REG_YEAR | REG_CENTURY => {
                let time = broken_down_utc(self.clock.now());
                let value = match index {
                    REG_SECONDS => time.tm_sec,
                    REG_MINUTES => time.tm_min,
                    REG_HOURS => time.tm_hour,
                    REG_WEEKDAY => time.tm_wday + 1,
                    REG_DAY => time.tm_mday,
                    REG_MONTH => time.tm_mon + 1,
                    REG_YEAR => (time.tm_year + 1900) % 100,
                    REG_CENTURY => (time.tm_year + 1900) / 100,
                    // Alarm registers (odd indices below the year) read as
                    // "don't care".
                    _ => return 0xc0,
                };
                to_bcd(value)
            }
            REG_STATUS_A => STATUS_A_VALUE,
            REG_STATUS_B => STATUS_B_VALUE,
            // No interrupt sources are ever pending.
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VALUE,
            _ => self.ram[usize::from(index)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        // Time, alarm and status registers are derived from the host clock
        // and fixed settings; only general-purpose RAM keeps what is written.
        if index > REG_STATUS_D && index != REG_CENTURY {
            self.ram[usize::from(index)] = value;
        }
    }
}

/// Converts a value below 100 to packed BCD.
fn to_bcd(value: i32) -> u8 {
    let value = value.clamp(0, 99) as u8;
    ((value / 10) << 4) | (value % 10)
}

fn broken_down_utc(epoch_seconds: i64) -> libc::tm {
    let time: libc::time_t = epoch_seconds;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut out: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call;
    // gmtime_r is the thread-safe variant and writes only to `out`.
    let ok = unsafe { !libc::gmtime_r(&time, &mut out).is_null() };
    if !ok {
        // Out-of-range time: report the epoch rather than garbage.
        // SAFETY: as above.
        out = unsafe { std::mem::zeroed() };
        out.tm_mday = 1;
        out.tm_year = 70;
        out.tm_wday = 4;
    }
    out
}

impl<C: WallClock> BusDevice for Cmos<C> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.read_register(self.index),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            INDEX_OFFSET => self.index = value & INDEX_MASK,
            DATA_OFFSET => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedClock(i64);
    impl WallClock for FixedClock {
        fn now(&self) -> i64 {
            self.0
        }
    }

    /// 2026-11-25 13:45:07 UTC, a Wednesday.
    const SOME_WEDNESDAY: i64 = 1_795_614_307;

    fn read(cmos: &mut Cmos<FixedClock>, index: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[index]);
        let mut data = [0u8];
        cmos.read(DATA_OFFSET, &mut data);
        data[0]
    }

    #[test]
    fn time_registers_report_the_clock_in_bcd() {
        let mut cmos = Cmos::with_clock(FixedClock(SOME_WEDNESDAY));

        let fields: Vec<u8> = [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ]
        .iter()
        .map(|&reg| read(&mut cmos, reg))
        .collect();

        assert_eq!(fields, [0x07, 0x45, 0x13, 0x04, 0x25, 0x11, 0x26, 0x20]);
    }

    #[test]
    fn update_is_never_in_progress_and_battery_is_good() {
        let mut cmos = Cmos::with_clock(FixedClock(0));

        assert_eq!(read(&mut cmos, REG_STATUS_A) & 0x80, 0);
        assert_eq!(read(&mut cmos, REG_STATUS_B), STATUS_B_VALUE);
        assert_eq!(read(&mut cmos, REG_STATUS_D), STATUS_D_VALUE);
    }

    #[test]
    fn nmi_mask_bit_is_not_part_of_the_index() {
        let mut cmos = Cmos::with_clock(FixedClock(SOME_WEDNESDAY));

        let with_nmi_bit = read(&mut cmos, 0x80 | REG_MINUTES);

        assert_eq!(with_nmi_bit, 0x45);
    }

    #[test]
    fn general_purpose_ram_keeps_writes_but_time_does_not() {
        let mut cmos = Cmos::with_clock(FixedClock(SOME_WEDNESDAY));

        cmos.write(INDEX_OFFSET, &[0x40]);
        cmos.write(DATA_OFFSET, &[0x5a]);
        cmos.write(INDEX_OFFSET, &[REG_HOURS]);
        cmos.write(DATA_OFFSET, &[0x01]);

        assert_eq!(read(&mut cmos, 0x40), 0x5a);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x13);
    }
}
