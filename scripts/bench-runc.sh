#!/usr/bin/env bash
# Benchmark: husk in runc mode against containerd's io.containerd.runc.v2,
# side by side in one run on the same containerd.
#
#   * start-to-exit: N x `ctr run --rm localhost/busybox:local <id> true` per
#     runtime, interleaved (runc, husk, runc, husk, ...) so drift hits both
#     alike; p50/p95/mean of the wall time of each `ctr run`.
#   * steady shim memory: one long-running container per runtime; after it
#     settles, the RSS and PSS of its shim process.
#
# usage: scripts/bench-runc.sh [N]     (default N=50)
#   BENCH_CONTAINERD=1.6|2   which test containerd (default 1.6)
#   BENCH_PROFILE=release    which cargo profile builds the husk shim
#                            (default release; e.g. shim, debug)
#   BENCH_STATIC=1           build it static and non-PIE (--target x86_64-unknown-linux-gnu)
# Starts the test environment if it is not up (and stops it again after).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
n=${1:-50}
cd_version=${BENCH_CONTAINERD:-1.6}
profile=${BENCH_PROFILE:-release}
run=/run/husk-test
d="$run/containerd-$cd_version"
if [ "$cd_version" = 1.6 ]; then ctr_bin=/usr/bin/ctr; else ctr_bin=/opt/husk-test/containerd2/usr/bin/ctr; fi
ctr=("$ctr_bin" --address "$d/containerd.sock" -n default)
image=localhost/busybox:local
prefix="husk-bench-$$"

log() { echo "bench: $*" >&2; }

shim_bin="$profile"
if [ "$profile" = debug ]; then
	cargo build -q -p husk-shim --bin containerd-shim-husk-v2
elif [ "${BENCH_STATIC:-0}" = 1 ]; then
	# static, non-PIE: the build docs/shim.md recommends for the shim
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
		cargo build -q --profile "$profile" --target x86_64-unknown-linux-gnu \
		-p husk-shim --bin containerd-shim-husk-v2
	shim_bin="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/$profile/containerd-shim-husk-v2"
else
	cargo build -q --profile "$profile" -p husk-shim --bin containerd-shim-husk-v2
fi

started_env=0
if ! scripts/test-env.sh status >/dev/null 2>&1; then
	scripts/test-env.sh up >/dev/null
	started_env=1
fi
scripts/test-env.sh use-shim "$shim_bin"

cleanup() {
	local id
	for id in "$prefix-rss-runc" "$prefix-rss-husk"; do
		"${ctr[@]}" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
		sleep 0.2
		"${ctr[@]}" task delete -f "$id" >/dev/null 2>&1 || true
		"${ctr[@]}" container delete "$id" >/dev/null 2>&1 || true
	done
	scripts/test-env.sh use-shim debug
	if [ "$started_env" = 1 ]; then scripts/test-env.sh down >/dev/null; fi
}
trap cleanup EXIT

runtime_args() {
	case $1 in
	runc) echo "--runtime io.containerd.runc.v2 --runc-root $d/runc" ;;
	husk) echo "--runtime io.containerd.husk.v2 --runtime-config-path $d/husk-runc.toml" ;;
	esac
}

now_ns() { date +%s%N; }

# one_run <runtime> <id>: prints the wall time of `ctr run --rm ... true` in ms.
one_run() {
	local t0 t1
	t0=$(now_ns)
	# shellcheck disable=SC2046
	"${ctr[@]}" run --rm $(runtime_args "$1") "$image" "$2" true >/dev/null ||
		{ log "ctr run with $1 failed"; exit 1; }
	t1=$(now_ns)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1000000 }'
}

# stats <file>: "p50 p95 mean" of the numbers in <file>.
stats() {
	sort -n "$1" | awk '{ v[NR] = $1; s += $1 }
		END {
			p50 = v[int((NR - 1) * 0.50) + 1]; p95 = v[int((NR - 1) * 0.95) + 1]
			printf "%.1f %.1f %.1f\n", p50, p95, s / NR
		}'
}

tmp=$(mktemp -d)
log "warm-up"
for rt in runc husk; do
	for i in 1 2 3; do one_run "$rt" "$prefix-warm-$rt-$i" >/dev/null; done
done
log "$n runs per runtime, interleaved, on containerd $cd_version"
for i in $(seq 1 "$n"); do
	for rt in runc husk; do one_run "$rt" "$prefix-$rt-$i" >>"$tmp/$rt"; done
done

# steady_memory <runtime>: "rss_kib pss_kib" of the shim of one long-running container.
steady_memory() {
	local rt=$1 id="$prefix-rss-$1" pid p
	# shellcheck disable=SC2046
	"${ctr[@]}" run -d $(runtime_args "$rt") "$image" "$id" sleep 3600 >/dev/null
	sleep 3
	pid=
	for p in /proc/[0-9]*; do
		case "$(readlink "$p/exe" 2>/dev/null)" in */containerd-shim-*) ;; *) continue ;; esac
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-id $id " && pid=${p#/proc/}
	done
	[ -n "$pid" ] || { log "no shim found for $id"; exit 1; }
	echo "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") $(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")"
}

read -r runc_p50 runc_p95 runc_mean < <(stats "$tmp/runc")
read -r husk_p50 husk_p95 husk_mean < <(stats "$tmp/husk")
read -r runc_rss runc_pss < <(steady_memory runc)
read -r husk_rss husk_pss < <(steady_memory husk)
rm -rf "$tmp"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }

cat <<EOF
containerd $("${ctr_bin}" --address "$d/containerd.sock" version 2>/dev/null | awk '/Version:/ { v = $2 } END { print v }'), runc $(runc --version | awk 'NR == 1 { print $3 }'), husk shim ($profile build$([ "${BENCH_STATIC:-0}" = 1 ] && echo ", static")), $n runs each, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)

| runtime | p50 ms | p95 ms | mean ms | shim RSS KiB | shim PSS KiB |
| --- | ---: | ---: | ---: | ---: | ---: |
| io.containerd.runc.v2 | $runc_p50 | $runc_p95 | $runc_mean | $runc_rss | $runc_pss |
| husk (runc mode) | $husk_p50 | $husk_p95 | $husk_mean | $husk_rss | $husk_pss |
| husk / runc.v2 | $(ratio "$husk_p50" "$runc_p50") | $(ratio "$husk_p95" "$runc_p95") | $(ratio "$husk_mean" "$runc_mean") | $(ratio "$husk_rss" "$runc_rss") | $(ratio "$husk_pss" "$runc_pss") |
EOF
