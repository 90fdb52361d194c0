#!/usr/bin/env bash
# The test command (README): install what the build and the tests need,
# build the workspace, start the test environment (containerd 1.6 and 2.x
# with private configs, local images), run every crate's tests, and stop the
# environment again whatever happened.
#
# usage: scripts/test.sh [extra cargo test args...]
#   HUSK_REQUIRE_PRIVILEGED=1  a test whose requirement (root, containerd,
#                              /dev/kvm, ...) is missing fails instead of skipping
#   CI=true                    build with --locked
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages the build and the tests use.
apt_packages=(
	build-essential pkg-config protobuf-compiler musl-tools jq
	containerd runc busybox-static containernetworking-plugins
	iproute2 procps util-linux bsdutils ca-certificates
	libseccomp-dev libcap-ng-dev qemu-system-x86 cpio python3
)

log() { echo "test.sh: $*" >&2; }

install_packages() {
	local missing=() p
	for p in "${apt_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

if [ "$(id -u)" != 0 ]; then
	log "run as root: the end-to-end tests start containerd and containers"
	exit 1
fi
command -v cargo >/dev/null || { log "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }

install_packages

locked=()
[ "${CI:-}" = true ] && locked=(--locked)

# virtiofsd (the virtio-fs file server husk-vmm talks to) is a crates.io binary.
if ! command -v virtiofsd >/dev/null && [ ! -x /usr/libexec/virtiofsd ]; then
	log "installing virtiofsd (cargo install, a few minutes)"
	cargo install --locked virtiofsd
fi

log "building the workspace"
cargo build "${locked[@]}" --workspace --all-targets

# The guest kernel (cached under /var/cache/husk, rebuilt only when its
# inputs change) and the initrd with the freshly built agent.
log "building the guest image"
guest-image/build.sh

# A previous run that was killed may have left the environment up.
scripts/test-env.sh down >/dev/null 2>&1 || true
trap 'scripts/test-env.sh down' EXIT
scripts/test-env.sh up

log "running the tests"
# --no-fail-fast: report every failing test binary, still exit non-zero
cargo test "${locked[@]}" --workspace --no-fail-fast "$@"
