//! A tap device, opened inside a network namespace when asked, with the
//! 12-byte virtio-net header passed through (IFF_VNET_HDR).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The virtio_net_hdr_v1 size (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 208, unsigned int)`; its argument is the flags themselves.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The reader takes partially checksummed frames.
pub const TUN_F_CSUM: u32 = 0x01;
/// The reader takes TCPv4 segments (needs TUN_F_CSUM).
pub const TUN_F_TSO4: u32 = 0x02;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Tap errors.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}; is the tun module loaded and are we root?")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot create tap {0}: {1}")]
    Create(String, #[source] std::io::Error),
    #[error("cannot enter network namespace {0}: {1}")]
    Netns(PathBuf, #[source] std::io::Error),
}

/// Where virtio-net frames (with their virtio-net header) go and come from.
pub trait NetBackend: Send {
    /// One frame, header included; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
    fn fd(&self) -> RawFd;
    /// Which offloaded frames (TUN_F_*) the guest takes.
    fn set_offloads(&mut self, flags: u32) -> std::io::Result<()>;
}

/// An open tap device.
pub struct Tap {
    file: File,
    pub name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn ioctl(fd: RawFd, req: libc::c_ulong, arg: *const libc::c_void) -> std::io::Result<()> {
    // SAFETY: `arg` points to the struct/int the tun ioctl `req` expects,
    // valid for the duration of the call.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_here(name: &str) -> Result<File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let create = |e| TapError::Create(name.into(), e);
    ioctl(file.as_raw_fd(), TUNSETIFF, (&req as *const IfReq).cast()).map_err(create)?;
    let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
    ioctl(
        file.as_raw_fd(),
        TUNSETVNETHDRSZ,
        (&hdr_len as *const libc::c_int).cast(),
    )
    .map_err(create)?;
    Ok(file)
}

fn setns(f: &File, path: &Path) -> Result<(), TapError> {
    // SAFETY: setns on an open namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(TapError::Netns(
            path.into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Tap {
    /// Opens (creating if needed) tap `name`, inside `netns` when given.
    /// The calling thread returns to its own namespace afterwards.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::BadName(name.into()));
        }
        let file = match netns {
            None => open_here(name)?,
            Some(ns) => {
                let own_path = Path::new("/proc/thread-self/ns/net");
                let own = File::open(own_path).map_err(|e| TapError::Netns(own_path.into(), e))?;
                let target = File::open(ns).map_err(|e| TapError::Netns(ns.into(), e))?;
                setns(&target, ns)?;
                let res = open_here(name);
                setns(&own, own_path)?;
                res?
            }
        };
        Ok(Tap {
            file,
            name: name.into(),
        })
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write(frame).map(|_| ())
    }
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
    fn set_offloads(&mut self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is passed.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(Tap::open("", None), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::open("a-very-long-tap-name", None),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(
            Tap::open("t0", Some(Path::new("/nonexistent/netns"))),
            Err(TapError::Netns(..))
        ));
    }
}
