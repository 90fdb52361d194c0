#!/usr/bin/env bash
# The end-to-end test environment: containerd 1.6 (Debian bookworm) and
# containerd 2.x (Debian unstable, extracted under /opt/husk-test) side by
# side, each with a private config (own root, state, sockets, runc root),
# the CRI plugin, the runtimes `husk` (vm mode; state under
# /run/husk-test/vm-<version>), `husk-runc`, and the fault-test variants
# `husk-nokernel` and `husk-noboot` (all io.containerd.husk.v2),
# a CNI bridge on a test-owned bridge/subnet, and the local test images.
#
# usage: scripts/test-env.sh up|down|status
#   up      install what is missing, start both containerds, import images
#   down    stop both, kill their leftovers, remove their state
#   status  print whether each containerd answers
#
# Environment:
#   CARGO_TARGET_DIR   where the husk binaries are built (default <repo>/target)
#   HUSK_SHIM_PROFILE  debug|release: which containerd-shim-husk-v2 the
#                      containerds run (default debug; switchable while up
#                      with `scripts/test-env.sh use-shim release`)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
run=/run/husk-test
lib=/var/lib/husk-test
c2=/opt/husk-test/containerd2
cni_bridge=husktest0
cni_subnet=10.88.77.0/24
# The host's address on the bridge (so tests can reach pods from the host)
# and where the pods' addresses start. Pods get no default route and the
# host no forwarding or NAT: test traffic stays on this bridge.
cni_host_addr=10.88.77.1/24
cni_range_start=10.88.77.2
# Not the default 1500, so a test can tell the CNI's MTU reached the guest.
cni_mtu=1400
versions=(1.6 2)

log() { echo "test-env: $*" >&2; }

bin_dir() { # containerd binaries for a version
	if [ "$1" = 1.6 ]; then echo /usr/bin; else echo "$c2/usr/bin"; fi
}
sock() { echo "$run/containerd-$1/containerd.sock"; }

