//! The one rule for tests that need something real from the host (root,
//! `/dev/kvm`, containerd, runc, virtiofsd, a built guest kernel).
//!
//! Locally such a test skips with a message naming what is missing. In CI
//! (`HUSK_REQUIRE_PRIVILEGED=1`) the same situation is a failure, so nothing
//! privileged is silently skipped there.

use std::path::Path;

/// True when `HUSK_REQUIRE_PRIVILEGED` is set to a non-empty value other than `0`.
pub fn privileged_required() -> bool {
    matches!(std::env::var("HUSK_REQUIRE_PRIVILEGED"), Ok(v) if !v.is_empty() && v != "0")
}

/// Decide what to do when a requirement is missing: returns `false` (the
/// caller returns early: skipped) locally, and panics under
/// `HUSK_REQUIRE_PRIVILEGED=1`.
///
/// ```ignore
/// if !husk_testutil::require(is_root(), "root") { return; }
/// ```
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if privileged_required() {
        panic!("required for this test but missing: {what} (HUSK_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED: needs {what}; set HUSK_REQUIRE_PRIVILEGED=1 to make this a failure");
    false
}

/// True when running as uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// True when `/dev/kvm` can be opened read-write.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The first of `names` found as an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_requirement_passes() {
        assert!(require(true, "nothing"));
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("definitely-not-a-husk-binary").is_none());
    }
}
