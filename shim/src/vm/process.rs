//! A process in the guest as the shim tracks it: its stdio copies and its
//! exit, taken from the agent's WaitProcess or from the VM's death.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_agent_api::connect::open_stdio;
use husk_agent_api::pb::{self, ProcessRequest};
use husk_agent_api::stdio::{StreamHeader, StreamKind};
use tokio::sync::watch;

use super::pod::PodVm;
use crate::sandbox::{EventSink, ExitStatus, SandboxError, SandboxEvent, Stdio};
use crate::stdio::{IoCopy, ProcessStreams};

/// Exit code reported for a process whose VM died under it (as Kata does).
pub const VM_GONE_EXIT: u32 = 255;
/// How long an exit waits for the process's output to drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// One guest process.
pub struct GuestProcess {
    pub pid: u32,
    pub io: Option<IoCopy>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    exit_tx: Option<watch::Sender<Option<ExitStatus>>>,
    /// Keeps a terminal's input side open when there is no stdin to copy.
    _tty_keep: Option<tokio::net::unix::OwnedWriteHalf>,
}

/// The agent's view of which streams a process has.
pub fn pb_stdio(s: &Stdio) -> pb::Stdio {
    pb::Stdio {
        terminal: s.terminal,
        stdin: !s.stdin.is_empty(),
        stdout: !s.stdout.is_empty(),
        stderr: !s.stderr.is_empty() && !s.terminal,
        rows: 0,
        cols: 0,
    }
}

impl GuestProcess {
    /// Attaches the process's streams in the guest to containerd's FIFOs.
    pub async fn attach(
        vm: &PodVm,
        cid: &str,
        exec_id: &str,
        pid: u32,
        stdio: &Stdio,
    ) -> Result<GuestProcess, SandboxError> {
        let addr = vm.paths.stdio_address();
        let open = |kind| {
            let h = StreamHeader {
                container_id: cid.to_string(),
                exec_id: exec_id.to_string(),
                kind,
            };
            let addr = addr.clone();
            async move {
                open_stdio(&addr, &h).await.map_err(|e| {
                    SandboxError::Internal(format!("cannot attach {kind:?} of {cid}: {e}"))
                })
            }
        };
        let want = pb_stdio(stdio);
        let mut streams = ProcessStreams::default();
        let mut tty_keep = None;
        if want.terminal {
            if want.stdin || want.stdout {
                let (r, w) = open(StreamKind::Tty).await?.into_split();
                streams.stdout = Some(Box::new(r));
                if want.stdin {
                    streams.stdin = Some(Box::new(w));
                } else {
                    tty_keep = Some(w);
                }
            }
        } else {
            if want.stdin {
                streams.stdin = Some(Box::new(open(StreamKind::Stdin).await?));
            }
            if want.stdout {
                streams.stdout = Some(Box::new(open(StreamKind::Stdout).await?));
            }
            if want.stderr {
                streams.stderr = Some(Box::new(open(StreamKind::Stderr).await?));
            }
        }
        let io = IoCopy::streams([&stdio.stdin, &stdio.stdout, &stdio.stderr], streams)
            .map_err(|e| SandboxError::InvalidArgument(e.to_string()))?;
        let (exit_tx, exit) = watch::channel(None);
        Ok(GuestProcess {
            pid,
            io: Some(io),
            exit,
            exit_tx: Some(exit_tx),
            _tty_keep: tty_keep,
        })
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Starts waiting for the exit (after the process was started): the
    /// agent's WaitProcess, or the VM's death, whichever comes first. The
    /// output is drained before the exit is recorded, so a client sees all
    /// of it before the exit event.
    pub fn watch(&mut self, vm: &Arc<PodVm>, cid: &str, exec_id: &str, oom: OomLedger) {
        let Some(tx) = self.exit_tx.take() else {
            return;
        };
        let outputs = self.io.as_mut().map(|io| io.take_outputs());
        let mut agent = vm.agent();
        let mut dead = vm.dead.clone();
        let req = ProcessRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
        };
        let cid = cid.to_string();
        tokio::spawn(async move {
            let waited = tokio::select! {
                r = agent.wait_process(req) => Some(r),
                _ = vm_gone(&mut dead) => None,
            };
            let mut at = SystemTime::now();
            let code = match waited {
                Some(Ok(r)) => {
                    let r = r.into_inner();
                    if r.oom_killed {
                        oom.seen_in_wait(&cid, r.oom_kills);
                    }
                    if r.exited_at_ns > 0 {
                        at = time_from_ns(r.exited_at_ns);
                    }
                    r.exit_code.max(0) as u32
                }
                Some(Err(e)) => {
                    // The connection breaks when the VM dies; give the
                    // supervisor a moment to say so.
                    let _ = tokio::time::timeout(Duration::from_secs(2), vm_gone(&mut dead)).await;
                    tracing::warn!(container = cid, "lost the process: {}", e.message());
                    VM_GONE_EXIT
                }
                None => VM_GONE_EXIT,
            };
            if let Some(o) = outputs {
                let limit = if code == VM_GONE_EXIT {
                    Duration::from_millis(100)
                } else {
                    OUTPUT_DRAIN
                };
                o.finish(limit).await;
            }
            tx.send_replace(Some(ExitStatus { code, at }));
        });
    }
}

