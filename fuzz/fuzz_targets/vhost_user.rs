//! libFuzzer entry point of `fuzz_targets::vhost_user`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::vhost_user(data));
