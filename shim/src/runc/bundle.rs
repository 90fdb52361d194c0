//! The OCI bundle of a container: its spec, checked before runc sees it,
//! and its root filesystem, mounted from containerd's snapshot mounts.

use std::path::{Path, PathBuf};

use containerd_shim::mount::mount_rootfs;
use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::Spec;

use crate::sandbox::{RootfsMount, SandboxError};

/// Reads and checks `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, SandboxError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        SandboxError::InvalidArgument(format!("cannot read OCI spec {}: {e}", path.display()))
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|e| {
        SandboxError::InvalidArgument(format!("invalid OCI spec {}: {e}", path.display()))
    })?;
    check_spec(&spec, &path)?;
    Ok(spec)
}

/// What runc would otherwise reject late or confusingly.
pub fn check_spec(spec: &Spec, path: &Path) -> Result<(), SandboxError> {
    let invalid = |what: &str| {
        SandboxError::InvalidArgument(format!("invalid OCI spec {}: {what}", path.display()))
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty"));
    }
    if spec.root().is_none() {
        return Err(invalid("no root"));
    }
    Ok(())
}

/// The rootfs directory the spec names, made absolute against the bundle.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

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

    fn bundle_with(spec: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), spec).unwrap();
        d
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["echo","hi"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#;

    #[test]
    fn loads_a_good_spec() {
        let b = bundle_with(GOOD);
        let spec = load_spec(b.path()).unwrap();
        assert_eq!(rootfs_path(&spec, b.path()), b.path().join("rootfs"));
    }

    #[test]
    fn malformed_spec_is_invalid_argument_naming_the_file() {
        let b = bundle_with("{not json");
        let e = load_spec(b.path()).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn spec_without_args_is_invalid() {
        let b = bundle_with(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":[],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#,
        );
        let e = load_spec(b.path()).unwrap_err();
        assert!(e.to_string().contains("process.args is empty"), "{e}");
    }

    #[test]
    fn missing_spec_is_invalid_argument() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            load_spec(d.path()).unwrap_err().code(),
            Code::INVALID_ARGUMENT
        );
    }

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
