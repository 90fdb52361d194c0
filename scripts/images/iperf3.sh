#!/usr/bin/env bash
# Builds localhost/iperf3:local for the network benchmark: Debian's iperf3
# with the shared libraries ldd names, plus busybox (shell and applets).
# busybox `nc` reads 1 KiB per system call, which on an emulating KVM
# measures the guest's system-call cost, not the network; iperf3 moves
# 128 KiB per call.
# usage: iperf3.sh <out-dir>   (writes iperf3.tar there; needs iperf3, busybox-static)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT

bin=$(command -v iperf3) || { echo "missing iperf3: apt-get install iperf3" >&2; exit 1; }
mkdir -p "$r"/{bin,dev,etc,proc,sys,tmp,root,usr/bin}
chmod 1777 "$r/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
cp /bin/busybox "$r/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
done
cp "$bin" "$r/usr/bin/iperf3"
# the loader and every library, at the paths the binary asks for
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
	mkdir -p "$r$(dirname "$lib")"
	cp -L "$lib" "$r$lib"
done
"$here/oci-layout.sh" "$r" localhost/iperf3:local "$out/iperf3.tar" '["/usr/bin/iperf3"]'
