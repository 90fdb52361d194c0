//! What a child must do, fully decided by the agent before clone(2): the
//! child only executes the plan (no parsing, no decisions after fork).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use caps::CapsHashSet;
use seccompiler::BpfProgram;

/// One mount of the spec, with its target relative to the rootfs.
pub struct MountPlan {
    pub dest: PathBuf,
    pub kind: MountKind,
    /// MS_* flags (ro, nosuid, nodev, noexec, ...).
    pub flags: libc::c_ulong,
    /// MS_PRIVATE / MS_SLAVE / MS_SHARED (| MS_REC), applied after mounting.
    pub propagation: libc::c_ulong,
    /// Filesystem options (`mode=755,size=65536k`).
    pub data: String,
}

pub enum MountKind {
    /// A bind mount; `src` is an O_PATH fd resolved inside the share, then
    /// (see [`RootfsPlan::detach_bind_sources`]) a detached copy of it.
    Bind {
        src: OwnedFd,
        recursive: bool,
        file: bool,
    },
    /// A filesystem mount (proc, sysfs, tmpfs, devpts, mqueue, cgroup2).
    Fs { fstype: String, source: String },
}

impl RootfsPlan {
    /// Turns every bind source into a detached mount tree, the only form a
    /// child in its new mount namespace can mount (a bind from an fd of the
    /// agent's namespace fails with EINVAL).
    pub fn detach_bind_sources(&mut self) -> std::io::Result<()> {
        for m in &mut self.mounts {
            if let MountKind::Bind { src, recursive, .. } = &mut m.kind {
                *src = super::fs::clone_tree(src.as_fd(), *recursive)?;
            }
        }
        Ok(())
    }
}

/// A device node of `linux.devices`.
pub struct DevicePlan {
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: libc::mode_t,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Root filesystem setup of a container's init.
pub struct RootfsPlan {
    /// Real path of the rootfs directory (inside the share).
    pub path: PathBuf,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub readonly_root: bool,
    /// Propagation of `/` in the new mount namespace (MS_SLAVE|MS_REC default).
    pub root_propagation: libc::c_ulong,
    pub hostname: Option<CString>,
}

/// Capability sets of the process.
#[derive(Default, Clone)]
pub struct CapsPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// The process to execve and the identity it runs with.
pub struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// `PATH` used to find args[0] when it has no `/`.
    pub path_env: String,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapsPlan,
    /// (RLIMIT_*, soft, hard)
    pub rlimits: Vec<(u32, u64, u64)>,
    pub no_new_privs: bool,
    pub seccomp: Arc<Vec<BpfProgram>>,
    /// Set the oom_score_adj of the process.
    pub oom_score_adj: Option<i32>,
}

/// How the child's 0, 1, 2 are set up.
pub enum StdioPlan {
    /// Pipes or /dev/null, dup'ed onto 0, 1, 2.
    Fds {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty opened inside the container (its /dev/ptmx, i.e. its own
    /// devpts), made the controlling terminal; the master goes to the agent.
    Pty { rows: u32, cols: u32 },
}

/// Everything the child does between clone and execve.
pub struct ChildPlan {
    /// Namespaces to join (setns) first, user namespace first.
    pub join_ns: Vec<(OwnedFd, libc::c_int)>,
    /// In a new or joined user namespace: become its root (uid/gid 0 inside)
    /// before anything else, as the agent's host uid is not mapped there.
    pub userns_root: bool,
    /// unshare(CLONE_NEWCGROUP) after joining the cgroup, so the
    /// container's cgroup namespace is rooted at its own cgroup.
    pub unshare_cgroup: bool,
    /// Set up a rootfs (container init) or not (exec: joins the init's mount ns).
    pub rootfs: Option<RootfsPlan>,
    pub process: ProcessPlan,
    pub stdio: StdioPlan,
    /// Report ready and wait for the start byte before execve (init).
    pub wait_start: bool,
}
