//! The control socket: one request word per line, one JSON line back.
//!
//! `ping` -> `{"ok":true}`; `pause`, `resume`, `shutdown` likewise;
//! `metrics` -> `{"ok":true,"metrics":{...}}`; anything else ->
//! `{"ok":false,"error":"..."}`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::runner::Vcpus;
use crate::vmm::{ExitSlot, VmExit};

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on control socket {0}: {1}; does its directory exist?")]
    Bind(PathBuf, #[source] std::io::Error),
}

const MAX_CLIENTS: usize = 16;
const MAX_LINE: usize = 256;

/// Numbers the control socket reports.
pub struct Metrics {
    pub started: Instant,
    pub vcpus: u8,
    pub mem_mib: u32,
}

/// The control socket server, run on the VMM's event loop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    vcpus: Arc<Vcpus>,
    exit: ExitSlot,
    metrics: Metrics,
}

impl ControlServer {
    pub fn new(
        path: &Path,
        vcpus: Arc<Vcpus>,
        exit: ExitSlot,
        metrics: Metrics,
    ) -> Result<Self, ControlError> {
        let listener = UnixListener::bind(path).map_err(|e| ControlError::Bind(path.into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ControlError::Bind(path.into(), e))?;
        Ok(ControlServer {
            listener,
            path: path.into(),
            clients: HashMap::new(),
            vcpus,
            exit,
            metrics,
        })
    }

    fn handle(&mut self, line: &str) -> String {
        match line.trim() {
            "ping" => ok(),
            "pause" => {
                if self.vcpus.pause() {
                    ok()
                } else {
                    err("vcpus did not stop within 2 s")
                }
            }
            "resume" => {
                self.vcpus.resume();
                ok()
            }
            "shutdown" => {
                self.exit.lock().unwrap().get_or_insert(VmExit::Stopped);
                ok()
            }
            "metrics" => format!(
                "{{\"ok\":true,\"metrics\":{{\"uptime_ms\":{},\"vcpus\":{},\"mem_mib\":{},\"paused\":{},\"vmm_rss_kib\":{}}}}}\n",
                self.metrics.started.elapsed().as_millis(),
                self.metrics.vcpus,
                self.metrics.mem_mib,
                self.vcpus.is_paused(),
                vmm_rss_kib().unwrap_or(0),
            ),
            other => err(&format!(
                "unknown request {other:?}; use ping, pause, resume, shutdown or metrics"
            )),
        }
    }

    fn client_readable(&mut self, fd: RawFd, ops: &mut EventOps) {
        let mut chunk = [0u8; MAX_LINE];
        let mut close = false;
        let mut replies = Vec::new();
        if let Some((s, buf)) = self.clients.get_mut(&fd) {
            match s.read(&mut chunk) {
                Ok(0) => close = true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => close = true,
            }
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                replies.push(String::from_utf8_lossy(&line).into_owned());
            }
            if buf.len() > MAX_LINE {
                close = true;
            }
        }
        for line in replies {
            let reply = self.handle(&line);
            if let Some((s, _)) = self.clients.get_mut(&fd) {
                let _ = s.set_nonblocking(false);
                close |= s.write_all(reply.as_bytes()).is_err();
                let _ = s.set_nonblocking(true);
            }
        }
        if close {
            if let Some((s, _)) = self.clients.remove(&fd) {
                let _ = ops.remove(Events::new(&s, EventSet::IN));
            }
        }
    }
}

fn ok() -> String {
    "{\"ok\":true}\n".into()
}

fn err(msg: &str) -> String {
    format!(
        "{{\"ok\":false,\"error\":{}}}\n",
        serde_json::Value::from(msg)
    )
}

/// The VMM's own resident memory: anonymous + file pages, without the
/// shared memfd that backs guest RAM.
pub fn vmm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(field("RssAnon:")? + field("RssFile:")?)
}

impl MutEventSubscriber for ControlServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!("control: cannot watch the socket: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd != self.listener.as_raw_fd() {
            return self.client_readable(fd, ops);
        }
        while let Ok((s, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS || s.set_nonblocking(true).is_err() {
                continue;
            }
            if ops.add(Events::new(&s, EventSet::IN)).is_ok() {
                self.clients.insert(s.as_raw_fd(), (s, Vec::new()));
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_reported() {
        assert!(vmm_rss_kib().unwrap() > 0);
    }

    #[test]
    fn error_reply_is_json() {
        let v: serde_json::Value = serde_json::from_str(&err("bad \"x\"")).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "bad \"x\"");
    }
}
