#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pjwebsock_fuzz::utf8_stream(data));
