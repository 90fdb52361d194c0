//! cgroup management behind one narrow trait: cgroup v2 in the guest (and on
//! v2 hosts), cgroup v1 on v1 hosts (tests on this machine). Chosen once by
//! [`detect`]; the agent never remounts a host's cgroups.

mod v1;
mod v2;

use std::os::fd::OwnedFd;
use std::path::Path;

pub use v1::CgroupV1;
pub use v2::CgroupV2;

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: String,
        value: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create or remove cgroup {path}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("no usable cgroup hierarchy under /sys/fs/cgroup; mount cgroup2 (guest) or the v1 controllers")]
    NoHierarchy,
    #[error(
        "cgroup {0} did not reach the requested freezer state; is a process stuck in the kernel?"
    )]
    FreezeTimeout(String),
    #[error("cgroup {0} still has processes; kill them first")]
    Busy(String),
}

/// Resource limits; `None` leaves a value as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Bytes; -1 = unlimited.
    pub memory_limit: Option<i64>,
    /// memory+swap bytes (v1 semantics, as in the OCI spec); -1 = unlimited.
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks; 0 or negative = unlimited.
    pub pids_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    /// Microseconds per period; -1 = unlimited.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// 1..=10000 (v2 io.weight).
    pub io_weight: Option<u64>,
}

/// Usage numbers of one cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage: u64,
    /// `u64::MAX` when unlimited.
    pub memory_limit: u64,
    pub memory_max_usage: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
    /// `u64::MAX` when unlimited.
    pub pids_limit: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// One cgroup hierarchy the agent manages. `path` is relative to the
/// hierarchy root (e.g. `husk/c1`), already validated by the caller.
pub trait CgroupManager: Send + Sync {
    /// Creates the cgroup (and missing parents) and applies `res`.
    fn create(&self, path: &str, res: &Resources) -> Result<(), CgroupError>;
    /// Moves `pid` into the cgroup.
    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError>;
    fn update(&self, path: &str, res: &Resources) -> Result<(), CgroupError>;
    fn stats(&self, path: &str) -> Result<Stats, CgroupError>;
    /// Freezes or thaws, returning once the kernel reports the new state.
    fn set_frozen(&self, path: &str, frozen: bool) -> Result<(), CgroupError>;
    /// PIDs in the cgroup (agent's pid namespace).
    fn processes(&self, path: &str) -> Result<Vec<i32>, CgroupError>;
    /// How many processes the OOM killer has killed in this cgroup.
    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError>;
    /// An fd that becomes readable when the cgroup may have hit OOM
    /// (v2: inotify on memory.events; v1: eventfd on memory.oom_control).
    /// Drain it with `read` and then check [`CgroupManager::oom_kills`].
    fn oom_notifier(&self, path: &str) -> Result<OwnedFd, CgroupError>;
    /// Removes the (empty) cgroup; `Busy` while processes remain.
    fn remove(&self, path: &str) -> Result<(), CgroupError>;
    /// "v1" or "v2".
    fn version(&self) -> &'static str;
}

/// Picks v2 when `root` is a unified hierarchy with controllers, else v1
/// when the v1 memory controller is mounted.
pub fn detect(root: &Path) -> Result<Box<dyn CgroupManager>, CgroupError> {
    if root.join("cgroup.controllers").exists() {
        return Ok(Box::new(CgroupV2::new(root.to_path_buf())));
    }
    if root.join("memory").join("memory.limit_in_bytes").exists() {
        return Ok(Box::new(CgroupV1::new(root.to_path_buf())));
    }
    Err(CgroupError::NoHierarchy)
}

impl Resources {
    /// Limits from an OCI spec's `linux.resources`.
    pub fn from_oci(r: &oci_spec::runtime::LinuxResources) -> Self {
        let mut out = Resources::default();
        if let Some(m) = r.memory() {
            out.memory_limit = m.limit();
            out.memory_swap = m.swap();
        }
        if let Some(p) = r.pids() {
            out.pids_limit = Some(p.limit());
        }
        if let Some(c) = r.cpu() {
            out.cpu_shares = c.shares();
            out.cpu_quota = c.quota();
            out.cpu_period = c.period();
        }
        if let Some(b) = r.block_io() {
            out.io_weight = b.weight().map(u64::from);
        }
        out
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.display().to_string(),
        value: value.to_string(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Value of `key` in a flat keyed file (`key value` per line).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Parses a number or `max` (= `u64::MAX`).
pub(crate) fn num_or_max(s: &str) -> u64 {
    let s = s.trim();
    if s == "max" {
        u64::MAX
    } else {
        s.parse().unwrap_or(0)
    }
}

pub(crate) fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Retries `rmdir` a few times: a cgroup stays busy for a moment after its
/// last process has been reaped.
pub(crate) fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    for i in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && i < 49 => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Busy(dir.display().to_string()))
            }
            Err(source) => {
                return Err(CgroupError::Dir {
                    path: dir.display().to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

pub(crate) fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Dir {
        path: dir.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyed_files() {
        let t = "usage_usec 120\nuser_usec 100\nsystem_usec 20\n";
        assert_eq!(keyed(t, "user_usec"), Some(100));
        assert_eq!(keyed(t, "nope"), None);
        assert_eq!(num_or_max("max\n"), u64::MAX);
        assert_eq!(num_or_max("42\n"), 42);
        assert_eq!(parse_pids("1\n22\n\n"), vec![1, 22]);
    }

    #[test]
    fn resources_from_oci() {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1048576},"pids":{"limit":5},"cpu":{"shares":512,"quota":50000,"period":100000}}"#,
        )
        .unwrap();
        let got = Resources::from_oci(&r);
        assert_eq!(got.memory_limit, Some(1048576));
        assert_eq!(got.pids_limit, Some(5));
        assert_eq!(got.cpu_shares, Some(512));
        assert_eq!(got.cpu_quota, Some(50000));
        assert_eq!(got.cpu_period, Some(100000));
    }
}
