//! The OCI runtime spec of a container, checked before any sandbox sees it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::sandbox::SandboxError;

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
}
