//! `ctr`, the client every containerd user has, driven as a user would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, Output};
use crate::target::Containerd;

/// How long one `ctr` call may take before the test fails.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// A `ctr` bound to one containerd socket and namespace.
#[derive(Clone, Debug)]
pub struct Ctr {
    binary: PathBuf,
    socket: PathBuf,
    namespace: String,
    timeout: Duration,
}

impl Ctr {
    /// `ctr` of `containerd`'s release, talking to its socket in `namespace`.
    pub fn new(containerd: Containerd, namespace: &str) -> Self {
        Ctr {
            binary: containerd.ctr_binary(),
            socket: containerd.socket(),
            namespace: namespace.to_string(),
            timeout: CTR_TIMEOUT,
        }
    }

    /// containerd 1.6's `ctr` talking to `containerd` (either release): it
    /// prints the gRPC code of an error as errdefs text ("...: not found"),
    /// which containerd 2.x's `ctr` leaves out of its messages.
    pub fn with_code_text(containerd: Containerd, namespace: &str) -> Self {
        Ctr {
            binary: Containerd::V16.ctr_binary(),
            socket: containerd.socket(),
            namespace: namespace.to_string(),
            timeout: CTR_TIMEOUT,
        }
    }

    /// The same `ctr` with another deadline per call (a microVM's first
    /// container waits for the guest to boot).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line prefix `ctr --address <sock> -n <ns>`.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace);
        c
    }

    /// Runs `ctr <args>` and returns its exit code and output.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Output> {
        let mut c = self.command();
        c.args(args.iter().map(|a| a.as_ref()));
        cmd::run(&mut c, self.timeout)
    }

    /// Runs `ctr <args>` with `input` written to its stdin, then stdin closed.
    pub fn run_with_stdin<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> Result<Output> {
        let mut c = self.command();
        c.args(args.iter().map(|a| a.as_ref()));
        cmd::run_with_stdin(&mut c, input, self.timeout)
    }

    /// Runs `ctr <args>` with a pseudo-terminal as its stdin/stdout (through
    /// util-linux `script`), as `ctr run -t` and `ctr task exec -t` need.
    /// The terminal's output (with `\r\n` line ends) comes back in `stdout`.
    pub fn run_tty<S: AsRef<str>>(&self, args: &[S]) -> Result<Output> {
        let mut line = format!(
            "{} --address {} -n {}",
            shell_quote(&self.binary.display().to_string()),
            shell_quote(&self.socket.display().to_string()),
            shell_quote(&self.namespace)
        );
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a.as_ref()));
        }
        let mut c = Command::new("script");
        c.args(["-qefc", &line, "/dev/null"]);
        cmd::run(&mut c, self.timeout)
    }

    /// Starts `ctr events`; the stream ends when the returned value is dropped.
    pub fn events(&self) -> Result<Events> {
        let mut child = self
            .command()
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn ctr events")?;
        let stdout = child.stdout.take().context("ctr events stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // ctr events subscribes asynchronously; give it a moment so the
        // caller's next action is not missed.
        thread::sleep(Duration::from_millis(500));
        Ok(Events {
            child,
            rx,
            seen: Vec::new(),
        })
    }
}

/// A running `ctr events`.
pub struct Events {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Events {
    /// Waits for an event line that contains `topic` and every one of
    /// `needles` (e.g. the container id and an exec id: other tests' events
    /// come through too); fails after `timeout` listing what was seen.
    pub fn wait_for(&mut self, topic: &str, needles: &[&str], timeout: Duration) -> Result<String> {
        let matches = |l: &str| l.contains(topic) && needles.iter().all(|n| l.contains(n));
        if let Some(l) = self.seen.iter().find(|l| matches(l)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no {topic} event for {needles:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Topics seen so far for lines containing `needle`, in order.
    pub fn topics_for(&mut self, needle: &str) -> Vec<String> {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=,@+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_the_shell_would_split() {
        assert_eq!(
            shell_quote("localhost/busybox:local"),
            "localhost/busybox:local"
        );
        assert_eq!(shell_quote("echo hi; exit 3"), "'echo hi; exit 3'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
