#!/usr/bin/env bash
# Benchmark: TCP throughput of pod networking, husk VM mode vs containerd's
# io.containerd.runc.v2 in one run, on the test environment's CNI bridge:
# host → pod and pod → pod, iperf3 (Debian's, in localhost/iperf3:local),
# runtimes interleaved. Release builds of the shim and husk-vmm.
#
# usage: scripts/bench-net.sh
#   BENCH_CONTAINERD=1.6|2   which test containerd (default 1.6)
#   BENCH_RUNS=3             runs per runtime and direction
#   BENCH_SECONDS=10         seconds per iperf3 run
# Needs root, /dev/kvm; installs iperf3 (apt). Starts the test environment
# when it is not up (and stops it again after).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
cd_version=${BENCH_CONTAINERD:-1.6}
runs=${BENCH_RUNS:-3}
seconds=${BENCH_SECONDS:-10}
run=/run/husk-test
d="$run/containerd-$cd_version"
if [ "$cd_version" = 1.6 ]; then ctr_bin=/usr/bin/ctr; else ctr_bin=/opt/husk-test/containerd2/usr/bin/ctr; fi

log() { echo "bench-net: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
if ! command -v iperf3 >/dev/null; then
	log "installing iperf3"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null
fi

log "building (release)"
cargo build --release -p husk-shim -p husk-vmm
cargo build --release -p husk-e2e --bin bench-net
guest-image/build.sh >/dev/null

started_env=0
if ! scripts/test-env.sh status >/dev/null 2>&1; then
	scripts/test-env.sh up >/dev/null
	started_env=1
fi
prev_shim=$(readlink -f "$run/bin/containerd-shim-husk-v2")
cleanup() {
	scripts/test-env.sh use-shim "$prev_shim" || true
	if [ "$started_env" = 1 ]; then scripts/test-env.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
scripts/test-env.sh use-shim release

if [ ! -s "$run/images/iperf3.tar" ]; then
	scripts/images/iperf3.sh "$run/images"
fi
"$ctr_bin" --address "$d/containerd.sock" -n k8s.io images import "$run/images/iperf3.tar" >/dev/null

log "containerd $cd_version, $runs runs of $seconds s per runtime and direction"
target/release/bench-net --containerd "$cd_version" --runs "$runs" --seconds "$seconds"
