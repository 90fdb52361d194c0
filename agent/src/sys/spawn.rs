//! clone(2) of a container or exec process and the agent's side of the sync
//! protocol (see [`super::child`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::child;
use super::plan::ChildPlan;
use super::pty::recv_byte_fd;

/// Errors of spawning and driving a child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("clone failed; does the kernel support the requested namespaces?")]
    Clone(#[source] std::io::Error),
    #[error("sync socket with the child")]
    Sync(#[source] std::io::Error),
    #[error("cannot enter the container's pid namespace")]
    PidNs(#[source] std::io::Error),
    #[error("container process setup failed: {0}")]
    Child(String),
    #[error("container process exited during setup")]
    ChildGone,
}

/// The agent's own pid namespace, opened once at startup, to return to
/// after forking into a container's pid namespace.
static OWN_PIDNS: OnceLock<OwnedFd> = OnceLock::new();

/// Opens the agent's pid namespace fd; call once at startup.
pub fn init() -> std::io::Result<()> {
    let f = std::fs::File::open("/proc/self/ns/pid")?;
    let _ = OWN_PIDNS.set(f.into());
    Ok(())
}

/// A cloned child waiting for [`Pending::go`].
pub struct Pending {
    pub pid: i32,
    sync: UnixStream,
    /// The pty master a terminal process sent (SCM_RIGHTS) during setup.
    pub pty_master: Option<OwnedFd>,
}

fn setns(fd: &OwnedFd, nstype: libc::c_int) -> std::io::Result<()> {
    // SAFETY: fd is a live namespace fd.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Clones a child with `clone_flags` (CLONE_NEW*) that runs `plan`. With
/// `pid_ns` the child is born inside that pid namespace (the agent enters it
/// for the clone only; setns on a pid namespace affects only new children).
pub fn spawn(
    plan: ChildPlan,
    clone_flags: libc::c_int,
    pid_ns: Option<&OwnedFd>,
) -> Result<Pending, SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(SpawnError::Sync(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created by socketpair and are owned only here.
    let (parent, child_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if let Some(ns) = pid_ns {
        setns(ns, libc::CLONE_NEWPID).map_err(SpawnError::PidNs)?;
    }
    let flags = (clone_flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no new stack, no CLONE_VM). The agent is
    // single-threaded (current-thread runtime, no other threads), so the child
    // inherits no held locks and may run ordinary Rust code until execve.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        drop(parent);
        child::run(plan, child_end);
    }
    let clone_err = std::io::Error::last_os_error();
    if pid_ns.is_some() {
        if let Some(own) = OWN_PIDNS.get() {
            // Returning to our own (ancestor) pid namespace is always allowed.
            let _ = setns(own, libc::CLONE_NEWPID);
        }
    }
    if pid < 0 {
        return Err(SpawnError::Clone(clone_err));
    }
    drop(child_end);
    drop(plan);
    let std = std::os::unix::net::UnixStream::from(parent);
    std.set_nonblocking(true).map_err(SpawnError::Sync)?;
    let sync = UnixStream::from_std(std).map_err(SpawnError::Sync)?;
    Ok(Pending {
        pid: pid as i32,
        sync,
        pty_master: None,
    })
}

impl Pending {
    /// Lets the child proceed (after the caller put it into its cgroup).
    pub async fn go(&mut self) -> Result<(), SpawnError> {
        self.sync.write_all(b"G").await.map_err(SpawnError::Sync)
    }

    /// Waits for the init to report ready (`R`).
    pub async fn ready(&mut self) -> Result<(), SpawnError> {
        match self.read_status().await? {
            Some(b'R') => Ok(()),
            _ => Err(SpawnError::ChildGone),
        }
    }

    /// Sends start (init only) and waits until execve succeeded.
    pub async fn start(&mut self) -> Result<(), SpawnError> {
        self.sync.write_all(b"S").await.map_err(SpawnError::Sync)?;
        self.exec_done().await
    }

    /// Waits until execve succeeded (EOF on the close-on-exec socket).
    pub async fn exec_done(&mut self) -> Result<(), SpawnError> {
        match self.read_status().await? {
            None => Ok(()),
            Some(_) => Err(SpawnError::ChildGone),
        }
    }

    /// `None` on EOF, `Some(byte)` for a status byte; `E` becomes an error,
    /// `P` (with the pty master attached) is stored and skipped.
    async fn read_status(&mut self) -> Result<Option<u8>, SpawnError> {
        loop {
            let got = loop {
                self.sync.readable().await.map_err(SpawnError::Sync)?;
                let raw = self.sync.as_raw_fd();
                match self.sync.try_io(Interest::READABLE, || recv_byte_fd(raw)) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => break r.map_err(SpawnError::Sync)?,
                }
            };
            match got {
                None => return Ok(None),
                Some((b'P', fd)) => self.pty_master = fd,
                Some((b'E', _)) => {
                    let mut msg = Vec::new();
                    let _ = (&mut self.sync).take(4096).read_to_end(&mut msg).await;
                    return Err(SpawnError::Child(
                        String::from_utf8_lossy(&msg).into_owned(),
                    ));
                }
                Some((b, _)) => return Ok(Some(b)),
            }
        }
    }
}
