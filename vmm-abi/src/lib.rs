//! What `silo-vmm` and the daemon share without linking each other (the
//! daemon never links the VMM and its KVM crates): the layout of the files
//! a VMM publishes for the daemon to read. One definition, so the writer
//! and the reader cannot drift apart.

pub mod balloon_stats;