install_missing() {
	local pkgs=() p
	for p in containerd runc busybox-static protobuf-compiler jq gcc libc6-dev containernetworking-plugins iproute2 procps; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
	done
	if [ ${#pkgs[@]} -gt 0 ]; then
		log "installing ${pkgs[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
	fi
	if [ ! -x "$c2/usr/bin/containerd" ]; then
		install_containerd2
	fi
}

# containerd 2.x from Debian unstable, pinned low so nothing else upgrades,
# unpacked (not installed) so the system's containerd 1.6 stays.
install_containerd2() {
	log "fetching containerd 2.x from Debian unstable into $c2"
	cat >/etc/apt/sources.list.d/husk-unstable.sources <<-EOF
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: unstable
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	cat >/etc/apt/preferences.d/husk-unstable <<-EOF
		Package: *
		Pin: release a=unstable
		Pin-Priority: 50
	EOF
	apt-get update -qq
	local dl
	dl=$(mktemp -d)
	chmod 755 "$dl"
	(cd "$dl" && apt-get download -qq containerd/unstable 2>/dev/null)
	local deb
	deb=$(ls "$dl"/containerd_2*.deb)
	mkdir -p "$c2"
	dpkg-deb -x "$deb" "$c2"
	rm -rf "$dl"
	"$c2/usr/bin/containerd" --version >&2
}

# use_shim <profile>|<path>: a cargo profile's build in the target dir
# (debug, release, ...) or the path of a containerd-shim-husk-v2 binary.
use_shim() {
	local profile=$1 bin="$target/$1/containerd-shim-husk-v2"
	case "$1" in */*) bin=$1 ;; esac
	mkdir -p "$run/bin"
	ln -sfn "$bin" "$run/bin/containerd-shim-husk-v2"
	[ -x "$bin" ] || log "warning: $bin is not built yet (cargo build${profile/debug/} -p husk-shim)"
	# the VM configs name the husk-vmm next to the shim: follow the switch
	local v
	for v in "${versions[@]}"; do
		[ -d "$run/containerd-$v" ] && write_husk_configs "$v"
	done
	return 0
}

write_husk_configs() {
	local v=$1 d="$run/containerd-$v"
	# runc mode: the husk-runc handler
	cat >"$d/husk-runc.toml" <<-EOF
		mode = "runc"
		log_level = "debug"
		state_root = "$d/husk"

		[runc]
		binary = "$(command -v runc)"
		root = "$d/husk-runc"
	EOF
	# microVM mode: the husk handler, and two broken variants for the fault
	# tests (husk-nokernel: a kernel path that does not exist; husk-noboot: a
	# guest whose agent listens on another vsock port, so the shim's connect
	# is never answered and the boot timeout must fire).
	# state_root is short: a CRI sandbox id has 64 characters, and
	# <state_root>/<id>/vsock.sock must fit a unix socket path (107 bytes).
	local s="$run/vm-$v"
	write_vm_config "$d/husk.toml" "$s" 200 "$repo/target/guest/vmlinux" ""
	write_vm_config "$d/husk-nokernel.toml" "$s" 200 /nonexistent/vmlinux ""
	write_vm_config "$d/husk-noboot.toml" "$s" 15 "$repo/target/guest/vmlinux" \
		"-- --listen vsock:1999"
}

# The directory of the shim binary containerd runs: husk-vmm is built with
# the same cargo profile next to it.
shim_dir() {
	local link="$run/bin/containerd-shim-husk-v2"
	if [ -e "$link" ]; then dirname "$(readlink -f "$link")"; else echo "$target/debug"; fi
}

virtiofsd_path() {
	command -v virtiofsd 2>/dev/null || {
		[ -x /usr/libexec/virtiofsd ] && echo /usr/libexec/virtiofsd
	} || echo "$HOME/.cargo/bin/virtiofsd"
}

# write_vm_config <file> <state root> <boot timeout s> <kernel> <kernel params>
write_vm_config() {
	local f=$1 state=$2 timeout=$3 kernel=$4 params=$5
	cat >"$f" <<-EOF
		mode = "vm"
		log_level = "debug"
		state_root = "$state"

		[vm]
		vmm = "$(shim_dir)/husk-vmm"
		virtiofsd = "$(virtiofsd_path)"
		kernel = "$kernel"
		initrd = "$repo/target/guest/initrd.cpio"
		mem_mib = 256
		boot_timeout_secs = $timeout
		kernel_params = "$params"
	EOF
}

# The CNI bridge, made before the plugin sees it so it carries the host's
# address (the plugin with isGateway=false leaves an existing bridge's
# addresses alone and does not touch ip_forward).
make_bridge() {
	if ! ip link show "$cni_bridge" >/dev/null 2>&1; then
		ip link add "$cni_bridge" type bridge
	fi
	ip link set "$cni_bridge" mtu "$cni_mtu"
	ip addr replace "$cni_host_addr" dev "$cni_bridge"
	ip link set "$cni_bridge" up
}

write_cni() {
	mkdir -p "$run/cni/net.d"
	cat >"$run/cni/net.d/10-husk-test.conflist" <<-EOF
		{
		  "cniVersion": "0.4.0",
		  "name": "husk-test",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "$cni_bridge",
		      "mtu": $cni_mtu,
		      "isGateway": false,
		      "ipMasq": false,
		      "ipam": {
		        "type": "host-local",
		        "ranges": [[{"subnet": "$cni_subnet", "rangeStart": "$cni_range_start"}]],
		        "dataDir": "$run/cni/ipam"
		      }
		    },
		    {"type": "loopback"}
		  ]
		}
	EOF
}

write_config_16() {
	local d="$run/containerd-1.6" p='plugins."io.containerd.grpc.v1.cri"'
	local rt="$p.containerd.runtimes"
	cat >"$d/config.toml" <<-EOF
		version = 2
		root = "$lib/containerd-1.6"
		state = "$d/state"
		oom_score = 0

		[grpc]
		  address = "$d/containerd.sock"
		[ttrpc]
		  address = "$d/containerd.sock.ttrpc"
		[debug]
		  address = ""
		  level = "info"
		[metrics]
		  address = ""

		[plugins."io.containerd.internal.v1.opt"]
		  path = "$lib/containerd-1.6/opt"
		[plugins."io.containerd.nri.v1.nri"]
		  disable = true
		[$p]
		  sandbox_image = "localhost/pause:local"
		  restrict_oom_score_adj = true
		  stream_server_address = "127.0.0.1"
		  stream_server_port = "0"
		  enable_selinux = false
		[$p.cni]
		  bin_dir = "/usr/lib/cni"
		  conf_dir = "$run/cni/net.d"
		[$p.containerd]
		  default_runtime_name = "runc"
		  snapshotter = "overlayfs"
		[$rt.runc]
		  runtime_type = "io.containerd.runc.v2"
		[$rt.runc.options]
		  Root = "$d/runc"
		[$rt.husk]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk.options]
		  ConfigPath = "$d/husk.toml"
		[$rt.husk-runc]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-runc.options]
		  ConfigPath = "$d/husk-runc.toml"
		[$rt.husk-nokernel]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-nokernel.options]
		  ConfigPath = "$d/husk-nokernel.toml"
		[$rt.husk-noboot]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-noboot.options]
		  ConfigPath = "$d/husk-noboot.toml"
	EOF
}

write_config_2() {
	local d="$run/containerd-2" rt="plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"
	cat >"$d/config.toml" <<-EOF
		version = 3
		root = "$lib/containerd-2"
		state = "$d/state"
		oom_score = 0

		[grpc]
		  address = "$d/containerd.sock"
		[ttrpc]
		  address = "$d/containerd.sock.ttrpc"
		[debug]
		  address = ""
		  level = "info"
		[metrics]
		  address = ""

		[plugins.'io.containerd.internal.v1.opt']
		  path = "$lib/containerd-2/opt"
		[plugins.'io.containerd.nri.v1.nri']
		  disable = true
		[plugins.'io.containerd.cri.v1.images'.pinned_images]
		  sandbox = "localhost/pause:local"
		[plugins.'io.containerd.grpc.v1.cri']
		  stream_server_address = "127.0.0.1"
		  stream_server_port = "0"
		[plugins.'io.containerd.cri.v1.runtime']
		  restrict_oom_score_adj = true
		  enable_selinux = false
		[plugins.'io.containerd.cri.v1.runtime'.cni]
		  bin_dirs = ["/usr/lib/cni"]
		  conf_dir = "$run/cni/net.d"
		[plugins.'io.containerd.cri.v1.runtime'.containerd]
		  default_runtime_name = "runc"
		[$rt.runc]
		  runtime_type = "io.containerd.runc.v2"
		[$rt.runc.options]
		  Root = "$d/runc"
		[$rt.husk]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk.options]
		  ConfigPath = "$d/husk.toml"
		[$rt.husk-runc]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-runc.options]
		  ConfigPath = "$d/husk-runc.toml"
		[$rt.husk-nokernel]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-nokernel.options]
		  ConfigPath = "$d/husk-nokernel.toml"
		[$rt.husk-noboot]
		  runtime_type = "io.containerd.husk.v2"
		[$rt.husk-noboot.options]
		  ConfigPath = "$d/husk-noboot.toml"
	EOF
}

start_one() {
	local v=$1 d="$run/containerd-$v" bins
	bins=$(bin_dir "$v")
	if ctr_ok "$v"; then
		log "containerd $v already answers at $(sock "$v")"
		return
	fi
	mkdir -p "$d" "$lib/containerd-$v"
	write_husk_configs "$v"
	if [ "$v" = 1.6 ]; then write_config_16; else write_config_2; fi
	log "starting containerd $v ($("$bins/containerd" --version | awk '{print $3}'))"
	# Shims are found on PATH: our husk shim first, then this containerd's own
	# containerd-shim-runc-v2.
	PATH="$run/bin:$bins:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		setsid "$bins/containerd" --config "$d/config.toml" \
		</dev/null >>"$d/containerd.log" 2>&1 &
	echo $! >"$d/containerd.pid"
}

ctr_ok() {
	local v=$1
	[ -S "$(sock "$v")" ] && timeout 5 "$(bin_dir "$v")/ctr" --address "$(sock "$v")" version >/dev/null 2>&1
}

wait_ready() {
	local v=$1 i
	for i in $(seq 1 100); do
		if ctr_ok "$v"; then return 0; fi
		sleep 0.2
	done
	log "containerd $v did not answer in 20 s; its log:"
	tail -30 "$run/containerd-$v/containerd.log" >&2
	return 1
}

import_images() {
	local v=$1 ns ctr
	ctr="$(bin_dir "$v")/ctr"
	for ns in default k8s.io; do
		for img in busybox pause; do
			"$ctr" --address "$(sock "$v")" -n "$ns" images import "$run/images/$img.tar" >/dev/null
		done
	done
	for ns in default k8s.io; do
		local listed
		listed=$("$ctr" --address "$(sock "$v")" -n "$ns" images ls -q)
		grep -q 'localhost/busybox:local' <<<"$listed" ||
			{ log "import into $ns failed on containerd $v"; return 1; }
	done
}

up() {
	[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
	install_missing
	mkdir -p "$run" "$lib"
	use_shim "${HUSK_SHIM_PROFILE:-debug}"
	write_cni
	make_bridge
	if [ ! -s "$run/images/busybox.tar" ] || [ ! -s "$run/images/pause.tar" ]; then
		log "building images"
		"$repo/scripts/images/build.sh" "$run/images"
	fi
	local v
	for v in "${versions[@]}"; do start_one "$v"; done
	for v in "${versions[@]}"; do wait_ready "$v"; done
	for v in "${versions[@]}"; do import_images "$v"; done
	status
}

status() {
	local v rc=0
	for v in "${versions[@]}"; do
		if ctr_ok "$v"; then
			echo "containerd $v: up at $(sock "$v")"
		else
			echo "containerd $v: down"
			rc=1
		fi
	done
	return $rc
}

# shims_of <socket>: shim processes whose command line names <socket>.
shims_of() {
	local p exe
	for p in /proc/[0-9]*; do
		exe=$(readlink "$p/exe" 2>/dev/null) || continue
		case "$exe" in */containerd-shim*) ;; *) continue ;; esac
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$1" && echo "${p#/proc/}"
	done
	return 0
}

# vm_processes <path>: husk-vmm and virtiofsd processes whose command line names <path>.
vm_processes() {
	local p exe
	for p in /proc/[0-9]*; do
		exe=$(readlink "$p/exe" 2>/dev/null) || continue
		case "${exe##*/}" in husk-vmm | virtiofsd) ;; *) continue ;; esac
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$1" && echo "${p#/proc/}"
	done
	return 0
}

