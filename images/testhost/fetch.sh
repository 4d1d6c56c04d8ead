#!/usr/bin/env bash
# Fetch the KVM test host's kernel and KVM modules from Debian's packages.
#
# Usage: images/testhost/fetch.sh [CACHE_DIR]
# Prints the directory holding `vmlinuz`, `modules/*.ko` (KVM, virtio-net, tun,
# veth, nftables), `modules/net.order` (networking modules in load order) and
# `modules/nft.order` (what silo's `[network]` needs: veth and the nftables
# modules its rulesets use, with their dependencies, in load order) and
# `modules/swap.order` (zram with its allocator and compressor, in load
# order: the swap that idle reclaim pages VMs out to) on its last line.
# Installs qemu-system-x86, busybox-static and cpio when missing. Cached by
# the hash of this script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${1:-${SILO_CACHE_DIR:-$HOME/.cache/silo}}"
key="$(sha256sum "$here/fetch.sh" | cut -c1-16)"
out="$cache/testhost-$key"
log() { echo "[testhost] $*" >&2; }

sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || [[ -x /usr/sbin/depmod ]] || need+=(kmod)
if ((${#need[@]})); then
  log "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q >&2
  $sudo_cmd apt-get install -y -q "${need[@]}" >&2
fi

if [[ -f "$out/vmlinuz" && -f "$out/modules/kvm-amd.ko" && -f "$out/modules/net.order" \
      && -f "$out/modules/nft.order" && -f "$out/modules/swap.order" ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/testhost-fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading Debian's cloud kernel (linux-image-cloud-amd64)"
apt-get download linux-image-cloud-amd64 >&2 2>/dev/null || { $sudo_cmd apt-get update -q >&2; apt-get download linux-image-cloud-amd64 >&2; }
versioned="$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64' | head -1)"
[[ -n "$versioned" ]] || { log "cannot find the versioned kernel package"; exit 1; }
apt-get download "$versioned" >&2 2>/dev/null
dpkg-deb -x "$versioned"_*.deb root
stage="$work/out"
mkdir -p "$stage/modules"
cp root/boot/vmlinuz-* "$stage/vmlinuz"
# Extracts module $1 (path under kernel/, no suffix) as modules/<name>.ko,
# decompressing it if needed. Returns 1 when the package has no such module.
extract() {
  local f name
  f="$(find root/lib/modules -path "*/kernel/$1.ko*" | head -1)"
  [[ -n "$f" ]] || return 1
  name="$(basename "$1")"
  case "$f" in
    *.xz) xz -dc "$f" > "$stage/modules/$name.ko" ;;
    *.zst) zstd -dc "$f" > "$stage/modules/$name.ko" ;;
    *) cp "$f" "$stage/modules/$name.ko" ;;
  esac
}
# KVM: always loaded, in this order.
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
  extract "$m" || { log "module $m not found in $versioned"; exit 1; }
done
# virtio-net over PCI for user-mode networking (port forwarding), and tun
# (/dev/net/tun: the taps of silo's own virtio-net), in load order; a
# driver built into this kernel is simply not listed.
: > "$stage/modules/net.order"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/net/tun; do
  if extract "$m"; then
    basename "$m" >> "$stage/modules/net.order"
  elif ! grep -q "/$m.ko" root/lib/modules/*/modules.builtin 2>/dev/null; then
    log "module $m is neither in $versioned nor built in"; exit 1
  fi
done
# silo's [network] (opt-in for the tests that run it): veth, and the
# nftables pieces of its rulesets (named counters' objref, ct state,
# masquerade in nat chains, fib, and ctnetlink: a recycled slot's
# conntrack flush),
# each after what modules.dep (made here with depmod: the package ships
# none) says it needs; built-in ones are simply not listed.
kver="$(ls root/lib/modules | head -1)"
PATH="$PATH:/usr/sbin:/sbin" depmod -b root "$kver"
dep="root/lib/modules/$kver/modules.dep"
: > "$stage/modules/nft.order"
for m in veth nf_tables nft_objref nft_ct nft_chain_nat nft_masq nft_fib_inet nf_conntrack_netlink; do
  line="$(grep -E "/$m\.ko(\.[a-z]+)?:" "$dep" || true)"
  if [[ -z "$line" ]]; then
    grep -qE "/$m\.ko" root/lib/modules/*/modules.builtin || { log "module $m is neither in $versioned nor built in"; exit 1; }
    continue
  fi
  # modules.dep lists a module's whole dependency closure; loading it in
  # reverse order (as modprobe does) puts each before its users.
  for f in $(echo "${line#*:}" | tr ' ' '\n' | tac) "${line%%:*}"; do
    rel="${f#kernel/}"; rel="${rel%.ko*}"
    name="$(basename "$rel")"
    grep -qx "$name" "$stage/modules/nft.order" && continue
    extract "$rel" || { log "module $rel not found in $versioned"; exit 1; }
    echo "$name" >> "$stage/modules/nft.order"
  done
done
# Idle reclaim's swap (tests and benchmarks that page idle VMs out): zram,
# its allocator, and its default compressor (requested by name at run
# time: the test host has no modprobe, so it is loaded first).
: > "$stage/modules/swap.order"
for m in mm/zsmalloc crypto/lzo-rle drivers/block/zram/zram; do
  if extract "$m"; then
    basename "$m" >> "$stage/modules/swap.order"
  elif ! grep -q "/$m.ko" root/lib/modules/*/modules.builtin 2>/dev/null; then
    log "module $m is neither in $versioned nor built in"; exit 1
  fi
done
echo "$versioned" > "$stage/PACKAGE"
rm -rf "$out"
mv "$stage" "$out"
log "test host kernel ready: $versioned"
echo "$out"
