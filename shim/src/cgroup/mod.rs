//! The host cgroups of a container: where they are, their metrics, and OOM
//! notifications. Both layouts are handled: v1 (one hierarchy per
//! controller, as on this project's hosts) and the unified v2 hierarchy.

mod metrics;
mod oom;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use metrics::{metrics_any, parse_flat_keyed};
pub use oom::OomWatcher;

/// Errors locating or reading cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("process {0} has no cgroup for controller {1}")]
    NoController(u32, String),
    #[error("cannot watch for oom in {path}: {source}")]
    Oom {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a process's cgroups live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPaths {
    /// v1: one directory per controller (`memory`, `cpuacct`, `cpu`, `pids`, ...).
    V1(HashMap<String, PathBuf>),
    /// v2: the one directory in the unified hierarchy.
    V2(PathBuf),
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// True when the host runs the unified (v2) hierarchy at /sys/fs/cgroup.
pub fn is_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A cgroup mount from mountinfo: its root inside the hierarchy, where it
/// is mounted and the controllers it carries (empty for v2).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    controllers: Vec<String>,
    v2: bool,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (fstype, super_opts) = (r[0], r[2]);
        let v2 = fstype == "cgroup2";
        if fstype != "cgroup" && !v2 {
            continue;
        }
        let controllers = if v2 {
            Vec::new()
        } else {
            super_opts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(|o| o.to_string())
                .collect()
        };
        mounts.push(Mount {
            root: l[3].to_string(),
            point: PathBuf::from(l[4]),
            controllers,
            v2,
        });
    }
    mounts
}

fn join_in_mount(m: &Mount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(m.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    m.point.join(rel)
}

/// Resolves the cgroups of `pid` from `/proc/<pid>/cgroup` and mountinfo text.
fn resolve(proc_cgroup: &str, mountinfo: &str, unified: bool) -> CgroupPaths {
    let mounts = parse_mountinfo(mountinfo);
    if unified {
        let path = proc_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let point = mounts
            .iter()
            .find(|m| m.v2)
            .map(|m| join_in_mount(m, path))
            .unwrap_or_else(|| Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')));
        return CgroupPaths::V2(point);
    }
    let mut map = HashMap::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        for ctrl in ctrls.split(',').filter(|c| !c.is_empty()) {
            if let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
            {
                map.insert(ctrl.to_string(), join_in_mount(m, path));
            }
        }
    }
    CgroupPaths::V1(map)
}

impl CgroupPaths {
    /// The cgroups of a running process.
    pub fn of_pid(pid: u32) -> Result<CgroupPaths, CgroupError> {
        let cg = read(Path::new(&format!("/proc/{pid}/cgroup")))?;
        let mi = read(Path::new("/proc/self/mountinfo"))?;
        Ok(resolve(&cg, &mi, is_unified()))
    }

    /// The directory of one v1 controller (or the v2 directory).
    pub fn controller(&self, name: &str) -> Option<&Path> {
        match self {
            CgroupPaths::V1(m) => m.get(name).map(|p| p.as_path()),
            CgroupPaths::V2(p) => Some(p.as_path()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
29 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
32 25 0:30 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
";

    #[test]
    fn resolves_v1_controllers() {
        let cg = "12:pids:/default/c1\n4:cpu,cpuacct:/default/c1\n3:memory:/default/c1\n0::/\n";
        let p = resolve(cg, MOUNTINFO_V1, false);
        assert_eq!(
            p.controller("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/default/c1"))
        );
        assert_eq!(
            p.controller("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/default/c1"))
        );
        assert_eq!(
            p.controller("pids"),
            Some(Path::new("/sys/fs/cgroup/pids/default/c1"))
        );
        assert_eq!(p.controller("blkio"), None);
    }

    #[test]
    fn resolves_v2_path() {
        let mi = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let p = resolve("0::/k8s.io/abc\n", mi, true);
        assert_eq!(
            p,
            CgroupPaths::V2(PathBuf::from("/sys/fs/cgroup/k8s.io/abc"))
        );
    }

    #[test]
    fn nested_mount_root_is_stripped() {
        let mi = "29 25 0:27 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let p = resolve("3:memory:/outer/c1\n", mi, false);
        assert_eq!(
            p.controller("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/c1"))
        );
    }

    #[test]
    fn own_cgroups_resolve() {
        let p = CgroupPaths::of_pid(std::process::id()).unwrap();
        let dir = p.controller("memory").expect("memory controller");
        assert!(dir.exists(), "{}", dir.display());
    }
}
