//! End to end: silo's VMM boots silo's guest kernel (both vmlinux and
//! bzImage) with a small initramfs; the guest's kernel banner and a line from
//! its userspace arrive on the serial console, then the guest reboots and the
//! VMM exits cleanly.

mod common;

use std::time::Duration;

use common::{run_with_kvm, WorkFile};

const GUEST_INIT: &str = r#"
/bin/busybox mount -t proc proc /proc
echo "SILO_GUEST_USERSPACE uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
"#;

fn boot(kernel_name: &str) {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).expect("guest initramfs");
    let script = format!(
        "silo-vmm --kernel {kernel_name} --initrd guest.cpio --mem-mib 128 --vcpus 2 --timeline \
         --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off'; echo VMM_EXIT=$?"
    );
    let run = run_with_kvm(
        vec![
            (
                kernel_name,
                WorkFile::Host(match kernel_name {
                    "vmlinux" => kernel.vmlinux,
                    _ => kernel.bz_image,
                }),
            ),
            ("guest.cpio", WorkFile::Bytes(initrd)),
        ],
        &script,
        Duration::from_secs(300),
    );
    let out = &run.output;
    assert!(
        out.contains("Linux version 6.1"),
        "no kernel banner:\n{out}"
    );
    assert!(
        out.contains("SILO_GUEST_USERSPACE uptime="),
        "no userspace line:\n{out}"
    );
    assert!(
        out.contains("VMM_EXIT=0"),
        "VMM did not exit cleanly:\n{out}"
    );
    assert!(out.contains("SILO_TIMELINE {"), "no timeline:\n{out}");
    assert!(
        out.contains("Brought up 1 node, 2 CPUs"),
        "both vCPUs came up (MP table):\n{out}"
    );
    assert!(out.contains("x2apic enabled"), "x2APIC in use:\n{out}");
    // With ARAT in CPUID leaf 6 the guest's early tick is the TSC-deadline
    // LAPIC timer, not the PIT: no IO-APIC timer check runs.
    assert!(
        !out.contains("..TIMER: vector="),
        "the guest fell back to the PIT (no ARAT in CPUID):\n{out}"
    );
    assert_eq!(run.exit_code, 0);
}

#[test]
fn vmm_boots_vmlinux_to_userspace_and_exits_on_reboot() {
    boot("vmlinux");
}

#[test]
fn vmm_boots_bzimage_to_userspace_and_exits_on_reboot() {
    boot("bzImage");
}
