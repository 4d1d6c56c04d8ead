//! Guest kernel and KVM test host images.
pub mod artifacts;
