//! cgroup v2 (unified hierarchy), used in the guest.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{keyed, mkdir_all, num_or_max, parse_pids, read, rmdir_retry, write};
use super::{CgroupError, CgroupManager, Resources, Stats};

/// Controllers the agent enables for its containers.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// The unified hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
pub struct CgroupV2 {
    root: PathBuf,
}

impl CgroupV2 {
    pub fn new(root: PathBuf) -> Self {
        CgroupV2 { root }
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Enables our controllers in every ancestor's subtree_control, from the
    /// root down to the parent of `path`. Controllers the kernel lacks are
    /// skipped.
    fn enable_controllers(&self, path: &str) -> Result<(), CgroupError> {
        let available = read(&self.root.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        let mut dir = self.root.clone();
        let comps: Vec<&str> = path.split('/').collect();
        for (i, comp) in comps.iter().enumerate() {
            let ctl = dir.join("cgroup.subtree_control");
            for w in &wanted {
                // Best effort per controller: one missing must not block the rest.
                let _ = write(&ctl, w);
            }
            dir.push(comp);
            if i + 1 < comps.len() {
                mkdir_all(&dir)?;
            }
        }
        Ok(())
    }
}

/// OCI cpu shares (2..=262144) to cgroup v2 cpu.weight (1..=10000), the
/// conversion runc and crun use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

impl CgroupManager for CgroupV2 {
    fn create(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        self.enable_controllers(path)?;
        mkdir_all(&self.dir(path))?;
        self.update(path, res)
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir(path).join("cgroup.procs"), &pid.to_string())
    }

    fn update(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        let d = self.dir(path);
        if let Some(m) = res.memory_limit {
            write(&d.join("memory.max"), &limit(m))?;
        }
        if let Some(s) = res.memory_swap {
            // OCI swap is memory+swap; v2 swap.max is swap alone.
            let swap = match (s, res.memory_limit) {
                (s, _) if s < 0 => -1,
                (s, Some(m)) if m >= 0 => (s - m).max(0),
                _ => s,
            };
            if d.join("memory.swap.max").exists() {
                write(&d.join("memory.swap.max"), &limit(swap))?;
            }
        }
        if let Some(p) = res.pids_limit {
            write(&d.join("pids.max"), &limit(if p <= 0 { -1 } else { p }))?;
        }
        if let Some(s) = res.cpu_shares {
            write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let quota = res.cpu_quota.map(limit).unwrap_or_else(|| "max".into());
            let period = res.cpu_period.unwrap_or(100_000);
            write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(w) = res.io_weight {
            if d.join("io.weight").exists() {
                write(
                    &d.join("io.weight"),
                    &format!("default {}", w.clamp(1, 10000)),
                )?;
            }
        }
        Ok(())
    }

    fn stats(&self, path: &str) -> Result<Stats, CgroupError> {
        let d = self.dir(path);
        let cpu = read(&d.join("cpu.stat"))?;
        let events = read(&d.join("memory.events"))?;
        let (mut rb, mut wb) = (0, 0);
        for line in read(&d.join("io.stat")).unwrap_or_default().lines() {
            for kv in line.split_whitespace().skip(1) {
                match kv.split_once('=') {
                    Some(("rbytes", v)) => rb += v.parse::<u64>().unwrap_or(0),
                    Some(("wbytes", v)) => wb += v.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let opt = |f: &str| read(&d.join(f)).map(|s| num_or_max(&s)).unwrap_or(0);
        Ok(Stats {
            cpu_usage_ns: keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
            cpu_user_ns: keyed(&cpu, "user_usec").unwrap_or(0) * 1000,
            cpu_system_ns: keyed(&cpu, "system_usec").unwrap_or(0) * 1000,
            memory_usage: num_or_max(&read(&d.join("memory.current"))?),
            memory_limit: num_or_max(&read(&d.join("memory.max"))?),
            memory_max_usage: opt("memory.peak"),
            oom_kills: keyed(&events, "oom_kill").unwrap_or(0),
            pids_current: num_or_max(&read(&d.join("pids.current"))?),
            pids_limit: num_or_max(&read(&d.join("pids.max"))?),
            io_read_bytes: rb,
            io_write_bytes: wb,
        })
    }

    fn set_frozen(&self, path: &str, frozen: bool) -> Result<(), CgroupError> {
        let d = self.dir(path);
        write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { Some(1) } else { Some(0) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while keyed(&read(&d.join("cgroup.events"))?, "frozen") != want {
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(path.to_string()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn processes(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        Ok(parse_pids(&read(&self.dir(path).join("cgroup.procs"))?))
    }

    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        Ok(keyed(&read(&self.dir(path).join("memory.events"))?, "oom_kill").unwrap_or(0))
    }

    fn oom_notifier(&self, path: &str) -> Result<OwnedFd, CgroupError> {
        let file = self.dir(path).join("memory.events");
        inotify_modify(&file)
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        rmdir_retry(&self.dir(path))
    }

    fn version(&self) -> &'static str {
        "v2"
    }
}

/// An inotify fd (non-blocking, close-on-exec) watching `file` for IN_MODIFY.
fn inotify_modify(file: &Path) -> Result<OwnedFd, CgroupError> {
    let err = |source| CgroupError::Read {
        path: file.display().to_string(),
        source,
    };
    // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by inotify_init1 and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: fd is a valid inotify fd; c is a NUL-terminated path alive for the call.
    let wd = unsafe {
        libc::inotify_add_watch(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            c.as_ptr(),
            libc::IN_MODIFY,
        )
    };
    if wd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_shares_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(shares_to_weight(0), 100);
    }

    #[test]
    fn writes_limits_into_a_fake_hierarchy() {
        let root = std::env::temp_dir().join(format!("husk-cg2-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg = CgroupV2::new(root.clone());
        let res = Resources {
            memory_limit: Some(1 << 20),
            pids_limit: Some(0),
            cpu_quota: Some(50_000),
            ..Default::default()
        };
        cg.update("a/b", &res).unwrap();
        let rd = |f: &str| std::fs::read_to_string(root.join("a/b").join(f)).unwrap();
        assert_eq!(rd("memory.max"), "1048576");
        assert_eq!(rd("pids.max"), "max");
        assert_eq!(rd("cpu.max"), "50000 100000");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
