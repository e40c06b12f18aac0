//! The transport driven register by register, as the Linux virtio-mmio
//! driver does, and with the writes a hostile driver might try.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::{ActivateError, Interrupt, VIRTIO_RING_F_EVENT_IDX};

const QUEUE_MAX: u16 = 16;
const MEM_SIZE: usize = 1 << 20;
const ACK_DRIVER: u32 = ACKNOWLEDGE | DRIVER;
const FEATURES_DONE: u32 = ACK_DRIVER | FEATURES_OK;

#[derive(Default)]
struct Record {
    activated_queues: Option<Vec<usize>>,
    acked_features: u64,
    activations: usize,
    resets: usize,
    /// What the device answers to `needs_reset`.
    broken: bool,
}

/// A device that records what the transport does to it.
struct Recorder {
    record: Arc<Mutex<Record>>,
    fail_activation: bool,
    sizes: Vec<u16>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        26
    }
    fn features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(b"tag0", offset, data);
    }
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::MissingQueue(1));
        }
        let mut record = self.record.lock().unwrap();
        record.activated_queues = Some(ctx.queues.iter().map(|(i, _)| *i).collect());
        record.acked_features = ctx.acked_features;
        record.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
    fn needs_reset(&self) -> bool {
        self.record.lock().unwrap().broken
    }
}

struct Fixture {
    transport: MmioTransport<Recorder>,
    record: Arc<Mutex<Record>>,
    irq: EventFd,
}

fn fixture_with(fail_activation: bool) -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let record = Arc::new(Mutex::new(Record::default()));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(MmioInterrupt::new(irq.try_clone().unwrap()));
    let device = Recorder {
        record: record.clone(),
        fail_activation,
        sizes: vec![QUEUE_MAX, QUEUE_MAX],
    };
    Fixture {
        transport: MmioTransport::new(device, mem, interrupt).unwrap(),
        record,
        irq,
    }
}

fn fixture() -> Fixture {
    fixture_with(false)
}

impl Fixture {
    fn read(&mut self, reg: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(reg), &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, reg: u32, value: u32) {
        self.transport.write(u64::from(reg), &value.to_le_bytes());
    }

    /// Negotiates VERSION_1 (and `extra` features) up to FEATURES_OK.
    fn negotiate(&mut self, extra: u64) {
        self.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        self.write(VIRTIO_MMIO_STATUS, ACK_DRIVER);
        let features = VIRTIO_F_VERSION_1 | extra;
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write(VIRTIO_MMIO_STATUS, FEATURES_DONE);
    }

