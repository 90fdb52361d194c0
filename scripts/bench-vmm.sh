#!/usr/bin/env bash
# Side-by-side boot benchmark: husk-vmm vs qemu-system-x86_64 -M microvm on
# the same kernel + initrd with the compat CPU profile.
#
#   scripts/bench-vmm.sh [KERNEL] [INITRD]
#
# Env: MARKER (text the guest's init prints; default "started: kernel"),
#      RUNS (boots per VMM, default 1), TIMEOUT (s per boot, default 300),
#      HUSK_VMM (binary; default: cargo build --release).
# Prints a Markdown table: wall time from exec to MARKER on the console,
# VMM RSS excluding guest RAM (RssAnon+RssFile; guest RAM is a shared memfd
# in both VMMs, counted as RssShmem), and husk-vmm's exec-to-first-KVM_RUN
# (wall) and CPU time until then.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KERNEL=${1:-$ROOT/target/guest/vmlinux}
INITRD=${2:-$ROOT/target/guest/initrd.cpio}
MARKER=${MARKER:-started: kernel}
RUNS=${RUNS:-1}
TIMEOUT=${TIMEOUT:-300}
MEM=128

[ -f "$KERNEL" ] || { echo "kernel $KERNEL not found; build it with guest-image/build.sh" >&2; exit 1; }
[ -f "$INITRD" ] || { echo "initrd $INITRD not found" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "install qemu-system-x86 (apt-get install -y qemu-system-x86)" >&2; exit 1; }
if [ -z "${HUSK_VMM:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p husk-vmm)
    HUSK_VMM=$ROOT/target/release/husk-vmm
fi

# The words husk-vmm puts on the command line with the compat profile, so
# both VMMs boot the guest identically.
CMDLINE="console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd nokaslr mitigations=off tsc=reliable no_timer_check noreplace-smp cryptomgr.notests rcupdate.rcu_expedited=1 random.trust_cpu=on noxsave clearcpuid=smap,popcnt,cx16,erms,fsrm"

WORK=$(mktemp -d /tmp/husk-bench-vmm.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

now_ns() { date +%s%N; }

rss_kib() { # pid -> RssAnon+RssFile in KiB
    awk '/^RssAnon:|^RssFile:/ {s += $2} END {print s}' "/proc/$1/status"
}

# run NAME CONSOLE CMD... : boots once; sets WALL_MS and RSS_KIB.
run() {
    local console=$1; shift
    : > "$console"
    local t0; t0=$(now_ns)
    "$@" 2> "$WORK/stderr" &
    PID=$!
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until grep -q -- "$MARKER" "$console" 2>/dev/null; do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "VMM exited before the marker; stderr:" >&2; cat "$WORK/stderr" >&2
            tail -20 "$console" >&2; exit 1
        fi
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "no marker within ${TIMEOUT}s" >&2; tail -20 "$console" >&2; exit 1
        fi
        sleep 0.05
    done
    WALL_MS=$(( ($(now_ns) - t0) / 1000000 ))
    RSS_KIB=$(rss_kib "$PID")
    kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
    T0=$t0
}

echo "| run | VMM | wall to marker (ms) | VMM RSS excl. guest RAM (KiB) | exec to first KVM_RUN (ms) | VMM CPU to first KVM_RUN (ms) |"
echo "| --- | --- | --- | --- | --- | --- |"
for i in $(seq 1 "$RUNS"); do
    run "$WORK/husk.log" env HUSK_VMM_LOG=husk_vmm=info "$HUSK_VMM" \
        --kernel "$KERNEL" --initrd "$INITRD" --console "$WORK/husk.log" \
        --cpu-profile compat --mem-mib $MEM --vcpus 1
    first=$(sed -n 's/.*first KVM_RUN.*unix_ns[^0-9]*\([0-9]*\).*cpu_us[^0-9]*\([0-9]*\).*/\1 \2/p' "$WORK/stderr" | head -1)
    kvm_ms=$(awk -v t0="$T0" -v s="${first% *}" 'BEGIN {printf "%.2f", (s - t0) / 1e6}')
    cpu_ms=$(awk -v c="${first#* }" 'BEGIN {printf "%.2f", c / 1e3}')
    echo "| $i | husk-vmm | $WALL_MS | $RSS_KIB | $kvm_ms | $cpu_ms |"

    run "$WORK/qemu.log" qemu-system-x86_64 \
        -M microvm,acpi=off,x-option-roms=off,rtc=off,pic=off,pit=off,memory-backend=mem \
        -object memory-backend-memfd,id=mem,size=${MEM}M,share=on \
        -enable-kvm -cpu host,-cx16,-popcnt,-xsave,-smap,-erms,-fsrm \
        -m ${MEM}M -smp 1 -nodefaults -no-user-config -display none \
        -serial "file:$WORK/qemu.log" -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
    echo "| $i | qemu microvm | $WALL_MS | $RSS_KIB | n/a | n/a |"
done
