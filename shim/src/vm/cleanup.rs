//! Crash-safe teardown of a pod directory (`<state_root>/<sandbox-id>/`).
//!
//! Everything the pod left on the host is found from the directory itself:
//! `*.pid` files name husk-vmm and virtiofsd, `/proc/self/mountinfo` the
//! mounts under it, `cgroup.json` the pod cgroup. [`teardown_dir`] is
//! idempotent, so `shim delete`, the shim's own shutdown and `husk cleanup`
//! can all run it, in any order, any number of times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use serde::{Deserialize, Serialize};

use super::mountinfo;
use super::pidfile::{self as pf};
pub use super::pidfile::{read_pidfile, write_pidfile, PidFile, PidFileError};
use super::podcg::{PodCgroup, PodCgroupError};

/// Written by the shim when the VM starts.
pub const SANDBOX_FILE: &str = "sandbox.json";
/// How long a SIGKILLed helper may take to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds of "read mountinfo, unmount what is under the dir".
const UNMOUNT_ROUNDS: usize = 8;
/// Executable names of processes that own pod directories.
const OWNERS: [&str; 2] = ["containerd-shim-husk-v2", "husk"];

/// Errors tearing a pod directory down.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("pod dir {dir}: {source}")]
    PidFile { dir: PathBuf, source: PidFileError },
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("cannot unmount {path}: {source}; unmount it by hand (umount -l) and run `husk cleanup` again")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("mounts remain under {dir} after unmounting: {left:?}; not removing it")]
    MountsRemain { dir: PathBuf, left: Vec<PathBuf> },
    #[error("pod cgroup of {dir}: {source}")]
    Cgroup {
        dir: PathBuf,
        source: PodCgroupError,
    },
    #[error("pod network of {dir}: {source}")]
    Network {
        dir: PathBuf,
        source: super::net::NetError,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `sandbox.json`: who owns the pod directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub shim_pid: u32,
}

/// What [`teardown_dir`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// `(pid file name, pid)` of the processes that were SIGKILLed.
    pub killed: Vec<(String, u32)>,
    /// Mount points that were detached, in order.
    pub unmounted: Vec<PathBuf>,
    /// The cgroupsPath whose directories were removed.
    pub cgroup: Option<String>,
    /// Whether the pod's tap and tc redirects were removed.
    pub network: bool,
    /// Whether the directory existed and was removed.
    pub removed: bool,
}

