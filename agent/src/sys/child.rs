//! The child side of a spawn: runs in the new process after clone(2) and
//! ends in execve(2) or `_exit(1)` after reporting the error to the agent.
//!
//! Sync protocol on the socketpair (child's end is close-on-exec):
//! agent `G` (cgroup joined, id maps written) → child sets up →
//! child `R` (init only) → agent `S` (StartContainer) → execve; on any
//! failure the child sends `E<message>` and exits. A successful execve
//! closes the socket, which the agent reads as EOF.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use caps::CapSet;

use super::fs::{attach_tree, cstr, fd_path, mkdir_in_root, openat2};
use super::plan::{ChildPlan, MountKind, ProcessPlan, RootfsPlan, StdioPlan};
use super::pty::{open_pty, resize, send_fd};
use super::seccomp;

/// Default device nodes bind-mounted from the agent's /dev.
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

type Result<T> = std::result::Result<T, String>;

fn errno(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn check(rc: libc::c_int, what: impl std::fmt::Display) -> Result<()> {
    if rc < 0 {
        Err(errno(what))
    } else {
        Ok(())
    }
}

/// Runs the plan; never returns.
pub fn run(plan: ChildPlan, sync: OwnedFd) -> ! {
    let mut sync = UnixStream::from(sync);
    let err = setup(plan, &mut sync).unwrap_err();
    let _ = sync.write_all(format!("E{err}").as_bytes());
    // SAFETY: _exit never returns and runs no atexit handlers of the agent.
    unsafe { libc::_exit(1) }
}

fn setup(plan: ChildPlan, sync: &mut UnixStream) -> Result<std::convert::Infallible> {
    close_other_fds(&plan, sync.as_raw_fd());
    let mut b = [0u8; 1];
    if sync.read(&mut b).map_err(|e| format!("sync: {e}"))? != 1 || b[0] != b'G' {
        return Err("agent went away before go".into());
    }
    for (fd, nstype) in &plan.join_ns {
        // SAFETY: fd is a live namespace fd owned by the plan.
        check(unsafe { libc::setns(fd.as_raw_fd(), *nstype) }, "setns")?;
    }
    if plan.userns_root {
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::setresgid(0, 0, 0) };
        check(rc, "setresgid 0 in the user namespace")?;
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::setresuid(0, 0, 0) };
        check(rc, "setresuid 0 in the user namespace")?;
    }
    if plan.unshare_cgroup {
        // SAFETY: integer flag argument only.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
        check(rc, "unshare cgroup")?;
    }
    if let Some(root) = &plan.rootfs {
        setup_rootfs(root)?;
    }
    setup_stdio(&plan, sync.as_raw_fd())?;
    let p = &plan.process;
    for (res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: lim is a valid rlimit for the call.
        let rc = unsafe { libc::setrlimit(*res, &lim) };
        check(rc, format!("setrlimit {res}"))?;
    }
    if let Some(adj) = p.oom_score_adj {
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    if plan.wait_start {
        sync.write_all(b"R").map_err(|e| format!("sync: {e}"))?;
        if sync.read(&mut b).map_err(|e| format!("sync: {e}"))? != 1 || b[0] != b'S' {
            return Err("agent went away before start".into());
        }
    }
    finalize(p)
}

/// Closes every fd the agent had open except the ones the plan needs, so a
/// waiting container holds no other container's pipes or sockets.
fn close_other_fds(plan: &ChildPlan, sync: RawFd) {
    let mut keep: Vec<RawFd> = vec![sync];
    if let StdioPlan::Fds {
        stdin,
        stdout,
        stderr,
    } = &plan.stdio
    {
        keep.extend([stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]);
    }
    keep.extend(plan.join_ns.iter().map(|(fd, _)| fd.as_raw_fd()));
    if let Some(r) = &plan.rootfs {
        for m in &r.mounts {
            if let MountKind::Bind { src, .. } = &m.kind {
                keep.push(src.as_raw_fd());
            }
        }
    }
    keep.sort_unstable();
    let mut next: u32 = 3;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        let fd = fd as u32;
        if fd > next {
            // SAFETY: closes only descriptors no live Rust object in the
            // child will use (the plan's fds are kept).
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0) };
        }
        next = next.max(fd + 1);
    }
    // SAFETY: as above, for everything above the highest kept fd.
    unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0) };
}

fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are NUL-terminated strings alive for the call or null.
    let rc = unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    check(
        rc,
        format_args!("mount {:?} on {:?}", src.unwrap_or(c"none"), target),
    )
}

fn c(p: &Path) -> Result<CString> {
    cstr(p).map_err(|_| format!("path {p:?} has a NUL byte"))
}

