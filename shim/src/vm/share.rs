//! The pod's shared directory: what virtiofsd serves to the guest.
//!
//! `<pod dir>/shared` is bind-mounted onto itself and made a shared mount of
//! its own peer group before virtiofsd starts. virtiofsd takes a slave copy
//! of the mount table into its own namespace, so the rootfs and bind mounts
//! the shim adds under `shared/` later propagate to it, and their unmounts
//! too. Only what the shim mounts there is visible to the guest.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::guest_spec::{bind_rel, rootfs_rel, HostBind};
use crate::runc::unmount;
use crate::sandbox::{RootfsMount, SandboxError};

fn mount_err(what: String) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Internal(format!("{what}: {e}"))
}

/// Creates `<dir>/shared` as a shared mount point; returns its path.
pub fn prepare(dir: &Path) -> Result<PathBuf, SandboxError> {
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(SandboxError::io(format!(
        "cannot create {}",
        shared.display()
    )))?;
    let none: Option<&str> = None;
    mount(Some(&shared), &shared, none, MsFlags::MS_BIND, none)
        .map_err(mount_err(format!("cannot bind {}", shared.display())))?;
    let result = mount(none, &shared, none, MsFlags::MS_PRIVATE, none)
        .and_then(|_| mount(none, &shared, none, MsFlags::MS_SHARED, none));
    if let Err(e) = result {
        unmount(&shared);
        return Err(mount_err(format!(
            "cannot make {} shared",
            shared.display()
        ))(e));
    }
    Ok(shared)
}

/// A container's mounts in the share, undone by [`ContainerShare::release`].
#[derive(Debug, Default)]
pub struct ContainerShare {
    /// `shared/<cid>`.
    dir: PathBuf,
    /// Mount points, in mount order.
    mounted: Vec<PathBuf>,
}

impl ContainerShare {
    /// Mounts the rootfs (containerd's mounts, else a bind of `root_path`)
    /// at `shared/<cid>/rootfs` and each host bind at `shared/<cid>/mounts/<n>`.
    pub fn create(
        shared: &Path,
        cid: &str,
        rootfs: &[RootfsMount],
        root_path: &Path,
        binds: &[HostBind],
    ) -> Result<ContainerShare, SandboxError> {
        let mut share = ContainerShare {
            dir: shared.join(cid),
            mounted: Vec::new(),
        };
        if share.dir.exists() {
            return Err(SandboxError::AlreadyExists(format!(
                "{} already exists",
                share.dir.display()
            )));
        }
        let result = share.mount_all(shared, cid, rootfs, root_path, binds);
        match result {
            Ok(()) => Ok(share),
            Err(e) => {
                share.release();
                Err(e)
            }
        }
    }

    fn mount_all(
        &mut self,
        shared: &Path,
        cid: &str,
        rootfs: &[RootfsMount],
        root_path: &Path,
        binds: &[HostBind],
    ) -> Result<(), SandboxError> {
        let target = shared.join(rootfs_rel(cid));
        if rootfs.is_empty() {
            if !root_path.is_dir() {
                return Err(SandboxError::NotFound(format!(
                    "rootfs {} does not exist; the bundle must contain it or containerd must pass rootfs mounts",
                    root_path.display()
                )));
            }
            mkdir(&target)?;
            bind(root_path, &target, true, false)?;
        } else {
            crate::runc::bundle::mount(rootfs, &target)?;
        }
        self.mounted.push(target);
        for b in binds {
            let target = shared.join(bind_rel(cid, b.index));
            let meta = std::fs::metadata(&b.source).map_err(|e| {
                SandboxError::NotFound(format!("bind mount source {}: {e}", b.source.display()))
            })?;
            if meta.is_dir() {
                mkdir(&target)?;
            } else {
                mkdir(target.parent().expect("has a parent"))?;
                std::fs::File::create(&target).map_err(SandboxError::io(format!(
                    "cannot create {}",
                    target.display()
                )))?;
            }
            bind(&b.source, &target, b.recursive, b.readonly)?;
            self.mounted.push(target);
        }
        Ok(())
    }

    /// Unmounts everything this container put in the share and removes its
    /// directory. Safe to call twice.
    pub fn release(&mut self) {
        for m in self.mounted.drain(..).rev() {
            unmount(&m);
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

fn mkdir(p: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(p).map_err(SandboxError::io(format!("cannot create {}", p.display())))
}

fn bind(src: &Path, target: &Path, recursive: bool, readonly: bool) -> Result<(), SandboxError> {
    let none: Option<&str> = None;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    let what = || format!("cannot bind {} at {}", src.display(), target.display());
    mount(Some(src), target, none, flags, none).map_err(mount_err(what()))?;
    if readonly {
        // The guest must not write through a read-only volume either.
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(none, target, none, ro, none) {
            unmount(target);
            return Err(mount_err(what())(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(p: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = p.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(p))
    }

    #[test]
    fn rootfs_and_binds_are_mounted_and_released() {
        if !husk_testutil::require(husk_testutil::is_root(), "root (mounts)") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pod");
        let shared = prepare(&dir).unwrap();
        assert!(mounted(&shared));
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let file = tmp.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 x\n").unwrap();
        let binds = vec![
            HostBind {
                index: 0,
                source: vol.clone(),
                recursive: true,
                readonly: false,
            },
            HostBind {
                index: 1,
                source: file.clone(),
                recursive: false,
                readonly: true,
            },
        ];
        let mut share = ContainerShare::create(&shared, "c1", &[], &root, &binds).unwrap();
        assert!(shared.join("c1/rootfs/bin").is_dir());
        std::fs::write(shared.join("c1/mounts/0/f"), "x").unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "x");
        assert_eq!(
            std::fs::read_to_string(shared.join("c1/mounts/1")).unwrap(),
            "127.0.0.1 x\n"
        );
        assert!(
            std::fs::write(shared.join("c1/mounts/1"), "y").is_err(),
            "ro bind"
        );
        let again = ContainerShare::create(&shared, "c1", &[], &root, &[]).unwrap_err();
        assert!(matches!(again, SandboxError::AlreadyExists(_)));
        share.release();
        share.release();
        assert!(!shared.join("c1").exists());
        assert!(!mounted(&shared.join("c1/rootfs")));
        unmount(&shared);
        assert!(!mounted(&shared));
    }

    #[test]
    fn missing_bind_source_leaves_nothing() {
        if !husk_testutil::require(husk_testutil::is_root(), "root (mounts)") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let shared = prepare(&tmp.path().join("pod")).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let binds = vec![HostBind {
            index: 0,
            source: tmp.path().join("nope"),
            recursive: false,
            readonly: false,
        }];
        let e = ContainerShare::create(&shared, "c2", &[], &root, &binds).unwrap_err();
        assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
        assert!(!shared.join("c2").exists());
        assert!(!mounted(&shared.join("c2/rootfs")));
        unmount(&shared);
    }
}
