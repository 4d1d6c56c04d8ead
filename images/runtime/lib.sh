# Shell functions shared by the runtime recipes (images/runtime/<name>.sh),
# which source this file after setting `runtime` (the runtime id, e.g.
# python3.11), `here` (this directory), `cache` (the cache directory) and
# `pkgs` (the Debian packages to take). Each recipe hashes this file into
# its cache key: editing it rebuilds every runtime.

# A progress line on stderr.
log() { echo "[runtime $runtime] $*" >&2; }

# Sets `inputs` to one line "package version sha256" per Debian package of
# `pkgs`, as apt knows them; updates apt's package lists first if some are
# unknown, and fails if some still are.
resolve_debian_packages() {
  local sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  inputs="$(debian_package_lines)"
  if [[ $(wc -l <<<"$inputs") -ne ${#pkgs[@]} ]]; then
    log "updating Debian's package lists"
    $sudo_cmd apt-get update -q >&2
    inputs="$(debian_package_lines)"
  fi
  [[ $(wc -l <<<"$inputs") -eq ${#pkgs[@]} ]] || { log "some packages are unknown to apt: $inputs"; exit 1; }
}

# Prints "package version sha256" for each package of `pkgs` apt knows.
debian_package_lines() {
  apt-cache show --no-all-versions "${pkgs[@]}" 2>/dev/null \
    | awk '/^Package:/{p=$2} /^Version:/{v=$2} /^SHA256:/{s=$2} /^$/{if(p&&v&&s) print p, v, s; p=v=s=""}
           END{if(p&&v&&s) print p, v, s}'
}

# Sets `out` to the cache entry `$cache/$runtime-<key>`, the key hashing the
# files given (the recipe, this file and the recipe's other inputs) and
# `inputs`. If that entry is complete, prints it and exits; else makes a
# build directory `work` (removed on exit) and changes into it.
enter_build() {
  local key
  key="$( { cat "$@"; echo "$inputs"; } | sha256sum | cut -c1-16)"
  out="$cache/$runtime-$key"
  if [[ -f "$out/rt/silo-runtime.json" && -f "$out/rt.cpio" ]]; then
    echo "$out"
    exit 0
  fi
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/$runtime-build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  cd "$work"
}

# Downloads the Debian packages of `inputs` into `debs/` (apt-get download
# checks each file against the archive's signed SHA-256) and unpacks them
# all into `root/` (dpkg-deb -x, no install).
fetch_debian_packages() {
  mkdir debs root
  (cd debs && while read -r p v _; do
    log "downloading $p $v"
    apt-get download -qq -o APT::Sandbox::User=root "$p=$v" >&2
  done <<<"$inputs")
  for d in debs/*.deb; do dpkg-deb -x "$d" root; done
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
# `SIZE_KIB` and the LINEs in `INPUTS`, moves `$work/out` to the cache
# entry `out` and prints that (the recipe's last line).
publish() {
  local rt="$work/out/rt"
  find "$rt" -exec touch -h -d @0 {} +
  chmod -R u+rwX,go+rX,go-w "$rt"
  (cd "$work/out" && find rt | sort | cpio --quiet -o -H newc --reproducible -R 0:0 > rt.cpio)
  touch -d @0 "$work/out/rt.cpio"
  du -sk "$rt" | awk '{print $1}' > "$work/out/SIZE_KIB"
  printf '%s\n' "$@" > "$work/out/INPUTS"
  rm -rf "$out"
  mv "$work/out" "$out"
  log "ready: $(cat "$out/SIZE_KIB") KiB in $(find "$out/rt" | wc -l) files ($out)"
  echo "$out"
}
