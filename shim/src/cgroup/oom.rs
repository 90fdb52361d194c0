//! OOM notifications for a container's memory cgroup.
//!
//! v1: an eventfd registered through `cgroup.event_control` against
//! `memory.oom_control` fires on every OOM (and once when the cgroup is
//! removed). v2: inotify on `memory.events`, reporting when `oom_kill` grows.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::{parse_flat_keyed, CgroupError, CgroupPaths};

/// A running OOM watch; stops on drop.
pub struct OomWatcher {
    task: JoinHandle<()>,
    v1_event: Option<std::sync::Arc<AsyncFd<EventFd>>>,
    dir: PathBuf,
}

fn oom_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Oom {
        path: path.to_path_buf(),
        source,
    }
}

fn v2_oom_kills(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.events"))
        .map(|t| parse_flat_keyed(&t).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

impl OomWatcher {
    /// Watches the memory cgroup in `paths`; `on_oom` runs for every OOM.
    pub fn start(
        paths: &CgroupPaths,
        on_oom: impl Fn() + Send + Sync + 'static,
    ) -> Result<OomWatcher, CgroupError> {
        match paths {
            CgroupPaths::V1(_) => {
                let dir = paths
                    .controller("memory")
                    .ok_or_else(|| CgroupError::NoController(0, "memory".into()))?
                    .to_path_buf();
                let control =
                    std::fs::File::open(dir.join("memory.oom_control")).map_err(oom_err(&dir))?;
                let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| oom_err(&dir)(e.into()))?;
                let line = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
                std::fs::write(dir.join("cgroup.event_control"), line).map_err(oom_err(&dir))?;
                let efd = std::sync::Arc::new(crate::fd::register(efd).map_err(oom_err(&dir))?);
                let watch_dir = dir.clone();
                let fd = efd.clone();
                let task = tokio::spawn(async move {
                    let _control = control;
                    loop {
                        let Ok(mut guard) = fd.readable().await else {
                            return;
                        };
                        match guard.try_io(|e| e.get_ref().read().map_err(std::io::Error::from)) {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => return,
                            Err(_would_block) => continue,
                        }
                        // The eventfd also fires when the cgroup goes away.
                        if !watch_dir.exists() {
                            return;
                        }
                        on_oom();
                    }
                });
                Ok(OomWatcher {
                    task,
                    v1_event: Some(efd),
                    dir,
                })
            }
            CgroupPaths::V2(dir) => {
                let dir = dir.clone();
                let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                    .map_err(|e| oom_err(&dir)(e.into()))?;
                ino.add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
                    .map_err(|e| oom_err(&dir)(e.into()))?;
                let fd: OwnedFd = ino.into();
                let afd = crate::fd::register(fd).map_err(oom_err(&dir))?;
                let watch_dir = dir.clone();
                let mut seen = v2_oom_kills(&dir);
                let task = tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(mut guard) = afd.readable().await else {
                            return;
                        };
                        match guard.try_io(|f| {
                            nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)
                        }) {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => return,
                            Err(_would_block) => continue,
                        }
                        if !watch_dir.exists() {
                            return;
                        }
                        let now = v2_oom_kills(&watch_dir);
                        if now > seen {
                            seen = now;
                            on_oom();
                        }
                    }
                });
                Ok(OomWatcher {
                    task,
                    v1_event: None,
                    dir,
                })
            }
        }
    }

    /// True when an OOM happened that the watch task has not reported yet
    /// (v1). Lets the exit path report the OOM before the exit.
    pub fn pending(&self) -> bool {
        match &self.v1_event {
            Some(efd) => efd.get_ref().read().is_ok() && self.dir.exists(),
            None => false,
        }
    }
}

impl Drop for OomWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v2_reports_growing_oom_kill() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = OomWatcher::start(&CgroupPaths::V2(t.path().to_path_buf()), move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(t.path().join("memory.events"), "oom 1\noom_kill 0\n").unwrap();
        std::fs::write(t.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("an oom event")
            .unwrap();
        assert!(!w.pending());
    }

    #[tokio::test]
    async fn v1_without_memory_controller_is_an_error() {
        let paths = CgroupPaths::V1(Default::default());
        assert!(OomWatcher::start(&paths, || {}).is_err());
    }
}
