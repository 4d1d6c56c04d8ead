//! The guest agent's parts that are worth driving from outside the guest:
//! the HTTP/1.1 request parser of its Runtime API server (the function, an
//! untrusted program, is its client), for the fuzz target in `fuzz/`.

pub mod http;
