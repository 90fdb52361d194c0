//! stdio of host processes: containerd's FIFOs on one side, pipes or a pty
//! master on the other, copied by small tasks.
//!
//! stdout/stderr FIFOs are opened read-write so that opening never blocks
//! and a detached client does not kill the container with SIGPIPE; the shim
//! drops them when the process side reaches EOF, which is how the client
//! sees the end of the output. The container's stdin ends when the client
//! closes the stdin FIFO or calls CloseIO.

mod console;
mod pty;

use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use console::ConsoleSocket;
pub use pty::PtyMaster;

/// Errors setting up stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot open stdio fifo {path}: {source}")]
    Fifo {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error("console socket: {0}")]
    Console(#[source] std::io::Error),
    #[error("unsupported stdio URI {0}: use a FIFO path or file://")]
    Unsupported(String),
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        path: String,
        source: std::io::Error,
    },
}

/// The process side of stdio for a non-terminal process: what the runtime
/// passes to the process as fds 0, 1 and 2 (`None` = /dev/null).
pub struct ProcessFds {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The shim side of one process's stdio: copy tasks and the stdin closer.
pub struct IoCopy {
    close_stdin: watch::Sender<bool>,
    outputs: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
}

fn open_fifo_sender(path: &str) -> Result<pipe::Sender, StdioError> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|source| StdioError::Fifo {
            path: path.to_string(),
            source,
        })
}

/// Opened read-only and non-blocking: no read happens before readiness, and
/// the FIFO signals neither data nor hang-up until a client has opened it,
/// so the client closing its end is the container's EOF.
fn open_fifo_receiver(path: &str) -> Result<pipe::Receiver, StdioError> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|source| StdioError::Fifo {
            path: path.to_string(),
            source,
        })
}

/// Opens (creating it and its directory) a `file://` log target for appending.
fn open_log_file(path: &str) -> Result<OwnedFd, StdioError> {
    let err = |source| StdioError::LogFile {
        path: path.to_string(),
        source,
    };
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    Ok(f.into())
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

/// Copies `from` to `to` until EOF (or an error, logged), then drops both.
fn spawn_output<R, W>(mut from: R, mut to: W, what: &'static str) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
            tracing::debug!("{what} copy ended: {e}");
        }
        let _ = to.flush().await;
    })
}

/// Copies `from` to `to` until `close` turns true; then copies what is
/// already buffered in `from` and drops `to` (the process sees EOF).
fn spawn_input<R, W>(mut from: R, mut to: W, mut close: watch::Receiver<bool>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = from.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = async { while !*close.borrow_and_update() { if close.changed().await.is_err() { break } } } => {
                    // Drain what the client wrote before it asked to close.
                    loop {
                        match tokio::time::timeout(std::time::Duration::from_millis(20), from.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => if to.write_all(&buf[..n]).await.is_err() { return },
                            _ => break,
                        }
                    }
                    break;
                }
            }
        }
        let _ = to.flush().await;
    })
}