/// Resolves when the VM is gone.
async fn vm_gone(dead: &mut watch::Receiver<Option<String>>) {
    let _ = dead.wait_for(|d| d.is_some()).await;
}

/// Passes the agent's OOM reports on once per kill. The agent reports an
/// OOM kill in two ways, in either order: on its Events stream (once per
/// rise of the container cgroup's oom_kill count) and in the WaitProcess
/// answer of each killed process. Both carry the cgroup's oom_kill count
/// after the kill, so a report is published only when its count is higher
/// than any published before for that container: two reports of one kill
/// (or of kills seen together) give one TaskOOM, and the first report to
/// arrive is the one published (a wait report before its TaskExit).
#[derive(Clone)]
pub struct OomLedger {
    sink: EventSink,
    /// Per container, the highest oom_kill count published. An entry stays
    /// after the container is deleted (a late twin may still arrive): one
    /// integer per OOM-killed container.
    published: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl OomLedger {
    pub fn new(sink: EventSink) -> OomLedger {
        OomLedger {
            sink,
            published: Arc::default(),
        }
    }

    /// Whether a report with the cgroup's count `kills` is a kill not yet
    /// published; records it. A count of 0 (an agent that does not send
    /// one) is always published.
    fn is_new(&self, cid: &str, kills: u64) -> bool {
        if kills == 0 {
            return true;
        }
        let mut all = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let seen = all.entry(cid.to_string()).or_default();
        if kills > *seen {
            *seen = kills;
            true
        } else {
            false
        }
    }

    fn report(&self, cid: &str, kills: u64) {
        if self.is_new(cid, kills) {
            tracing::info!(container = cid, kills, "oom");
            (self.sink)(SandboxEvent::Oom {
                container_id: cid.to_string(),
            });
        }
    }

    /// An OOM kill seen in a WaitProcess answer.
    pub fn seen_in_wait(&self, cid: &str, kills: u64) {
        self.report(cid, kills);
    }

    /// An OOM event from the agent's Events stream.
    pub fn seen_in_stream(&self, cid: &str, kills: u64) {
        self.report(cid, kills);
    }
}

/// Nanoseconds since the epoch → SystemTime.
fn time_from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_flags_follow_the_fifos() {
        let s = Stdio {
            stdin: "".into(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: false,
        };
        let p = pb_stdio(&s);
        assert!(!p.stdin && p.stdout && p.stderr && !p.terminal);
        let t = Stdio {
            terminal: true,
            stdin: "/i".into(),
            ..s
        };
        let p = pb_stdio(&t);
        assert!(p.terminal && p.stdin && p.stdout && !p.stderr);
    }

    #[test]
    fn oom_is_published_once_per_kill_from_either_source() {
        let seen = Arc::new(std::sync::Mutex::new(0usize));
        let s2 = seen.clone();
        let l = OomLedger::new(Arc::new(move |_| *s2.lock().unwrap() += 1));
        // Wait first, then its twin on the stream (however late).
        assert!(l.is_new("a", 1));
        assert!(!l.is_new("a", 1));
        // A second kill in the same container, on the stream first.
        assert!(l.is_new("a", 2));
        assert!(!l.is_new("a", 2));
        // The init and an exec killed together (one count), and the stream.
        assert!(l.is_new("b", 1));
        assert!(!l.is_new("b", 1));
        assert!(!l.is_new("b", 1));
        // Two kills the stream saw as one rise; the wait answers of each.
        assert!(l.is_new("c", 2));
        assert!(!l.is_new("c", 2));
        assert!(!l.is_new("c", 1), "an older count is no new kill");
        // Containers do not absorb each other's reports.
        assert!(l.is_new("d", 1));
        assert!(l.is_new("e", 1));
        // No count from the agent: nothing to pair on.
        assert!(l.is_new("f", 0));
        assert!(l.is_new("f", 0));
        // report() publishes through the sink.
        l.seen_in_wait("g", 1);
        l.seen_in_stream("g", 1);
        assert_eq!(*seen.lock().unwrap(), 1);
    }
}
