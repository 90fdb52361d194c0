#!/usr/bin/env bash
# Benchmark: microVM pods (husk vm mode) on the test containerd.
#
#   * per-pod host memory: N idle busybox pods (`ctr run -d ... sleep 3600`;
#     under ctr each container is its own sandbox, i.e. its own VM), started
#     one after the other; after they settle, the PSS of each pod's shim,
#     husk-vmm and virtiofsd processes (the shim and every process under it),
#     measured with `smem` as Kata Containers' metrics did, and again from
#     /proc/<pid>/smaps_rollup as a cross-check. Guest RAM is a shared memfd
#     mapped by husk-vmm and virtiofsd: PSS splits those pages between them,
#     so the per-pod sum counts each guest page once.
#   * pod start phases, for each of those N starts:
#       - from the shim's log lines `vm phase=<name> ms=<n>` in containerd's
#         log (the lines written while that pod started; pods start one at a
#         time); husk's host side is `host` (first Create -> husk-vmm
#         spawned: state dir, share, network, cgroup, virtiofsd) plus
#         `vmm_start` (spawn -> first vCPU running), and summed;
#       - measured from outside as well (polled every 5 ms, CLOCK_BOOTTIME):
#         host setup (ctr run starts -> husk-vmm spawned, its start time from
#         /proc), VMM start (spawn -> first console byte), kernel boot (first
#         console byte -> the agent's "husk-agent ... started" line), agent and
#         container (agent line -> `ctr run -d` returns).
#   * side by side: R x `ctr run --rm busybox true` wall time, husk vm mode
#     vs containerd's io.containerd.runc.v2, interleaved; the ratio.
#
# usage: scripts/bench-pod.sh [N]      (default N=5)
#   BENCH_CONTAINERD=1.6|2   which test containerd (default 1.6)
#   BENCH_SETTLE=20          seconds to wait after the last pod started
#   BENCH_RUNS=3             `ctr run --rm true` runs per runtime
# Needs: root, /dev/kvm, the test environment's [vm] config (husk-vmm,
# virtiofsd, target/guest/{vmlinux,initrd.cpio}); installs smem (apt).
# Starts the test environment if it is not up (and stops it again after).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
n=${1:-5}
cd_version=${BENCH_CONTAINERD:-1.6}
settle=${BENCH_SETTLE:-20}
runs=${BENCH_RUNS:-3}
run=/run/husk-test
d="$run/containerd-$cd_version"
if [ "$cd_version" = 1.6 ]; then ctr_bin=/usr/bin/ctr; else ctr_bin=/opt/husk-test/containerd2/usr/bin/ctr; fi
image=localhost/busybox:local
prefix="husk-bench-pod-$$"

