//! The virtio-pmem device driven as Linux's driver drives it (MMIO register
//! programming, a split virtqueue in guest memory, kicks through the queue
//! eventfd, the real event loop), then fed malformed requests; and a tiny
//! real guest on /dev/kvm that reads a read-only memory slot backed by an
//! image file and tries to write it.

mod common;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use common::MmioRig;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use silo_vmm::devices::bus::{Bus, BusDevice};
use silo_vmm::devices::virtio::mmio::{status, MmioTransport};
use silo_vmm::devices::virtio::pmem::{
    Pmem, PmemRegionGuard, PmemStats, REQ_TYPE_FLUSH, RESP_EIO, RESP_OK,
};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::{create_guest_memory, ImageMapping};
use silo_vmm::seccomp::{filter, ThreadKind};
use silo_vmm::vcpu::{Vcpu, VcpuStop};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const START: u64 = 0x1_0000_0000;
const SIZE: u64 = 6 << 20;
const BUF: u64 = 0x20_0000;
const RAM_MIB: u32 = 64;

/// Descriptors of one chain: (address, length, device-writable).
type Chain = Vec<(u64, u32, bool)>;

/// The fake guest driver of [`MmioRig`] with a pmem device and its
/// interrupt; the pmem device has one queue, queue 0.
struct Rig {
    mmio: MmioRig<Pmem>,
    irq: EventFd,
}

/// The rig's registers, queue and memory are the [`MmioRig`]'s.
impl Deref for Rig {
    type Target = MmioRig<Pmem>;
    fn deref(&self) -> &MmioRig<Pmem> {
        &self.mmio
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut MmioRig<Pmem> {
        &mut self.mmio
    }
}

impl Rig {
    fn new() -> Self {
        let mem = create_guest_memory(RAM_MIB).unwrap();
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let irq = interrupt.irqfd().try_clone().unwrap();
        let pmem = Pmem::new(START, SIZE, interrupt.clone()).unwrap();
        let mut rig = Rig {
            mmio: MmioRig::new(pmem, mem, interrupt, QSIZE),
            irq,
        };
        rig.driver_init();
        rig
    }

    /// What virtio_mmio + virtio_pmem do at probe: reset, ACKNOWLEDGE,
    /// DRIVER, features (VERSION_1 only), FEATURES_OK, one queue, config
    /// reads of start and size, DRIVER_OK.
    fn driver_init(&mut self) {
        self.probe(27, "pmem");
        self.w(0x14, 0);
        assert_eq!(self.r(0x10), 0, "no feature bits 0-31 offered");
        self.w(0x14, 1);
        assert_eq!(self.r(0x10), 1, "VERSION_1 (bit 32) offered, nothing else");
        self.accept_version_1();
        self.w(0x30, 0);
        assert!(self.r(0x34) >= u32::from(QSIZE), "queue 0 exists");
        self.w(0x30, 1);
        assert_eq!(self.r(0x34), 0, "only one queue");
        self.setup_queue(0);
        // virtio_cread_le(start), virtio_cread_le(size): 4-byte halves on MMIO.
        let cfg = |o: u64| self.r(0x100 + o);
        let start = u64::from(cfg(0)) | (u64::from(cfg(4)) << 32);
        let size = u64::from(cfg(8)) | (u64::from(cfg(12)) << 32);
        assert_eq!((start, size), (START, SIZE), "config space");
        let mut whole = [0u8; 16];
        self.dev.lock().unwrap().read(0x100, &mut whole);
        assert_eq!(u64::from_le_bytes(whole[..8].try_into().unwrap()), START);
        // Config writes are ignored: the region cannot be moved by the guest.
        self.dev.lock().unwrap().write(0x100, &[0xff; 8]);
        assert_eq!(cfg(0), START as u32);
        self.driver_ok();
        assert!(self.dev.lock().unwrap().is_activated());
    }