impl IoCopy {
    /// Pipes for a non-terminal process: returns the process side and starts copying.
    pub fn pipes(
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<(ProcessFds, IoCopy), StdioError> {
        let (close_tx, close_rx) = watch::channel(false);
        let mut fds = ProcessFds {
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let mut outputs = Vec::new();
        let mut input = None;
        if !stdin.is_empty() {
            let fifo = open_fifo_receiver(stdin)?;
            let (r, w) = pipe_pair()?;
            let w = pipe::Sender::from_owned_fd(w).map_err(StdioError::Console)?;
            fds.stdin = Some(r);
            input = Some(spawn_input(fifo, w, close_rx));
        }
        for (path, slot, what) in [
            (stdout, &mut fds.stdout, "stdout"),
            (stderr, &mut fds.stderr, "stderr"),
        ] {
            if path.is_empty() {
                continue;
            }
            if let Some(file) = path.strip_prefix("file://") {
                // containerd's file log URI: the process writes to the file itself.
                *slot = Some(open_log_file(file)?);
                continue;
            }
            if path.contains("://") {
                return Err(StdioError::Unsupported(path.to_string()));
            }
            let fifo = open_fifo_sender(path)?;
            let (r, w) = pipe_pair()?;
            let r = pipe::Receiver::from_owned_fd(r).map_err(StdioError::Console)?;
            *slot = Some(w);
            outputs.push(spawn_output(r, fifo, what));
        }
        Ok((
            fds,
            IoCopy {
                close_stdin: close_tx,
                outputs,
                input,
            },
        ))
    }

    /// Copies between the FIFOs and a terminal's master side.
    pub fn terminal(
        master: std::sync::Arc<PtyMaster>,
        stdin: &str,
        stdout: &str,
    ) -> Result<IoCopy, StdioError> {
        let (close_tx, close_rx) = watch::channel(false);
        let mut outputs = Vec::new();
        let mut input = None;
        if !stdin.is_empty() {
            let fifo = open_fifo_receiver(stdin)?;
            input = Some(spawn_input(fifo, master.writer(), close_rx));
        }
        if !stdout.is_empty() {
            let fifo = open_fifo_sender(stdout)?;
            outputs.push(spawn_output(master.reader(), fifo, "terminal"));
        }
        Ok(IoCopy {
            close_stdin: close_tx,
            outputs,
            input,
        })
    }

    /// Copies between the FIFOs (or `file://` logs) and byte streams of a
    /// process that runs elsewhere (the guest agent's stdio streams).
    pub fn streams(paths: [&str; 3], process: ProcessStreams) -> Result<IoCopy, StdioError> {
        let (close_tx, close_rx) = watch::channel(false);
        let mut outputs = Vec::new();
        let mut input = None;
        if let (false, Some(w)) = (paths[0].is_empty(), process.stdin) {
            let fifo = open_fifo_receiver(paths[0])?;
            input = Some(spawn_input(fifo, w, close_rx));
        }
        for (path, from, what) in [
            (paths[1], process.stdout, "stdout"),
            (paths[2], process.stderr, "stderr"),
        ] {
            let (false, Some(from)) = (path.is_empty(), from) else {
                continue;
            };
            if let Some(file) = path.strip_prefix("file://") {
                let f = tokio::fs::File::from_std(std::fs::File::from(open_log_file(file)?));
                outputs.push(spawn_output(from, f, what));
                continue;
            }
            if path.contains("://") {
                return Err(StdioError::Unsupported(path.to_string()));
            }
            outputs.push(spawn_output(from, open_fifo_sender(path)?, what));
        }
        Ok(IoCopy {
            close_stdin: close_tx,
            outputs,
            input,
        })
    }

    /// Hands the output copies to a waiter (e.g. the exit watcher), which
    /// then owns draining them.
    pub fn take_outputs(&mut self) -> OutputCopies {
        OutputCopies(std::mem::take(&mut self.outputs))
    }

    /// Closes the process's stdin after delivering what was written so far.
    pub fn close_stdin(&self) {
        let _ = self.close_stdin.send(true);
    }

    /// Waits (at most `limit`) until the output copies reach EOF.
    pub async fn wait_output(&mut self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, futures_join(&mut self.outputs)).await;
    }

    /// Stops every copy now and closes the FIFOs.
    pub fn abort(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        if let Some(h) = self.input.take() {
            h.abort();
        }
    }
}

/// The streams of a process running elsewhere (`None` = not wired).
#[derive(Default)]
pub struct ProcessStreams {
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// Output copies taken out of an [`IoCopy`].
pub struct OutputCopies(Vec<JoinHandle<()>>);

impl OutputCopies {
    /// Waits (at most `limit`) until the copies reach EOF, then stops the rest.
    pub async fn finish(mut self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, futures_join(&mut self.0)).await;
        for h in self.0.drain(..) {
            h.abort();
        }
    }
}

/// Awaits the handles one by one; cancel-safe (a finished one is removed).
async fn futures_join(handles: &mut Vec<JoinHandle<()>>) {
    while let Some(h) = handles.last_mut() {
        let _ = h.await;
        handles.pop();
    }
}

impl Drop for IoCopy {
    fn drop(&mut self) {
        self.abort();
    }
}

/// True when `path` exists (a FIFO created by containerd).
pub fn exists(path: &str) -> bool {
    !path.is_empty() && Path::new(path).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::io::{Read, Write};

    fn mkfifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn output_reaches_the_fifo_and_ends_with_eof() {
        let dir = tempfile::tempdir().unwrap();
        let out = mkfifo(dir.path(), "out");
        let (fds, mut io) = IoCopy::pipes("", &out, "").unwrap();
        assert!(fds.stdin.is_none() && fds.stderr.is_none());
        let mut reader = std::fs::OpenOptions::new().read(true).open(&out).unwrap();
        let mut w = std::fs::File::from(fds.stdout.unwrap());
        w.write_all(b"hello\n").unwrap();
        drop(w);
        io.wait_output(std::time::Duration::from_secs(5)).await;
        let mut got = String::new();
        tokio::task::spawn_blocking(move || reader.read_to_string(&mut got).map(|_| got))
            .await
            .unwrap()
            .map(|got| assert_eq!(got, "hello\n"))
            .unwrap();
    }

    #[tokio::test]
    async fn close_stdin_delivers_written_bytes_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let inp = mkfifo(dir.path(), "in");
        let (fds, io) = IoCopy::pipes(&inp, "", "").unwrap();
        let mut client = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
        client.write_all(b"abc").unwrap();
        io.close_stdin();
        let mut r = std::fs::File::from(fds.stdin.unwrap());
        let got = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).map(|_| s)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "abc");
    }

    #[test]
    fn file_uri_gives_the_process_the_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/c.log");
        let uri = format!("file://{}", log.display());
        let (fds, _io) = IoCopy::pipes("", &uri, &uri).unwrap();
        std::fs::File::from(fds.stdout.unwrap())
            .write_all(b"out\n")
            .unwrap();
        std::fs::File::from(fds.stderr.unwrap())
            .write_all(b"err\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
        let e = IoCopy::pipes("", "binary:///usr/bin/logger", "")
            .err()
            .unwrap();
        assert!(e.to_string().contains("binary:///usr/bin/logger"), "{e}");
    }

    #[test]
    fn missing_fifo_is_named() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let e = IoCopy::pipes("", "/nonexistent/fifo", "").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/fifo"), "{e}");
    }
}
