//! The master side of a container's terminal, as runc hands it over the
//! console socket: async read/write and resize.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// A pty master in non-blocking mode.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Takes ownership of a pty master fd and registers it with the runtime.
    pub fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(PtyMaster {
            fd: crate::fd::register(fd)?,
        })
    }

    /// Sets the terminal size.
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is an open pty master owned by self, and `ws` is a
        // valid winsize that outlives the call.
        unsafe { set_winsize(self.fd.as_raw_fd(), &ws) }?;
        Ok(())
    }

    /// A reader half.
    pub fn reader(self: &Arc<Self>) -> PtyHalf {
        PtyHalf(self.clone())
    }

    /// A writer half.
    pub fn writer(self: &Arc<Self>) -> PtyHalf {
        PtyHalf(self.clone())
    }
}

/// One shared handle on a [`PtyMaster`] usable as `AsyncRead` and `AsyncWrite`.
pub struct PtyHalf(Arc<PtyMaster>);

impl AsyncRead for PtyHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed, i.e. the process side is gone.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::{openpty, Winsize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_resizes() {
        let pty = openpty(None::<&Winsize>, None).unwrap();
        // Raw mode on the slave so bytes pass unchanged.
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let master = Arc::new(PtyMaster::new(pty.master).unwrap());
        master.writer().write_all(b"in").await.unwrap();
        let mut got = [0u8; 2];
        nix::unistd::read(&pty.slave, &mut got).unwrap();
        assert_eq!(&got, b"in");
        nix::unistd::write(&pty.slave, b"out").unwrap();
        let mut buf = [0u8; 3];
        master.reader().read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"out");
        master.resize(100, 30).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: slave is an open tty fd and ws a valid out-pointer.
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
    }
}
