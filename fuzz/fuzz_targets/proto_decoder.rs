//! Fuzz the host <-> agent frame decoder: any bytes, fed whole or split, must
//! give messages or errors, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = silo_proto::read_message(&mut &data[..]);
    let mut d = silo_proto::FrameDecoder::new();
    for chunk in data.chunks(7) {
        d.push(chunk);
        while let Ok(Some(_)) = d.next_message() {}
    }
});
