#!/usr/bin/env bash
# The README's setup-and-run command, on a fresh Debian bookworm machine as
# root: install what husk needs, build it (shim, agent, VMM, guest kernel and
# initrd), start containerd with a private config (the same environment the
# tests use: nothing of the system's containerd is touched), run a container
# through containerd with husk, print what it printed, and stop again.
#
# What runs today: the shim in host runc mode (handler husk-runc). The
# microVM mode (handler husk) lands with issue 5; until then this script also
# boots the built guest kernel + initrd with husk-vmm once, to show that half.
#
# usage: scripts/quickstart.sh            (keeps nothing running afterwards)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "quickstart: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root: containerd and KVM need it"; exit 1; }
command -v cargo >/dev/null || { log "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }

log "building husk (release shim, husk CLI, husk-vmm)"
cargo build --release -p husk-shim -p husk-vmm
log "building the guest image (kernel is cached after the first build)"
guest-image/build.sh

trap 'scripts/test-env.sh down >/dev/null 2>&1 || true' EXIT
HUSK_SHIM_PROFILE=release scripts/test-env.sh up

sock=/run/husk-test/containerd-1.6/containerd.sock
log "ctr run --runtime io.containerd.husk.v2 (runc mode)"
ctr --address "$sock" run --rm \
	--runtime io.containerd.husk.v2 \
	--runtime-config-path /run/husk-test/containerd-1.6/husk-runc.toml \
	localhost/busybox:local husk-quickstart \
	sh -c 'echo "hello from a husk container (runc mode), pid $$"; uname -r'

log "husk-vmm: booting the guest kernel and initrd (emulated KVM here: ~10-40 s)"
console=$(mktemp)
set +e
timeout 180 target/release/husk-vmm --kernel target/guest/vmlinux \
	--initrd target/guest/initrd.cpio --mem-mib 128 --vcpus 1 \
	--console "$console" &
vmm=$!
for _ in $(seq 1 180); do
	grep -q 'husk-agent .* started' "$console" 2>/dev/null && break
	sleep 1
done
kill "$vmm" 2>/dev/null; wait "$vmm" 2>/dev/null
set -e
grep -m1 'husk-agent .* started' "$console" || { log "the guest did not reach the agent; console: $console"; exit 1; }
rm -f "$console"
