# Sourced by the demo scripts: `build_demo_image DIR PAGE` builds a small
# image from the host's busybox-static with umoci (no download) as the OCI
# layout DIR/image (tag `latest`), with PAGE as /www/index.html.
build_demo_image() {
    local work=$1 page=$2 applet
    mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/rootfs/www"
    cp /bin/busybox "$work/rootfs/bin/busybox"
    for applet in $("$work/rootfs/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$work/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/rootfs/etc/group"
    echo "$page" >"$work/rootfs/www/index.html"
    umoci init --layout "$work/image" >/dev/null
    umoci new --image "$work/image:latest" >/dev/null
    umoci insert --image "$work/image:latest" "$work/rootfs" / >/dev/null
    umoci config --image "$work/image:latest" --os linux --architecture amd64 \
        --config.cmd /bin/sh --config.env PATH=/bin --config.workingdir / >/dev/null
    umoci gc --layout "$work/image" >/dev/null
}
