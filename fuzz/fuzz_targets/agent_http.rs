//! The guest agent's Runtime API request parser on arbitrary bytes: the
//! function (untrusted code in the guest) is its client. Any panic, and any
//! allocation beyond the body limit, is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = std::io::BufReader::new(data);
    while let Ok(req) = silo_guest_agent::http::read_request(&mut reader, 64 * 1024) {
        assert!(req.body.len() <= 64 * 1024);
    }
});