    /// Sets up queue `index` at `base` (desc, avail, used laid out in order).
    fn setup_queue(&mut self, index: u32, base: u32, size: u32) {
        self.write(VIRTIO_MMIO_QUEUE_SEL, index);
        self.write(VIRTIO_MMIO_QUEUE_NUM, size);
        self.write(VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        self.write(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        self.write(VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        self.write(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        self.write(VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        self.write(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        self.write(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    fn bring_up(&mut self) {
        self.negotiate(0);
        self.setup_queue(0, 0x1_0000, 16);
        self.setup_queue(1, 0x2_0000, 16);
        self.write(VIRTIO_MMIO_STATUS, FEATURES_DONE | DRIVER_OK);
    }
}

#[test]
fn identification_registers_describe_a_modern_device() {
    let mut f = fixture();

    assert_eq!(f.read(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.read(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(f.read(VIRTIO_MMIO_DEVICE_ID), 26);
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        f.read(VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1 is offered"
    );
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        f.read(VIRTIO_MMIO_DEVICE_FEATURES),
        VIRTIO_RING_F_EVENT_IDX as u32
    );
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(f.read(VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn full_bring_up_activates_the_device_with_its_queues() {
    let mut f = fixture();

    f.negotiate(VIRTIO_RING_F_EVENT_IDX);
    f.setup_queue(0, 0x1_0000, 16);
    f.setup_queue(1, 0x2_0000, 8);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), FEATURES_DONE);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 1);
    f.write(VIRTIO_MMIO_STATUS, FEATURES_DONE | DRIVER_OK);

    assert_eq!(f.read(VIRTIO_MMIO_STATUS), FEATURES_DONE | DRIVER_OK);
    let record = f.record.lock().unwrap();
    assert_eq!(record.activated_queues, Some(vec![0, 1]));
    assert_eq!(
        record.acked_features,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut f = fixture();
    f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    f.write(VIRTIO_MMIO_STATUS, ACK_DRIVER);

    f.write(VIRTIO_MMIO_STATUS, FEATURES_DONE);

    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACK_DRIVER,
        "FEATURES_OK stays clear"
    );
}

#[test]
fn features_ok_is_refused_for_features_never_offered() {
    let mut f = fixture();

    f.negotiate(1 << 5);

    assert_eq!(f.read(VIRTIO_MMIO_STATUS) & FEATURES_OK, 0);
}

#[test]
fn driver_features_written_out_of_order_are_ignored() {
    let mut f = fixture();

    // Before DRIVER: ignored, so negotiation then lacks VERSION_1.
    f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    f.write(VIRTIO_MMIO_STATUS, ACK_DRIVER);
    f.write(VIRTIO_MMIO_STATUS, FEATURES_DONE);

    assert_eq!(f.read(VIRTIO_MMIO_STATUS) & FEATURES_OK, 0);
}

#[test]
fn status_cannot_skip_steps_or_clear_bits() {
    let mut f = fixture();

    f.write(VIRTIO_MMIO_STATUS, DRIVER_OK);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0, "0 -> DRIVER_OK is illegal");
    f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE,
        "FEATURES_OK before DRIVER is illegal"
    );
    f.write(VIRTIO_MMIO_STATUS, ACK_DRIVER);
    f.write(VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACK_DRIVER,
        "bits are only cleared by reset"
    );
    assert!(f.record.lock().unwrap().activated_queues.is_none());
}

#[test]
fn queue_registers_are_ignored_before_features_ok() {
    let mut f = fixture();
    f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);

    f.setup_queue(0, 0x1_0000, 16);

    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn queue_outside_guest_memory_is_not_made_ready() {
    let mut f = fixture();
    f.negotiate(0);

    f.setup_queue(0, MEM_SIZE as u32 - 0x100, 16);

    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn misaligned_queue_is_not_made_ready() {
    let mut f = fixture();
    f.negotiate(0);

    f.setup_queue(0, 0x1_0001, 16);

    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn queue_sizes_above_max_or_not_a_power_of_two_are_not_made_ready() {
    for size in [QUEUE_MAX as u32 * 2, 12, 0, 0x1_0000] {
        let mut f = fixture();
        f.negotiate(0);

        f.setup_queue(0, 0x1_0000, size);

        assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0, "size {size}");
    }
}

#[test]
fn selecting_a_queue_that_does_not_exist_is_harmless() {
    let mut f = fixture();
    f.negotiate(0);

    f.setup_queue(9, 0x1_0000, 16);

    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn queue_registers_after_driver_ok_are_ignored() {
    let mut f = fixture();
    f.bring_up();

    f.write(VIRTIO_MMIO_QUEUE_SEL, 0);
    f.write(VIRTIO_MMIO_QUEUE_READY, 0);
    f.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8_0000);

    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(f.transport.queues[0].desc_table(), 0x1_0000);
}

#[test]
fn failed_activation_reports_needs_reset_and_interrupts() {
    let mut f = fixture_with(true);

    f.bring_up();

    assert_ne!(f.read(VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
    assert_ne!(
        f.read(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert!(f.irq.read().is_ok());
}

#[test]
fn reset_stops_the_device_and_clears_everything() {
    let mut f = fixture();
    f.bring_up();

    f.write(VIRTIO_MMIO_STATUS, 0);

    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(f.record.lock().unwrap().resets, 1);
    f.write(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
    // And it can be brought up again.
    f.bring_up();
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), FEATURES_DONE | DRIVER_OK);
}

#[test]
fn failed_status_stops_the_device() {
    let mut f = fixture();
    f.bring_up();

    f.write(VIRTIO_MMIO_STATUS, FEATURES_DONE | DRIVER_OK | FAILED);

    assert_ne!(f.read(VIRTIO_MMIO_STATUS) & FAILED, 0);
    assert_eq!(f.record.lock().unwrap().resets, 1);
}

#[test]
fn notify_reaches_the_queue_eventfd_only_when_active_and_in_range() {
    let mut f = fixture();
    f.write(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(
        f.transport.queue_kicks()[0].read().is_err(),
        "not active yet"
    );
    f.bring_up();

    f.write(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    f.write(VIRTIO_MMIO_QUEUE_NOTIFY, 1000);

    assert_eq!(f.transport.queue_kicks()[1].read().unwrap(), 1);
}

#[test]
fn interrupt_ack_clears_status_bits() {
    let mut f = fixture();
    f.transport.interrupt.signal_used_queue().unwrap();

    f.write(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);

    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn odd_widths_and_offsets_are_ignored() {
    let mut f = fixture();
    let mut byte = [0xffu8; 1];
    let mut eight = [0xffu8; 8];

    f.transport
        .read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut byte);
    f.transport.read(2, &mut eight[..4]);
    f.transport
        .read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut eight);
    f.transport.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    f.transport
        .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    f.transport.write(0xf0, &1u32.to_le_bytes());

    assert_eq!(byte, [0]);
    assert_eq!(eight, [0; 8]);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn config_space_is_readable_at_any_width() {
    let mut f = fixture();
    let mut data = [0u8; 2];

    f.transport.read(CONFIG_SPACE + 1, &mut data);

    assert_eq!(&data, b"ag");
}

#[test]
fn shared_memory_regions_read_as_absent() {
    let mut f = fixture();
    f.write(VIRTIO_MMIO_SHM_SEL, 0);

    assert_eq!(f.read(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(f.read(VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
}

/// The states the exhaustive status test starts from.
const STARTING_POINTS: [&str; 6] = [
    "fresh",
    "features acked",
    "queues ready",
    "active",
    "active, device broken",
    "activation failed",
];

/// A fixture brought to one of [`STARTING_POINTS`].
fn fixture_at(start: &str) -> Fixture {
    let mut f = fixture_with(start == "activation failed");
    match start {
        "fresh" => {}
        "features acked" => {
            f.write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
            f.write(VIRTIO_MMIO_STATUS, ACK_DRIVER);
            f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            f.write(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        }
        "queues ready" => {
            f.negotiate(0);
            f.setup_queue(0, 0x1_0000, 16);
            f.setup_queue(1, 0x2_0000, 16);
        }
        "active" | "activation failed" => f.bring_up(),
        "active, device broken" => {
            f.bring_up();
            f.record.lock().unwrap().broken = true;
        }
        _ => unreachable!("unknown starting point {start}"),
    }
    f
}

/// Checks what must hold after the driver wrote `written` to the status
/// register in state `before`.
fn check_after_status_write(f: &mut Fixture, before: DeviceState, written: u32, what: &str) {
    let state = f.transport.state;
    let status = state.status();
    let record = f.record.lock().unwrap();
    let (activations, resets, broken) = (record.activations, record.resets, record.broken);
    drop(record);
    let active = state == DeviceState::Active;

    assert_eq!(
        activations,
        resets + usize::from(active),
        "{what}: the device runs exactly when the state is Active"
    );
    let device_needs_reset = if active && broken { NEEDS_RESET } else { 0 };
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        status | device_needs_reset,
        "{what}"
    );
    if written == 0 {
        assert_eq!(state, DeviceState::Reset, "{what}: 0 resets");
        assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0, "{what}");
        return;
    }
    let old = before.status();
    assert_eq!(status & old, old, "{what}: only a reset clears bits");
    let steps = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];
    let added_steps = steps.iter().filter(|&&bit| status & !old & bit != 0);
    assert!(added_steps.count() <= 1, "{what}: one step at a time");
    for pair in steps.windows(2) {
        if status & pair[1] != 0 {
            assert_ne!(status & pair[0], 0, "{what}: steps are taken in order");
        }
    }
    if status & !old & NEEDS_RESET != 0 {
        assert_eq!(before, DeviceState::FeaturesOk, "{what}");
        assert_eq!(
            state,
            DeviceState::ActivationFailed,
            "{what}: only a failed activation sets NEEDS_RESET"
        );
    }
    if old & FAILED != 0 {
        assert_eq!(state, before, "{what}: FAILED holds until a reset");
    }
}

#[test]
fn every_status_sequence_of_up_to_three_writes_is_handled_consistently() {
    let values = [
        0,
        ACKNOWLEDGE,
        ACK_DRIVER,
        FEATURES_DONE,
        FEATURES_DONE | DRIVER_OK,
        DRIVER_OK,
        FAILED,
        FEATURES_DONE | DRIVER_OK | FAILED,
        FEATURES_DONE | DRIVER_OK | NEEDS_RESET,
        ACKNOWLEDGE | NEEDS_RESET,
        u32::MAX,
    ];
    // The checks run after every write, so the sequences of three writes
    // also cover the shorter ones: their prefixes.
    for start in STARTING_POINTS {
        for first in values {
            for second in values {
                for third in values {
                    let mut f = fixture_at(start);
                    let sequence = [first, second, third];
                    for (step, value) in sequence.into_iter().enumerate() {
                        let before = f.transport.state;
                        f.write(VIRTIO_MMIO_STATUS, value);
                        let what = format!("from {start}, writes {:x?}", &sequence[..=step]);
                        check_after_status_write(&mut f, before, value, &what);
                    }
                }
            }
        }
    }
}
