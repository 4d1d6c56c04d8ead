//! AWS helpers shared by silo's daemon (which verifies) and its client
//! (which signs):
//!
//! - [`sigv4`]: Signature Version 4, signing and verification;
//! - [`date`]: `X-Amz-Date` and Lambda's `LastModified` formats;
//! - [`id`]: request and revision ids (random UUIDs).

pub mod date;
pub mod id;
pub mod sigv4;
