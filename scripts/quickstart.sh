#!/usr/bin/env bash
# The README's setup-and-run command, on a fresh Debian bookworm machine as
# root: install what husk needs, build it (shim, agent, VMM, guest kernel and
# initrd), start containerd with a private config (the same environment the
# tests use: nothing of the system's containerd is touched), run a container
# through containerd with husk, print what it printed, and stop again.
#
# The container runs in a KVM microVM (handler husk, mode = "vm"): the shim
# starts virtiofsd and husk-vmm with the guest kernel, and husk-agent in the
# guest runs the container. It prints the guest's kernel release, which ends
# in -husk (the host's does not), then a container of the same image in host
# runc mode (handler husk-runc) for comparison.
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
conf=/run/husk-test/containerd-1.6
log "husk check (vm mode config of the test environment)"
target/release/husk --config "$conf/husk.toml" check --containerd-config "$conf/config.toml" || true

log "ctr run --runtime io.containerd.husk.v2: a container in a microVM (emulated KVM here: 10-60 s to boot)"
ctr --address "$sock" run --rm \
	--runtime io.containerd.husk.v2 \
	--runtime-config-path "$conf/husk.toml" \
	localhost/busybox:local husk-quickstart-vm \
	sh -c 'echo "hello from a husk microVM: kernel $(uname -r), host $(uname -n)"'

log "the same image in host runc mode (handler husk-runc)"
ctr --address "$sock" run --rm \
	--runtime io.containerd.husk.v2 \
	--runtime-config-path "$conf/husk-runc.toml" \
	localhost/busybox:local husk-quickstart-runc \
	sh -c 'echo "hello from a husk container (runc mode): kernel $(uname -r)"'
log "done; the host kernel is $(uname -r)"
