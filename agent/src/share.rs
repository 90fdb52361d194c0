//! The shared directory (virtio-fs `husk` in the guest, `--shared-dir` on a
//! host): every rootfs and bind source a request names must resolve inside
//! it, without following a symlink out of it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::fs::{clean_components, fd_path, openat2};

/// Errors resolving request paths inside the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot open the shared directory {0}; is virtio-fs mounted / --shared-dir right?")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("path {0:?} is empty, has '..' or is outside the shared directory; give a path inside the share")]
    BadPath(String),
    #[error("path {0:?} leaves the shared directory through a symlink")]
    Escapes(String),
    #[error("path {0:?} does not exist in the shared directory")]
    NotFound(String),
    #[error("cannot resolve {0:?} in the shared directory")]
    Io(String, #[source] std::io::Error),
}

/// An open handle on the share root.
pub struct Share {
    root: OwnedFd,
    path: PathBuf,
}

/// A resolved path: an O_PATH fd (use [`fd_path`] as a mount source) and
/// the real path it had when resolved.
pub struct Resolved {
    pub fd: OwnedFd,
    pub real: PathBuf,
}

impl Share {
    pub fn open(path: &Path) -> Result<Self, ShareError> {
        let path = std::fs::canonicalize(path).map_err(|e| ShareError::Open(path.into(), e))?;
        let root = std::fs::File::open(&path).map_err(|e| ShareError::Open(path.clone(), e))?;
        Ok(Share {
            root: root.into(),
            path,
        })
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `p`: relative to the share, or absolute under the share's
    /// path. `dir` requires a directory.
    pub fn resolve(&self, p: &str, dir: bool) -> Result<Resolved, ShareError> {
        let bad = || ShareError::BadPath(p.to_string());
        let path = Path::new(p);
        let rel = if path.is_absolute() {
            path.strip_prefix(&self.path).map_err(|_| bad())?
        } else {
            path
        };
        let comps = clean_components(rel).ok_or_else(bad)?;
        if comps.is_empty() || p.len() > 4096 {
            return Err(bad());
        }
        let rel: PathBuf = comps.iter().collect();
        let mut flags = libc::O_PATH;
        if dir {
            flags |= libc::O_DIRECTORY;
        }
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        let fd = openat2(self.root.as_fd(), &rel, flags, resolve).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => ShareError::Escapes(p.to_string()),
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => ShareError::NotFound(p.to_string()),
                _ => ShareError::Io(p.to_string(), e),
            }
        })?;
        let real = std::fs::read_link(fd_path(&fd)).map_err(|e| ShareError::Io(p.into(), e))?;
        if !real.starts_with(&self.path) {
            return Err(ShareError::Escapes(p.to_string()));
        }
        Ok(Resolved { fd, real })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_and_rejects_escapes() {
        let d = std::env::temp_dir().join(format!("husk-share-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("c1/rootfs")).unwrap();
        std::os::unix::fs::symlink("/tmp", d.join("esc")).unwrap();
        std::os::unix::fs::symlink("c1", d.join("alias")).unwrap();
        let s = Share::open(&d).unwrap();
        let r = s.resolve("c1/rootfs", true).unwrap();
        assert_eq!(r.real, s.path().join("c1/rootfs"));
        let abs = s.path().join("c1/rootfs");
        assert!(s.resolve(abs.to_str().unwrap(), true).is_ok());
        assert!(s.resolve("alias/rootfs", true).is_ok());
        assert!(matches!(
            s.resolve("esc", true),
            Err(ShareError::Escapes(_))
        ));
        assert!(matches!(
            s.resolve("../x", true),
            Err(ShareError::BadPath(_))
        ));
        assert!(matches!(
            s.resolve("/etc", true),
            Err(ShareError::BadPath(_))
        ));
        assert!(matches!(s.resolve("", true), Err(ShareError::BadPath(_))));
        assert!(matches!(
            s.resolve("nope", true),
            Err(ShareError::NotFound(_))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
