//! `husk logs [-f] SANDBOX-ID`: the guest console of a pod (kernel and
//! agent lines), from `<state_root>/<id>/console.log`.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_shim::vm::cleanup::is_pod_dir;

const POLL: Duration = Duration::from_millis(200);

/// The pod ids under `state_root`, sorted.
pub fn pod_ids(state_root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(state_root)
        .map(|d| {
            d.flatten()
                .filter(|e| is_pod_dir(&e.path()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The pod dir of `id`, or an error listing the pods there are.
pub fn pod_dir(state_root: &Path, id: &str) -> Result<PathBuf> {
    if !crate::run::valid_id(id) {
        bail!("invalid sandbox id {id:?}");
    }
    let dir = state_root.join(id);
    if dir.is_dir() {
        return Ok(dir);
    }
    let ids = pod_ids(state_root);
    let list = if ids.is_empty() {
        "there are none".to_string()
    } else {
        format!("pods: {}", ids.join(", "))
    };
    bail!("no pod {id} in {}; {list}", state_root.display())
}

/// Copies what `file` holds past `offset` to `out`; returns the new offset.
fn copy_from(file: &mut std::fs::File, offset: u64, out: &mut impl Write) -> Result<u64> {
    let len = file.metadata()?.len();
    // Truncated or replaced: start over.
    let offset = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    Ok(offset + buf.len() as u64)
}

/// Prints the console; with `follow`, keeps printing until the pod dir is gone.
pub fn run(state_root: &Path, id: &str, follow: bool, out: &mut impl Write) -> Result<()> {
    let dir = pod_dir(state_root, id)?;
    let path = dir.join("console.log");
    let mut file = None;
    let mut offset = 0;
    loop {
        if file.is_none() {
            match std::fs::File::open(&path) {
                Ok(f) => file = Some(f),
                Err(e) if e.kind() == ErrorKind::NotFound && follow => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    bail!(
                        "pod {id} has no console.log yet: its VM has not started (use -f to wait)"
                    )
                }
                Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
            }
        }
        if let Some(f) = file.as_mut() {
            match copy_from(f, offset, out) {
                Ok(n) => offset = n,
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
        if !follow || !dir.exists() {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_console_and_names_existing_pods() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod1");
        std::fs::create_dir(&pod).unwrap();
        std::fs::write(
            pod.join("console.log"),
            "Linux version 6.1\nhusk-agent: ready\n",
        )
        .unwrap();
        let mut out = Vec::new();
        run(t.path(), "pod1", false, &mut out).unwrap();
        assert_eq!(out, b"Linux version 6.1\nhusk-agent: ready\n");

        let e = run(t.path(), "nope", false, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no pod nope") && e.contains("pods: pod1"), "{e}");
        let e = run(t.path(), "../etc", false, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid sandbox id"), "{e}");

        std::fs::create_dir(t.path().join("pod2")).unwrap();
        std::fs::write(t.path().join("pod2/sandbox.json"), "{}").unwrap();
        let e = run(t.path(), "pod2", false, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no console.log yet"), "{e}");
    }

    #[test]
    fn follow_streams_until_the_pod_dir_is_gone() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod1");
        std::fs::create_dir(&pod).unwrap();
        let root = t.path().to_path_buf();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            run(&root, "pod1", true, &mut out).map(|()| out)
        });
        // The console appears after `logs -f` started, then grows.
        std::thread::sleep(Duration::from_millis(300));
        let log = pod.join("console.log");
        std::fs::write(&log, "boot\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"agent up\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_dir_all(&pod).unwrap();
        let out = reader.join().unwrap().unwrap();
        assert_eq!(out, b"boot\nagent up\n");
    }
}
