//! silo-vmm: a minimal virtual machine monitor on the rust-vmm crates.
//!
//! One process runs one microVM: KVM VM and vCPUs, guest memory, a Linux
//! kernel loaded per the x86 boot protocol, an 8250 serial console, an i8042
//! for guest reset, and virtio-mmio devices (vsock) driven by an event loop.

pub mod boot;
pub mod builder;
pub mod cli;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod kvm;
pub mod memory;
pub mod ratelimit;
pub mod seccomp;
pub mod timeline;
pub mod vcpu;
pub mod vm;

pub use builder::{RunningVm, VmBuilder};
pub use device_manager::VsockConfig;
pub use vm::{run, SerialOutput, VmConfig, VmExit, VmReport, VmmError};
