//! Running a command with a deadline and capturing what it printed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    /// Exit code (128 + signal number when killed by a signal).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Output {
    /// Fails with the command's output when it did not exit 0.
    pub fn ok(self) -> Result<Self> {
        if self.code != 0 {
            bail!(
                "exit code {}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `cmd` with stdin closed; kills it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null());
    collect(cmd, timeout)
}

/// Runs `cmd` with `input` on its stdin, which is closed afterwards; kills
/// it after `timeout`.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<Output> {
    use std::io::Write;
    cmd.stdin(Stdio::piped());
    let input = input.to_vec();
    collect_with(cmd, timeout, move |child| {
        let mut stdin = child.stdin.take();
        thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&input);
            }
            // dropping stdin closes it: the end of input
        });
    })
}

fn collect(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    collect_with(cmd, timeout, |_| {})
}

fn collect_with(
    cmd: &mut Command,
    timeout: Duration,
    feed: impl FnOnce(&mut Child),
) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {desc}"))?;
    feed(&mut child);
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status = wait_deadline(&mut child, timeout).with_context(|| desc.clone())?;
    let stdout = out.join().map_err(|_| anyhow!("stdout reader panicked"))?;
    let stderr = err.join().map_err(|_| anyhow!("stderr reader panicked"))?;
    Ok(Output {
        code: exit_code(status),
        stdout,
        stderr,
    })
}

/// Waits for `child`, killing it (and failing) once `timeout` has passed.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout`
/// naming `what`.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 7"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.code, 7);
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn feeds_stdin_and_closes_it() {
        let out =
            run_with_stdin(&mut Command::new("cat"), b"abc\n", Duration::from_secs(5)).unwrap();
        assert_eq!((out.code, out.stdout.as_str()), (0, "abc\n"));
    }

    #[test]
    fn kills_at_the_deadline() {
        let err = run(Command::new("sleep").arg("5"), Duration::from_millis(100)).unwrap_err();
        assert!(format!("{err:#}").contains("timed out"));
    }
}
