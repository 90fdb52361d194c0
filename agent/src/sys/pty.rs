//! Terminals: a pty pair opened through a given ptmx (the container's own
//! devpts instance), window size, and passing the master fd to the agent
//! over the sync socket (SCM_RIGHTS).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Opens a pty through `ptmx`: (master, slave). The slave is opened from the
/// master (TIOCGPTPEER), so no path lookup can be redirected.
pub fn open_pty(ptmx: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)?
        .into();
    let mut unlock: libc::c_int = 0;
    // SAFETY: master is a live ptmx fd; TIOCSPTLCK reads an int we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd or -1.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: slave is a new fd owned only here.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Sets the window size of a pty (master or slave).
pub fn resize(fd: &OwnedFd, rows: u32, cols: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows.min(u16::MAX as u32) as u16,
        ws_col: cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is a live pty fd; ws is a valid winsize for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const CMSG_BUF: usize = 64;

/// Sends one byte with `fd` attached.
pub fn send_fd(sock: RawFd, byte: u8, fd: &OwnedFd) -> io::Result<()> {
    let mut b = [byte];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; CMSG_BUF];
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: msg_control points to a buffer of at least msg_controllen
    // bytes, so the first header and its data fit.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: msg describes live buffers for the call.
    if unsafe { libc::sendmsg(sock, &msg, 0) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one byte and, if attached, one fd (close-on-exec). `Ok(None)`
/// on EOF.
pub fn recv_byte_fd(sock: RawFd) -> io::Result<Option<(u8, Option<OwnedFd>)>> {
    let mut b = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; CMSG_BUF];
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF;
    // SAFETY: msg describes live buffers for the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    let mut fd = None;
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed headers; we read only SCM_RIGHTS data of one fd.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some((b[0], fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_pair_resizes_and_carries_bytes() {
        let (master, slave) = open_pty("/dev/ptmx").unwrap();
        resize(&master, 30, 100).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: slave is a live pty fd; ws a valid out pointer.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        let mut s = std::fs::File::from(slave);
        std::io::Write::write_all(&mut s, b"x").unwrap();
        let mut m = std::fs::File::from(master);
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut m, &mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn fd_passes_over_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        send_fd(a.as_raw_fd(), b'P', &f).unwrap();
        let (byte, got) = recv_byte_fd(b.as_raw_fd()).unwrap().unwrap();
        assert_eq!(byte, b'P');
        let got = got.expect("fd attached");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).unwrap();
        assert_eq!(link, std::path::Path::new("/dev/null"));
        drop(a);
        assert!(recv_byte_fd(b.as_raw_fd()).unwrap().is_none());
    }
}
