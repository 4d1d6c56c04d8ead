//! End to end: a real guest kernel's free page reporting reaches silo-vmm's
//! virtio-balloon (`--balloon --balloon-stats-file`), and what it reports
//! leaves the host's memory. The guest (busybox init) touches 40 MiB of
//! tmpfs, frees it, drops caches and compacts as the agent does when idle,
//! then waits; the host reads the device's counters from the stats file
//! and the VMM's `Rss` at each phase.

mod common;

use std::time::Duration;

use common::{run_with_kvm, WorkFile};

const GUEST_INIT: &str = r#"
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
P=/sys/module/page_reporting/parameters/page_reporting_order
echo "KERNEL_ORDER $(cat $P)"
# What the agent does once the balloon driver bound: re-apply the order
# of the command line (Linux 6.1 overwrites it when the driver registers).
n=$(sed -n 's/.*page_reporting.page_reporting_order=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$n" ] && echo $n > $P
echo "ORDER $(cat $P)"
ls /sys/bus/virtio/drivers/virtio_balloon/ | grep -q virtio && echo BALLOON_BOUND
mkdir -p /mnt
mount -t tmpfs -o size=100m tmpfs /mnt
dd if=/dev/zero of=/mnt/x bs=1M count=40 2>/dev/null
echo TOUCHED
sleep 2
rm /mnt/x
# The agent's idle reclaim.
echo 3 > /proc/sys/vm/drop_caches
echo 1 > /proc/sys/vm/compact_memory
sleep 10
echo IDLE_DONE
sleep 2
reboot -f
"#;

/// Host side, once per VMM flag set: the VMM in the background, its
/// counters (`od` of the stats file: magic, version, the 10 counters,
/// version) and `Rss` read when the guest has touched its 40 MiB and when
/// it has been idle after freeing them.
const SCRIPT: &str = r#"
for mode in huge small; do
  extra=""; [ $mode = small ] && extra=--small-pages
  rm -f console.log stats
  silo-vmm --kernel vmlinux --initrd guest.cpio --mem-mib 128 --balloon \
    --balloon-stats-file stats --balloon-report-order 5 $extra --serial file:console.log \
    --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off' &
  pid=$!
  at() {
    i=0; while ! grep -q "$1" console.log 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.5; i=$((i+1)); done
    echo "STATS $mode $1 $(od -An -tu8 -w8 -v -N 104 stats | tr -s ' \n' '  ')"
    echo "RSS $mode $1 $(grep '^Rss' /proc/$pid/smaps_rollup | tr -s ' ' | cut -d' ' -f2)"
  }
  at TOUCHED; at IDLE_DONE
  wait $pid; echo "VMM_EXIT $mode $?"
  sed "s/^/CONSOLE $mode /" console.log | grep -E 'ORDER|BALLOON'
done
"#;

/// Parses `STATS <mode> <phase> <13 words>` and `RSS <mode> <phase> <kB>`.
fn figures(out: &str, mode: &str, phase: &str) -> (Vec<u64>, u64) {
    let find = |what: &str| {
        let p = format!("{what} {mode} {phase} ");
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&p).map(str::to_string))
            .unwrap_or_else(|| panic!("no `{p}` line:\n{out}"))
    };
    let stats: Vec<u64> = find("STATS")
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(stats.len(), 13, "{out}");
    assert_eq!(&stats[0].to_le_bytes(), b"SILOBAL1", "{out}");
    assert_eq!(stats[1], stats[12], "a whole update: {out}");
    (stats[2..12].to_vec(), find("RSS").trim().parse().unwrap())
}

/// A 128 MiB guest with its reporting order at 5 (as the daemon starts
/// it): after it frees 40 MiB it touched and runs the agent's idle
/// reclaim, it reports them, the balloon gives at least 24 MiB back and
/// the VMM's `Rss` falls by as much; on huge pages and on small ones.
/// Before the order was re-applied after the driver bound, the kernel's
/// order was 10 (4 MiB blocks, a 128 MiB watermark) and such a guest never
/// reported at all.
#[test]
fn guest_reports_free_pages_and_they_leave_host_memory() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).expect("guest initramfs");
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("guest.cpio", WorkFile::Bytes(initrd)),
        ],
        SCRIPT,
        Duration::from_secs(900),
    );
    let out = &run.output;
    const MIB: u64 = 1 << 20;
    for mode in ["huge", "small"] {
        assert!(out.contains(&format!("VMM_EXIT {mode} 0")), "{out}");
        assert!(out.contains(&format!("CONSOLE {mode} ORDER 5")), "{out}");
        assert!(
            out.contains(&format!("CONSOLE {mode} BALLOON_BOUND")),
            "{out}"
        );
        let (_, rss_touched) = figures(out, mode, "TOUCHED");
        let (c, rss_idle) = figures(out, mode, "IDLE_DONE");
        let (reports, discarded, bad) = (c[0], c[4], c[6]);
        eprintln!(
            "{mode}: reports {reports}, pages reported {}, discarded {} MiB, kept {} KiB, \
             Rss {} -> {} MiB",
            c[2],
            discarded / MIB,
            c[5] / 1024,
            rss_touched / 1024,
            rss_idle / 1024
        );
        assert!(reports > 0, "{mode}: the guest never reported:\n{out}");
        assert_eq!(bad, 0, "{mode}: a real guest's ranges were refused:\n{out}");
        assert!(
            discarded >= 24 * MIB,
            "{mode}: too little given back:\n{out}"
        );
        assert!(
            rss_idle + 24 * 1024 <= rss_touched,
            "{mode}: the VMM's Rss did not fall ({rss_touched} -> {rss_idle} kB):\n{out}"
        );
    }
}
