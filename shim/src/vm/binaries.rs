//! Finding the helper binaries of vm mode (husk-vmm, virtiofsd).
//!
//! A configured value with a `/` is used as it is. A bare name is looked
//! up next to the running executable (an install puts the shim, `husk` and
//! husk-vmm side by side), then on `PATH`, then in the given extra
//! directories (`~/.cargo/bin` for virtiofsd, where `cargo install` puts it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;

/// A binary that is not where the rules above look.
#[derive(Debug, thiserror::Error)]
#[error("{name} not found or not executable (looked in: {looked}); {fix}")]
pub struct NotFound {
    pub name: PathBuf,
    pub looked: String,
    pub fix: String,
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directories a bare name is searched in, in order.
fn search_dirs(extra_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(extra_dirs.iter().cloned());
    dirs
}

/// Resolves `name` by the rules of this module.
pub fn resolve(name: &Path, extra_dirs: &[PathBuf]) -> Result<PathBuf, NotFound> {
    let not_found = |looked: String| NotFound {
        name: name.to_path_buf(),
        looked,
        fix: String::new(),
    };
    if name.as_os_str().is_empty() {
        return Err(not_found("nowhere: the name is empty".into()));
    }
    if name.components().count() > 1 || name.is_absolute() {
        return if is_executable(name) {
            Ok(name.to_path_buf())
        } else {
            Err(not_found(name.display().to_string()))
        };
    }
    let dirs = search_dirs(extra_dirs);
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            not_found(looked.join(", "))
        })
}

/// `~/.cargo/bin` of the current user (`$CARGO_HOME/bin` when set).
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"))
}

/// husk-vmm per `[vm] vmm`.
pub fn vmm(cfg: &VmConfig) -> Result<PathBuf, NotFound> {
    resolve(&cfg.vmm, &[]).map_err(|mut e| {
        e.fix = "build it with `cargo build --release -p husk-vmm` and install it next to the shim, or set [vm] vmm in husk.toml".into();
        e
    })
}

/// virtiofsd per `[vm] virtiofsd` (also searched in `~/.cargo/bin`).
pub fn virtiofsd(cfg: &VmConfig) -> Result<PathBuf, NotFound> {
    let extra: Vec<PathBuf> = cargo_bin_dir().into_iter().collect();
    resolve(&cfg.virtiofsd, &extra).map_err(|mut e| {
        e.fix = "install it with `cargo install --locked virtiofsd`, or set [vm] virtiofsd in husk.toml".into();
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn absolute_path_must_be_executable() {
        let t = tempfile::tempdir().unwrap();
        let good = exe(t.path(), "vmm", 0o755);
        let bad = exe(t.path(), "plain", 0o644);
        assert_eq!(resolve(&good, &[]).unwrap(), good);
        let e = resolve(&bad, &[]).unwrap_err();
        assert!(e.to_string().contains("plain"), "{e}");
        assert!(resolve(&t.path().join("missing"), &[]).is_err());
    }

    #[test]
    fn bare_name_is_found_on_path_and_in_extra_dirs() {
        assert!(resolve(Path::new("sh"), &[]).unwrap().ends_with("sh"));
        let t = tempfile::tempdir().unwrap();
        let name = "husk-test-only-in-extra-dir";
        let p = exe(t.path(), name, 0o755);
        assert_eq!(
            resolve(Path::new(name), &[t.path().to_path_buf()]).unwrap(),
            p
        );
    }

    #[test]
    fn next_to_the_current_executable_wins() {
        let own = std::env::current_exe().unwrap();
        let name = own.file_name().unwrap();
        assert_eq!(resolve(Path::new(name), &[]).unwrap(), own);
    }

    #[test]
    fn missing_names_what_was_searched_and_the_fix() {
        let cfg = VmConfig {
            vmm: "husk-test-no-such-vmm".into(),
            virtiofsd: "husk-test-no-such-virtiofsd".into(),
            ..VmConfig::default()
        };
        let e = vmm(&cfg).unwrap_err().to_string();
        assert!(e.contains("husk-test-no-such-vmm not found"), "{e}");
        assert!(e.contains("cargo build --release -p husk-vmm"), "{e}");
        let e = virtiofsd(&cfg).unwrap_err().to_string();
        assert!(e.contains("cargo install --locked virtiofsd"), "{e}");
        assert!(
            e.contains(".cargo/bin") || std::env::var_os("CARGO_HOME").is_some(),
            "{e}"
        );
        assert!(resolve(Path::new(""), &[]).is_err());
    }
}
