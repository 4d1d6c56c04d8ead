//! End to end: a guest on silo's virtio-net. In the KVM test host the
//! script creates a persistent tap with 169.254.0.1/30 on it (as the daemon
//! does for a VM), listens on TCP port 7777 there, and boots silo-vmm with
//! `--net-tap`; the guest's kernel configures eth0 from `ip=` on its
//! command line (no DHCP, no tools), then the guest pings 169.254.0.1
//! (ARP and ICMP both ways) and sends a line over TCP, which the listener
//! on the tap's address receives. A second run with no `--net-tap` shows
//! the guest has no eth0 at all. A third test runs the VMM jailed (its own
//! uid, root and namespaces) with its seccomp filters, joining a prepared
//! network namespace with `--jail-netns`, where the tap lives, and with
//! rate limits on.

mod common;

use std::time::Duration;

use common::{run_with_kvm, section, WorkFile};

const GUEST_INIT: &str = r#"
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo GUEST_BEGIN
/bin/busybox ip addr show eth0 2>&1
/bin/busybox ip route 2>&1
if [ -e /sys/class/net/eth0 ]; then
  /bin/busybox ping -c 3 -W 5 169.254.0.1 2>&1
  echo SILO_NET_HELLO_FROM_GUEST | /bin/busybox timeout 10 /bin/busybox nc 169.254.0.1 7777
  echo "nc exit=$?"
else
  echo GUEST_HAS_NO_ETH0
fi
echo GUEST_END
/bin/busybox reboot -f
"#;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off \
                       ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off";

#[test]
fn a_guest_on_virtio_net_reaches_the_tap_address_and_only_with_a_tap() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).expect("guest initramfs");
    let testhost = silo_images::testhost::image().expect("test host image");
    let script = format!(
        "insmod tun.ko 2>/dev/null; ls -l /dev/net/tun || echo NO_DEV_NET_TUN
tunctl -t silotap0 || echo TUNCTL_FAILED
ip addr add 169.254.0.1/30 dev silotap0
ip link set silotap0 up
timeout 120 nc -l -p 7777 > got.txt &
echo RUN_WITH_NET
silo-vmm --kernel vmlinux --initrd guest.cpio --mem-mib 128 --net-tap silotap0 \
  --cmdline '{CMDLINE}'; echo VMM_EXIT=$?
sleep 1
echo LISTENER_BEGIN; cat got.txt; echo LISTENER_END
echo RUN_WITHOUT_NET
silo-vmm --kernel vmlinux --initrd guest.cpio --mem-mib 128 \
  --cmdline '{CMDLINE}'; echo VMM_EXIT_NO_NET=$?
echo SCRIPT_END"
    );
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("guest.cpio", WorkFile::Bytes(initrd)),
            ("tun.ko", WorkFile::Host(testhost.join("modules/tun.ko"))),
        ],
        &script,
        Duration::from_secs(600),
    );
    let out = &run.output;
    let with_net = section(out, "RUN_WITH_NET", "RUN_WITHOUT_NET");
    assert!(
        with_net.contains("IP-Config: Complete"),
        "the kernel did not configure eth0 from ip=:\n{out}"
    );
    assert!(
        with_net.contains("06:00:a9:fe:00:02"),
        "eth0 has the default MAC:\n{out}"
    );
    assert!(
        with_net.contains("inet 169.254.0.2/30"),
        "eth0 has its address:\n{out}"
    );
    assert!(
        with_net.contains("default via 169.254.0.1"),
        "the default route goes through the tap's address:\n{out}"
    );
    assert!(
        with_net.contains("3 packets transmitted, 3 packets received"),
        "ping through the tap:\n{out}"
    );
    assert!(with_net.contains("VMM_EXIT=0"), "VMM exit:\n{out}");
    let got = section(out, "LISTENER_BEGIN", "LISTENER_END");
    assert!(
        got.contains("SILO_NET_HELLO_FROM_GUEST"),
        "the guest's TCP line reached the listener on the tap's address:\n{out}"
    );
    let without = section(out, "RUN_WITHOUT_NET", "SCRIPT_END");
    assert!(
        without.contains("GUEST_HAS_NO_ETH0"),
        "a guest without --net-tap has no eth0:\n{out}"
    );
    assert!(without.contains("VMM_EXIT_NO_NET=0"), "VMM exit:\n{out}");
}

#[test]
fn a_jailed_vmm_joins_the_prepared_network_namespace_and_serves_its_tap() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).expect("guest initramfs");
    let testhost = silo_images::testhost::image().expect("test host image");
    // The namespace is held by a sleeping process; /proc/PID/ns/net is an
    // nsfs file like /run/netns/NAME. The tap exists only in there.
    let script = format!(
        "insmod tun.ko 2>/dev/null
unshare -n sleep 600 &
NSPID=$!
sleep 1
in_ns() {{ nsenter -t $NSPID -n \"$@\"; }}
in_ns tunctl -t silotap0 || echo TUNCTL_FAILED
in_ns ip addr add 169.254.0.1/30 dev silotap0
in_ns ip link set silotap0 up
ip link show silotap0 >/dev/null 2>&1 && echo TAP_VISIBLE_OUTSIDE
(in_ns timeout 120 nc -l -p 7777 > got.txt &)
mkdir -p /run/vm1 && chown 1000:1000 /run/vm1
echo RUN_JAILED
silo-vmm --kernel vmlinux --initrd guest.cpio --mem-mib 128 --net-tap silotap0 \
  --net-pps 50 --net-rx-rate 1000000,100000 --net-tx-rate 1000000 \
  --cmdline '{CMDLINE}' --managed \
  --jail-root /run/vm1 --jail-uid 1000 --jail-gid 1000 --jail-netns /proc/$NSPID/ns/net
echo VMM_EXIT=$?
sleep 1
echo LISTENER_BEGIN; cat got.txt; echo LISTENER_END
kill $NSPID"
    );
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("guest.cpio", WorkFile::Bytes(initrd)),
            ("tun.ko", WorkFile::Host(testhost.join("modules/tun.ko"))),
        ],
        &script,
        Duration::from_secs(600),
    );
    let out = &run.output;
    assert!(!out.contains("TUNCTL_FAILED"), "tap setup:\n{out}");
    assert!(
        !out.contains("TAP_VISIBLE_OUTSIDE"),
        "the tap is only in the VM's namespace:\n{out}"
    );
    let jailed = section(out, "RUN_JAILED", "LISTENER_BEGIN");
    assert!(
        jailed.contains("IP-Config: Complete"),
        "eth0 configured from ip=:\n{out}"
    );
    assert!(
        jailed.contains("3 packets transmitted, 3 packets received"),
        "ping through the tap in the joined namespace:\n{out}"
    );
    assert!(jailed.contains("VMM_EXIT=0"), "VMM exit:\n{out}");
    let got = section(out, "LISTENER_BEGIN", "LISTENER_END");
    assert!(
        got.contains("SILO_NET_HELLO_FROM_GUEST"),
        "the guest's TCP line reached the namespace's listener:\n{out}"
    );
}
