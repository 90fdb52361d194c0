//! `husk cleanup`: removes what dead pods left under the state root.
//!
//! vm-mode pod dirs whose owner (shim or `husk run`) is gone are torn down
//! with [`husk_shim::vm::cleanup::teardown_dir`]. runc-mode sandbox dirs
//! whose containers runc no longer knows are removed. A pod dir without
//! `sandbox.json` that is younger than the boot timeout may belong to a
//! shim that is still starting, and is left alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use husk_shim::config::Config;
use husk_shim::vm::cleanup::{is_pod_dir, pod_alive, read_sandbox, teardown_dir};
use husk_shim::vm::mountinfo;

/// What happened to one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    InUse(String),
    Removed(String),
    Failed(String),
}

/// Cleans `cfg.state_root`; prints one line per directory; returns false
/// when something could not be removed.
pub fn run(cfg: &Config) -> Result<bool> {
    let Ok(entries) = std::fs::read_dir(&cfg.state_root) else {
        println!("nothing to clean in {}", cfg.state_root.display());
        return Ok(true);
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && *p != cfg.runc.root)
        .collect();
    dirs.sort();
    let young = Duration::from_secs(cfg.vm.boot_timeout_secs + 30);
    let runc = husk_shim::runc::resolve_binary(&cfg.runc.binary).ok();
    let (mut removed, mut ok) = (0, true);
    for dir in dirs {
        let outcome = if is_pod_dir(&dir) {
            vm_pod(&dir, young)
        } else {
            match &runc {
                Some(bin) => runc_sandbox(cfg, bin, &dir),
                None => Outcome::InUse("runc not found, cannot tell whether it is in use".into()),
            }
        };
        match outcome {
            Outcome::InUse(why) => println!("in use:  {} ({why})", dir.display()),
            Outcome::Removed(what) => {
                println!("removed: {} ({what})", dir.display());
                removed += 1;
            }
            Outcome::Failed(e) => {
                println!("FAILED:  {}: {e}", dir.display());
                ok = false;
            }
        }
    }
    println!("{removed} stale dir(s) removed");
    Ok(ok)
}

fn age(dir: &Path) -> Duration {
    dir.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// A vm-mode pod dir.
pub fn vm_pod(dir: &Path, young: Duration) -> Outcome {
    if pod_alive(dir) {
        let owner = read_sandbox(dir)
            .map(|s| format!("shim pid {}", s.shim_pid))
            .unwrap_or_else(|| "its shim is starting".into());
        return Outcome::InUse(owner);
    }
    if read_sandbox(dir).is_none() && age(dir) < young {
        return Outcome::InUse(format!(
            "no sandbox.json yet and younger than {} s: may be starting",
            young.as_secs()
        ));
    }
    match teardown_dir(dir) {
        Ok(t) => Outcome::Removed(t.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// True when runc (under any namespace of the configured root) still knows `id`.
fn runc_knows(cfg: &Config, bin: &Path, id: &str) -> bool {
    let Ok(namespaces) = std::fs::read_dir(&cfg.runc.root) else {
        return false;
    };
    namespaces.flatten().any(|ns| {
        Command::new(bin)
            .arg("--root")
            .arg(ns.path())
            .args(["state", id])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// A runc-mode sandbox dir: `<dir>/<container-id>/` per container.
fn runc_sandbox(cfg: &Config, bin: &Path, dir: &Path) -> Outcome {
    let containers: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Some(c) = containers.iter().find(|c| runc_knows(cfg, bin, c)) {
        return Outcome::InUse(format!("runc container {c}"));
    }
    // Never delete through a mount: that would delete what is behind it.
    let mounted = mountinfo::read_self()
        .map(|m| !mountinfo::under(&m, dir).is_empty())
        .unwrap_or(true);
    if mounted {
        return Outcome::Failed("something is mounted below it; unmount it first".into());
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Outcome::Removed(format!("{} container dir(s)", containers.len())),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_pod_without_owner_is_left_old_one_is_torn_down() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod");
        std::fs::create_dir_all(pod.join("shared/c1")).unwrap();
        std::fs::write(pod.join("console.log"), "x").unwrap();
        let o = vm_pod(&pod, Duration::from_secs(3600));
        assert!(
            matches!(o, Outcome::InUse(ref w) if w.contains("may be starting")),
            "{o:?}"
        );
        assert!(pod.exists());
        let o = vm_pod(&pod, Duration::ZERO);
        assert!(
            matches!(o, Outcome::Removed(ref w) if w.contains("dir removed")),
            "{o:?}"
        );
        assert!(!pod.exists());
    }

    #[test]
    fn dead_shim_pod_is_removed_at_any_age() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        // pid 0 is never a live process.
        std::fs::write(pod.join("sandbox.json"), r#"{"id":"pod","shim_pid":0}"#).unwrap();
        let o = vm_pod(&pod, Duration::from_secs(3600));
        assert!(matches!(o, Outcome::Removed(_)), "{o:?}");
        assert!(!pod.exists());
    }
}
