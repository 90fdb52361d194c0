//! Duties of the guest's init: the base mounts, the sandbox settings
//! (hostname, clock, DNS files) and power-off. As an ordinary host process
//! the agent does none of the host-changing parts.

use std::ffi::CString;
use std::path::Path;

use husk_agent_api::ids::validate_id;
use husk_agent_api::pb;

use crate::engine::{Engine, EngineError};

/// Where the virtio-fs share (tag `husk`) is mounted in the guest.
pub const SHARED_DIR: &str = "/run/husk/shared";
const VIRTIOFS_TAG: &str = "husk";

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Ok(())
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, cgroup2 and the
/// share. Failures are logged, not fatal: a half-working agent can still
/// answer Version and report what is wrong.
pub fn init_mounts() {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let steps: [(&str, &str, &str, libc::c_ulong, &str); 8] = [
        ("proc", "/proc", "proc", nosuid, ""),
        ("sysfs", "/sys", "sysfs", nosuid, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666,gid=5",
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid, "mode=1777"),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, ""),
        (VIRTIOFS_TAG, SHARED_DIR, "virtiofs", 0, ""),
    ];
    for (src, target, fstype, flags, data) in steps {
        if let Err(e) = mount(src, target, fstype, flags, data) {
            tracing::warn!(target, fstype, error = %e, "mount failed");
        }
    }
    // Containers get their controllers from the root down (see cgroup::v2).
    for c in ["+cpu", "+memory", "+pids", "+io"] {
        if let Err(e) = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", c) {
            tracing::warn!(controller = c, error = %e, "cannot enable cgroup controller");
        }
    }
}

fn set_clock(ns: u64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Applies CreateSandbox. Hostname and clock are set only as the guest's
/// init; DNS files go to /etc as init, else to the state dir.
pub fn create_sandbox(engine: &Engine, r: pb::CreateSandboxRequest) -> Result<(), EngineError> {
    if r.hostname.len() > 64 || r.hostname.contains(['\0', '/']) {
        return Err(EngineError::Invalid(
            "hostname longer than 64 bytes or with '/'".into(),
        ));
    }
    if r.hosts.len() > 1 << 16 || r.resolv_conf.len() > 1 << 16 {
        return Err(EngineError::Invalid(
            "hosts/resolv.conf larger than 64 KiB".into(),
        ));
    }
    if !r.cgroup_parent.is_empty() {
        if r.cgroup_parent.len() > 512 {
            return Err(EngineError::Invalid("cgroup parent too long".into()));
        }
        for comp in r.cgroup_parent.split('/') {
            validate_id(comp)?;
        }
    }
    let pid1 = engine.cfg.pid1;
    if pid1 && !r.hostname.is_empty() {
        // SAFETY: the buffer and its length describe r.hostname.
        if unsafe { libc::sethostname(r.hostname.as_ptr().cast(), r.hostname.len()) } < 0 {
            return Err(EngineError::Io(
                "sethostname".into(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    if pid1 && r.realtime_ns > 0 {
        set_clock(r.realtime_ns).map_err(|e| EngineError::Io("set clock".into(), e))?;
    }
    let dir = if pid1 {
        Path::new("/etc")
    } else {
        engine.cfg.state_dir.as_path()
    };
    for (name, body) in [("hosts", &r.hosts), ("resolv.conf", &r.resolv_conf)] {
        if !body.is_empty() {
            let _ = std::fs::create_dir_all(dir);
            std::fs::write(dir.join(name), body)
                .map_err(|e| EngineError::Io(format!("write {name}"), e))?;
        }
    }
    if !r.cgroup_parent.is_empty() {
        // Always below the agent's own parent: a request cannot place
        // containers elsewhere in the hierarchy.
        let parent = format!("{}/{}", engine.cfg.cgroup_parent, r.cgroup_parent);
        *engine
            .cgroup_parent
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = parent;
    }
    Ok(())
}

/// sync + reboot(RB_AUTOBOOT): with `reboot=k` the VMM sees the reset and
/// exits cleanly.
pub fn power_off() -> ! {
    // SAFETY: sync has no arguments.
    unsafe { libc::sync() };
    // SAFETY: reboot with a valid command constant.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}
