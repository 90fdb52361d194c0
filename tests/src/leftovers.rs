//! What a finished test must not leave: processes (shim, runc, container,
//! husk-vmm, virtiofsd), mounts (rootfs, a VM pod's shared directory),
//! cgroups, runc and husk state.

use std::fs;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Everything found on the host that still belongs to one of `tokens`
/// (container ids, sandbox ids): one line per finding.
pub fn find(tokens: &[String], state_roots: &[PathBuf]) -> Vec<String> {
    let mut found = processes(tokens);
    found.extend(mounts(tokens));
    found.extend(cgroups(tokens));
    found.extend(runc_state(tokens, state_roots));
    found
}

/// Processes whose command line or cgroup membership names a token: the
/// shim (`-id <id>`), runc (`runc ... <id>`) and the container's processes.
pub fn processes(tokens: &[String]) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let p = entry.path();
        let cmdline = fs::read(p.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroup = fs::read_to_string(p.join("cgroup")).unwrap_or_default();
        for t in tokens {
            if cmdline.contains(t.as_str()) {
                found.push(format!("process {name} `{}` names {t}", cmdline.trim()));
            } else if cgroup.contains(t.as_str()) {
                found.push(format!(
                    "process {name} `{}` is in a cgroup of {t}",
                    cmdline.trim()
                ));
            }
        }
    }
    found
}

/// Mount points (in the host's mount table as this process sees it) whose
/// path names a token: a container's rootfs, a VM pod's shared directory
/// (`<state_root>/<sandbox-id>/shared/...`).
pub fn mounts(tokens: &[String]) -> Vec<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_points(&table)
        .into_iter()
        .filter(|m| tokens.iter().any(|t| m.contains(t.as_str())))
        .map(|m| format!("mount {m}"))
        .collect()
}

/// The mount points (5th field, octal escapes decoded) of a mountinfo table.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if esc {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Cgroup directories (any controller, up to 4 levels deep) named by a token.
pub fn cgroups(tokens: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    walk(Path::new(CGROUP_ROOT), 0, &mut |p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if tokens.iter().any(|t| name.contains(t.as_str())) {
            found.push(format!("cgroup {}", p.display()));
        }
    });
    found
}

fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    if depth > 4 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let p = e.path();
            f(&p);
            walk(&p, depth + 1, f);
        }
    }
}

/// runc state directories (`<root>/<id>` or `<root>/<namespace>/<id>`).
pub fn runc_state(tokens: &[String], roots: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for root in roots {
        let mut dirs = vec![root.clone()];
        if let Ok(rd) = fs::read_dir(root) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        for d in dirs {
            for t in tokens {
                let p = d.join(t);
                if p.exists() {
                    found.push(format!("runc state {}", p.display()));
                }
            }
        }
    }
    found
}

/// Removes the (empty) cgroup `rel` (e.g. `/husk-e2e-pod-1`) in every
/// controller, as kubelet removes a pod's cgroup parent. Returns what could
/// not be removed because something was still in it.
pub fn remove_cgroup_parent(rel: &str) -> Vec<String> {
    let mut left = Vec::new();
    let Ok(rd) = fs::read_dir(CGROUP_ROOT) else {
        return left;
    };
    for ctrl in rd.flatten() {
        let p = ctrl.path().join(rel.trim_start_matches('/'));
        if !p.is_dir() {
            continue;
        }
        if let Err(e) = fs::remove_dir(&p) {
            left.push(format!("cgroup {} not removable: {e}", p.display()));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_its_command_line() {
        let token = format!("husk-e2e-unit-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5", &token])
            .spawn()
            .unwrap();
        let pid = child.id();
        // right after fork the child may not have exec'd sh yet
        let mine = |f: &Vec<String>| f.iter().any(|l| l.starts_with(&format!("process {pid} ")));
        let mut found = processes(std::slice::from_ref(&token));
        for _ in 0..100 {
            if mine(&found) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = processes(std::slice::from_ref(&token));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // sh and (while it forks) its child both carry the token.
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&format!("process {pid} "))),
            "{found:?}"
        );
        let left = processes(&[token]);
        assert!(left
            .iter()
            .all(|f| !f.starts_with(&format!("process {pid} "))));
    }

    #[test]
    fn reads_mount_points_with_escapes() {
        let table = "36 25 0:32 / /run/husk-test/a\\040b rw - tmpfs tmpfs rw\n\
                     37 25 0:33 / /proc rw - proc proc rw\n";
        assert_eq!(mount_points(table), ["/run/husk-test/a b", "/proc"]);
    }

    #[test]
    fn finds_runc_state_under_a_namespace() {
        let root = std::env::temp_dir().join(format!("husk-e2e-runc-{}", std::process::id()));
        fs::create_dir_all(root.join("default/c1")).unwrap();
        let found = runc_state(&["c1".into(), "c2".into()], std::slice::from_ref(&root));
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].ends_with("default/c1"));
    }
}
