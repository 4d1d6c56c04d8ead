//! Guest kernel and KVM test host images.
