//! The root filesystem of a container's bundle, mounted from containerd's
//! snapshot mounts.

use std::path::Path;

use containerd_shim::mount::mount_rootfs;
use nix::mount::{umount2, MntFlags};

use crate::sandbox::{RootfsMount, SandboxError};

/// Mounts containerd's rootfs mounts at `target`; returns whether anything
/// was mounted (and must be unmounted at delete).
pub fn mount(mounts: &[RootfsMount], target: &Path) -> Result<bool, SandboxError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(SandboxError::io(format!(
        "cannot create rootfs {}",
        target.display()
    )))?;
    for (i, m) in mounts.iter().enumerate() {
        let fs_type = (!m.fs_type.is_empty()).then_some(m.fs_type.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = mount_rootfs(fs_type, source, &m.options, target) {
            if i > 0 {
                unmount(target);
            }
            let msg = format!(
                "cannot mount rootfs {} ({}) at {}: {e}",
                m.source,
                m.fs_type,
                target.display()
            );
            return Err(
                if source.is_some_and(|s| !Path::new(s).exists()) && m.fs_type == "bind" {
                    SandboxError::NotFound(msg)
                } else {
                    SandboxError::Internal(msg)
                },
            );
        }
    }
    Ok(true)
}

/// Unmounts everything at `target` (lazily, so a busy mount cannot stay).
pub fn unmount(target: &Path) {
    // Stacked mounts: unmount until nothing is mounted there any more.
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!("cannot unmount {}: {e}", target.display());
                return;
            }
        }
    }
}

/// Fails with NotFound when the rootfs directory is missing.
pub fn require_rootfs(rootfs: &Path) -> Result<(), SandboxError> {
    if rootfs.is_dir() {
        Ok(())
    } else {
        Err(SandboxError::NotFound(format!(
            "rootfs {} does not exist; the bundle must contain it or containerd must pass rootfs mounts",
            rootfs.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::ttrpc::Code;

    #[test]
    fn missing_rootfs_is_not_found() {
        let e = require_rootfs(Path::new("/nonexistent/rootfs")).unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.to_string().contains("/nonexistent/rootfs"));
    }

    #[test]
    fn bind_mounts_and_unmounts() {
        if !husk_testutil::require(husk_testutil::is_root(), "root (mount)") {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("marker"), "x").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("rootfs");
        let m = RootfsMount {
            fs_type: "bind".into(),
            source: src.path().to_str().unwrap().into(),
            options: vec!["rbind".into(), "ro".into()],
        };
        assert!(mount(&[m], &target).unwrap());
        assert!(target.join("marker").exists());
        unmount(&target);
        assert!(!target.join("marker").exists());
    }
}
