//! OCI spec → plans for the syscall layer. All validation of the untrusted
//! spec happens here, before anything is created.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use caps::CapsHashSet;
use oci_spec::runtime::{Capabilities, LinuxNamespaceType, Mount, Process, Spec};
use seccompiler::BpfProgram;

use crate::cgroup::Resources;
use crate::share::{Share, ShareError};
use crate::sys::fs::clean_components;
use crate::sys::plan::{CapsPlan, DevicePlan, MountKind, MountPlan, ProcessPlan, RootfsPlan};
use crate::sys::seccomp::{self, SeccompError};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_MOUNTS: usize = 512;
const MAX_ARGS: usize = 4096;

/// A spec the agent cannot or will not run; always InvalidArgument.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec has no process; set process.args")]
    NoProcess,
    #[error("process.args is empty or too long; give the program to run")]
    Args,
    #[error("{0:?} must be an absolute path without '..'")]
    Path(String),
    #[error("string {0:?} contains a NUL byte")]
    Nul(String),
    #[error(
        "namespace paths are not supported (namespace {0}); the agent creates namespaces itself"
    )]
    NamespacePath(String),
    #[error("namespace {0} is not supported")]
    Namespace(String),
    #[error("too many mounts (more than {MAX_MOUNTS})")]
    TooManyMounts,
    #[error("mount {0:?}: {1}")]
    MountSource(String, #[source] ShareError),
    #[error("unknown capability {0}")]
    Capability(String),
    #[error("unknown rlimit {0}")]
    Rlimit(String),
    #[error("sysctl {0:?} is not a valid kernel parameter name or its value has a NUL byte")]
    Sysctl(String),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Everything to create a container, decided up front.
pub struct ContainerPlan {
    /// CLONE_NEW* flags for clone (cgroup ns is unshared later by the child).
    pub clone_flags: libc::c_int,
    pub unshare_cgroup: bool,
    /// Namespaces the container owns, as /proc/<pid>/ns names (for exec).
    pub namespaces: Vec<(String, libc::c_int)>,
    pub uid_map: String,
    pub gid_map: String,
    pub rootfs: RootfsPlan,
    pub process: ProcessPlan,
    pub terminal: bool,
    pub resources: Resources,
    pub seccomp: Arc<Vec<BpfProgram>>,
}

fn cstring(s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(s.to_string()))
}

fn abs_path(p: &Path) -> Result<PathBuf, SpecError> {
    let bad = || SpecError::Path(p.display().to_string());
    if !p.is_absolute() {
        return Err(bad());
    }
    let comps = clean_components(p).ok_or_else(bad)?;
    Ok(Path::new("/").join(comps.iter().collect::<PathBuf>()))
}