    /// Sends a request of `ty` with a 4-byte response buffer; returns the
    /// used length and the response status.
    fn request(&mut self, ty: u32, slot: u64) -> (u32, u32) {
        let req = BUF + slot * 0x100;
        let resp = req + 0x80;
        self.mem.write_obj(ty.to_le(), GuestAddress(req)).unwrap();
        self.mem
            .write_obj(0xdead_beef_u32, GuestAddress(resp))
            .unwrap();
        let head = self.push_chain(0, &[(req, 4, false), (resp, 4, true)]);
        self.kick(0);
        let used = self.used(0);
        assert_eq!(used.len(), 1, "one request, one used entry");
        assert_eq!(used[0].0, u32::from(head));
        let status: u32 = self.mem.read_obj(GuestAddress(resp)).unwrap();
        (used[0].1, u32::from_le(status))
    }

    fn stats(&self) -> PmemStats {
        self.dev.lock().unwrap().device().stats()
    }

    fn interrupted(&self) -> bool {
        self.irq.read().is_ok()
    }
}

#[test]
fn a_flush_is_answered_with_success_and_an_interrupt() {
    let mut rig = Rig::new();
    assert_eq!(rig.request(REQ_TYPE_FLUSH, 0), (4, RESP_OK));
    assert!(rig.interrupted(), "no interrupt for the used buffer");
    assert_eq!(rig.r(0x60) & 1, 1, "InterruptStatus shows a used buffer");
    rig.w(0x64, 1);
    assert_eq!(rig.r(0x60), 0, "acknowledged");
    // Many in a row, as a guest fsync loop makes them.
    for i in 0..40 {
        assert_eq!(rig.request(REQ_TYPE_FLUSH, i % 8), (4, RESP_OK));
    }
    assert_eq!(
        rig.stats(),
        PmemStats {
            flushes: 41,
            errors: 0,
            dropped: 0
        }
    );
}

/// The device thread's work for pmem (eventfd reads, queue processing,
/// the interrupt) passes the devices thread's seccomp filter; a violation
/// would kill this test process with SIGSYS.
#[test]
fn flushes_pass_the_devices_seccomp_filter() {
    let mut rig = Rig::new();
    let prog = filter(ThreadKind::Devices, std::process::id() as libc::pid_t).unwrap();
    let rig = std::thread::spawn(move || {
        seccompiler::apply_filter(&prog).unwrap();
        for i in 0..4 {
            assert_eq!(rig.request(REQ_TYPE_FLUSH, i), (4, RESP_OK));
        }
        assert_eq!(rig.request(9, 5), (4, RESP_EIO));
        rig
    })
    .join()
    .unwrap();
    assert_eq!(rig.stats().flushes, 4);
}

#[test]
fn malformed_requests_get_errors_or_are_returned_and_the_device_keeps_serving() {
    let mut rig = Rig::new();
    // Unknown request type: answered EIO.
    assert_eq!(rig.request(7, 0), (4, RESP_EIO));

    let req = BUF;
    let resp = BUF + 0x80;
    let ram_end = u64::from(RAM_MIB) << 20;
    rig.mem.write_obj(0u32, GuestAddress(req)).unwrap();
    let cases: Vec<(&str, Chain, u32, Option<u32>)> = vec![
        // (what, chain, used length, response status written)
        ("no response buffer", vec![(req, 4, false)], 0, None),
        ("response only", vec![(resp, 4, true)], 4, Some(RESP_EIO)),
        (
            "short request",
            vec![(req, 2, false), (resp, 4, true)],
            4,
            Some(RESP_EIO),
        ),
        (
            "short response",
            vec![(req, 4, false), (resp, 2, true)],
            0,
            None,
        ),
        (
            "zero-length descriptors",
            vec![(req, 0, false), (resp, 0, true)],
            0,
            None,
        ),
        (
            "writable before readable",
            vec![(resp, 4, true), (req, 4, false)],
            4,
            Some(RESP_EIO),
        ),
        (
            "request past the end of RAM",
            vec![(ram_end - 2, 4, false), (resp, 4, true)],
            4,
            Some(RESP_EIO),
        ),
        (
            "request in the pmem region (not RAM)",
            vec![(START, 4, false), (resp, 4, true)],
            4,
            Some(RESP_EIO),
        ),
        (
            "response in the pmem region",
            vec![(req, 4, false), (START + 8, 4, true)],
            0,
            None,
        ),
        (
            "response at an absurd address",
            vec![(req, 4, false), (u64::MAX - 1, 4, true)],
            0,
            None,
        ),
        (
            "huge lengths",
            vec![(req, u32::MAX, false), (resp, u32::MAX, true)],
            0,
            None,
        ),
    ];
    let mut answered = 0;
    let mut dropped = 0;
    for (what, chain, want_len, want_status) in cases {
        rig.mem
            .write_obj(0xdead_beef_u32, GuestAddress(resp))
            .unwrap();
        let head = rig.push_chain(0, &chain);
        rig.kick(0);
        let used = rig.used(0);
        assert_eq!(
            used,
            vec![(u32::from(head), want_len)],
            "{what}: used entry"
        );
        let got: u32 = rig.mem.read_obj(GuestAddress(resp)).unwrap();
        match want_status {
            Some(s) => {
                assert_eq!(got, s, "{what}: status");
                answered += 1;
            }
            None => {
                assert_eq!(got, 0xdead_beef, "{what}: nothing written");
                dropped += 1;
            }
        }
        // The device still answers a good flush after each bad request.
        assert_eq!(rig.request(REQ_TYPE_FLUSH, 1), (4, RESP_OK), "after {what}");
    }
    let s = rig.stats();
    assert_eq!((s.errors, s.dropped), (answered + 1, dropped));
    assert_eq!(rig.r(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn descriptor_loops_and_out_of_range_heads_do_not_hang_or_crash() {
    let mut rig = Rig::new();
    // A chain whose next pointer loops back to itself.
    rig.write_desc(0, 0, BUF, 4, 1, 0);
    rig.queues[0].next_desc = 1;
    rig.make_available(0, 0);
    rig.kick(0);
    // A head index past the queue size.
    rig.make_available(0, QSIZE + 3);
    rig.kick(0);
    // Whatever the device did with those, a good request still works.
    let used_before = rig.used(0).len();
    assert!(used_before <= 2);
    assert_eq!(rig.request(REQ_TYPE_FLUSH, 2), (4, RESP_OK));
    assert_eq!(rig.r(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_reset_driver_sets_the_device_up_again() {
    let mut rig = Rig::new();
    assert_eq!(rig.request(REQ_TYPE_FLUSH, 0), (4, RESP_OK));
    rig.w(0x70, 0);
    assert!(!rig.dev.lock().unwrap().is_activated());
    // Kicks while reset are ignored.
    rig.kick(0);
    rig.clear_queues();
    rig.driver_init();
    assert_eq!(rig.request(REQ_TYPE_FLUSH, 0), (4, RESP_OK));
}

#[test]
fn a_driver_without_version_1_is_refused() {
    let mem = create_guest_memory(RAM_MIB).unwrap();
    let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let pmem = Pmem::new(START, SIZE, interrupt.clone()).unwrap();
    let mut t = MmioTransport::new(pmem, mem.clone(), interrupt);
    for s in [0u32, 1, 3] {
        t.write(0x70, &s.to_le_bytes());
    }
    t.write(0x20, &0u32.to_le_bytes());
    t.write(0x70, &11u32.to_le_bytes());
    assert_eq!(t.status() & status::FEATURES_OK, 0);
}

/// A tiny real-mode guest on /dev/kvm (any KVM, PVM included) reads two
/// bytes of an image file mapped as a read-only memory slot and writes one:
/// the reads see the file, the write exits to the VMM's MMIO bus where the
/// guard discards and counts it, and the file is unchanged.
#[test]
fn a_guest_store_to_the_read_only_slot_exits_and_is_discarded() {
    let (kvm, kind) = silo_vmm::kvm::open().expect("this test needs a usable /dev/kvm");
    assert!(
        kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem),
        "KVM_CAP_READONLY_MEM missing on this host ({kind:?})"
    );
    let dir = std::env::temp_dir().join(format!("silo-pmem-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image");
    let content: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let image = ImageMapping::open(&path).unwrap();

    let vm = kvm.create_vm().unwrap();
    let ram = create_guest_memory(32).unwrap();
    let host = ram.get_host_address(GuestAddress(0)).unwrap();
    const IMAGE_AT: u64 = 0x20_0000;
    // SAFETY: `ram` and `image` outlive the VM in this test; the first
    // 2 MiB of RAM and the image are distinct live mappings.
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: IMAGE_AT,
            userspace_addr: host as u64,
            flags: 0,
        })
        .unwrap();
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 1,
            guest_phys_addr: IMAGE_AT,
            memory_size: image.len(),
            userspace_addr: image.host_addr(),
            flags: KVM_MEM_READONLY,
        })
        .unwrap();
    }
    // The slot at 2 MiB is past real mode's reach: the code uses 32-bit
    // offsets (`addr32` prefixes) over a data segment whose limit is set to
    // 4 GiB below ("unreal mode").
    let code: &[u8] = &[
        0x66, 0xbb, 0x00, 0x00, 0x20, 0x00, // mov ebx, 0x200000
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x67, 0x8a, 0x03, // mov al, [ebx]
        0xee, // out dx, al
        0x67, 0xc6, 0x43, 0x01, 0x77, // mov byte [ebx+1], 0x77
        0x67, 0x8a, 0x43, 0x01, // mov al, [ebx+1]
        0xee, // out dx, al
        0xf4, // hlt
    ];
    ram.write_slice(code, GuestAddress(0x1000)).unwrap();
    let fd = vm.create_vcpu(0).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    // "Unreal mode": DS covers 4 GiB, so 32-bit offsets reach the slot.
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    sregs.ds.limit = 0xffff_ffff;
    sregs.ds.g = 1;
    fd.set_sregs(&sregs).unwrap();
    let mut regs = fd.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    fd.set_regs(&regs).unwrap();

    struct Recorder(Vec<u8>);
    impl BusDevice for Recorder {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }
    let rec = Arc::new(Mutex::new(Recorder(vec![])));
    let mut pio = Bus::new();
    pio.insert(rec.clone(), 0x3f8, 8).unwrap();
    let guard = PmemRegionGuard::new(IMAGE_AT);
    let writes = guard.discarded_writes();
    let mut mmio = Bus::new();
    mmio.insert(Arc::new(Mutex::new(guard)), IMAGE_AT, image.len())
        .unwrap();
    let mut vcpu = Vcpu::new(
        fd,
        0,
        pio,
        mmio,
        Arc::new(AtomicBool::new(false)),
        Arc::new(OnceLock::new()),
    );
    // Under the vCPU thread's seccomp filter, as in the VMM: the discarded
    // store needs no system call the filter forbids (else SIGSYS kills the
    // test process).
    let prog = filter(ThreadKind::Vcpu, std::process::id() as libc::pid_t).unwrap();
    let stop = std::thread::spawn(move || {
        seccompiler::apply_filter(&prog).unwrap();
        vcpu.run()
    })
    .join()
    .unwrap();
    assert_eq!(stop, VcpuStop::Halted);
    assert_eq!(
        rec.lock().unwrap().0,
        vec![content[0], content[1]],
        "the guest read the file through the slot, before and after its store"
    );
    assert_eq!(
        writes.load(Ordering::Relaxed),
        1,
        "one store, one MMIO exit"
    );
    assert_eq!(image.as_slice()[1], content[1]);
    drop(image);
    assert_eq!(std::fs::read(&path).unwrap(), content, "the file changed");
    std::fs::remove_dir_all(&dir).unwrap();
}
