#!/usr/bin/env bash
# Build the husk guest image: a minimal kernel (uncompressed vmlinux, PVH
# entry) and an uncompressed newc initrd whose /init is the static husk-agent.
#
# Usage: guest-image/build.sh [--compat|--no-compat] [--kernel-only|--initrd-only]
#                             [--cached-only] [--jobs N] [--out DIR]
#
#   --compat / --no-compat  force the emulating-KVM compatibility patch on/off;
#                           default: on when /sys/module/kvm_pvm exists with
#                           pvm_native=Y, off otherwise (hardware KVM).
#   --cached-only           never build the kernel: exit 3 if it is not cached.
#   --jobs N                make -jN for the kernel (default: nproc).
#   --out DIR               output directory (default: <repo>/target/guest).
#
# Outputs: DIR/vmlinux, DIR/config (the kernel .config), DIR/initrd.cpio.
# The kernel is cached outside the repository, in
# ${HUSK_KERNEL_CACHE:-/var/cache/husk/guest-kernel}/<key>/, where <key> is the
# sha256 of the kernel source version, the compiler, the config fragment and
# the patch (if applied): an unchanged kernel is copied, not rebuilt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/guest-image"
CACHE=${HUSK_KERNEL_CACHE:-/var/cache/husk/guest-kernel}
OUT="$ROOT/target/guest"
JOBS=$(nproc)
COMPAT=auto
DO_KERNEL=1
DO_INITRD=1
CACHED_ONLY=0
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
FRAGMENT="$HERE/kernel.config"
PATCH="$HERE/patches/pvm-compat.patch"
# Bump when the build procedure itself changes (invalidates cached kernels).
RECIPE=1

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --compat) COMPAT=yes ;;
        --no-compat) COMPAT=no ;;
        --kernel-only) DO_INITRD=0 ;;
        --initrd-only) DO_KERNEL=0 ;;
        --cached-only) CACHED_ONLY=1 ;;
        --jobs) JOBS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

# --- packages ----------------------------------------------------------------
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}: run as root or apt-get install them"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- compat detection ----------------------------------------------------------
emulating_kvm_host() {
    [ -d /sys/module/kvm_pvm ] &&
        [ "$(cat /sys/module/kvm_pvm/parameters/pvm_native 2>/dev/null)" = Y ]
}

# --- kernel ------------------------------------------------------------------
# Check that every option the fragment sets survived `olddefconfig`.
check_config() {
    local config=$1 line opt bad=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                grep -qxF -- "$line" "$config" || { log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo unset)'"; bad=1; } ;;
            "# CONFIG_"*" is not set")
                opt=${line#\# }; opt=${opt%% *}
                if grep -q "^$opt=" "$config"; then log "config: wanted $opt unset, got '$(grep "^$opt=" "$config")'"; bad=1; fi ;;
        esac
    done < "$FRAGMENT"
    [ $bad -eq 0 ] || die "the kernel config fragment does not apply cleanly (missing dependencies?)"
}

build_kernel() {
    local use_patch=$1 version cc key treekey dest tree t0
    ensure_packages "$SRC_PKG" build-essential bc flex bison libelf-dev libssl-dev xz-utils
    version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
    cc=$(gcc --version | head -n1)
    if [ "$use_patch" = yes ]; then patchsum=$(sha256sum < "$PATCH"); else patchsum=none; fi
    treekey=$(printf 'recipe %s\nsource %s %s\ncc %s\npatch %s\n' "$RECIPE" "$SRC_PKG" "$version" "$cc" "$patchsum" | sha256sum | cut -c1-64)
    key=$(printf 'tree %s\nfragment %s\n' "$treekey" "$(sha256sum < "$FRAGMENT")" | sha256sum | cut -c1-64)
    dest="$CACHE/$key"
    if [ -f "$dest/vmlinux" ] && [ -f "$dest/config" ]; then
        log "kernel: cached ($dest)"
    else
        if [ $CACHED_ONLY -eq 1 ]; then log "kernel: not cached ($dest)"; exit 3; fi
        log "kernel: building $SRC_PKG $version (patch: $use_patch) into $dest"
        t0=$(date +%s)
        mkdir -p "$CACHE"
        # One source tree per source version + patch, reused across config
        # changes so kbuild rebuilds only what a config change touches.
        tree="$CACHE/tree-$treekey"
        if [ ! -f "$tree/.husk-ready" ]; then
            rm -rf "$tree"
            mkdir -p "$tree"
            tar -xf "$SRC_TARBALL" -C "$tree" --strip-components=1
            if [ "$use_patch" = yes ]; then
                patch -d "$tree" -p1 --forward --quiet < "$PATCH" || die "the compat patch does not apply to $SRC_PKG $version"
            fi
            touch "$tree/.husk-ready"
        fi
        (
            cd "$tree"
            make -s tinyconfig
            scripts/kconfig/merge_config.sh -m -O . .config "$FRAGMENT"
            make -s olddefconfig
        ) > "$tree/config.log" 2>&1 || { cat "$tree/config.log" >&2; die "kernel configuration failed"; }
        check_config "$tree/.config"
        log "kernel: make -j$JOBS vmlinux (log: $tree/build.log)"
        if ! make -C "$tree" -j"$JOBS" vmlinux > "$tree/build.log" 2>&1; then
            tail -n 30 "$tree/build.log" >&2
            die "kernel build failed; full log in $tree/build.log"
        fi
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        cp "$tree/vmlinux" "$dest.tmp/vmlinux"
        cp "$tree/.config" "$dest.tmp/config"
        printf 'source %s %s\npatch %s\nbuilt %s\nseconds %s\n' "$SRC_PKG" "$version" "$use_patch" \
            "$(date -u +%FT%TZ)" "$(( $(date +%s) - t0 ))" > "$dest.tmp/info"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
        log "kernel: built in $(( $(date +%s) - t0 )) s"
    fi
    mkdir -p "$OUT"
    cp "$dest/vmlinux" "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
    cp "$dest/config" "$OUT/config"
    cp "$dest/info" "$OUT/kernel-info"
}

# --- initrd ------------------------------------------------------------------
build_initrd() {
    local triple=x86_64-unknown-linux-gnu agent stripped
    ensure_packages python3 binutils
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rust-toolchain.toml)"
    log "initrd: building the static husk-agent"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --profile guest --target "$triple" -p husk-agent)
    agent="$ROOT/target/$triple/guest/husk-agent"
    file -b "$agent" 2>/dev/null | grep -q 'dynamically linked' && die "$agent is not static"
    mkdir -p "$OUT"
    stripped="$OUT/init.stripped"
    strip --strip-all -o "$stripped" "$agent"
    python3 "$HERE/mkinitrd.py" "$stripped" "$OUT/initrd.cpio"
    rm -f "$stripped"
    log "initrd: $OUT/initrd.cpio ($(stat -c %s "$OUT/initrd.cpio") bytes)"
}

if [ "$COMPAT" = auto ]; then
    if emulating_kvm_host; then COMPAT=yes; else COMPAT=no; fi
fi
[ $DO_KERNEL -eq 1 ] && build_kernel "$COMPAT"
[ $DO_INITRD -eq 1 ] && build_initrd
log "done: $OUT"
