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
    /// (or the nearest ancestor that still exists).
    pub fn leave_self(&self) -> Result<()> {
        let pid = std::process::id();
        for (mount, origin) in &self.shim_origin {
            let mut target = origin.clone();
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
    pub fn remove(&self) -> Result<()> {
        let mut dirs = self.created_dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
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
mod tests {
    use super::*;

    const V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:32 / /mnt/memory-again rw - cgroup cgroup rw,memory
51 31 0:32 / /sys/fs/cgroup/memory2 rw - cgroup cgroup rw,memory
";

    #[test]
    fn v1_hierarchies_once_each_without_unified() {
        let hs = hierarchies(&mountinfo::parse(V1));
        let got: Vec<(&str, Vec<&str>)> = hs
            .iter()
            .map(|h| {
                (
                    h.mount_point.to_str().unwrap(),
                    h.controllers.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("/sys/fs/cgroup/cpu,cpuacct", vec!["cpu", "cpuacct"]),
                ("/sys/fs/cgroup/cpuset", vec!["cpuset"]),
                ("/sys/fs/cgroup/memory", vec!["memory"]),
                ("/sys/fs/cgroup/systemd", vec!["name=systemd"]),
            ]
        );
    }

    #[test]
    fn v2_host_uses_the_unified_hierarchy() {
        let mi = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let hs = hierarchies(&mountinfo::parse(mi));
        assert_eq!(
            hs,
            vec![Hierarchy {
                mount_point: "/sys/fs/cgroup".into(),
                controllers: vec![]
            }]
        );
        assert!(hierarchies(&[]).is_empty());
    }

    #[test]
    fn cgroupfs_paths_and_systemd_refusal() {
        assert_eq!(
            relative_path("/default/c1").unwrap(),
            Path::new("default/c1")
        );
        assert_eq!(
            relative_path("k8s.io/abc").unwrap(),
            Path::new("k8s.io/abc")
        );
        assert_eq!(
            relative_path("/kubepods/besteffort/pod1/abc").unwrap(),
            Path::new("kubepods/besteffort/pod1/abc")
        );
        let e = relative_path("system.slice:cri-containerd:abc").unwrap_err();
        assert!(matches!(e, PodCgroupError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("SystemdCgroup = false"), "{e}");
        for bad in ["/a/../b", "/", "", "a:b"] {
            let e = relative_path(bad).unwrap_err();
            assert!(
                matches!(e, PodCgroupError::InvalidPath { .. }),
                "{bad}: {e}"
            );
        }
    }

    fn fake(root: &Path, names: &[&str]) -> Vec<Hierarchy> {
        names
            .iter()
            .map(|n| {
                std::fs::create_dir_all(root.join(n)).unwrap();
                Hierarchy {
                    mount_point: root.join(n),
                    controllers: vec![n.to_string()],
                }
            })
            .collect()
    }

    #[test]
    fn creates_saves_and_removes_only_its_own_dirs() {
        let t = tempfile::tempdir().unwrap();
        let hs = fake(t.path(), &["memory", "pids"]);
        std::fs::create_dir(t.path().join("memory/kubepods")).unwrap();
        let path = "/kubepods/pod1";
        let cg = PodCgroup::create_in(&hs, path, &relative_path(path).unwrap()).unwrap();
        assert!(cg.created);
        assert_eq!(
            cg.dirs,
            vec![
                t.path().join("memory/kubepods/pod1"),
                t.path().join("pids/kubepods/pod1")
            ]
        );
        assert_eq!(
            cg.created_dirs,
            vec![
                t.path().join("memory/kubepods/pod1"),
                t.path().join("pids/kubepods"),
                t.path().join("pids/kubepods/pod1"),
            ]
        );
        let pod = tempfile::tempdir().unwrap();
        cg.save(pod.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pod.path().join("cgroup.json")).unwrap())
                .unwrap();
        assert_eq!(json["path"], "/kubepods/pod1");
        assert_eq!(json["created"], true);
        let loaded = PodCgroup::load(pod.path()).unwrap().unwrap();
        assert_eq!(loaded, cg);

        loaded.remove().unwrap();
        assert!(
            t.path().join("memory/kubepods").is_dir(),
            "pre-existing dir kept"
        );
        assert!(!t.path().join("memory/kubepods/pod1").exists());
        assert!(!t.path().join("pids/kubepods").exists());
        loaded.remove().unwrap(); // idempotent
    }

    #[test]
    fn existing_cgroup_is_not_created_and_not_removed() {
        let t = tempfile::tempdir().unwrap();
        let hs = fake(t.path(), &["memory"]);
        std::fs::create_dir_all(t.path().join("memory/default/c1")).unwrap();
        let cg = PodCgroup::create_in(&hs, "/default/c1", Path::new("default/c1")).unwrap();
        assert!(!cg.created);
        cg.remove().unwrap();
        assert!(t.path().join("memory/default/c1").is_dir());
    }

    #[test]
    fn add_writes_procs_and_leftover_processes_are_named() {
        let t = tempfile::tempdir().unwrap();
        let hs = fake(t.path(), &["memory"]);
        let cg = PodCgroup::create_in(&hs, "/p", Path::new("p")).unwrap();
        cg.add(4242).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("memory/p/cgroup.procs")).unwrap(),
            "4242\n"
        );
        assert_eq!(cg.pids(), vec![4242]);
        let e = cg.remove().unwrap_err();
        match &e {
            PodCgroupError::Busy { pids, .. } => assert_eq!(pids, &vec![4242]),
            other => panic!("unexpected {other}"),
        }
        assert!(e.to_string().contains("4242"), "{e}");
    }

    #[test]
    fn missing_or_corrupt_state() {
        let pod = tempfile::tempdir().unwrap();
        assert_eq!(PodCgroup::load(pod.path()).unwrap(), None);
        std::fs::write(pod.path().join("cgroup.json"), "{").unwrap();
        let e = PodCgroup::load(pod.path()).unwrap_err();
        assert!(e.to_string().contains("cgroup.json"), "{e}");
    }

    fn cgroup_of(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
    }

    #[test]
    fn real_cgroup_with_a_process() {
        if !husk_testutil::require(husk_testutil::is_root(), "root") {
            return;
        }
        let _l = test_lock();
        let path = format!("/husk-test-podcg-{}/pod", std::process::id());
        let cg = PodCgroup::create(&path).unwrap();
        assert!(cg.created);
        assert!(cg.dirs.iter().all(|d| d.join("cgroup.procs").is_file()));
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        cg.add(child.id()).unwrap();
        let now = cgroup_of(child.id());
        assert!(now.contains(&path), "{now}");
        assert_eq!(cg.pids(), vec![child.id()]);

        let e = cg.remove().unwrap_err();
        assert!(
            matches!(e, PodCgroupError::Busy { ref pids, .. } if pids == &vec![child.id()]),
            "{e}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove().unwrap();
        for d in &cg.created_dirs {
            assert!(!d.exists(), "{} left", d.display());
        }
    }

    #[test]
    fn shim_enters_and_leaves() {
        if !husk_testutil::require(husk_testutil::is_root(), "root") {
            return;
        }
        let _l = test_lock();
        let before = cgroup_of(std::process::id());
        let path = format!("/husk-test-podcg-self-{}", std::process::id());
        let mut cg = PodCgroup::create(&path).unwrap();
        cg.enter_self().unwrap();
        let inside = cgroup_of(std::process::id());
        let left = cg.leave_self();
        let removed = cg.remove();
        assert!(inside.contains(&path), "{inside}");
        left.unwrap();
        removed.unwrap();
        assert_eq!(cgroup_of(std::process::id()), before);
        assert!(!cg.shim_origin.is_empty());
    }
}
