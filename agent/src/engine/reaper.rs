//! SIGCHLD: reaps every child (as PID 1 also orphans re-parented to the
//! agent), records exits, and emits exit and OOM events in order.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use husk_agent_api::pb;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use super::{now_ns, Engine, Exit, Status};

/// Runs forever: reaps on each SIGCHLD.
pub async fn run_reaper(engine: Arc<Engine>) -> std::io::Result<()> {
    let mut sig = signal(SignalKind::child())?;
    loop {
        reap_all(&engine);
        sig.recv().await;
    }
}

fn reap_all(engine: &Engine) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let (code, signal) = if libc::WIFEXITED(status) {
            (libc::WEXITSTATUS(status), 0)
        } else if libc::WIFSIGNALED(status) {
            let s = libc::WTERMSIG(status);
            (128 + s, s as u32)
        } else {
            continue;
        };
        engine.on_exit(pid, code, signal);
    }
}

impl Engine {
    fn on_exit(&self, pid: i32, code: i32, signal: u32) {
        let mut t = self.tables();
        let Some((cid, eid)) = t.by_pid.remove(&pid) else {
            // An orphan re-parented to PID 1, or a failed setup: nothing to report.
            return;
        };
        let Some(c) = t.containers.get_mut(&cid) else {
            return;
        };
        // Report the OOM kill before the exit (unless the watcher already did).
        let kills = self.cgroups.oom_kills(&c.cgroup).unwrap_or(c.oom_seen);
        if kills > c.oom_seen {
            c.oom_seen = kills;
            self.emit(
                &cid,
                "",
                pb::event::Kind::Oom(pb::OomEvent { oom_kills: kills }),
            );
        }
        let proc = if eid.is_empty() {
            if matches!(
                c.status,
                Status::Created | Status::Running | Status::Creating
            ) {
                c.status = Status::Stopped;
            }
            &mut c.init
        } else {
            match c.execs.get_mut(&eid) {
                Some(p) if p.pid == pid => p,
                _ => return,
            }
        };
        let exit = Exit {
            code,
            signal,
            oom_killed: signal == libc::SIGKILL as u32 && kills > proc.oom_base,
            at_ns: now_ns(),
            oom_kills: kills,
        };
        proc.exit.send_replace(Some(exit));
        self.emit(
            &cid,
            &eid,
            pb::event::Kind::Exit(pb::ExitEvent {
                pid: pid as u32,
                exit_code: exit.code,
                signal: exit.signal,
                oom_killed: exit.oom_killed,
            }),
        );
    }

    /// Watches the cgroup for OOM kills while the container lives.
    pub(crate) fn spawn_oom_watch(
        self: &Arc<Self>,
        id: &str,
        cgroup: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let fd = match self.cgroups.oom_notifier(cgroup) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(container = id, error = %e, "no oom notifications; oom kills are reported at exit only");
                return None;
            }
        };
        let engine = Arc::downgrade(self);
        let id = id.to_string();
        Some(tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
            // same descriptor until the AsyncFd drops.
            let Ok(afd) = (unsafe { AsyncFd::register(fd) }) else {
                return;
            };
            loop {
                let Ok(mut g) = afd.readable().await else {
                    return;
                };
                drain(g.get_inner());
                g.clear_ready();
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if !engine.check_oom(&id) {
                    return;
                }
            }
        }))
    }

    /// Emits an OOM event if the kill count grew; false once the container is gone.
    fn check_oom(&self, id: &str) -> bool {
        let mut t = self.tables();
        let Some(c) = t.containers.get_mut(id) else {
            return false;
        };
        let Ok(kills) = self.cgroups.oom_kills(&c.cgroup) else {
            return false;
        };
        if kills > c.oom_seen {
            c.oom_seen = kills;
            self.emit(
                id,
                "",
                pb::event::Kind::Oom(pb::OomEvent { oom_kills: kills }),
            );
        }
        true
    }
}

/// Empties an eventfd/inotify fd so it stops being readable.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a local buffer from a live non-blocking fd.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n <= 0 {
            return;
        }
    }
}
