//! KVM smoke test: a tiny hand-assembled real-mode guest runs on /dev/kvm
//! through silo's own vCPU loop and port I/O bus. It runs on any KVM host,
//! including PVM-backed ones, where standard Linux guests cannot boot.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::kvm_userspace_memory_region;
use silo_vmm::devices::bus::{Bus, BusDevice};
use silo_vmm::vcpu::{Vcpu, VcpuStop};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Records every byte written to its port.
struct Recorder(Vec<u8>);
impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}

#[test]
fn tiny_guest_does_port_io_and_halts() {
    let (kvm, kind) = silo_vmm::kvm::open().expect("this test needs a usable /dev/kvm");
    eprintln!("host KVM kind: {kind:?}");
    let vm = kvm.create_vm().unwrap();
    let mem = silo_vmm::memory::create_guest_memory(32).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: `mem` outlives the VM in this test and the region is its mapping.
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 32 << 20,
            userspace_addr: host as u64,
            flags: 0,
        })
        .unwrap();
    }
    // Real mode: out 'O','K','\n' to 0x3f8, read port 0x3f9 into AL and echo
    // it to 0x3f8, then hlt.
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0x42, 0xec, // inc dx; in al, dx
        0x4a, 0xee, // dec dx; out dx, al
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0xf4, // hlt
    ];
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let fd = vm.create_vcpu(0).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).unwrap();
    let mut regs = fd.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    fd.set_regs(&regs).unwrap();

    let rec = Arc::new(Mutex::new(Recorder(vec![])));
    let mut pio = Bus::new();
    pio.insert(rec.clone(), 0x3f8, 8).unwrap();
    let first_run = Arc::new(OnceLock::new());
    let mut vcpu = Vcpu::new(
        fd,
        0,
        pio,
        Bus::new(),
        Arc::new(AtomicBool::new(false)),
        first_run.clone(),
    );
    assert_eq!(vcpu.run(), VcpuStop::Halted);
    assert_eq!(
        rec.lock().unwrap().0,
        b"OKZ\n",
        "port writes in order, IN answered by the bus"
    );
    assert!(first_run.get().is_some());
}

#[test]
fn stop_flag_ends_the_loop_before_entering_the_guest() {
    let (kvm, _) = silo_vmm::kvm::open().expect("this test needs a usable /dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let fd = vm.create_vcpu(0).unwrap();
    let mut vcpu = Vcpu::new(
        fd,
        0,
        Bus::new(),
        Bus::new(),
        Arc::new(AtomicBool::new(true)),
        Arc::new(OnceLock::new()),
    );
    assert_eq!(vcpu.run(), VcpuStop::Stopped);
}
