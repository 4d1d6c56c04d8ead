# Shell functions shared by the runtime recipes (images/runtime/<name>.sh),
# which source this file after setting `runtime` (the runtime id, e.g.
# python3.11), `here` (this directory), `cache` (the cache directory) and
# `pins` (the file pinning the Debian packages to take, <runtime>.debs). Each recipe hashes this file into
# its cache key: editing it rebuilds every runtime.

# A progress line on stderr.
log() { echo "[runtime $runtime] $*" >&2; }

# Sets `inputs` to the Debian packages pinned in `pins` (the recipe's
# <runtime>.debs): one line "package version sha256" each; fails on a line
# of another shape.
read_debian_pins() {
  local p v s extra
  inputs="$(grep -v '^[[:space:]]*\(#\|$\)' "$pins")" || { log "$pins pins no package"; exit 1; }
  while read -r p v s extra; do
    [[ -n "$v" && "$s" =~ ^[0-9a-f]{64}$ && -z "$extra" ]] \
      || { log "$pins: bad line '$p $v $s $extra' (want: package version sha256)"; exit 1; }
  done <<<"$inputs"
}

# Sets `out` to the cache entry `$cache/$runtime-<key>`, the key hashing the
# files given (the recipe, this file and the recipe's other inputs, its
# pinned packages among them) and `inputs`. If that entry is complete (it
# has its manifest, the last file `publish` writes), prints it and exits:
# silo checks the files against the manifest before it uses them. Else,
# with SILO_RUNTIME_LOOKUP set, exits with status 3 (not built; how the
# daemon finds a built entry without ever building one); else makes a
# build directory `work` (removed on exit) and changes into it.
enter_build() {
  local key
  key="$( { cat "$@"; echo "$inputs"; } | sha256sum | cut -c1-16)"
  out="$cache/$runtime-$key"
  if [[ -f "$out/MANIFEST.sha256" && -f "$out/rt/silo-runtime.json" && -f "$out/rt.cpio" ]]; then
    echo "$out"
    exit 0
  fi
  [[ -z "${SILO_RUNTIME_LOOKUP:-}" ]] || exit 3
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/$runtime-build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  cd "$work"
}

# Downloads the Debian packages of `inputs` (the versions pinned in `pins`)
# into `debs/` with apt-get download (which checks each file against the
# archive's signed lists), refuses any whose SHA-256 is not the pinned one,
# and unpacks them all into `root/` (dpkg-deb -x, no install). Updates
# apt's package lists once if it does not know a pinned version; fails,
# saying how to re-pin, if Debian no longer offers it.
fetch_debian_packages() {
  local p v want got f updated=0
  mkdir debs root
  while read -r p v want; do
    log "downloading $p $v (Debian)"
    mkdir "debs/$p"
    until (cd "debs/$p" && apt-get download -qq -o APT::Sandbox::User=root "$p=$v" >&2 </dev/null); do
      if ((updated)); then
        log "Debian no longer offers $p $v (pinned in $pins): run images/runtime/pin-debs.sh $runtime, review and commit the new pins"
        exit 1
      fi
      log "updating Debian's package lists"
      apt_update
      updated=1
    done
    f="$(find "debs/$p" -name '*.deb')"
    [[ -n "$f" && $(wc -l <<<"$f") -eq 1 ]] || { log "apt-get download $p=$v left no single .deb: $f"; exit 1; }
    got="$(sha256sum "$f" | cut -d' ' -f1)"
    if [[ "$got" != "$want" ]]; then
      log "refusing $f: its SHA-256 is $got, $pins pins $p $v at $want"
      exit 1
    fi
  done <<<"$inputs"
  for f in debs/*/*.deb; do dpkg-deb -x "$f" root; done
}

# apt-get update, with sudo when not root.
apt_update() {
  local sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q >&2 </dev/null
}

# keep_needed_libraries LIBDIR ELF...: removes from LIBDIR every shared
# library outside the closure of DT_NEEDED from the ELF files given (the
# loader is always kept, and so is the real file a kept soname link points
# to); fails if a needed library is not in LIBDIR.
keep_needed_libraries() {
  local multi="$1"; shift
  needed() { objdump -p "$1" 2>/dev/null | awk '/NEEDED/{print $2}'; }
  local -A keep=([ld-linux-x86-64.so.2]=1)
  local queue=("$@") f lib n k linked
  while ((${#queue[@]})); do
    f="${queue[0]}"; queue=("${queue[@]:1}")
    while read -r lib; do
      [[ -n "$lib" && -z "${keep[$lib]:-}" ]] || continue
      [[ -e "$multi/$lib" ]] || { log "$f needs $lib, not in the tree"; exit 1; }
      keep[$lib]=1
      queue+=("$(readlink -f "$multi/$lib")")
    done < <(needed "$f")
  done
  for f in "$multi"/*; do
    n="$(basename "$f")"
    if [[ -z "${keep[$n]:-}" ]]; then
      # Keep the real file a kept soname link points to.
      linked=0
      for k in "${!keep[@]}"; do [[ "$(readlink -f "$multi/$k" 2>/dev/null)" == "$(readlink -f "$f")" ]] && linked=1; done
      ((linked)) || rm -rf "$f"
    fi
  done
}

# publish LINE...: makes the tree `$work/out/rt` reproducible (fixed times
# and modes), archives it as `rt.cpio` (sorted newc), records its size in
# `SIZE_KIB`, the LINEs in `INPUTS` and the SHA-256 of every regular file
# of the tree and of `rt.cpio` in `MANIFEST.sha256` (sha256sum's format;
# silo adds its shared image `rt.img` and checks each file it uses against
# it), moves `$work/out` to the cache entry `out` and prints that (the
# recipe's last line).
publish() {
  local rt="$work/out/rt"
  find "$rt" -exec touch -h -d @0 {} +
  chmod -R u+rwX,go+rX,go-w "$rt"
  (cd "$work/out" && find rt | sort | cpio --quiet -o -H newc --reproducible -R 0:0 > rt.cpio)
  touch -d @0 "$work/out/rt.cpio"
  du -sk "$rt" | awk '{print $1}' > "$work/out/SIZE_KIB"
  printf '%s\n' "$@" > "$work/out/INPUTS"
  (cd "$work/out" && { find rt -type f -print0 | sort -z | xargs -0 -r sha256sum; sha256sum rt.cpio; } > MANIFEST.sha256)
  rm -rf "$out"
  mv "$work/out" "$out"
  log "ready: $(cat "$out/SIZE_KIB") KiB in $(find "$out/rt" | wc -l) files ($out)"
  echo "$out"
}
