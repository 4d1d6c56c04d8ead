#!/usr/bin/env bash
# Build the silo guest kernel (vmlinux + bzImage) from Debian's linux-source-6.1.
#
# Usage: images/kernel/build.sh [CACHE_DIR]
# Prints the directory holding `vmlinux` and `bzImage` on its last line.
# The output directory is keyed by the hash of this script and the config
# fragment, so a second run with the same inputs is instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${1:-${SILO_CACHE_DIR:-$HOME/.cache/silo}}"
fragment="$here/silo-guest.config"
key="$(cat "$fragment" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache/kernel-$key"

if [[ -f "$out/vmlinux" && -f "$out/bzImage" ]]; then
  echo "$out"
  exit 0
fi

log() { echo "[kernel] $*" >&2; }

src_tar=/usr/src/linux-source-6.1.tar.xz
if [[ ! -f "$src_tar" ]]; then
  log "installing linux-source-6.1 and build tools from Debian"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q >&2
  $sudo_cmd apt-get install -y -q linux-source-6.1 bc bison flex libelf-dev libssl-dev xz-utils >&2
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/kernel-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "unpacking $src_tar"
tar -C "$work" -xf "$src_tar"
srcdir="$(echo "$work"/linux-source-6.1)"

log "configuring: tinyconfig + $(basename "$fragment")"
make -C "$srcdir" -s tinyconfig >&2
"$srcdir/scripts/kconfig/merge_config.sh" -m -O "$srcdir" "$srcdir/.config" "$fragment" >/dev/null
make -C "$srcdir" -s olddefconfig >&2

# Every option the fragment asks for must survive olddefconfig: a silently
# dropped option is a guest that cannot boot or cannot talk to the host.
missing=0
while IFS= read -r line; do
  if [[ "$line" =~ ^#\ CONFIG_([A-Z0-9_]+)\ is\ not\ set$ ]]; then
    opt="CONFIG_${BASH_REMATCH[1]}"; val=n
  elif [[ "$line" =~ ^CONFIG_([A-Z0-9_]+)=(.*)$ ]]; then
    opt="CONFIG_${BASH_REMATCH[1]}"; val="${BASH_REMATCH[2]}"
  else
    continue
  fi
  if [[ "$val" == "n" ]]; then
    if grep -q "^$opt=y" "$srcdir/.config"; then log "WARNING: $opt forced on"; fi
  elif ! grep -qx "$opt=$val" "$srcdir/.config"; then
    log "WARNING: $opt=$val did not survive olddefconfig"; missing=1
  fi
done < "$fragment"

jobs=$(( $(nproc) + 1 ))
log "building vmlinux and bzImage with -j$jobs (about 5 minutes on 2 cores)"
start=$(date +%s)
make -C "$srcdir" -j"$jobs" vmlinux bzImage 2>&1 | while IFS= read -r l; do
  case "$l" in *" LD "*|*"Kernel: "*|*error*|*Error*) echo "[kernel] $l" >&2 ;; esac
done
[[ ${PIPESTATUS[0]} -eq 0 ]] || { log "build failed"; exit 1; }
log "built in $(( $(date +%s) - start )) s"

stage="$work/out"
mkdir -p "$stage"
cp "$srcdir/vmlinux" "$stage/vmlinux"
cp "$srcdir/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$srcdir/.config" "$stage/config"
rm -rf "$out"
mv "$stage" "$out"
echo "$out"