fn setup_rootfs(r: &RootfsPlan) -> Result<()> {
    mount(None, c"/", None, r.root_propagation, None)?;
    let rootfs = c(&r.path)?;
    mount(
        Some(&rootfs),
        &rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let root = std::fs::File::open(&r.path).map_err(|e| format!("open rootfs: {e}"))?;
    for m in &r.mounts {
        mount_one(root.as_fd(), m)?;
    }
    default_devices(root.as_fd())?;
    for d in &r.devices {
        let fd = mkdir_in_root(
            root.as_fd(),
            d.path.parent().unwrap_or(Path::new("/")),
            false,
        )
        .map_err(|e| format!("device dir {:?}: {e}", d.path))?;
        let name = c(Path::new(d.path.file_name().unwrap_or_default()))?;
        let dev = libc::makedev(d.major as u32, d.minor as u32);
        // SAFETY: fd is a live directory fd, name a NUL-terminated string.
        let rc = unsafe { libc::mknodat(fd.as_raw_fd(), name.as_ptr(), d.kind | d.mode, dev) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(errno(format_args!("mknod {:?}", d.path)));
        }
        // SAFETY: as above. AT_SYMLINK_NOFOLLOW: a symlink the image put
        // there must not redirect the chown.
        unsafe {
            libc::fchownat(
                fd.as_raw_fd(),
                name.as_ptr(),
                d.uid,
                d.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
    pivot(&r.path, &rootfs)?;
    // After pivot_root: these paths resolve inside the container, so a
    // symlinked /dev in the image cannot place links on the agent's side.
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        // Kept when the image already has the entry.
        let _ = std::os::unix::fs::symlink(target, link);
    }
    for p in &r.masked {
        mask(p)?;
    }
    for p in &r.readonly {
        let cp = c(p)?;
        if p.exists() {
            mount(Some(&cp), &cp, None, libc::MS_BIND | libc::MS_REC, None)?;
            let fl = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID;
            mount(None, &cp, None, fl | libc::MS_NODEV | libc::MS_NOEXEC, None)?;
        }
    }
    if r.readonly_root {
        let fl = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        mount(None, c"/", None, fl, None)?;
    }
    if let Some(h) = &r.hostname {
        // SAFETY: h is a valid buffer of the given length.
        let rc = unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) };
        check(rc, "sethostname")?;
    }
    Ok(())
}

fn mount_one(root: std::os::fd::BorrowedFd<'_>, m: &super::plan::MountPlan) -> Result<()> {
    let file = matches!(m.kind, MountKind::Bind { file: true, .. });
    let target = mkdir_in_root(root, &m.dest, file)
        .map_err(|e| format!("mount target {:?}: {e}", m.dest))?;
    let tpath = c(&fd_path(&target))?;
    let data = CString::new(m.data.clone()).map_err(|_| "mount data has NUL".to_string())?;
    let data = (!m.data.is_empty()).then_some(data.as_c_str());
    match &m.kind {
        MountKind::Bind { src, .. } => {
            // src is a detached tree (see plan::MountKind::Bind).
            attach_tree(src.as_fd(), target.as_fd())
                .map_err(|e| format!("bind mount onto {:?}: {e}", m.dest))?;
            let extra = m.flags & !(libc::MS_BIND | libc::MS_REC);
            if extra != 0 {
                // The remount must name the new mount, not the covered dir.
                let again = reopen(root, &m.dest)?;
                let fl = libc::MS_BIND | libc::MS_REMOUNT | extra;
                mount(None, &c(&fd_path(&again))?, None, fl, data)?;
            }
        }
        MountKind::Fs { fstype, source } => {
            let fs = CString::new(fstype.as_str()).map_err(|_| "fstype has NUL")?;
            let src = CString::new(source.as_str()).map_err(|_| "source has NUL")?;
            mount(Some(&src), &tpath, Some(&fs), m.flags, data)?;
        }
    }
    if m.propagation != 0 {
        let again = reopen(root, &m.dest)?;
        mount(None, &c(&fd_path(&again))?, None, m.propagation, None)?;
    }
    Ok(())
}

fn reopen(root: std::os::fd::BorrowedFd<'_>, dest: &Path) -> Result<OwnedFd> {
    let rel = PathBuf::from(".").join(dest.strip_prefix("/").unwrap_or(dest));
    let res = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    openat2(root, &rel, libc::O_PATH, res).map_err(|e| format!("reopen {dest:?}: {e}"))
}

/// Bind-mounts the agent's null, zero, ... onto files in the rootfs's /dev.
fn default_devices(root: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    for d in DEFAULT_DEVICES {
        let host = PathBuf::from("/dev").join(d);
        if !host.exists() {
            continue;
        }
        let t = mkdir_in_root(root, &Path::new("/dev").join(d), true)
            .map_err(|e| format!("/dev/{d}: {e}"))?;
        mount(
            Some(&c(&host)?),
            &c(&fd_path(&t))?,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

/// pivot_root into `path`; on an initramfs root (where pivot_root is
/// refused with EINVAL) move the rootfs onto / and chroot instead.
fn pivot(path: &Path, cpath: &CStr) -> Result<()> {
    std::env::set_current_dir(path).map_err(|e| format!("chdir rootfs: {e}"))?;
    // SAFETY: both arguments are NUL-terminated "." strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc == 0 {
        // The old root is now stacked on "."; detach it.
        mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)?;
        // SAFETY: "." is a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
        check(rc, "umount old root")?;
    } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        mount(Some(cpath), c"/", None, libc::MS_MOVE, None)?;
        // SAFETY: "." is a valid NUL-terminated path.
        check(unsafe { libc::chroot(c".".as_ptr()) }, "chroot")?;
    } else {
        return Err(errno("pivot_root"));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

fn mask(p: &Path) -> Result<()> {
    let cp = c(p)?;
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => mount(Some(c"tmpfs"), &cp, Some(c"tmpfs"), libc::MS_RDONLY, None),
        Ok(_) => mount(Some(c"/dev/null"), &cp, None, libc::MS_BIND, None),
        Err(_) => Ok(()),
    }
}

fn setup_stdio(plan: &ChildPlan, sync: RawFd) -> Result<()> {
    // Keeps the pty slave open until it is dup'ed onto 0, 1, 2.
    let mut slave_keep = None;
    let (stdin, stdout, stderr) = match &plan.stdio {
        StdioPlan::Fds {
            stdin,
            stdout,
            stderr,
        } => (stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()),
        StdioPlan::Pty { rows, cols } => {
            let (master, slave) = open_pty("/dev/ptmx").map_err(|e| {
                format!("open /dev/ptmx in the container (is devpts mounted at /dev/pts?): {e}")
            })?;
            if *rows > 0 && *cols > 0 {
                resize(&master, *rows, *cols).map_err(|e| format!("tty size: {e}"))?;
            }
            send_fd(sync, b'P', &master).map_err(|e| format!("send pty: {e}"))?;
            drop(master);
            // SAFETY: setsid has no arguments; the child is not a group leader.
            check(unsafe { libc::setsid() }, "setsid")?;
            // SAFETY: slave is a live pty fd; TIOCSCTTY takes an int argument.
            let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
            check(rc, "TIOCSCTTY")?;
            let fd = slave.as_raw_fd();
            slave_keep = Some(slave);
            (fd, fd, fd)
        }
    };
    for (fd, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        // SAFETY: fd is live; dup2 onto 0..2 clears close-on-exec there.
        check(unsafe { libc::dup2(fd, to) }, "dup2 stdio")?;
    }
    drop(slave_keep);
    Ok(())
}

/// Identity, capabilities, no_new_privs, seccomp, then execve.
fn finalize(p: &ProcessPlan) -> Result<std::convert::Infallible> {
    if let Some(m) = p.umask {
        // SAFETY: umask only sets the mask.
        unsafe { libc::umask(m) };
    }
    std::env::set_current_dir(&p.cwd).map_err(|e| format!("chdir {:?}: {e}", p.cwd))?;
    let prog = find_program(p)?;
    if !p.no_new_privs {
        // Without no_new_privs only a privileged process may install a
        // filter, so install it before giving up privileges.
        seccomp::apply(&p.seccomp)?;
    }
    for cap in caps::all() {
        if !p.caps.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("bounding: {e}"))?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    check(rc, "keepcaps")?;
    // SAFETY: groups points to groups.len() gid_t values.
    let rc = unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) };
    check(rc, "setgroups")?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(p.gid, p.gid, p.gid) }, "setresgid")?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(p.uid, p.uid, p.uid) }, "setresuid")?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    check(rc, "keepcaps")?;
    let set = |s, v: &caps::CapsHashSet| {
        caps::set(None, s, v).map_err(|e| format!("capabilities {s:?}: {e}"))
    };
    // Inheritable first (CAP_SETPCAP may still be effective), then ambient
    // (needs permitted and inheritable), then shrink effective before
    // permitted (effective must stay a subset of permitted).
    set(CapSet::Inheritable, &p.caps.inheritable)?;
    for cap in &p.caps.ambient {
        // Ambient needs the cap in permitted and inheritable; skip otherwise.
        let _ = caps::raise(None, CapSet::Ambient, *cap);
    }
    let eff: caps::CapsHashSet = p
        .caps
        .effective
        .intersection(&p.caps.permitted)
        .copied()
        .collect();
    set(CapSet::Effective, &eff)?;
    set(CapSet::Permitted, &p.caps.permitted)?;
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        check(rc, "no_new_privs")?;
        seccomp::apply(&p.seccomp)?;
    }
    let mut argv: Vec<*const libc::c_char> = p.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: prog, argv and envp are NUL-terminated and null-terminated arrays
    // of live CStrings; execve only returns on failure.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(errno(format_args!("exec {:?}", p.args[0])))
}

/// args[0] as given when it has a `/`, else the first executable on PATH.
fn find_program(p: &ProcessPlan) -> Result<CString> {
    let arg0 = p.args.first().ok_or("no args")?;
    if arg0.as_bytes().contains(&b'/') {
        return Ok(arg0.clone());
    }
    let name = std::str::from_utf8(arg0.as_bytes()).map_err(|_| "args[0] not utf-8")?;
    for dir in p.path_env.split(':').filter(|d| !d.is_empty()) {
        let cand = CString::new(format!("{dir}/{name}")).map_err(|_| "bad PATH")?;
        // SAFETY: cand is a NUL-terminated path.
        if unsafe { libc::access(cand.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cand);
        }
    }
    Err(format!("exec {name:?}: executable file not found in PATH"))
}
