//! The client side of a container's stdio, as `ctr` does it: FIFOs in a
//! private directory, named to the sandbox in [`Stdio`], and copied to and
//! from this process's own stdin/stdout/stderr.
//!
//! The sandbox opens stdout/stderr for writing and stdin for reading (see
//! `husk_shim::stdio`). stdout/stderr are opened here first, read-only and
//! non-blocking: they report neither data nor EOF until the sandbox has
//! opened them, and EOF once it has closed them. stdin is opened for
//! writing only once the container has started, when the sandbox's reader
//! is there: a pipe reader sees EOF only from writers that opened after it
//! did, so an earlier writer could never end the container's input. Input
//! typed before that waits in this process's own stdin.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use husk_shim::sandbox::Stdio;
use nix::sys::stat::Mode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

/// FIFOs in a private directory, removed with it on drop.
pub struct Fifos {
    dir: PathBuf,
    pub stdin: PathBuf,
    pub stdout: PathBuf,
    /// None with a terminal: the pty merges stderr into stdout.
    pub stderr: Option<PathBuf>,
    tty: bool,
}

impl Fifos {
    /// Makes `<tmp>/husk-run-XXXXXX/{stdin,stdout,stderr}` (0700 dir, 0600 FIFOs).
    pub fn create(tmp: &Path, tty: bool) -> Result<Fifos> {
        let dir = nix::unistd::mkdtemp(&tmp.join("husk-run-XXXXXX"))
            .with_context(|| format!("create a private directory in {}", tmp.display()))?;
        let make = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", p.display()))?;
            Ok(p)
        };
        let mut f = Fifos {
            dir: dir.clone(),
            stdin: PathBuf::new(),
            stdout: PathBuf::new(),
            stderr: None,
            tty,
        };
        f.stdin = make("stdin")?;
        f.stdout = make("stdout")?;
        if !tty {
            f.stderr = Some(make("stderr")?);
        }
        Ok(f)
    }

    /// The paths as the sandbox takes them.
    pub fn stdio(&self) -> Stdio {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        Stdio {
            stdin: s(&self.stdin),
            stdout: s(&self.stdout),
            stderr: self.stderr.as_deref().map(s).unwrap_or_default(),
            terminal: self.tty,
        }
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens the stdin FIFO for writing; the sandbox must have opened it for
/// reading (retried for a while, as it may do so as the process starts).
/// `None` when it never does (the container takes no input).
pub async fn open_stdin(path: &Path) -> Result<Option<pipe::Sender>> {
    for _ in 0..50 {
        match pipe::OpenOptions::new().open_sender(path) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        }
    }
    Ok(None)
}

/// Opens an output FIFO now, before the sandbox does.
pub fn open_output(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Copies `from` into the stdin FIFO until `from` ends, then closes the
/// FIFO (the container reads EOF). Returns the bytes copied.
pub async fn copy_in<R: AsyncRead + Unpin>(mut from: R, mut to: pipe::Sender) -> Result<u64> {
    let n = tokio::io::copy(&mut from, &mut to)
        .await
        .context("copy stdin")?;
    to.flush().await.ok();
    Ok(n)
}

/// Copies an output FIFO to `to` until the sandbox closes it; gives `to` back.
pub async fn copy_out<W: AsyncWrite + Unpin>(mut from: pipe::Receiver, mut to: W) -> Result<W> {
    tokio::io::copy(&mut from, &mut to)
        .await
        .context("copy output")?;
    to.flush().await.ok();
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn creates_private_fifos_and_removes_them() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), false).unwrap();
        let dir = f.stdin.parent().unwrap().to_path_buf();
        assert_eq!(dir.metadata().unwrap().permissions().mode() & 0o777, 0o700);
        for p in [&f.stdin, &f.stdout, f.stderr.as_ref().unwrap()] {
            let m = p.metadata().unwrap();
            assert!(m.file_type().is_fifo(), "{}", p.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
        let s = f.stdio();
        assert!(s.stderr.ends_with("/stderr") && !s.terminal);
        drop(f);
        assert!(!dir.exists());

        let tty = Fifos::create(t.path(), true).unwrap();
        assert_eq!(tty.stderr, None);
        assert_eq!(tty.stdio().stderr, "");
        assert!(tty.stdio().terminal);
    }

    /// The sandbox's end of the stdin FIFO, opened as husk_shim::stdio does.
    fn sandbox_stdin(f: &Fifos) -> pipe::Receiver {
        pipe::OpenOptions::new().open_receiver(&f.stdin).unwrap()
    }

    async fn read_all(mut r: pipe::Receiver) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), r.read_to_end(&mut got))
            .await
            .expect("the container's stdin ends when ours does")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn stdin_reaches_the_sandbox_then_eof() {
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), false).unwrap();
        let theirs = sandbox_stdin(&f);
        let ours = open_stdin(&f.stdin).await.unwrap().unwrap();
        let (mut user, source) = tokio::io::duplex(64);
        let writer = tokio::spawn(copy_in(source, ours));
        user.write_all(b"typed\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        user.write_all(b"more\n").await.unwrap();
        drop(user);
        assert_eq!(read_all(theirs).await, b"typed\nmore\n");
        assert_eq!(writer.await.unwrap().unwrap(), 11);
    }

    #[tokio::test]
    async fn empty_stdin_still_ends() {
        // `husk run ... </dev/null`: the container reads EOF at once.
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), false).unwrap();
        let theirs = sandbox_stdin(&f);
        let ours = open_stdin(&f.stdin).await.unwrap().unwrap();
        assert_eq!(copy_in(&b""[..], ours).await.unwrap(), 0);
        assert_eq!(read_all(theirs).await, b"");
    }

    #[tokio::test]
    async fn stdin_nobody_reads_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), false).unwrap();
        assert!(open_stdin(&f.stdin).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn output_is_copied_until_the_sandbox_closes_it() {
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), false).unwrap();
        let ours = open_output(&f.stdout).unwrap();
        let reader = tokio::spawn(copy_out(ours, Vec::new()));
        // Nothing arrives and nothing ends before the sandbox opens it.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        // The sandbox side, opened the way husk_shim::stdio opens it.
        let mut theirs = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&f.stdout)
            .unwrap();
        theirs.write_all(b"line 1\nline 2\n").await.unwrap();
        drop(theirs);
        let copied = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("EOF after the sandbox closed stdout")
            .unwrap()
            .unwrap();
        assert_eq!(copied, b"line 1\nline 2\n");
    }
}
