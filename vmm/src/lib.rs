//! silo-vmm: a minimal virtual machine monitor on the rust-vmm crates.
//!
//! One process runs one microVM: KVM VM and vCPUs, guest memory, a Linux
//! kernel loaded per the x86 boot protocol, an 8250 serial console, an i8042
//! for guest reset, and virtio-mmio devices (vsock, pmem, net) driven by an event loop.

pub mod bandwidth;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod jail;
pub mod kvm;
pub mod memory;
pub mod ratelimit;
pub mod seccomp;
pub mod timeline;
pub mod vcpu;
pub mod vm;

pub use builder::{RunningVm, VmBuilder};
pub use device_manager::{NetConfig, VsockConfig};
pub use vm::{run, SerialOutput, VmConfig, VmExit, VmReport, VmmError};

/// Keeps glibc from shrinking a thread's malloc heap, which it does only
/// after reading `/proc/sys/vm/overcommit_memory`: an `openat` no seccomp
/// filter of ours allows. The device thread died of SIGSYS the first time a
/// guest's vsock traffic (a function flooding its stdout) grew and then
/// freed its buffers. With an explicit trim threshold beyond any heap, glibc
/// never shrinks thread heaps (freed memory stays with the process for
/// reuse; the device thread's buffers are bounded), so it never opens that
/// file. Call once at start, before any thread exists. No-op without glibc.
pub fn keep_heaps_unshrunk() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
