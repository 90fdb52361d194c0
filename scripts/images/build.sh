#!/usr/bin/env bash
# Builds the local test images (no registry is reachable):
#   localhost/busybox:local  Debian's busybox-static with its applet links
#   localhost/pause:local    a static pause program that blocks until SIGTERM
# usage: build.sh <out-dir>   (writes busybox.tar and pause.tar there)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

base_rootfs() {
	local r=$1
	mkdir -p "$r"/{bin,dev,etc,proc,sys,tmp,root}
	chmod 1777 "$r/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\n' >"$r/etc/group"
}

# busybox
bb=/bin/busybox
[ -x "$bb" ] || { echo "missing $bb: apt-get install busybox-static" >&2; exit 1; }
ldd "$bb" >/dev/null 2>&1 && { echo "$bb is not static: apt-get install busybox-static" >&2; exit 1; }
r="$work/busybox"
base_rootfs "$r"
cp "$bb" "$r/bin/busybox"
for applet in $("$bb" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
done
"$here/oci-layout.sh" "$r" localhost/busybox:local "$out/busybox.tar" '["/bin/sh"]'

# pause
r="$work/pause"
base_rootfs "$r"
cc -static -Os -o "$r/pause" "$here/pause.c"
"$here/oci-layout.sh" "$r" localhost/pause:local "$out/pause.tar" '["/pause"]'
