//! microVM pods on the host side: what a test needs to find and check the
//! pieces of a pod (husk-vmm, virtiofsd, the shim, the pod directory
//! `<state_root>/<sandbox-id>/` and the mounts under it).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use husk_testutil::{kvm_available, require};

use crate::leftovers;
use crate::target::Target;

/// The husk processes of a VM pod on the host, by executable name.
pub const POD_PROCESSES: &[&str] = &["husk-vmm", "virtiofsd", "containerd-shim-husk-v2"];

/// A value of `husk.toml` as test-env.sh writes it (`key = "value"` or
/// `key = 123`, one per line); `None` when the key is absent.
pub fn setting(config_text: &str, key: &str) -> Option<String> {
    config_text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Checks (with [`require`]) what a microVM test needs beyond containerd
/// and the shim: `/dev/kvm`, the `[vm]` section test-env.sh wrote, and the
/// files it names (husk-vmm, virtiofsd, guest kernel and initrd).
pub fn requirements_met(target: Target) -> bool {
    if !require(kvm_available(), "/dev/kvm (read-write)") {
        return false;
    }
    let config = target.husk_config();
    let Ok(text) = fs::read_to_string(&config) else {
        return require(
            false,
            &format!("{} (scripts/test-env.sh up)", config.display()),
        );
    };
    let hint = |key: &str| match key {
        "vmm" => "cargo build -p husk-vmm",
        "virtiofsd" => "cargo install virtiofsd, or scripts/test.sh",
        _ => "guest-image/build.sh",
    };
    for key in ["vmm", "virtiofsd", "kernel", "initrd"] {
        let Some(path) = setting(&text, key) else {
            return require(
                false,
                &format!(
                    "[vm] {key} in {} (scripts/test-env.sh up writes it)",
                    config.display()
                ),
            );
        };
        if !require(
            Path::new(&path).is_file(),
            &format!("{key} {path} ({})", hint(key)),
        ) {
            return false;
        }
    }
    true
}

/// The pod directory of `sandbox_id` (for `ctr run`, the container id).
pub fn pod_dir(target: Target, sandbox_id: &str) -> PathBuf {
    target.husk_state_root().join(sandbox_id)
}

/// The executable's file name of `pid` (without a " (deleted)" suffix).
pub fn exe_name(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// The NUL-separated command line of `pid` with spaces.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process id on the host.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Processes whose executable is `exe` and whose command line contains `needle`.
pub fn pids_of(exe: &str, needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| exe_name(p).as_deref() == Some(exe) && cmdline(p).contains(needle))
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // the state follows the parenthesised command name
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The pid in a pod directory's `vmm.pid` / `virtiofsd.pid`
/// (`"<pid> <starttime>\n"`).
pub fn pid_file(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no pid in {}: {text:?}", path.display()))
}

/// The live process of `exe` for the pod `sandbox_id`: from the pod
/// directory's pid file, checked against the process's executable; else the
/// only such process whose command line names the sandbox id.
pub fn pod_process(target: Target, sandbox_id: &str, exe: &str) -> Result<u32> {
    let file = pod_dir(target, sandbox_id).join(format!("{exe}.pid"));
    if let Ok(pid) = pid_file(&file) {
        if exe_name(pid).as_deref() == Some(exe) {
            return Ok(pid);
        }
    }
    let pids = pids_of(exe, sandbox_id);
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!(
            "no {exe} for pod {sandbox_id} ({} unreadable)",
            file.display()
        ),
        _ => bail!("several {exe} processes name pod {sandbox_id}: {pids:?}"),
    }
}

/// The shim process serving the pod `sandbox_id` (started with `-id <id>`).
pub fn shim_pid(sandbox_id: &str) -> Result<u32> {
    let pids: Vec<u32> = pids_of("containerd-shim-husk-v2", sandbox_id)
        .into_iter()
        .filter(|&p| cmdline(p).contains(&format!("-id {sandbox_id}")))
        .collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        _ => bail!("shims of pod {sandbox_id}: {pids:?}, expected one"),
    }
}

