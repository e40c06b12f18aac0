//! libFuzzer entry point of `fuzz_targets::virtio_mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::virtio_mmio(data));
