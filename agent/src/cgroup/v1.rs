//! cgroup v1, used only when the host has no unified hierarchy with
//! controllers (this CI machine). One directory per controller.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{keyed, mkdir_all, num_or_max, parse_pids, read, rmdir_retry, write};
use super::{CgroupError, CgroupManager, Resources, Stats};

/// Controllers a container gets a directory in.
const CONTROLLERS: [&str; 6] = ["memory", "pids", "cpu", "cpuacct", "freezer", "blkio"];
/// v1 reports "unlimited" memory as this page-rounded i64::MAX.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;
/// USER_HZ: cpuacct.stat counts in these ticks.
const USER_HZ_NS: u64 = 10_000_000;

/// The v1 controllers mounted under `root` (normally `/sys/fs/cgroup`).
pub struct CgroupV1 {
    root: PathBuf,
}

impl CgroupV1 {
    pub fn new(root: PathBuf) -> Self {
        CgroupV1 { root }
    }

    fn dir(&self, ctl: &str, path: &str) -> PathBuf {
        self.root.join(ctl).join(path)
    }

    /// Controllers mounted on this host, each mount once (cpu,cpuacct may
    /// be co-mounted behind symlinks).
    fn mounted(&self) -> Vec<&'static str> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for c in CONTROLLERS {
            if let Ok(real) = std::fs::canonicalize(self.root.join(c)) {
                if !seen.contains(&real) {
                    seen.push(real);
                    out.push(c);
                }
            }
        }
        out
    }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

impl CgroupManager for CgroupV1 {
    fn create(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        for c in self.mounted() {
            mkdir_all(&self.dir(c, path))?;
        }
        self.update(path, res)
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        for c in self.mounted() {
            write(&self.dir(c, path).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn update(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        let m = self.dir("memory", path);
        if let Some(v) = res.memory_limit {
            write(&m.join("memory.limit_in_bytes"), &limit(v))?;
        }
        if let Some(v) = res.memory_swap {
            if m.join("memory.memsw.limit_in_bytes").exists() {
                write(&m.join("memory.memsw.limit_in_bytes"), &limit(v))?;
            }
        }
        if let Some(v) = res.pids_limit {
            let v = if v <= 0 { "max".into() } else { v.to_string() };
            write(&self.dir("pids", path).join("pids.max"), &v)?;
        }
        let cpu = self.dir("cpu", path);
        if let Some(v) = res.cpu_shares {
            write(&cpu.join("cpu.shares"), &v.to_string())?;
        }
        if let Some(v) = res.cpu_period {
            write(&cpu.join("cpu.cfs_period_us"), &v.to_string())?;
        }
        if let Some(v) = res.cpu_quota {
            write(&cpu.join("cpu.cfs_quota_us"), &limit(v))?;
        }
        if let Some(w) = res.io_weight {
            let f = self.dir("blkio", path).join("blkio.weight");
            if f.exists() {
                write(&f, &w.clamp(10, 1000).to_string())?;
            }
        }
        Ok(())
    }

    fn stats(&self, path: &str) -> Result<Stats, CgroupError> {
        let m = self.dir("memory", path);
        let acct = self.dir("cpuacct", path);
        let cpustat = read(&acct.join("cpuacct.stat"))?;
        let mem_limit = num_or_max(&read(&m.join("memory.limit_in_bytes"))?);
        let (mut rb, mut wb) = (0, 0);
        let blk = self
            .dir("blkio", path)
            .join("blkio.throttle.io_service_bytes");
        for line in read(&blk).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [_, "Read", v] => rb += v.parse::<u64>().unwrap_or(0),
                [_, "Write", v] => wb += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
        Ok(Stats {
            cpu_usage_ns: num_or_max(&read(&acct.join("cpuacct.usage"))?),
            cpu_user_ns: keyed(&cpustat, "user").unwrap_or(0) * USER_HZ_NS,
            cpu_system_ns: keyed(&cpustat, "system").unwrap_or(0) * USER_HZ_NS,
            memory_usage: num_or_max(&read(&m.join("memory.usage_in_bytes"))?),
            memory_limit: if mem_limit >= V1_UNLIMITED {
                u64::MAX
            } else {
                mem_limit
            },
            memory_max_usage: num_or_max(&read(&m.join("memory.max_usage_in_bytes"))?),
            oom_kills: self.oom_kills(path)?,
            pids_current: num_or_max(&read(&self.dir("pids", path).join("pids.current"))?),
            pids_limit: num_or_max(&read(&self.dir("pids", path).join("pids.max"))?),
            io_read_bytes: rb,
            io_write_bytes: wb,
        })
    }

    fn set_frozen(&self, path: &str, frozen: bool) -> Result<(), CgroupError> {
        let f = self.dir("freezer", path).join("freezer.state");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write(&f, want)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while read(&f)?.trim() != want {
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(path.to_string()));
            }
            std::thread::sleep(Duration::from_millis(1));
            write(&f, want)?;
        }
        Ok(())
    }

    fn processes(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        Ok(parse_pids(&read(
            &self.dir("pids", path).join("cgroup.procs"),
        )?))
    }

    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        let t = read(&self.dir("memory", path).join("memory.oom_control"))?;
        Ok(keyed(&t, "oom_kill").unwrap_or(0))
    }

    fn oom_notifier(&self, path: &str) -> Result<OwnedFd, CgroupError> {
        let m = self.dir("memory", path);
        let err = |source| CgroupError::Read {
            path: m.join("memory.oom_control").display().to_string(),
            source,
        };
        // SAFETY: eventfd takes an initial value and flags; returns a new fd or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: efd was just returned by eventfd and is owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let oc = std::fs::File::open(m.join("memory.oom_control")).map_err(err)?;
        // The kernel keeps its own reference to oom_control once registered.
        let reg = format!("{} {}", efd.as_raw_fd(), oc.as_raw_fd());
        write(&m.join("cgroup.event_control"), &reg)?;
        Ok(efd)
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let mut first_err = None;
        for c in self.mounted() {
            if let Err(e) = rmdir_retry(&self.dir(c, path)) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn version(&self) -> &'static str {
        "v1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_limits_into_a_fake_hierarchy() {
        let root = std::env::temp_dir().join(format!("husk-cg1-{}", std::process::id()));
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(root.join(c).join("x")).unwrap();
        }
        let cg = CgroupV1::new(root.clone());
        let res = Resources {
            memory_limit: Some(4096),
            pids_limit: Some(7),
            cpu_shares: Some(256),
            ..Default::default()
        };
        cg.update("x", &res).unwrap();
        let rd = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(rd("memory/x/memory.limit_in_bytes"), "4096");
        assert_eq!(rd("pids/x/pids.max"), "7");
        assert_eq!(rd("cpu/x/cpu.shares"), "256");
        assert_eq!(cg.mounted(), vec!["memory", "pids", "cpu"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