impl std::fmt::Display for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, pid) in &self.killed {
            parts.push(format!("killed {name} ({pid})"));
        }
        if !self.unmounted.is_empty() {
            parts.push(format!("{} mount(s) detached", self.unmounted.len()));
        }
        if let Some(cg) = &self.cgroup {
            parts.push(format!("cgroup {cg} removed"));
        }
        if self.network {
            parts.push("tap removed".into());
        }
        if self.removed {
            parts.push("dir removed".into());
        }
        if parts.is_empty() {
            parts.push("nothing to do".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// Kills the pod's helpers, removes the pod's tap and tc redirects,
/// unmounts everything at or under `dir`, removes the pod cgroup it created
/// and then `dir`. A missing `dir` is fine.
///
/// When the calling process is itself in the pod cgroup (the live shim
/// shutting down), it is moved back to where it came from first.
pub fn teardown_dir(dir: &Path) -> Result<Teardown, CleanupError> {
    let mut done = Teardown::default();
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(source) => return Err(io("resolve", dir, source)),
    };
    done.killed = kill_helpers(&dir)?;
    // husk-vmm is gone: its tap can go.
    done.network = super::net::detach(&dir).map_err(|source| CleanupError::Network {
        dir: dir.clone(),
        source,
    })?;
    done.unmounted = unmount_all(&dir)?;
    done.cgroup = remove_cgroup(&dir)?;
    let mounts = mountinfo::read_self().map_err(CleanupError::Mountinfo)?;
    let left: Vec<PathBuf> = mountinfo::under(&mounts, &dir)
        .iter()
        .map(|m| m.mount_point.clone())
        .collect();
    if !left.is_empty() {
        // Removing through a mount would delete the data behind it.
        return Err(CleanupError::MountsRemain { dir, left });
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => done.removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io("remove", &dir, source)),
    }
    Ok(done)
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> CleanupError {
    CleanupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// SIGKILLs every process named by a `*.pid` file in `dir` whose start
/// time still matches, and waits for each to exit.
fn kill_helpers(dir: &Path) -> Result<Vec<(String, u32)>, CleanupError> {
    let pid_err = |source| CleanupError::PidFile {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io("list", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_helper_pidfile(p))
        .collect();
    files.sort();
    let mut killed = Vec::new();
    for path in files {
        let Some(pidfile) = read_pidfile(&path).map_err(pid_err)? else {
            continue;
        };
        if pf::kill_and_wait(&pidfile, KILL_TIMEOUT).map_err(pid_err)? {
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            tracing::info!(pid = pidfile.pid, "killed {name} of {}", dir.display());
            killed.push((name.into_owned(), pidfile.pid));
        }
    }
    Ok(killed)
}

/// Detaches every mount at or under `dir`, deepest (and topmost) first,
/// re-reading mountinfo until none is left (propagation may add some back).
fn unmount_all(dir: &Path) -> Result<Vec<PathBuf>, CleanupError> {
    let mut done = Vec::new();
    for _ in 0..UNMOUNT_ROUNDS {
        let mounts = mountinfo::read_self().map_err(CleanupError::Mountinfo)?;
        let found = mountinfo::under(&mounts, dir);
        if found.is_empty() {
            break;
        }
        for m in found {
            match umount2(&m.mount_point, MntFlags::MNT_DETACH) {
                Ok(()) => done.push(m.mount_point.clone()),
                // Already gone with a parent that was detached before it.
                Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                Err(source) => {
                    return Err(CleanupError::Unmount {
                        path: m.mount_point.clone(),
                        source,
                    })
                }
            }
        }
    }
    Ok(done)
}

/// Removes the pod cgroup per `cgroup.json`, first moving this process
/// out of it if it is inside.
fn remove_cgroup(dir: &Path) -> Result<Option<String>, CleanupError> {
    let cg_err = |source| CleanupError::Cgroup {
        dir: dir.to_path_buf(),
        source,
    };
    let Some(cg) = PodCgroup::load(dir).map_err(cg_err)? else {
        return Ok(None);
    };
    if cg.pids().contains(&std::process::id()) {
        cg.leave_self().map_err(cg_err)?;
    }
    cg.remove().map_err(cg_err)?;
    Ok(cg.created.then_some(cg.path))
}

/// True when the process owning the pod directory still runs: the
/// `shim_pid` of `sandbox.json` is a live husk shim (or `husk run`), or,
/// before that file is written, a helper's parent is one.
pub fn pod_alive(dir: &Path) -> bool {
    if let Some(info) = read_sandbox(dir) {
        return is_owner(info.shim_pid);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| is_helper_pidfile(&e.path()))
        .filter_map(|e| read_pidfile(&e.path()).ok().flatten())
        .filter(PidFile::is_running)
        .filter_map(|p| pf::stat(p.pid))
        .any(|st| is_owner(st.ppid))
}

/// Whether `dir` looks like a vm-mode pod directory (rather than a runc-mode
/// sandbox directory, which holds only per-container directories).
pub fn is_pod_dir(dir: &Path) -> bool {
    const MARKERS: [&str; 6] = [
        SANDBOX_FILE,
        "vmm.pid",
        "virtiofsd.pid",
        super::podcg::STATE_FILE,
        "shared",
        "console.log",
    ];
    MARKERS
        .iter()
        .any(|m| dir.join(m).symlink_metadata().is_ok())
}

/// Reads `sandbox.json`, `None` when it is missing or unreadable.
pub fn read_sandbox(dir: &Path) -> Option<SandboxInfo> {
    serde_json::from_slice(&std::fs::read(dir.join(SANDBOX_FILE)).ok()?).ok()
}

/// Writes `sandbox.json` (atomically).
pub fn write_sandbox(dir: &Path, info: &SandboxInfo) -> Result<(), CleanupError> {
    let path = dir.join(SANDBOX_FILE);
    let tmp = dir.join(format!("{SANDBOX_FILE}.tmp"));
    let text = serde_json::to_vec(info).expect("SandboxInfo serializes");
    std::fs::write(&tmp, text).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("write", &path, e))
}

/// The pid files the shim writes for its helpers (virtiofsd also keeps a
/// `<socket>.pid` lock file of its own, in another format).
const HELPER_PIDFILES: [&str; 2] = ["vmm.pid", "virtiofsd.pid"];

fn is_helper_pidfile(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_PIDFILES.contains(&n))
}

/// Whether `pid` is a live process whose executable is a husk shim or CLI.
fn is_owner(pid: u32) -> bool {
    if pid == 0 || pf::stat(pid).is_none_or(|s| s.state == 'Z') {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    // An executable replaced (e.g. reinstalled) since it started reads "... (deleted)".
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    OWNERS.contains(&name)
}

#[cfg(test)]
pub(crate) mod tests;
