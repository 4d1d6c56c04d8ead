#!/usr/bin/env bash
# Builds the Debian package target/debian/silo_<version>-1_amd64.deb from
# this checkout: the static guest agent first (the package installs it at
# /usr/lib/silo/silo-guest-agent; cargo-deb builds only host binaries), then
# `cargo deb` (silo and silo-vmm, release). Needs cargo-deb:
# `cargo install cargo-deb`. Arguments go to cargo deb.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The same build silo's tests and `silo images build` make (artifacts.rs).
CARGO_TARGET_DIR="$root/target/static" \
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p silo-guest-agent
cargo deb --locked -p silo "$@"
