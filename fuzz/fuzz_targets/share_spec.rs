//! libFuzzer entry point of `fuzz_targets::share_spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::share_spec(data));
