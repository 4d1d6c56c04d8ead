#!/usr/bin/env bash
# Fetch the KVM test host's kernel and KVM modules from Debian's packages.
#
# Usage: images/testhost/fetch.sh [CACHE_DIR]
# Prints the directory holding `vmlinuz` and `modules/*.ko` on its last line.
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
if ((${#need[@]})); then
  log "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q >&2
  $sudo_cmd apt-get install -y -q "${need[@]}" >&2
fi

if [[ -f "$out/vmlinuz" && -f "$out/modules/kvm-amd.ko" ]]; then
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
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
  f="$(find root/lib/modules -path "*/kernel/$m.ko*" | head -1)"
  [[ -n "$f" ]] || { log "module $m not found in $versioned"; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" > "$stage/modules/$(basename "$m").ko" ;;
    *.zst) zstd -dc "$f" > "$stage/modules/$(basename "$m").ko" ;;
    *) cp "$f" "$stage/modules/$(basename "$m").ko" ;;
  esac
done
echo "$versioned" > "$stage/PACKAGE"
rm -rf "$out"
mv "$stage" "$out"
log "test host kernel ready: $versioned"
echo "$out"