/// The cgroup paths of `pid` in the hierarchies a pod cgroup uses
/// (`/proc/<pid>/cgroup`: `id:controllers:path`): the v1 hierarchies, or the
/// unified one on a cgroup v2 host (on a hybrid host the controller-less
/// unified hierarchy is not used). Pairs of controllers and path.
pub fn cgroups_of(pid: u32) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("read /proc/{pid}/cgroup"))?;
    let lines: Vec<(String, String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id.to_string(), ctrl.to_string(), path.to_string()))
        })
        .collect();
    let v1 = lines.iter().any(|(id, _, _)| id != "0");
    Ok(lines
        .into_iter()
        .filter(|(id, _, _)| !v1 || id != "0")
        .map(|(_, ctrl, path)| (ctrl, path))
        .collect())
}

/// SIGKILL to `pid`.
pub fn kill9(pid: u32) -> Result<()> {
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .context("run kill")?;
    if !out.status.success() {
        bail!("kill -9 {pid}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The host's boot id (`/proc/sys/kernel/random/boot_id`).
pub fn host_boot_id() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Everything of husk's microVM pods under one containerd right now, one
/// line per piece: the husk processes ([`POD_PROCESSES`], pid and command
/// line) whose command line names `state_root` (husk-vmm, virtiofsd) or the
/// containerd's `socket` (the shim), the mounts under `state_root`, and the
/// entries of `state_root`. Comparing two snapshots shows what a pod left
/// whose id the test never learnt (a RunPodSandbox that failed).
pub fn pieces(state_root: &Path, socket: &Path) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    let names = [
        state_root.display().to_string(),
        socket.display().to_string(),
    ];
    for pid in all_pids() {
        let Some(exe) = exe_name(pid) else { continue };
        if !POD_PROCESSES.contains(&exe.as_str()) {
            continue;
        }
        let line = cmdline(pid);
        if names.iter().any(|n| line.contains(n.as_str())) {
            set.insert(format!("process {pid} `{}`", line.trim()));
        }
    }
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in leftovers::mount_points(&table) {
        if Path::new(&m).starts_with(state_root) {
            set.insert(format!("mount {m}"));
        }
    }
    for e in fs::read_dir(state_root).into_iter().flatten().flatten() {
        set.insert(format!("state {}", e.path().display()));
    }
    set
}

/// The pieces in `after` that were not in `before`.
pub fn new_pieces(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_as_test_env_writes_them() {
        let text =
            "mode = \"vm\"\n[vm]\nvmm = \"/r/target/debug/husk-vmm\"\nboot_timeout_secs = 15\n";
        assert_eq!(setting(text, "mode").as_deref(), Some("vm"));
        assert_eq!(
            setting(text, "vmm").as_deref(),
            Some("/r/target/debug/husk-vmm")
        );
        assert_eq!(setting(text, "boot_timeout_secs").as_deref(), Some("15"));
        assert_eq!(setting(text, "kernel"), None);
    }

    #[test]
    fn knows_a_live_process_and_a_reaped_one() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(exe_name(me).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn reads_a_pid_file() {
        let p = std::env::temp_dir().join(format!("husk-e2e-pidfile-{}", std::process::id()));
        fs::write(&p, "1234 98765\n").unwrap();
        let pid = pid_file(&p).unwrap();
        fs::remove_file(&p).unwrap();
        assert_eq!(pid, 1234);
    }

    #[test]
    fn snapshot_difference_lists_only_new_pieces() {
        let root = std::env::temp_dir().join(format!("husk-e2e-pieces-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let sock = root.join("containerd.sock");
        let before = pieces(&root, &sock);
        fs::create_dir(root.join("pod1")).unwrap();
        let after = pieces(&root, &sock);
        fs::remove_dir_all(&root).unwrap();
        let new = new_pieces(&before, &after);
        assert_eq!(new, [format!("state {}", root.join("pod1").display())]);
    }
}
