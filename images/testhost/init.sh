#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "[testhost] no cgroup2"
ifconfig lo 127.0.0.1 up
# KVM takes the TSC frequency its guests' clocks are built on when it loads:
# load it only once this kernel has refined its TSC calibration (about 2 s
# after boot), never on the quick early estimate. Sessions whose KVM loaded
# on an early estimate that was off (2594.4 against 2596.1 MHz) ran every
# guest's timers and serial interrupts into stalls, under silo and under
# Firecracker alike. Up to 5 s; the values go in one log line.
i=0
until dmesg | grep -q 'Refined TSC clocksource calibration' || [ $i -ge 50 ]; do
  sleep 0.1; i=$((i+1))
done
echo "[testhost] tsc: $(dmesg | grep -oE '(Detected|calibration:) [0-9.]+ MHz' | tr '\n' ' ')after $((i / 10)).$((i % 10)) s"
for m in irqbypass kvm kvm-amd; do
  insmod /modules/$m.ko || echo "[testhost] insmod $m failed"
done
if [ -f /modules/net.order ]; then
  for m in $(cat /modules/net.order); do
    insmod /modules/$m.ko || echo "[testhost] insmod $m failed"
  done
  ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up || echo "[testhost] no eth0"
  route add default gw 10.0.2.2
fi
if [ -f /modules/nft.order ]; then
  for m in $(cat /modules/nft.order); do
    insmod /modules/$m.ko || echo "[testhost] insmod $m failed"
  done
fi
[ -c /dev/kvm ] || echo "[testhost] no /dev/kvm after loading kvm-amd"
echo SILO_TESTHOST_BEGIN
cd /work
sh /command.sh
echo "SILO_TESTHOST_EXIT=$?"
poweroff -f