log() { echo "bench-pod: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
if ! command -v smem >/dev/null; then
	log "installing smem"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends smem >/dev/null
fi

started_env=0
if ! scripts/test-env.sh status >/dev/null 2>&1; then
	scripts/test-env.sh up >/dev/null
	started_env=1
fi
real_shim=$(readlink -f "$run/bin/containerd-shim-husk-v2")
wrap="$run/bench-bin"
case "$real_shim" in "$wrap"/*) log "the shim link points at an old wrapper: scripts/test-env.sh use-shim debug"; exit 1 ;; esac
config="$d/husk.toml"
state_root=$(sed -n 's/^state_root = "\(.*\)"/\1/p' "$config")
[ -n "$state_root" ] || { log "no state_root in $config"; exit 1; }

ids=()
cleanup() {
	local id
	for id in "${ids[@]}"; do
		"$ctr_bin" --address "$d/containerd.sock" -n default task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	sleep 1
	for id in "${ids[@]}"; do
		"$ctr_bin" --address "$d/containerd.sock" -n default task delete -f "$id" >/dev/null 2>&1 || true
		"$ctr_bin" --address "$d/containerd.sock" -n default container delete "$id" >/dev/null 2>&1 || true
	done
	scripts/test-env.sh use-shim "$real_shim" || true
	rm -rf "$wrap"
	if [ "$started_env" = 1 ]; then scripts/test-env.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# husk-vmm logs its first KVM_RUN (wall clock and CPU time) at info level
# when HUSK_VMM_LOG says so; the shim passes its environment on. For the
# benchmark the test containerds run the shim through a wrapper that sets
# it (the same binary; restored at exit).
mkdir -p "$wrap"
printf '#!/bin/sh\nHUSK_VMM_LOG=husk_vmm=info exec %s "$@"\n' "$real_shim" >"$wrap/containerd-shim-husk-v2"
chmod 755 "$wrap/containerd-shim-husk-v2"
ln -sfn "$(dirname "$real_shim")/husk-vmm" "$wrap/husk-vmm"
scripts/test-env.sh use-shim "$wrap/containerd-shim-husk-v2"

for i in $(seq 1 "$n"); do ids+=("$prefix-$i"); done

# Everything below is one Python program: it needs sub-10 ms timestamps and
# /proc parsing that bash does poorly.
CTR="$ctr_bin" SOCK="$d/containerd.sock" CONFIG="$config" STATE_ROOT="$state_root" \
	IMAGE="$image" SETTLE="$settle" RUNS="$runs" PREFIX="$prefix" \
	CONTAINERD_LOG="$d/containerd.log" RUNC_ROOT="$d/runc" \
	python3 - "${ids[@]}" <<'PY'
import calendar, os, re, subprocess, sys, time, statistics as st

ctr = [os.environ["CTR"], "--address", os.environ["SOCK"], "-n", "default"]
config, state_root = os.environ["CONFIG"], os.environ["STATE_ROOT"]
image, prefix = os.environ["IMAGE"], os.environ["PREFIX"]
settle, runs = int(os.environ["SETTLE"]), int(os.environ["RUNS"])
husk_rt = ["--runtime", "io.containerd.husk.v2", "--runtime-config-path", config]
runc_rt = ["--runtime", "io.containerd.runc.v2", "--runc-root", os.environ["RUNC_ROOT"]]
ids = sys.argv[1:]
tick = os.sysconf("SC_CLK_TCK")

def now():
    return time.clock_gettime(time.CLOCK_BOOTTIME)

def read(p, mode="r"):
    try:
        with open(p, mode) as f:
            return f.read()
    except OSError:
        return None

def start_time(pid):
    """Process start in CLOCK_BOOTTIME seconds (10 ms resolution)."""
    stat = read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat.rsplit(") ", 1)[1].split()[19]) / tick

def boot_to_real(t):
    """A CLOCK_BOOTTIME instant as wall-clock (CLOCK_REALTIME) seconds."""
    return time.time() - (now() - t)

def real_of(stamp):
    """An RFC 3339 UTC timestamp of the shim's log (microseconds) in seconds."""
    m = re.match(r"(\d+-\d+-\d+T\d+:\d+:\d+)(\.\d+)?Z", stamp)
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)

def start_pod(pid_id):
    """ctr run -d, watching the pod directory; returns the phase times (ms)
    and the shim's own phase lines."""
    pod = os.path.join(state_root, pid_id)
    log_from = os.path.getsize(os.environ["CONTAINERD_LOG"])
    t0 = time.time()
    p = subprocess.Popen(ctr + ["run", "-d"] + husk_rt + [image, pid_id, "sleep", "3600"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spawn = agent = None
    while True:
        done = p.poll() is not None
        if spawn is None:
            txt = read(os.path.join(pod, "vmm.pid"))
            if txt and txt.split() and start_time(txt.split()[0]) is not None:
                spawn = boot_to_real(start_time(txt.split()[0]))
        if agent is None and spawn is not None:
            c = read(os.path.join(pod, "console.log"), "rb") or b""
            if re.search(rb"husk-agent \S+ started", c):
                agent = time.time()
        if done:
            break
        time.sleep(0.005)
    t_end = time.time()
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"ctr run -d {pid_id} failed: {err.decode()}")
    with open(os.environ["CONTAINERD_LOG"], errors="replace") as f:
        f.seek(log_from)
        shim_log = f.read()
    shim_phases = [(m.group(1), float(m.group(2)))
                   for m in re.finditer(r"vm phase=(\S+) ms=([0-9.]+)", shim_log)]
    answered = re.search(r"^(\S+)\s+INFO guest agent answered", shim_log, re.M)
    vmm_log = read(os.path.join(pod, "vmm.log")) or ""
    first_run = re.search(r"first KVM_RUN.*?unix_ns\D*(\d+).*?cpu_us\D*(\d+)", vmm_log)
    con = read(os.path.join(pod, "console.log"), "rb") or b""
    init = re.search(rb"\[\s*([0-9.]+)\] Run /init", con)

    ph = {"total: ctr run -d": (t_end - t0) * 1000}
    if spawn is not None:
        ph["host: ctr -> containerd -> shim -> husk-vmm spawned (10 ms ticks)"] = (spawn - t0) * 1000
    kvm_run = int(first_run.group(1)) / 1e9 if first_run else None
    if kvm_run is not None and spawn is not None:
        ph["VMM start: spawn -> first KVM_RUN (wall, 10 ms ticks)"] = (kvm_run - spawn) * 1000
        ph["VMM start: husk-vmm CPU time to first KVM_RUN"] = int(first_run.group(2)) / 1000
    if kvm_run is not None and agent is not None:
        ph["kernel boot: first KVM_RUN -> agent's start line (guest)"] = (agent - kvm_run) * 1000
    if init:
        ph["  of which guest printk time of Run /init"] = float(init.group(1)) * 1000
    if answered and agent is not None:
        ph["agent ready: agent line -> first Version answered (guest, shim poll)"] = (real_of(answered.group(1)) - agent) * 1000
        ph["container started: -> ctr run -d returns (guest create/start)"] = (t_end - real_of(answered.group(1))) * 1000
    return ph, shim_phases

def children():
    kids = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            s = read(f"/proc/{e}/stat")
            if s:
                kids.setdefault(int(s.rsplit(") ", 1)[1].split()[1]), []).append(int(e))
    return kids

def exe(pid):
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).replace(" (deleted)", "")
    except OSError:
        return "?"

def pod_pids(pod_id):
    """The pod's shim (-id <pod_id>) and every process under it."""
    shims = [int(e) for e in os.listdir("/proc") if e.isdigit()
             and exe(int(e)) == "containerd-shim-husk-v2"
             and f"-id {pod_id}" in (read(f"/proc/{e}/cmdline") or "").replace("\0", " ")]
    if len(shims) != 1:
        sys.exit(f"pod {pod_id}: shims {shims}")
    kids, out, todo = children(), [], list(shims)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

def rollup(pid, key):
    for line in (read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0

def guest_ram_pss(pid):
    """PSS (KiB) of the guest-RAM memfd mappings of husk-vmm or virtiofsd."""
    total, in_memfd = 0, False
    for line in (read(f"/proc/{pid}/smaps") or "").splitlines():
        f = line.split()
        if f and re.match(r"^[0-9a-f]+-[0-9a-f]+$", f[0]):
            in_memfd = len(f) >= 6 and "memfd:" in line
        elif in_memfd and line.startswith("Pss:"):
            total += int(f[1])
    return total

def smem_pss():
    out = subprocess.run(["smem", "-H", "-c", "pid pss"], capture_output=True, text=True, check=True)
    return {int(l.split()[0]): int(l.split()[1]) for l in out.stdout.splitlines() if l.split()}

# --- start N pods, one at a time ---
starts, shim_rows = [], []
for i, pid_id in enumerate(ids, 1):
    ph, rows = start_pod(pid_id)
    starts.append((pid_id, ph))
    shim_rows.append((pid_id, rows))
    print(f"pod {i}/{len(ids)} started in {ph['total: ctr run -d']:.0f} ms", file=sys.stderr)

print(f"\n## pod start phases (ms), {len(ids)} pods, measured from outside\n")
names = list(dict.fromkeys(k for _, ph in starts for k in ph))
print("| phase | " + " | ".join(f"pod {i}" for i in range(1, len(ids) + 1)) + " | median |")
print("| --- |" + " ---: |" * (len(ids) + 1))
for k in names:
    vals = [ph.get(k) for _, ph in starts]
    cells = [f"{v:.0f}" if v is not None else "n/a" for v in vals]
    got = [v for v in vals if v is not None]
    med = f"{st.median(got):.0f}" if got else "n/a"
    print(f"| {k} | " + " | ".join(cells) + f" | {med} |")

host_keys = [k for k in names if k.startswith(("host:", "VMM start: spawn"))]
sums = [sum(ph[k] for k in host_keys if k in ph) for _, ph in starts]
print(f"\nnon-guest, measured from outside ({' + '.join(host_keys)}): "
      + ", ".join(f"{v:.0f}" for v in sums) + f" ms; median {st.median(sums):.0f} ms")

if any(rows for _, rows in shim_rows):
    print("\n## pod start phases from the shim's log (`vm phase=<name> ms=<n>`)\n")
    print("| pod | phases (ms) | husk host side (host + vmm_start) |")
    print("| --- | --- | ---: |")
    for pid_id, rows in shim_rows:
        ng = sum(ms for name, ms in rows if name in ("host", "vmm_start"))
        print(f"| {pid_id[-3:]} | " + ", ".join(f"{n}={ms:g}" for n, ms in rows) + f" | {ng:.1f} |")
else:
    print("\n(no `vm phase=<name> ms=<n>` lines from the shim in containerd's log)")

# --- memory after settling ---
print(f"\nsettling {settle} s", file=sys.stderr)
time.sleep(settle)
pss = smem_pss()
print(f"\n## per-pod host memory after {settle} s (KiB)\n")
print("| pod | shim PSS | husk-vmm PSS | virtiofsd PSS | total PSS (smem) | of which guest RAM | total PSS (smaps_rollup) | total RSS |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
totals, rollups, guest = [], [], []
for pid_id in ids:
    by = {"containerd-shim-husk-v2": 0, "husk-vmm": 0, "virtiofsd": 0}
    total = roll = rss = ram = 0
    for p in pod_pids(pid_id):
        v = pss.get(p, 0)
        by[exe(p)] = by.get(exe(p), 0) + v
        total += v
        roll += rollup(p, "Pss")
        rss += rollup(p, "Rss")
        ram += guest_ram_pss(p)
    totals.append(total)
    rollups.append(roll)
    guest.append(ram)
    print(f"| {pid_id[-3:]} | {by['containerd-shim-husk-v2']} | {by['husk-vmm']} | {by['virtiofsd']} | {total} | {ram} | {roll} | {rss} |")
mean = st.mean(totals) / 1024
print(f"\nmean per pod: {mean:.1f} MiB PSS (smem), {st.mean(rollups) / 1024:.1f} MiB (smaps_rollup), "
      f"{st.mean(guest) / 1024:.1f} MiB of it guest RAM (memfd pages the guest touched); "
      f"Kata (Cloud Hypervisor) published ~124 MiB; goal <= 40 MiB: {'met' if mean <= 40 else 'NOT met'}")

for pid_id in ids:
    subprocess.run(ctr + ["task", "kill", "-s", "SIGKILL", pid_id], capture_output=True)
time.sleep(1)
for pid_id in ids:
    subprocess.run(ctr + ["task", "delete", "-f", pid_id], capture_output=True)
    subprocess.run(ctr + ["container", "delete", pid_id], capture_output=True)

# --- ctr run --rm true, side by side ---
def timed(rt, cid):
    t0 = now()
    r = subprocess.run(ctr + ["run", "--rm"] + rt + [image, cid, "true"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ctr run {cid}: {r.stderr}")
    return (now() - t0) * 1000

husk, runc = [], []
for i in range(runs):
    runc.append(timed(runc_rt, f"{prefix}-runc-{i}"))
    husk.append(timed(husk_rt, f"{prefix}-vm-{i}"))
    print(f"run {i + 1}/{runs}: runc {runc[-1]:.0f} ms, husk vm {husk[-1]:.0f} ms", file=sys.stderr)
print(f"\n## `ctr run --rm busybox true`, {runs} runs each (ms)\n")
print("| runtime | runs | median |")
print("| --- | --- | ---: |")
print(f"| io.containerd.runc.v2 | {', '.join(f'{v:.0f}' for v in runc)} | {st.median(runc):.0f} |")
print(f"| husk vm mode | {', '.join(f'{v:.0f}' for v in husk)} | {st.median(husk):.0f} |")
print(f"| husk / runc.v2 | | {st.median(husk) / st.median(runc):.1f}x |")
PY