/// Builds the container plan; `rootfs` is the resolved rootfs directory.
pub fn container_plan(
    spec: &Spec,
    rootfs: PathBuf,
    share: &Share,
    cgroup2: bool,
) -> Result<ContainerPlan, SpecError> {
    let proc = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let seccomp = Arc::new(match linux.seccomp() {
        Some(s) => seccomp::compile(s)?,
        None => Vec::new(),
    });
    let mut clone_flags = 0;
    let mut unshare_cgroup = false;
    let mut namespaces = Vec::new();
    for ns in linux.namespaces().iter().flatten() {
        let t = ns.typ();
        if let Some(p) = ns.path() {
            return Err(SpecError::NamespacePath(format!("{t} at {}", p.display())));
        }
        match t {
            LinuxNamespaceType::Time => return Err(SpecError::Namespace(t.to_string())),
            LinuxNamespaceType::Cgroup => unshare_cgroup = true,
            _ => clone_flags |= t as libc::c_int,
        }
        namespaces.push((t.to_string(), t as libc::c_int));
    }
    // The user namespace must be joined first by exec.
    namespaces.sort_by_key(|(n, _)| n != "user");
    let map = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let mounts = spec.mounts().clone().unwrap_or_default();
    if mounts.len() > MAX_MOUNTS {
        return Err(SpecError::TooManyMounts);
    }
    let mut mplans = Vec::new();
    for m in &mounts {
        if let Some(p) = mount_plan(m, share, cgroup2)? {
            mplans.push(p);
        }
    }
    let mut devices = Vec::new();
    for d in linux.devices().iter().flatten() {
        use oci_spec::runtime::LinuxDeviceType as T;
        devices.push(DevicePlan {
            path: abs_path(d.path())?,
            kind: match d.typ() {
                T::B => libc::S_IFBLK,
                T::P => libc::S_IFIFO,
                _ => libc::S_IFCHR,
            },
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let paths = |v: &Option<Vec<String>>| -> Result<Vec<PathBuf>, SpecError> {
        v.iter().flatten().map(|p| abs_path(Path::new(p))).collect()
    };
    let hostname = match (spec.hostname(), clone_flags & libc::CLONE_NEWUTS != 0) {
        (Some(h), true) if !h.is_empty() => Some(cstring(h)?),
        _ => None,
    };
    let root_propagation = match linux.rootfs_propagation().as_deref() {
        Some("private") | Some("rprivate") => libc::MS_PRIVATE | libc::MS_REC,
        // shared would leak container mounts into the agent: refuse quietly.
        _ => libc::MS_SLAVE | libc::MS_REC,
    };
    Ok(ContainerPlan {
        clone_flags,
        unshare_cgroup,
        namespaces,
        uid_map: map(linux.uid_mappings()),
        gid_map: map(linux.gid_mappings()),
        rootfs: RootfsPlan {
            path: rootfs,
            mounts: mplans,
            devices,
            masked: paths(linux.masked_paths())?,
            readonly: paths(linux.readonly_paths())?,
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            root_propagation,
            hostname,
            sysctl: sysctl_plan(&linux)?,
        },
        process: process_plan(proc, seccomp.clone())?,
        terminal: proc.terminal().unwrap_or(false),
        resources: linux
            .resources()
            .as_ref()
            .map(Resources::from_oci)
            .unwrap_or_default(),
        seccomp,
    })
}

/// `linux.sysctl` → paths under /proc/sys (`net.ipv4.ip_forward` →
/// `net/ipv4/ip_forward`), sorted so the order is stable.
fn sysctl_plan(linux: &oci_spec::runtime::Linux) -> Result<Vec<(PathBuf, String)>, SpecError> {
    let mut out = Vec::new();
    for (key, value) in linux.sysctl().iter().flatten() {
        let bad = || SpecError::Sysctl(key.clone());
        let rel = key.replace('.', "/");
        let ok_chars = rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-/".contains(&b));
        if key.len() > 256 || !ok_chars || value.contains('\0') || value.len() > 4096 {
            return Err(bad());
        }
        let comps = clean_components(Path::new(&rel)).ok_or_else(bad)?;
        if comps.is_empty() || rel.starts_with('/') || rel.split('/').any(str::is_empty) {
            return Err(bad());
        }
        out.push((comps.iter().collect::<PathBuf>(), value.clone()));
    }
    out.sort();
    Ok(out)
}

/// Mount flags and data from OCI options: (flags, propagation, data, bind, rec).
fn parse_options(opts: &[String]) -> (libc::c_ulong, libc::c_ulong, String, bool, bool) {
    let (mut flags, mut prop, mut data) = (0, 0, Vec::new());
    let (mut bind, mut rec) = (false, false);
    for o in opts {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "suid" | "dev" | "exec" | "atime" | "diratime" | "async" | "defaults" => {}
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => (bind, rec) = (true, true),
            "private" => prop = libc::MS_PRIVATE,
            "rprivate" => prop = libc::MS_PRIVATE | libc::MS_REC,
            "slave" => prop = libc::MS_SLAVE,
            "rslave" => prop = libc::MS_SLAVE | libc::MS_REC,
            "unbindable" => prop = libc::MS_UNBINDABLE,
            "runbindable" => prop = libc::MS_UNBINDABLE | libc::MS_REC,
            // shared propagation would reach the agent's namespace.
            "shared" | "rshared" => prop = libc::MS_SLAVE | libc::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, prop, data.join(","), bind, rec)
}

fn mount_plan(m: &Mount, share: &Share, cgroup2: bool) -> Result<Option<MountPlan>, SpecError> {
    let dest = abs_path(m.destination())?;
    let (flags, propagation, data, bind_opt, rec) =
        parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().clone().unwrap_or_default();
    let source = m
        .source()
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_default();
    let kind = if bind_opt || typ == "bind" {
        let r = share
            .resolve(&source, false)
            .map_err(|e| SpecError::MountSource(dest.display().to_string(), e))?;
        MountKind::Bind {
            file: !r.real.is_dir(),
            src: r.fd,
            recursive: rec,
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        if !cgroup2 {
            // A v1 host (tests only): containers get no cgroup filesystem.
            return Ok(None);
        }
        MountKind::Fs {
            fstype: "cgroup2".into(),
            source: "cgroup".into(),
        }
    } else {
        if typ.is_empty() || typ.len() > 64 || typ.contains('\0') {
            return Err(SpecError::Path(format!("mount type {typ:?}")));
        }
        MountKind::Fs {
            fstype: typ,
            source,
        }
    };
    Ok(Some(MountPlan {
        dest,
        kind,
        flags,
        propagation,
        data,
    }))
}

fn capset(c: &Option<Capabilities>) -> Result<CapsHashSet, SpecError> {
    c.iter()
        .flatten()
        .map(|cap| {
            let name = format!("CAP_{cap}");
            caps::Capability::from_str(&name).map_err(|_| SpecError::Capability(name))
        })
        .collect()
}

fn rlimit(name: &str) -> Option<u32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// The process part of a spec (also the body of ExecProcess).
pub fn process_plan(p: &Process, seccomp: Arc<Vec<BpfProgram>>) -> Result<ProcessPlan, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args.len() > MAX_ARGS {
        return Err(SpecError::Args);
    }
    let env = p.env().clone().unwrap_or_default();
    let path_env = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let user = p.user();
    let mut rlimits = Vec::new();
    for r in p.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let res = rlimit(&name).ok_or(SpecError::Rlimit(name))?;
        rlimits.push((res, r.soft(), r.hard()));
    }
    let caps = match p.capabilities() {
        Some(c) => CapsPlan {
            bounding: capset(c.bounding())?,
            effective: capset(c.effective())?,
            permitted: capset(c.permitted())?,
            inheritable: capset(c.inheritable())?,
            ambient: capset(c.ambient())?,
        },
        None => CapsPlan::default(),
    };
    Ok(ProcessPlan {
        args: args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        path_env,
        cwd: abs_path(p.cwd())?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        caps,
        rlimits,
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        seccomp,
        oom_score_adj: p.oom_score_adj(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_options() {
        let o: Vec<String> = [
            "nosuid", "noexec", "rbind", "ro", "mode=755", "size=1m", "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (f, p, d, bind, rec) = parse_options(&o);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(p, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(d, "mode=755,size=1m");
        assert!(bind && rec);
    }

    #[test]
    fn default_spec_becomes_a_plan() {
        let d = std::env::temp_dir().join(format!("husk-spec-{}", std::process::id()));
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
        let share = Share::open(&d).unwrap();
        let spec = Spec::default();
        let plan = container_plan(&spec, d.join("rootfs"), &share, true).unwrap();
        assert_ne!(plan.clone_flags & libc::CLONE_NEWPID, 0);
        assert_ne!(plan.clone_flags & libc::CLONE_NEWNS, 0);
        assert_eq!(plan.process.args[0].to_str().unwrap(), "sh");
        assert!(plan
            .process
            .caps
            .bounding
            .contains(&caps::Capability::CAP_KILL));
        assert!(!plan.rootfs.masked.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sysctl_keys_become_proc_sys_paths() {
        let linux = |json: &str| -> oci_spec::runtime::Linux {
            serde_json::from_str(&format!(r#"{{"sysctl":{json}}}"#)).unwrap()
        };
        let plan = sysctl_plan(&linux(
            r#"{"net.ipv4.ip_unprivileged_port_start":"0","kernel.shmmax":"1000"}"#,
        ))
        .unwrap();
        assert_eq!(
            plan,
            [
                ("kernel/shmmax".into(), "1000".to_string()),
                (
                    "net/ipv4/ip_unprivileged_port_start".into(),
                    "0".to_string()
                )
            ]
        );
        for bad in [
            r#"{"..":"1"}"#,
            r#"{"net..ipv4":"1"}"#,
            r#"{"/etc/passwd":"x"}"#,
            r#"{"net.ipv4 x":"1"}"#,
            r#"{"":"1"}"#,
            r#"{"kernel.x":"a\u0000b"}"#,
        ] {
            assert!(sysctl_plan(&linux(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_relative_and_dotdot_paths() {
        assert!(abs_path(Path::new("rel")).is_err());
        assert!(abs_path(Path::new("/a/../b")).is_err());
        assert_eq!(
            abs_path(Path::new("/a/./b")).unwrap(),
            PathBuf::from("/a/b")
        );
    }

    #[test]
    fn bind_source_outside_share_is_rejected() {
        let d = std::env::temp_dir().join(format!("husk-spec2-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let share = Share::open(&d).unwrap();
        let m: Mount = serde_json::from_str(
            r#"{"destination":"/x","type":"bind","source":"/etc","options":["rbind"]}"#,
        )
        .unwrap();
        assert!(matches!(
            mount_plan(&m, &share, true),
            Err(SpecError::MountSource(..))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
