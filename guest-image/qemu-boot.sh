#!/usr/bin/env bash
# Boot the guest image under QEMU's microvm machine, watch the serial console
# and stop the VM as soon as the agent announces itself (or on a panic or the
# timeout). Prints the console with wall-clock offsets and a timing summary.
#
# Usage: guest-image/qemu-boot.sh [--kernel F] [--initrd F] [--timeout S]
#                                 [--append "extra words"] [--profile plain|compat]
# Exit: 0 agent started, 1 panic/timeout/qemu died, 2 usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KERNEL="$ROOT/target/guest/vmlinux"
INITRD="$ROOT/target/guest/initrd.cpio"
TIMEOUT=300
EXTRA=""
PROFILE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) KERNEL=$2; shift ;;
        --initrd) INITRD=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --append) EXTRA=$2; shift ;;
        --profile) PROFILE=$2; shift ;;
        *) echo "usage: see the header of $0" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$PROFILE" ]; then
    if [ "$(cat /sys/module/kvm_pvm/parameters/pvm_native 2>/dev/null)" = Y ]; then
        PROFILE=compat
    else
        PROFILE=plain
    fi
fi
arg() { sed -n "s/^${PROFILE}_$1=//p" "$ROOT/guest-image/boot-args"; }
CMDLINE="$(arg cmdline) $EXTRA"
CPU=$(arg qemu_cpu)

fifo=$(mktemp -u /tmp/husk-qemu-boot.XXXXXX)
mkfifo "$fifo"
start=$(date +%s.%N)
qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off,pic=off,pit=off \
    -enable-kvm -cpu "$CPU" -m 128M -smp 1 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" </dev/null >"$fifo" 2>&1 &
qemu=$!
cleanup() { kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true; rm -f "$fifo"; }
trap cleanup EXIT

result=1
run_init="" agent="" ktime=""
deadline=$(( $(date +%s) + TIMEOUT ))
exec 3<"$fifo"
while :; do
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 0 ] || { echo "TIMEOUT after ${TIMEOUT}s" >&2; break; }
    IFS= read -r -t "$left" line <&3 || { echo "console closed or timed out" >&2; break; }
    now=$(date +%s.%N)
    off=$(echo "$now - $start" | bc)
    printf '%7.2f %s\n' "$off" "$line"
    case "$line" in
        *"Run /init as init process"*)
            run_init=$off
            ktime=$(printf '%s' "$line" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p') ;;
        *"husk-agent "*" started: kernel "*) agent=$off; result=0; break ;;
        *"Kernel panic"*|*"KVM internal error"*) echo "FAILED: $line" >&2; break ;;
    esac
done
echo "summary: profile=$PROFILE run_init_kernel_ts=${ktime:-none}s run_init_wall=${run_init:-none}s agent_wall=${agent:-none}s"
exit $result
