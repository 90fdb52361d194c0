//! The shim is a child subreaper: it reaps every child (runc invocations,
//! container init processes re-parented to it, exec processes) in one place
//! and hands each exit status to whoever waits for that pid.
//!
//! A child may exit before anyone subscribes (a container init that dies
//! between `runc create` and the read of its pid file): such statuses are
//! kept, stamped with their time, so a later subscriber still gets them.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::sandbox::ExitStatus;

/// How many unclaimed exits are kept (the oldest go first).
const MAX_UNCLAIMED: usize = 256;

struct Unclaimed {
    status: ExitStatus,
    seen: Instant,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, Vec<oneshot::Sender<ExitStatus>>>,
    unclaimed: HashMap<i32, Unclaimed>,
}

/// The process-wide reaper.
pub struct Reaper {
    inner: Mutex<Inner>,
}

/// The process-wide reaper instance.
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| Reaper {
        inner: Mutex::new(Inner::default()),
    })
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and subscribes to its exit atomically with respect to the reaper.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // A stale status for a recycled pid must not answer for the new child.
        inner.unclaimed.remove(&pid);
        let (tx, rx) = oneshot::channel();
        inner.waiters.entry(pid).or_default().push(tx);
        Ok((child, rx))
    }

    /// Subscribes to the exit of `pid`, an existing child (or one that exited
    /// at or after `since`).
    pub fn subscribe(&self, pid: i32, since: Instant) -> oneshot::Receiver<ExitStatus> {
        let mut inner = self.lock();
        let (tx, rx) = oneshot::channel();
        match inner.unclaimed.remove(&pid) {
            Some(u) if u.seen >= since => {
                let _ = tx.send(u.status);
            }
            _ => inner.waiters.entry(pid).or_default().push(tx),
        }
        rx
    }

    /// Records the exit of `pid`.
    pub fn exited(&self, pid: i32, status: ExitStatus) {
        let mut inner = self.lock();
        match inner.waiters.remove(&pid) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(status);
                }
            }
            None => {
                if inner.unclaimed.len() >= MAX_UNCLAIMED {
                    if let Some(oldest) = inner
                        .unclaimed
                        .iter()
                        .min_by_key(|(_, u)| u.seen)
                        .map(|(p, _)| *p)
                    {
                        inner.unclaimed.remove(&oldest);
                    }
                }
                inner.unclaimed.insert(
                    pid,
                    Unclaimed {
                        status,
                        seen: Instant::now(),
                    },
                );
            }
        }
    }

    /// Reaps every child that has exited so far.
    pub fn reap_all(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    return;
                }
            };
            tracing::debug!(pid = pid.as_raw(), code, "child exited");
            self.exited(
                pid.as_raw(),
                ExitStatus {
                    code,
                    at: SystemTime::now(),
                },
            );
        }
    }

    /// Starts reaping on SIGCHLD. Call once, inside the tokio runtime.
    pub fn start(&'static self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        tokio::spawn(async move {
            // Children that exited before the handler was installed.
            self.reap_all();
            while sigchld.recv().await.is_some() {
                self.reap_all();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u32) -> ExitStatus {
        ExitStatus {
            code,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn exit_before_subscribe_is_kept() {
        let r = Reaper {
            inner: Mutex::new(Inner::default()),
        };
        let since = Instant::now();
        r.exited(4242, status(3));
        let mut rx = r.subscribe(4242, since);
        assert_eq!(rx.try_recv().unwrap().code, 3);
    }

    #[test]
    fn stale_exit_is_ignored() {
        let r = Reaper {
            inner: Mutex::new(Inner::default()),
        };
        r.exited(4243, status(1));
        let mut rx = r.subscribe(4243, Instant::now() + std::time::Duration::from_secs(1));
        assert!(
            rx.try_recv().is_err(),
            "an exit older than the process must not count"
        );
        r.exited(4243, status(0));
        assert_eq!(rx.try_recv().unwrap().code, 0);
    }

    #[test]
    fn unclaimed_is_bounded() {
        let r = Reaper {
            inner: Mutex::new(Inner::default()),
        };
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.exited(100_000 + pid, status(0));
        }
        assert_eq!(r.lock().unclaimed.len(), MAX_UNCLAIMED);
    }

    #[tokio::test]
    async fn reaps_a_real_child() {
        let (_child, rx) = reaper()
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        // Poll instead of SIGCHLD so that parallel tests do not race on one handler.
        let status = loop {
            reaper().reap_all();
            if !rx.is_empty() {
                break rx.await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(status.code, 7);
    }
}
