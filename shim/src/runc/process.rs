//! One host process started through runc (a container's init or an exec):
//! its stdio, terminal and exit.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cli::Runc;
use crate::reaper::reaper;
use crate::sandbox::{ExitStatus, Result, SandboxError, Stdio};
use crate::stdio::{ConsoleSocket, IoCopy, ProcessFds, PtyMaster};

/// How long runc may take to hand over the terminal after it succeeded.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HostProcess {
    pub pid: u32,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    pub io: Option<IoCopy>,
    pub pty: Option<Arc<PtyMaster>>,
    watcher: JoinHandle<()>,
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(SandboxError::io(format!(
        "cannot read pid file {}",
        path.display()
    )))?;
    text.trim().parse().map_err(|_| {
        SandboxError::Internal(format!("invalid pid file {}: {text:?}", path.display()))
    })
}

fn stdio_err(e: crate::stdio::StdioError) -> SandboxError {
    match &e {
        crate::stdio::StdioError::Fifo { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            SandboxError::NotFound(e.to_string())
        }
        crate::stdio::StdioError::Unsupported(_) => SandboxError::InvalidArgument(e.to_string()),
        _ => SandboxError::Internal(e.to_string()),
    }
}

impl HostProcess {
    /// Runs `runc <args> [--console-socket S] <id>` with the process's stdio,
    /// then reads the pid runc wrote to `pid_file` and watches for its exit.
    pub async fn spawn(
        runc: &Runc,
        mut args: Vec<OsString>,
        id: &str,
        stdio: &Stdio,
        dir: &Path,
        pid_file: &Path,
    ) -> Result<HostProcess> {
        let since = Instant::now();
        let log = dir.join("runc.log");
        let (io, pty) = if stdio.terminal {
            let sock = ConsoleSocket::bind_temp()
                .map_err(SandboxError::io("cannot create console socket"))?;
            args.push("--console-socket".into());
            args.push(sock.path().into());
            args.push(id.into());
            let none = ProcessFds {
                stdin: None,
                stdout: None,
                stderr: None,
            };
            let run = runc.run_with_stdio(&args, none, &log);
            let recv = sock.receive();
            tokio::pin!(run, recv);
            let fd = tokio::select! {
                r = &mut run => {
                    r?;
                    tokio::time::timeout(CONSOLE_TIMEOUT, recv)
                        .await
                        .map_err(|_| SandboxError::Internal("runc sent no terminal on the console socket".into()))?
                        .map_err(SandboxError::io("cannot receive terminal"))?
                }
                fd = &mut recv => {
                    let fd = fd.map_err(SandboxError::io("cannot receive terminal"))?;
                    run.await?;
                    fd
                }
            };
            let master =
                Arc::new(PtyMaster::new(fd).map_err(SandboxError::io("cannot use terminal"))?);
            let io =
                IoCopy::terminal(master.clone(), &stdio.stdin, &stdio.stdout).map_err(stdio_err)?;
            (io, Some(master))
        } else {
            let (fds, io) =
                IoCopy::pipes(&stdio.stdin, &stdio.stdout, &stdio.stderr).map_err(stdio_err)?;
            args.push(id.into());
            runc.run_with_stdio(&args, fds, &log).await?;
            (io, None)
        };
        let pid = read_pid(pid_file)?;
        let exited = reaper().subscribe(pid as i32, since);
        let (tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(async move {
            if let Ok(status) = exited.await {
                tx.send_replace(Some(status));
            }
        });
        Ok(HostProcess {
            pid,
            exit: rx,
            io: Some(io),
            pty,
            watcher,
        })
    }

    /// Lets the output drain (at most `drain`), then closes stdio.
    pub async fn finish(mut self, drain: Duration) {
        if let Some(mut io) = self.io.take() {
            if !drain.is_zero() {
                io.wait_output(drain).await;
            }
            io.abort();
        }
        self.pty = None;
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if self.exit.borrow().is_some() {
            self.watcher.abort();
        }
    }
}
