//! The pod's host cgroup in vm mode: the shim, husk-vmm and virtiofsd live
//! in the cgroup named by the pod's OCI `linux.cgroupsPath`, so the
//! RuntimeClass overhead (and the pod's limits, set by the kubelet on the
//! parent) account for them.
//!
//! Only cgroupfs-style paths are handled (`/kubepods/besteffort/podX/ID`,
//! `/default/c1`, or relative `k8s.io/ID`, which is taken from the root);
//! the systemd form `slice:prefix:name` is refused for now. On a v1 host
//! the cgroup is made in every hierarchy mounted under `/sys/fs/cgroup`; on
//! a v2 host in the unified one. [`PodCgroup::remove`] removes only the
//! directories [`PodCgroup::create`] made, deepest first.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mountinfo::{self, MountEntry};

/// Where the state lives inside the pod directory.
pub const STATE_FILE: &str = "cgroup.json";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors creating, joining or removing the pod cgroup.
#[derive(Debug, thiserror::Error)]
pub enum PodCgroupError {
    #[error("systemd cgroup path {0:?} is not supported in vm mode yet; set SystemdCgroup = false for the husk runtime in containerd's config")]
    Unsupported(String),
    #[error("invalid cgroupsPath {path:?}: {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error("no cgroup hierarchy is mounted under /sys/fs/cgroup; mount cgroup v1 controllers or cgroup2 there")]
    NoHierarchy,
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cgroup {path} still has processes {pids:?}; kill them before removing the pod cgroup"
    )]
    Busy { path: PathBuf, pids: Vec<u32> },
    #[error("invalid pod cgroup state {path}: {source}; remove the file and the cgroup by hand")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, PodCgroupError>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PodCgroupError {
    let path = path.to_path_buf();
    move |source| PodCgroupError::Io { op, path, source }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// v1 controllers (`cpu`, `name=systemd`, ...); empty for v2.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn is_cpuset(&self) -> bool {
        self.controllers.iter().any(|c| c == "cpuset")
    }
}

/// The hierarchies to use: every v1 hierarchy mounted under /sys/fs/cgroup
/// (once each), or the unified hierarchy when no v1 controller is mounted.
pub fn hierarchies(mounts: &[MountEntry]) -> Vec<Hierarchy> {
    let under_root = |m: &&MountEntry| m.mount_point.starts_with(CGROUP_ROOT);
    let mut seen = Vec::new();
    let mut v1 = Vec::new();
    for m in mounts
        .iter()
        .filter(under_root)
        .filter(|m| m.fs_type == "cgroup")
    {
        if seen.contains(&m.dev) {
            continue;
        }
        seen.push(m.dev.clone());
        let controllers = m
            .super_options
            .split(',')
            .filter(|o| o.starts_with("name=") || is_controller_name(o))
            .map(str::to_string)
            .collect();
        v1.push(Hierarchy {
            mount_point: m.mount_point.clone(),
            controllers,
        });
    }
    if !v1.is_empty() {
        return v1;
    }
    mounts
        .iter()
        .filter(under_root)
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| {
            vec![Hierarchy {
                mount_point: m.mount_point.clone(),
                controllers: Vec::new(),
            }]
        })
        .unwrap_or_default()
}

/// Mount options of a v1 cgroup mount that are not controller names.
fn is_controller_name(opt: &str) -> bool {
    !opt.contains('=')
        && !matches!(
            opt,
            "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode" | "none"
        )
}

/// Checks a cgroupfs `cgroupsPath` and returns it relative to the root.
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf> {
    let invalid = |why| PodCgroupError::InvalidPath {
        path: cgroups_path.to_string(),
        why,
    };
    if cgroups_path.contains(':') {
        if cgroups_path.split(':').count() == 3 {
            return Err(PodCgroupError::Unsupported(cgroups_path.to_string()));
        }
        return Err(invalid(
            "':' is only valid in the systemd form slice:prefix:name",
        ));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(cgroups_path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("'..' is not allowed"))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(invalid("it must name a cgroup below the root"));
    }
    Ok(rel)
}

/// The pod cgroup: its directory in each hierarchy and which of them (and
/// of their parents) it created. Saved as `cgroup.json` in the pod dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    /// `linux.cgroupsPath` as the pod's spec gave it.
    pub path: String,
    /// True when this pod created at least one directory.
    pub created: bool,
    /// The pod cgroup's directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// Directories created for the pod, parents before children.
    pub created_dirs: Vec<PathBuf>,
    /// Where the shim was before it joined the pod cgroup: hierarchy mount
    /// point -> directory (see [`PodCgroup::enter_self`]).
    #[serde(default)]
    pub shim_origin: BTreeMap<PathBuf, PathBuf>,
}

impl PodCgroup {
    /// Creates (mkdir -p) the pod cgroup in every hierarchy of this host.
    pub fn create(cgroups_path: &str) -> Result<PodCgroup> {
        let rel = relative_path(cgroups_path)?;
        let mounts =
            mountinfo::read_self().map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        let hs = hierarchies(&mounts);
        if hs.is_empty() {
            return Err(PodCgroupError::NoHierarchy);
        }
        Self::create_in(&hs, cgroups_path, &rel)
    }