down() {
	local v d pid r id
	for v in "${versions[@]}"; do
		d="$run/containerd-$v"
		[ -d "$d" ] || continue
		if [ -s "$d/containerd.pid" ]; then
			pid=$(cat "$d/containerd.pid")
			if kill -0 "$pid" 2>/dev/null; then
				kill "$pid"
				for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
				kill -9 "$pid" 2>/dev/null || true
			fi
		fi
		# containers left by runc (containerd's runc root and husk's runc root)
		for r in "$d"/runc/* "$d"/husk-runc "$d"/husk-runc/*; do
			[ -d "$r" ] || continue
			for id in $(runc --root "$r" list -q 2>/dev/null); do
				runc --root "$r" kill -a "$id" KILL 2>/dev/null || true
				runc --root "$r" delete -f "$id" 2>/dev/null || true
			done
		done
		# shims started by this containerd carry its socket address
		for pid in $(shims_of "$d/containerd.sock"); do
			kill -9 "$pid" 2>/dev/null || true
		done
	done
	# microVM pieces (they die with their shim; this is for a shim that
	# was stopped oddly): husk-vmm and virtiofsd serving a pod dir of ours
	for pid in $(vm_processes "$run/"); do
		kill -9 "$pid" 2>/dev/null || true
	done
	# mounts under our roots, deepest first
	{ findmnt -rn -o TARGET | grep -E "^($run|$lib)/" || true; } | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	# the CNI bridge (its pods' veths went with their namespaces)
	ip link del "$cni_bridge" 2>/dev/null || true
	remove_test_cgroups
	rm -rf "$run" "$lib"
	log "down"
}

# Empty cgroups the tests created (ids start with husk-e2e) and the CRI parents.
remove_test_cgroups() {
	local c
	for c in /sys/fs/cgroup/*/; do
		find "$c" -depth -mindepth 1 -type d \( -name 'husk-e2e*' -o -path '*husk-e2e*' \) \
			-exec rmdir {} + 2>/dev/null || true
	done
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
use-shim) use_shim "${2:?debug or release}" ;;
*)
	echo "usage: $0 up|down|status|use-shim debug|release" >&2
	exit 2
	;;
esac
