#!/usr/bin/env bash
# Builds a Debian package of hangard and hangar from the workspace:
# target/debian/hangar_<version>_<arch>.deb, which installs with
#   apt install ./target/debian/hangar_*.deb
# hangard and hangar in /usr/bin, a systemd unit (enabled and started where
# systemd runs), /etc/default/hangard for its settings, and logrotate for
# /var/log/hangard.log. Prints the package's path.
#
# With HANGAR_BIN_DIR set it packages the hangard and hangar found there,
# uncompressed, instead of building them (what the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
compress=()
BIN=${HANGAR_BIN_DIR:-}
if [ -z "$BIN" ]; then
    echo "==> building hangard and hangar (release)" >&2
    cargo build --release --bins --quiet
    BIN=target/release
else
    compress=(-Znone)
fi

root=target/debian/hangar_${version}_${arch}
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/logrotate.d" "$root/etc/default" "$root/usr/share/doc/hangar"
install -m 0755 "$BIN/hangard" "$BIN/hangar" "$root/usr/bin/"
sed 's|@BINDIR@|/usr/bin|' packaging/hangard.service >"$root/lib/systemd/system/hangard.service"
install -m 0644 packaging/hangard.logrotate "$root/etc/logrotate.d/hangard"
install -m 0644 packaging/hangard.default "$root/etc/default/hangard"
install -m 0644 README.md "$root/usr/share/doc/hangar/README.md"
printf '/etc/default/hangard\n/etc/logrotate.d/hangard\n' >"$root/DEBIAN/conffiles"

cat >"$root/DEBIAN/control" <<CONTROL
Package: hangar
Version: $version
Architecture: $arch
Maintainer: Hangar developers <hangar@localhost>
Depends: crun | runc, nftables, iproute2, util-linux, e2fsprogs, ca-certificates
Recommends: logrotate
Suggests: wireguard-tools, wireguard-go, postgresql, buildah, skopeo, prometheus
Section: admin
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Description: self-hosted machines platform with Fly's Machines API
 hangard serves Fly's Machines API (v1) over machines it runs from OCI
 images with crun or runc, routes traffic to them through its proxy, and
 keeps its state in SQLite (several hosts share PostgreSQL). hangar is its
 command line, shaped like flyctl.
CONTROL

cat >"$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    mkdir -p /var/lib/hangar
    chmod 0700 /var/lib/hangar
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        systemctl enable hangard.service >/dev/null 2>&1 || true
        systemctl restart hangard.service || true
    else
        echo "hangard is installed; systemd does not run here: start it with hangard (see hangard --help)"
    fi
fi
SCRIPT
cat >"$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
# Stopping hangard leaves its machines running (KillMode=process).
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now hangard.service >/dev/null 2>&1 || true
fi
SCRIPT
cat >"$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
# /var/lib/hangar (machines, volumes, images, the admin token) is kept,
# purged or not: it is the user's data.
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

dpkg-deb "${compress[@]}" --root-owner-group --build "$root" "target/debian/" >/dev/null
echo "target/debian/hangar_${version}_${arch}.deb"
