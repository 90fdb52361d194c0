//! Process stdio on the agent side: pipes or a pty per process, handed to
//! the raw stdio connections (copy loops in [`copy`]).

mod copy;

#[cfg(test)]
use copy::FdIo;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use husk_agent_api::pb;
use husk_agent_api::stdio::StreamKind;
use tokio::sync::Notify;

use crate::sys::plan::StdioPlan;

/// Pipe capacity asked for on output pipes (the default max of
/// /proc/sys/fs/pipe-max-size); fewer wakeups for bulk output.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Errors creating or attaching stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create stdio pipes or pty")]
    Create(#[source] io::Error),
    #[error("stream {0:?} was not requested for this process or is already attached")]
    NotAvailable(StreamKind),
}

/// The agent's ends of a process's stdio.
pub struct ProcIo {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// The pty master of a terminal process (kept for resize).
    pty: Option<Arc<OwnedFd>>,
    pty_in_taken: bool,
    pty_out_taken: bool,
    /// Wakes an attached stdin copy to close the process's stdin.
    close_stdin: Arc<Notify>,
    stdin_closed: bool,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a live fd with integer arguments.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

impl ProcIo {
    /// Creates what `req` asks for: the child's plan and the agent's ends.
    pub fn create(req: &pb::Stdio) -> Result<(StdioPlan, ProcIo), StdioError> {
        let e = StdioError::Create;
        let mut io = ProcIo {
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            pty_in_taken: false,
            pty_out_taken: false,
            close_stdin: Arc::new(Notify::new()),
            stdin_closed: false,
        };
        if req.terminal {
            // The child opens the pty in the container's devpts and sends
            // the master back; see set_pty.
            let plan = StdioPlan::Pty {
                rows: req.rows,
                cols: req.cols,
            };
            return Ok((plan, io));
        }
        let stdin = if req.stdin {
            let (r, w) = pipe().map_err(e)?;
            set_nonblocking(&w).map_err(e)?;
            io.stdin = Some(w);
            r
        } else {
            dev_null().map_err(e)?
        };
        let out = |want: bool, slot: &mut Option<OwnedFd>| -> Result<OwnedFd, StdioError> {
            if !want {
                return dev_null().map_err(StdioError::Create);
            }
            let (r, w) = pipe().map_err(StdioError::Create)?;
            // SAFETY: fcntl on a live pipe fd; failure only keeps the default size.
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            set_nonblocking(&r).map_err(StdioError::Create)?;
            *slot = Some(r);
            Ok(w)
        };
        let stdout = out(req.stdout, &mut io.stdout)?;
        let stderr = out(req.stderr, &mut io.stderr)?;
        Ok((
            StdioPlan::Fds {
                stdin,
                stdout,
                stderr,
            },
            io,
        ))
    }

    /// Installs the pty master the child sent.
    pub fn set_pty(&mut self, master: OwnedFd) -> Result<(), StdioError> {
        set_nonblocking(&master).map_err(StdioError::Create)?;
        self.pty = Some(Arc::new(master));
        Ok(())
    }

    pub fn pty(&self) -> Option<&Arc<OwnedFd>> {
        self.pty.as_ref()
    }

    /// Closes stdin: drops the unattached pipe end, or tells the attached
    /// copy to stop.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
        self.stdin_closed = true;
        self.close_stdin.notify_one();
    }

    /// Takes the fds for one stream connection: (input to the process,
    /// output from the process).
    pub fn take(&mut self, kind: StreamKind) -> Result<Attach, StdioError> {
        let na = || StdioError::NotAvailable(kind);
        let dup = |fd: &Arc<OwnedFd>| fd.try_clone().map_err(|_| na());
        let mut a = Attach {
            input: None,
            output: None,
            close: self.close_stdin.clone(),
        };
        match (kind, self.pty.clone()) {
            (StreamKind::Stdin, None) => a.input = Some(self.stdin.take().ok_or_else(na)?),
            (StreamKind::Stdout, None) => a.output = Some(self.stdout.take().ok_or_else(na)?),
            (StreamKind::Stderr, None) => a.output = Some(self.stderr.take().ok_or_else(na)?),
            (StreamKind::Tty, None) | (StreamKind::Stderr, Some(_)) => return Err(na()),
            (StreamKind::Stdin, Some(m)) if !self.pty_in_taken && !self.stdin_closed => {
                self.pty_in_taken = true;
                a.input = Some(dup(&m)?);
            }
            (StreamKind::Stdout, Some(m)) if !self.pty_out_taken => {
                self.pty_out_taken = true;
                a.output = Some(dup(&m)?);
            }
            (StreamKind::Tty, Some(m)) if !self.pty_in_taken && !self.pty_out_taken => {
                (self.pty_in_taken, self.pty_out_taken) = (true, true);
                a.input = Some(dup(&m)?);
                a.output = Some(dup(&m)?);
            }
            _ => return Err(na()),
        }
        Ok(a)
    }
}

/// fds handed to one stream connection.
pub struct Attach {
    input: Option<OwnedFd>,
    output: Option<OwnedFd>,
    close: Arc<Notify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipes_carry_bytes_and_eof() {
        let req = pb::Stdio {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let (plan, mut io) = ProcIo::create(&req).unwrap();
        let a = io.take(StreamKind::Stdin).unwrap();
        assert!(io.take(StreamKind::Stdin).is_err(), "second attach refused");
        assert!(io.take(StreamKind::Tty).is_err());
        let w = FdIo::new(a.input.unwrap()).unwrap();
        w.write_all(b"hi").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        let StdioPlan::Fds { stdin, .. } = plan else {
            panic!("pipes expected")
        };
        std::fs::File::from(stdin).read_to_end_sync(&mut got);
        assert_eq!(got, b"hi");
    }

    trait ReadSync {
        fn read_to_end_sync(self, v: &mut Vec<u8>);
    }
    impl ReadSync for std::fs::File {
        fn read_to_end_sync(mut self, v: &mut Vec<u8>) {
            std::io::Read::read_to_end(&mut self, v).unwrap();
        }
    }
}
