//! Path resolution that cannot be tricked by symlinks: openat2(2) with
//! RESOLVE_BENEATH (the share: escaping is an error) or RESOLVE_IN_ROOT
//! (a container rootfs: absolute symlinks resolve inside it), and creation
//! of mount targets inside a rootfs one component at a time.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// openat2(2) with the given open flags and RESOLVE_* flags.
pub fn openat2(dir: BorrowedFd<'_>, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain old data; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: dir is a live fd, c a NUL-terminated string and how a valid
    // open_how whose size we pass; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor returned by openat2 and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// open_tree(2) flags and move_mount(2) flags (linux/mount.h; not in libc).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// A detached copy (open_tree OPEN_TREE_CLONE) of the mount at `fd`, with
/// its submounts when `recursive`. A child in a new mount namespace cannot
/// bind-mount from an fd of the agent's namespace (EINVAL), but it can
/// attach a detached tree with [`attach_tree`].
pub fn clone_tree(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: fd is a live descriptor and "" a NUL-terminated string; the
    // kernel returns a new fd or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tree is a new descriptor returned by open_tree, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Mounts the detached tree `tree` onto the object `target` refers to.
pub fn attach_tree(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are live and both paths the empty NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `/proc/self/fd/N`: the path form of an fd, usable as a mount source or
/// target (the kernel follows the magic link to the exact object).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Normal relative components of `path` (leading `/` and `.` dropped);
/// `None` if it has a `..`.
pub fn clean_components(path: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Opens `dest` (relative to the rootfs `root`, symlinks resolved inside
/// it) as an O_PATH fd, creating missing directories, and the last
/// component as an empty file when `file` is set.
pub fn mkdir_in_root(root: BorrowedFd<'_>, dest: &Path, file: bool) -> io::Result<OwnedFd> {
    let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let comps = clean_components(dest).ok_or(io::ErrorKind::InvalidInput)?;
    let mut prefix = PathBuf::from(".");
    for (i, comp) in comps.iter().enumerate() {
        let parent = openat2(root, &prefix, libc::O_PATH | libc::O_DIRECTORY, resolve)?;
        prefix.push(comp);
        match openat2(root, &prefix, libc::O_PATH, resolve) {
            Ok(fd) if i + 1 == comps.len() => return Ok(fd),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let name = CString::new(comp.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let last = i + 1 == comps.len();
        // SAFETY: parent is a live directory fd, name NUL-terminated; each
        // call returns 0/-1 (or a new fd we close at once).
        let rc = unsafe {
            if last && file {
                let fd = libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd.min(0)
            } else {
                libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
    }
    openat2(root, &prefix, libc::O_PATH, resolve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn beneath_refuses_escaping_symlink() {
        let d = tmp("beneath");
        std::os::unix::fs::symlink("/etc", d.join("out")).unwrap();
        std::fs::create_dir(d.join("in")).unwrap();
        std::os::unix::fs::symlink("in", d.join("ok")).unwrap();
        let root = std::fs::File::open(&d).unwrap();
        let r = openat2(
            root.as_fd(),
            Path::new("out"),
            libc::O_PATH,
            libc::RESOLVE_BENEATH,
        );
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EXDEV));
        assert!(openat2(
            root.as_fd(),
            Path::new("ok"),
            libc::O_PATH,
            libc::RESOLVE_BENEATH
        )
        .is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mkdir_in_root_stays_inside() {
        let d = tmp("inroot");
        // An absolute symlink inside the "rootfs" must resolve inside it.
        std::os::unix::fs::symlink("/", d.join("evil")).unwrap();
        let root = std::fs::File::open(&d).unwrap();
        mkdir_in_root(root.as_fd(), Path::new("/evil/a/b"), false).unwrap();
        assert!(d.join("a/b").is_dir());
        mkdir_in_root(root.as_fd(), Path::new("/c/f"), true).unwrap();
        assert!(d.join("c/f").is_file());
        assert!(mkdir_in_root(root.as_fd(), Path::new("../x"), false).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cleans_components() {
        assert_eq!(clean_components(Path::new("/a/./b")).unwrap().len(), 2);
        assert!(clean_components(Path::new("a/../b")).is_none());
    }
}