    fn create_in(hs: &[Hierarchy], cgroups_path: &str, rel: &Path) -> Result<PodCgroup> {
        let mut cg = PodCgroup {
            path: cgroups_path.to_string(),
            created: false,
            dirs: Vec::new(),
            created_dirs: Vec::new(),
            shim_origin: BTreeMap::new(),
        };
        for h in hs {
            let mut dir = h.mount_point.clone();
            for part in rel.components() {
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        cg.created_dirs.push(dir.clone());
                        if h.is_cpuset() {
                            inherit_cpuset(&dir)?;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        // Leave nothing half-made behind.
                        let _ = cg.remove();
                        return Err(io("create cgroup", &dir)(e));
                    }
                }
            }
            cg.dirs.push(dir);
        }
        cg.created = !cg.created_dirs.is_empty();
        Ok(cg)
    }

    /// Moves process `pid` (all its threads) into the pod cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, format!("{pid}\n")).map_err(io("join", &procs))?;
        }
        Ok(())
    }

    /// The `cgroup.procs` file of the pod cgroup in each hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves this process into the pod cgroup, remembering where it was so
    /// that [`PodCgroup::leave_self`] can move it back before removal.
    pub fn enter_self(&mut self) -> Result<()> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io("read", Path::new("/proc/self/cgroup")))?;
        self.shim_origin.clear();
        for dir in &self.dirs {
            if let Some((mount, origin)) = origin_of(dir, &own) {
                self.shim_origin.insert(mount, origin);
            }
        }
        self.add(std::process::id())
    }

    /// Moves this process back to where [`PodCgroup::enter_self`] found it
    /// (or the nearest ancestor that still exists). In a hierarchy with no
    /// recorded origin (state loaded from a `cgroup.json` saved before
    /// `enter_self`), it goes to the hierarchy's root.
    pub fn leave_self(&self) -> Result<()> {
        let pid = std::process::id();
        let mounts =
            mountinfo::read_self().map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        let hs = hierarchies(&mounts);
        for dir in &self.dirs {
            let Some(h) = hs.iter().find(|h| dir.starts_with(&h.mount_point)) else {
                continue;
            };
            let mount = &h.mount_point;
            let mut target = self.shim_origin.get(mount).unwrap_or(mount).clone();
            while !target.join("cgroup.procs").exists() && target != *mount && target.pop() {}
            let procs = target.join("cgroup.procs");
            std::fs::write(&procs, format!("{pid}\n")).map_err(io("move back to", &procs))?;
        }
        Ok(())
    }

    /// The pids in the pod cgroup (any hierarchy).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs.iter().flat_map(|d| read_procs(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the directories this pod created, deepest first. Missing ones
    /// are fine (idempotent); one with processes left is [`PodCgroupError::Busy`].
    /// A parent it created that now holds another pod's cgroup is left to
    /// that pod.
    pub fn remove(&self) -> Result<()> {
        let mut dirs = self.created_dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            if !self.dirs.contains(dir) && has_subdirs(dir) {
                tracing::debug!("leaving {}: another cgroup is below it", dir.display());
                continue;
            }
            rmdir_retrying(dir)?;
        }
        Ok(())
    }

    /// Writes `<pod_dir>/cgroup.json`.
    pub fn save(&self, pod_dir: &Path) -> Result<()> {
        let path = pod_dir.join(STATE_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| PodCgroupError::State {
            path: path.clone(),
            source,
        })?;
        let tmp = pod_dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))
    }

    /// Reads `<pod_dir>/cgroup.json`; `None` when there is none.
    pub fn load(pod_dir: &Path) -> Result<Option<PodCgroup>> {
        let path = pod_dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| PodCgroupError::State { path, source })
    }
}

/// A new v1 cpuset cgroup has no cpus or mems, and joining it fails
/// (ENOSPC) until they are set: copy the parent's.
fn inherit_cpuset(dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        let current = std::fs::read_to_string(&own).map_err(io("read", &own))?;
        if !current.trim().is_empty() {
            continue;
        }
        let parent = dir.parent().unwrap_or(dir).join(file);
        let value = std::fs::read_to_string(&parent).map_err(io("read", &parent))?;
        std::fs::write(&own, value.trim()).map_err(io("write", &own))?;
    }
    Ok(())
}

/// `(mount point, directory)` of this process in the hierarchy holding
/// `pod_dir`, from `/proc/self/cgroup` text.
fn origin_of(pod_dir: &Path, proc_cgroup: &str) -> Option<(PathBuf, PathBuf)> {
    let mounts = mountinfo::read_self().ok()?;
    let mount = hierarchies(&mounts)
        .into_iter()
        .find(|h| pod_dir.starts_with(&h.mount_point))?;
    let path = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if mount.controllers.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls
                .split(',')
                .any(|c| mount.controllers.iter().any(|m| m == c))
        };
        matches.then(|| path.to_string())
    })?;
    let dir = mount.mount_point.join(path.trim_start_matches('/'));
    Some((mount.mount_point, dir))
}

fn has_subdirs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
        .unwrap_or(false)
}

fn read_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// rmdir with a few short retries on EBUSY (a killed process may take a
/// moment to leave); a missing directory is fine.
fn rmdir_retrying(dir: &Path) -> Result<()> {
    let mut tries_left = 50;
    loop {
        let e = match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        if e.raw_os_error() == Some(libc::EBUSY) && tries_left > 0 {
            tries_left -= 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let pids = read_procs(dir);
        if !pids.is_empty() {
            return Err(PodCgroupError::Busy {
                path: dir.to_path_buf(),
                pids,
            });
        }
        return Err(io("remove cgroup", dir)(e));
    }
}

/// Serialises tests that spawn processes with the one test that moves the
/// whole test process into a pod cgroup (a child forked meanwhile would
/// land there too).
#[cfg(test)]
pub(crate) fn test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
