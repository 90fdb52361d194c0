//! Copying between a process's pipes/pty and its stdio connection. Output
//! from a pipe goes to the socket with splice(2) (no copy through user
//! space); a pty and stdin use read/write.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::{set_nonblocking, Attach};

/// Buffer of the read/write copies.
const COPY_BUF: usize = 256 * 1024;
/// Bytes moved per splice call.
const SPLICE_CHUNK: usize = 1 << 20;

/// A non-blocking fd (pipe, pty master or socket) registered with tokio.
/// A pty master reports EIO once the last slave fd closes: EOF here.
pub struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
        // descriptor until the AsyncFd drops.
        let afd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(FdIo(afd))
    }

    fn raw(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }

    /// Reads some bytes; 0 at EOF.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.0.readable().await?;
            let r = g.try_io(|fd| {
                // SAFETY: reads into a live buffer of buf.len() bytes.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut g = self.0.writable().await?;
            let r = g.try_io(|fd| {
                // SAFETY: writes from a live buffer of buf.len() bytes.
                let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn is_pipe(&self) -> bool {
        // SAFETY: stat is plain old data; fstat fills it for a live fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            libc::fstat(self.raw(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        }
    }

    /// Moves everything from this pipe to `dst` with splice until EOF.
    async fn splice_to(&self, dst: &FdIo) -> io::Result<()> {
        loop {
            let mut rg = self.0.readable().await?;
            let mut wg = dst.0.writable().await?;
            // SAFETY: both fds are live; null offsets for pipe and socket.
            let n = unsafe {
                libc::splice(
                    self.raw(),
                    std::ptr::null_mut(),
                    dst.raw(),
                    std::ptr::null_mut(),
                    SPLICE_CHUNK,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n > 0 {
                continue;
            }
            if n == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
            // Find out which side is not ready and wait for that one only
            // (clearing a side that is ready would wait for an edge that
            // never comes).
            let mut fds = [
                libc::pollfd {
                    fd: self.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: dst.raw(),
                    events: libc::POLLOUT,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a live array of two pollfd; zero timeout.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) };
            if fds[0].revents & (libc::POLLIN | libc::POLLHUP) == 0 {
                rg.clear_ready();
            }
            if fds[1].revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) == 0 {
                wg.clear_ready();
            }
        }
    }

    async fn copy_to(&self, dst: &FdIo) -> io::Result<()> {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            match self.read(&mut buf).await? {
                0 => return Ok(()),
                n => dst.write_all(&buf[..n]).await?,
            }
        }
    }
}

impl Attach {
    /// Runs the copies over the stdio connection `sock` until both
    /// directions are done.
    pub async fn run(self, sock: OwnedFd) {
        let Ok(sock) = FdIo::new(sock) else { return };
        let sock = &sock;
        let close = self.close;
        let input = async move {
            let Some(fd) = self.input else { return };
            let Ok(dst) = FdIo::new(fd) else { return };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    r = sock.read(&mut buf) => match r {
                        Ok(n) if n > 0 => n,
                        _ => break,
                    },
                    _ = close.notified() => {
                        // CloseStdin: pass on what already arrived, then close.
                        while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, sock.read(&mut buf)).await {
                            if n == 0 || dst.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                };
                if dst.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // Dropping dst closes the process's stdin: it reads EOF.
        };
        let output = async move {
            let Some(fd) = self.output else { return };
            let Ok(src) = FdIo::new(fd) else { return };
            let _ = if src.is_pipe() {
                src.splice_to(sock).await
            } else {
                src.copy_to(sock).await
            };
            // SAFETY: shutdown of the write half of a live socket.
            unsafe { libc::shutdown(sock.raw(), libc::SHUT_WR) };
        };
        tokio::join!(input, output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splice_moves_a_pipe_into_a_socket_until_eof() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = super::super::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            for i in 0..2000u32 {
                std::io::Write::write_all(&mut w, &[(i % 251) as u8; 4096]).unwrap();
            }
        });
        let reader = std::thread::spawn(move || {
            let mut b = b;
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut b, &mut v).unwrap();
            v
        });
        let src = FdIo::new(r).unwrap();
        let dst = FdIo::new(OwnedFd::from(a)).unwrap();
        src.splice_to(&dst).await.unwrap();
        drop(dst);
        writer.join().unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 2000 * 4096);
        for (i, chunk) in got.chunks(4096).enumerate() {
            assert!(
                chunk.iter().all(|x| *x == (i % 251) as u8),
                "chunk {i} out of order"
            );
        }
    }
}
