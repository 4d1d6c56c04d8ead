#!/usr/bin/env bash
# Pins a runtime's Debian packages to the versions apt offers now: rewrites
# images/runtime/<runtime>.debs (its comment lines kept, one line
# "package version sha256" per package it names) from `apt-cache show`,
# after `apt-get update`. The recipe downloads exactly these versions and
# refuses a .deb whose SHA-256 differs, so this is the one way Debian inputs
# change: run it when Debian has moved on (the recipe then says so), review
# the diff (the versions, from the signed archive) and commit it.
#
# Usage: images/runtime/pin-debs.sh RUNTIME [PACKAGE...]
# PACKAGEs are added to the ones the file already names.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runtime="${1:?usage: pin-debs.sh RUNTIME [PACKAGE...]}"; shift
pins="$here/$runtime.debs"
[[ -f "$pins" || $# -gt 0 ]] || { echo "no $pins: name the packages to pin" >&2; exit 1; }
mapfile -t pkgs < <( { grep -sv '^[[:space:]]*\(#\|$\)' "$pins" || true; printf '%s\n' "$@"; } \
  | awk 'NF && !seen[$1]++ {print $1}')

sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
$sudo_cmd apt-get update -q >&2
lines="$(apt-cache show --no-all-versions "${pkgs[@]}" \
  | awk '/^Package:/{p=$2} /^Version:/{v=$2} /^SHA256:/{s=$2} /^$/{if(p&&v&&s) print p, v, s; p=v=s=""}
         END{if(p&&v&&s) print p, v, s}')"
[[ $(wc -l <<<"$lines") -eq ${#pkgs[@]} ]] || { echo "apt knows only: $lines" >&2; exit 1; }
tmp="$(mktemp "$pins.XXXXXX")"
{ grep -s '^[[:space:]]*#' "$pins" || true; echo "$lines"; } > "$tmp"
mv "$tmp" "$pins"
echo "pinned $(wc -l <<<"$lines") packages in $pins" >&2
