//! Running the runc binary: one invocation per operation, reaped by the
//! shim's reaper, errors taken from runc's JSON log or stderr.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::reaper::reaper;
use crate::sandbox::{ExitStatus, SandboxError};
use crate::stdio::ProcessFds;

/// How to run runc.
#[derive(Debug, Clone)]
pub struct Runc {
    /// Resolved path of the binary.
    pub binary: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

/// Finds `binary` (a path, or a name on `PATH`) or says where it looked.
pub fn resolve_binary(binary: &Path) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let found = if binary.components().count() > 1 || binary.is_absolute() {
        is_exec(binary).then(|| binary.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(binary))
                .find(|p| is_exec(p))
        })
    };
    found.ok_or_else(|| {
        SandboxError::FailedPrecondition(format!(
            "runc binary {} not found or not executable; install runc or set runc.binary in husk.toml",
            binary.display()
        ))
    })
}

/// The last error message in a runc JSON log (`{"level":"error","msg":...}`).
pub fn last_log_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

fn to_receiver(fd: impl Into<OwnedFd>) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd.into())
}

async fn read_all(r: Option<pipe::Receiver>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut out).await;
    }
    out
}

impl Runc {
    fn command(&self, log: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(log) = log {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        cmd
    }

    fn failure(
        &self,
        args: &[OsString],
        status: ExitStatus,
        stderr: &[u8],
        log: Option<&Path>,
    ) -> SandboxError {
        let from_log = log
            .and_then(|l| std::fs::read_to_string(l).ok())
            .and_then(|t| last_log_error(&t));
        let msg = from_log.unwrap_or_else(|| String::from_utf8_lossy(stderr).trim().to_string());
        let op = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = format!("runc {op} failed (exit {}): {msg}", status.code);
        if msg.contains("does not exist")
            || msg.contains("not running")
            || msg.contains("container not running")
        {
            SandboxError::NotFound(text)
        } else {
            SandboxError::Internal(text)
        }
    }

    /// Runs runc with `args`, capturing its output; fails on a non-zero exit.
    pub async fn run(
        &self,
        args: &[OsString],
        log: Option<&Path>,
    ) -> Result<Vec<u8>, SandboxError> {
        let mut cmd = self.command(log);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, exit) = reaper().spawn(&mut cmd).map_err(SandboxError::io(format!(
            "cannot run {}",
            self.binary.display()
        )))?;
        let out = child
            .stdout
            .take()
            .map(to_receiver)
            .transpose()
            .map_err(SandboxError::io("runc stdout"))?;
        let err = child
            .stderr
            .take()
            .map(to_receiver)
            .transpose()
            .map_err(SandboxError::io("runc stderr"))?;
        let (stdout, stderr) = tokio::join!(read_all(out), read_all(err));
        let status = exit
            .await
            .map_err(|_| SandboxError::Internal("reaper dropped runc's exit".into()))?;
        if status.code != 0 {
            return Err(self.failure(args, status, &stderr, log));
        }
        Ok(stdout)
    }

    /// Runs runc with the process's stdio as its own (create, exec): runc
    /// hands these fds to the container process.
    pub async fn run_with_stdio(
        &self,
        args: &[OsString],
        fds: ProcessFds,
        log: &Path,
    ) -> Result<(), SandboxError> {
        let mut cmd = self.command(Some(log));
        let to_stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
        cmd.args(args)
            .stdin(to_stdio(fds.stdin))
            .stdout(to_stdio(fds.stdout))
            .stderr(to_stdio(fds.stderr));
        let (child, exit) = reaper().spawn(&mut cmd).map_err(SandboxError::io(format!(
            "cannot run {}",
            self.binary.display()
        )))?;
        // Our copies of the process-side fds must go, or the FIFOs never see EOF.
        drop(cmd);
        drop(child);
        let status = exit
            .await
            .map_err(|_| SandboxError::Internal("reaper dropped runc's exit".into()))?;
        if status.code != 0 {
            return Err(self.failure(args, status, &[], Some(log)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_last_error_from_the_log() {
        let log = r#"{"level":"warning","msg":"w","time":"t"}
{"level":"error","msg":"first","time":"t"}
{"level":"error","msg":"container_linux.go: exec: \"nope\": executable file not found in $PATH","time":"t"}
"#;
        assert_eq!(
            last_log_error(log).as_deref(),
            Some("container_linux.go: exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(last_log_error("not json\n"), None);
    }

    #[test]
    fn missing_binary_is_failed_precondition_naming_the_path() {
        let e = resolve_binary(Path::new("/nonexistent/runc")).unwrap_err();
        assert_eq!(
            e.code(),
            containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION
        );
        assert!(e.to_string().contains("/nonexistent/runc"), "{e}");
        assert!(resolve_binary(Path::new("no-such-runc-binary")).is_err());
        assert_eq!(
            resolve_binary(Path::new("sh"))
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
    }

    #[tokio::test]
    async fn reports_failure_with_stderr() {
        let runc = Runc {
            binary: resolve_binary(Path::new("sh")).unwrap(),
            root: "/tmp".into(),
            systemd_cgroup: false,
        };
        // `sh --root /tmp -c ...` is not valid sh, so use the error path: sh exits 2 with a message.
        let reap = tokio::spawn(async {
            for _ in 0..200 {
                reaper().reap_all();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        let e = runc.run(&["start".into()], None).await.unwrap_err();
        reap.abort();
        assert!(
            e.to_string().starts_with("runc start failed (exit 2)"),
            "{e}"
        );
    }
}
