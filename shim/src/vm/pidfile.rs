//! Pid files of the pod's helper processes (`vmm.pid`, `virtiofsd.pid`):
//! `"<pid> <starttime>\n"`, starttime being field 22 of `/proc/<pid>/stat`
//! (clock ticks after boot). A pid alone may have been recycled after a
//! crash; pid + starttime names one process for the life of the host.
//!
//! Killing goes through a pidfd, opened before the starttime is compared,
//! so the process that is checked is the process that gets the signal.

use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Errors reading, writing or acting on pid files.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("cannot {op} pid file {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid pid file {path}: {text:?}; expected \"<pid> <starttime>\"")]
    Invalid { path: PathBuf, text: String },
    #[error("process {0} is gone before its start time could be read")]
    Gone(u32),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error(
        "process {pid} still runs {secs} s after SIGKILL; is it stuck in the kernel (D state)?"
    )]
    StillAlive { pid: u32, secs: u64 },
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub starttime: u64,
}

/// Parses `/proc/<pid>/stat` text. The command name (field 2) is in
/// parentheses and may itself hold spaces and `)`: fields are counted
/// after the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field n is f[n - 3].
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat` of a process, `None` when there is none.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One process, as a pid file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidFile {
    pub pid: u32,
    pub starttime: u64,
}

impl PidFile {
    /// Whether this very process still runs (a zombie counts as gone).
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.starttime == self.starttime && s.state != 'Z')
    }
}

/// Writes `"<pid> <starttime>\n"` for a running `pid` (atomically).
pub fn write_pidfile(path: &Path, pid: u32) -> Result<PidFile, PidFileError> {
    let st = stat(pid).ok_or(PidFileError::Gone(pid))?;
    let err = |source| PidFileError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{pid} {}\n", st.starttime)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(PidFile {
        pid,
        starttime: st.starttime,
    })
}

/// Reads a pid file; `None` when it does not exist.
pub fn read_pidfile(path: &Path) -> Result<Option<PidFile>, PidFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PidFileError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut it = text.split_whitespace();
    let parsed = (|| {
        let pf = PidFile {
            pid: it.next()?.parse().ok()?,
            starttime: it.next()?.parse().ok()?,
        };
        (it.next().is_none() && pf.pid > 0).then_some(pf)
    })();
    parsed.map(Some).ok_or_else(|| PidFileError::Invalid {
        path: path.to_path_buf(),
        text,
    })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_kill(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: `fd` is an open pidfd; a null siginfo is allowed and means
    // "as kill(2) would send it"; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs the process named by `pf` if it is still that process, and
/// waits (up to `timeout`) until it has exited. Returns whether it was
/// killed; a process that is gone, or a recycled pid, is left alone.
pub fn kill_and_wait(pf: &PidFile, timeout: Duration) -> Result<bool, PidFileError> {
    let fd = match pidfd_open(pf.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(source) => {
            return Err(PidFileError::Signal {
                pid: pf.pid,
                source,
            })
        }
    };
    if !pf.is_running() {
        return Ok(false);
    }
    match pidfd_kill(&fd) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(source) => {
            return Err(PidFileError::Signal {
                pid: pf.pid,
                source,
            })
        }
    }
    // A pidfd turns readable once the process has exited (zombie or reaped).
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) if left.is_zero() => {
                return Err(PidFileError::StillAlive {
                    pid: pf.pid,
                    secs: timeout.as_secs(),
                })
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(PidFileError::Signal {
                    pid: pf.pid,
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 987654 2547712 130 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                ppid: 1,
                starttime: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_stat_matches_the_pid_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("self.pid");
        let me = std::process::id();
        let pf = write_pidfile(&path, me).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{me} {}\n", stat(me).unwrap().starttime));
        assert_eq!(read_pidfile(&path).unwrap(), Some(pf));
        assert!(pf.is_running());
        let recycled = PidFile {
            starttime: pf.starttime + 1,
            ..pf
        };
        assert!(!recycled.is_running());
    }

    #[test]
    fn missing_and_invalid_pid_files() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_pidfile(&t.path().join("none.pid")).unwrap(), None);
        for bad in ["", "12", "12 x", "0 5", "1 2 3", "-1 4"] {
            let p = t.path().join("bad.pid");
            std::fs::write(&p, bad).unwrap();
            let e = read_pidfile(&p).unwrap_err();
            assert!(matches!(e, PidFileError::Invalid { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn kills_only_the_recorded_process() {
        let _l = crate::vm::podcg::test_lock();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        let st = stat(pid).unwrap();
        let wrong = PidFile {
            pid,
            starttime: st.starttime + 1,
        };
        assert!(!kill_and_wait(&wrong, Duration::from_secs(1)).unwrap());
        assert!(
            child.try_wait().unwrap().is_none(),
            "recycled pid was killed"
        );
        let right = PidFile {
            pid,
            starttime: st.starttime,
        };
        assert!(kill_and_wait(&right, Duration::from_secs(5)).unwrap());
        // Exited, by SIGKILL.
        crate::vm::cleanup::tests::assert_killed(&mut child);
        // Gone now: nothing to kill.
        assert!(!kill_and_wait(&right, Duration::from_secs(1)).unwrap());
    }
}
