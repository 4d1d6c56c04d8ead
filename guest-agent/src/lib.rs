//! The guest agent's parts that are worth driving from outside the guest:
//! the HTTP/1.1 request parser of its Runtime API server (the function, an
//! untrusted program, is its client), for the fuzz target in `fuzz/`; and
//! the resolver configuration from the kernel command line (`dns`).

pub mod dns;
pub mod http;
