#!/usr/bin/env bash
# Builds the `python3.11` runtime tree from registry packages only:
# Debian bookworm's CPython 3.11 and the libraries it loads (apt-get download
# + dpkg-deb -x, no install; versions and SHA-256 pinned in python3.11.debs) and the official runtime interface client
# `awslambdaric` with its dependencies (PyPI wheels, pinned by hash in
# python3.11.requirements.txt).
#
# Usage: images/runtime/python3.11.sh [CACHE_DIR]
# Prints the directory holding `rt/` (the tree, with `rt/silo-runtime.json`)
# and `rt.cpio` (the tree under /rt as an uncompressed newc archive) on its
# last line. Cached by the hash of this script, lib.sh (the functions the
# recipes share), the requirements file and the Debian pins; the entry's
# MANIFEST.sha256 records the SHA-256 of each file built.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${1:-${SILO_CACHE_DIR:-$HOME/.cache/silo}}"
runtime=python3.11

# The interpreter, its standard library, and every shared library its
# binary and the extension modules kept below load (checked with ldd),
# pinned by version and SHA-256.
pins="$here/python3.11.debs"

# shellcheck source=lib.sh
source "$here/lib.sh"
read_debian_pins
enter_build "$here/python3.11.sh" "$here/lib.sh" "$here/python3.11.requirements.txt" "$pins"
log "building: $(wc -l <<<"$inputs") Debian packages and 3 PyPI wheels"
fetch_debian_packages

log "downloading the runtime interface client (PyPI wheels, hash-pinned)"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --python-version 3.11 --implementation cp --abi cp311 --abi none \
  -r "$here/python3.11.requirements.txt" -d wheels >&2

rt="$work/out/rt"
mkdir -p "$rt/usr/bin" "$rt/usr/lib" "$rt/var/runtime"
# Merged /usr, as Debian installs it: everything under usr/.
cp -a root/usr/lib/. "$rt/usr/lib/"
cp -a root/lib/. "$rt/usr/lib/"
mkdir -p "$rt/usr/lib64"
cp -a root/lib64/. "$rt/usr/lib64/"
cp -a root/usr/bin/python3.11 "$rt/usr/bin/"
ln -s python3.11 "$rt/usr/bin/python3"
ln -s python3.11 "$rt/usr/bin/python"
ln -s usr/lib "$rt/lib"
ln -s usr/lib64 "$rt/lib64"
ln -s usr/bin "$rt/bin"

log "trimming the tree to what the runtime loads"
py="$rt/usr/lib/python3.11"
multi="$rt/usr/lib/x86_64-linux-gnu"
rm -rf "$py"/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,pydoc_data,venv,distutils} \
       "$py"/config-3.11-x86_64-linux-gnu "$py"/{turtle.py,pydoc.py,doctest.py,tabnanny.py} \
       "$py"/site-packages "$py"/dist-packages \
       "$rt/usr/lib/python3" "$multi"/gconv "$multi"/audit "$multi"/engines-3 "$multi"/ossl-modules \
       "$rt/usr/lib/gcc" "$rt/usr/lib/debug" "$rt/usr/lib/locale" "$rt/usr/lib/binfmt.d"
find "$py" -name '__pycache__' -prune -exec rm -rf {} +
find "$py" -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
# Extension modules whose libraries are not in the tree (terminal, dbm,
# sqlite, NIS, crypt): Lambda functions have no terminal; import fails
# with ModuleNotFoundError.
rm -f "$py"/lib-dynload/{_curses,_curses_panel,readline,_dbm,_gdbm,_sqlite3,nis,_crypt,_tkinter}.cpython-311-*.so
# Libraries nothing in the tree loads.
rm -f "$multi"/{libstdc++.so.6.*-gdb.py,libmemusage.so,libpcprofile.so,libSegFault.so}
rm -rf "$rt/usr/share"

log "unpacking the wheels into /var/runtime"
for w in wheels/*.whl; do python3 -m zipfile -e "$w" "$rt/var/runtime"; done
rm -rf "$rt"/var/runtime/*.dist-info/{RECORD,licenses,LICENSE*,NOTICE*}

log "keeping only the shared libraries the interpreter and its modules load"
# The closure of DT_NEEDED from the interpreter and every extension module;
# glibc 2.36 has NSS files/dns built in, so nothing else is dlopen'ed.
so_files=()
while IFS= read -r f; do so_files+=("$f"); done < <(find "$py/lib-dynload" "$rt/var/runtime" -name '*.so')
keep_needed_libraries "$multi" "$rt/usr/bin/python3.11" "${so_files[@]}"

log "compiling bytecode (the tree is read-only in the guest)"
# The tree's own interpreter, so the bytecode matches it; hash-based
# (unchecked) .pyc: reproducible, and never stat'ed against the source.
PYTHONHOME="$rt/usr" PYTHONNOUSERSITE=1 LD_LIBRARY_PATH="$multi" \
  "$rt/usr/lib64/ld-linux-x86-64.so.2" "$rt/usr/bin/python3.11" -m compileall -q -j0 \
  --invalidation-mode unchecked-hash -s "$rt" -p / -b "$py" >&2
PYTHONHOME="$rt/usr" PYTHONNOUSERSITE=1 LD_LIBRARY_PATH="$multi" \
  "$rt/usr/lib64/ld-linux-x86-64.so.2" "$rt/usr/bin/python3.11" -m compileall -q -j0 \
  --invalidation-mode unchecked-hash -s "$rt" -p / "$rt/var/runtime" >&2
# The standard library runs from its bytecode alone (beside where the source
# was): half the size; its frames in a traceback show no source line.
find "$py" -name '*.py' -exec sh -c 'for f; do [ -f "${f}c" ] && rm "$f"; done' sh {} +

cat > "$rt/silo-runtime.json" <<JSON
{
  "name": "python3.11",
  "exec": ["/usr/bin/python3.11", "-m", "awslambdaric"],
  "append_handler": true,
  "environment": {
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
    "PYTHONPATH": "/var/runtime",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    "PYTHONDONTWRITEBYTECODE": "1"
  },
  "links": [
    ["/usr", "usr"],
    ["/lib", "usr/lib"],
    ["/lib64", "usr/lib64"],
    ["/bin", "usr/bin"],
    ["/var/runtime", "var/runtime"]
  ]
}
JSON
publish "$inputs"
