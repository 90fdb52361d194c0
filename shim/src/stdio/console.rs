//! The console socket: runc connects to it and sends the pty master of a
//! terminal process as SCM_RIGHTS ancillary data.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

/// A listening console socket; removed (with its private directory) on drop.
pub struct ConsoleSocket {
    path: PathBuf,
    dir: Option<PathBuf>,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds a fresh socket at `path`.
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            dir: None,
            listener,
        })
    }

    /// Binds a socket in a new private (0700) directory under the system's
    /// temporary directory: a socket path must fit in 108 bytes, which a
    /// path under the state directory with two 64-character ids does not.
    pub fn bind_temp() -> io::Result<ConsoleSocket> {
        let template = std::env::temp_dir().join("husk-pty-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)?;
        match ConsoleSocket::bind(&dir.join("pty.sock")) {
            Ok(mut s) => {
                s.dir = Some(dir);
                Ok(s)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The socket's path, for runc's `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and receives the pty master from it.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let res = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match res {
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
                Ok(m) => m,
            };
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    if let Some(&fd) = fds.first() {
                        // SAFETY: the kernel just installed this fd in our
                        // table for us; nothing else owns it.
                        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "console socket peer sent no file descriptor",
            ));
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;

    #[tokio::test]
    async fn receives_a_sent_fd() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let path = sock.path().to_path_buf();
        let file = tempfile::tempfile().unwrap();
        let sender = tokio::task::spawn_blocking(move || {
            let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let fds = [file.as_raw_fd()];
            sendmsg::<()>(
                s.as_raw_fd(),
                &[IoSlice::new(b"x")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        });
        let fd = sock.receive().await.unwrap();
        sender.await.unwrap();
        assert!(nix::sys::stat::fstat(&fd).is_ok());
        let p = sock.path().to_path_buf();
        drop(sock);
        assert!(!p.exists());
    }

    #[tokio::test]
    async fn temp_socket_is_short_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let sock = ConsoleSocket::bind_temp().unwrap();
        let path = sock.path().to_path_buf();
        assert!(path.as_os_str().len() < 108, "{}", path.display());
        let dir = path.parent().unwrap().to_path_buf();
        assert_eq!(dir.metadata().unwrap().permissions().mode() & 0o777, 0o700);
        drop(sock);
        assert!(!dir.exists());
    }
}
