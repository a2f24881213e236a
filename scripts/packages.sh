# Sourced by the scripts: `install_packages PKG...` installs with apt-get
# the Debian packages of the list that are not installed yet.
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# `install_qemu` installs qemu-system-x86 (for microVMs) from Debian 12's
# backports, beside the qemu-utils from backports that these machines come
# with: bookworm's own qemu-system-x86 (7.2) would remove that qemu-utils
# (it Breaks qemu-system-common < 8.0). Elsewhere (Debian 13 and later)
# the distribution's own qemu is new enough.
install_qemu() {
    command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null && return 0
    export DEBIAN_FRONTEND=noninteractive
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [ "$codename" = bookworm ]; then
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            cat > /etc/apt/sources.list.d/hangar-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
        echo "==> installing qemu-system-x86 qemu-utils (bookworm-backports)"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
    else
        install_packages qemu-system-x86 qemu-utils
    fi
}
