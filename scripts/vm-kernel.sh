#!/usr/bin/env bash
# Fetches Debian's cloud kernel for Hangar's microVMs into DIR (default
# /var/lib/hangar/vm-kernel, hangard's <data-dir>/vm-kernel): DIR/vmlinuz
# and its modules under DIR/lib/modules. Nothing is installed into /boot.
set -euo pipefail
dir=${1:-/var/lib/hangar/vm-kernel}
find_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
pkg=$(find_pkg)
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(find_pkg)
fi
[ -n "$pkg" ] || { echo "no linux-image-cloud-amd64 in the apt sources (apt-get update?)" >&2; exit 1; }
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1)
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
rm -rf "$dir/lib"
mkdir -p "$dir/lib"
cp -a "$tmp/x/lib/modules" "$dir/lib/"
cp "$tmp"/x/boot/vmlinuz-* "$dir/vmlinuz"
echo "guest kernel $pkg in $dir"
