//! `silo`: the host daemon and CLI.
fn main() {}
