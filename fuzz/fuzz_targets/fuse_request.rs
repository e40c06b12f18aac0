//! libFuzzer entry point of `fuzz_targets::fuse_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuse_request(data));
