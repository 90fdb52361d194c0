//! `husk run --rootfs DIR [--id ID] [--tty] -- CMD...`: one container in a
//! sandbox of the configured mode (a microVM, or runc on the host) without
//! containerd. The container's stdio is this process's; its exit code is
//! this process's. SIGINT/SIGTERM are passed to the container, a second one
//! (or 10 s without exit) kills it; the sandbox is shut down either way.

mod fifo;
mod spec;
mod tty;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_shim::config::{Config, Mode};
use husk_shim::sandbox::{CreateRequest, EventSink, Sandbox, SandboxEvent};
use tokio::signal::unix::{signal, SignalKind};

/// How long the container has to exit after a forwarded SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// How long output may keep draining after the container exited.
const DRAIN: Duration = Duration::from_secs(5);

/// The command line of `husk run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub rootfs: PathBuf,
    pub id: Option<String>,
    pub tty: bool,
    pub cmd: Vec<String>,
}

/// A container id: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn default_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{}-{nanos:08x}", std::process::id())
}

/// Runs the container; returns its exit code (128 + signal when killed).
pub fn run(cfg: &Config, args: RunArgs) -> Result<i32> {
    let id = args.id.clone().unwrap_or_else(default_id);
    if !valid_id(&id) {
        bail!("invalid id {id:?}: use 1-64 letters, digits, '_', '.', '-'");
    }
    let rootfs = args
        .rootfs
        .canonicalize()
        .with_context(|| format!("rootfs {}", args.rootfs.display()))?;
    if !rootfs.is_dir() {
        bail!("rootfs {} is not a directory", rootfs.display());
    }
    let pod_dir = cfg.state_root.join(&id);
    if pod_dir.exists() {
        bail!(
            "{} exists: a sandbox {id} runs or was left behind; pick another --id or run `husk cleanup`",
            pod_dir.display()
        );
    }
    let spec = spec::build(&rootfs, &id, &args.cmd, args.tty)?;
    // Container init processes are re-parented to us (runc mode), and
    // husk-vmm/virtiofsd are our children: reap them all in one place.
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let out = rt.block_on(async move {
        husk_shim::reaper::reaper()
            .start()
            .context("start the reaper")?;
        let sink: EventSink = Arc::new(|ev| match ev {
            SandboxEvent::Oom { container_id } => {
                eprintln!(
                    "husk: container {container_id} ran out of memory (a process was OOM-killed)"
                )
            }
        });
        let sandbox = sandbox(cfg, &id, &pod_dir, sink)?;
        let work = fifo::Fifos::create(&std::env::temp_dir(), args.tty)?;
        let bundle = work.stdin.parent().context("fifo dir")?.to_path_buf();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )
        .context("write config.json")?;
        let req = CreateRequest {
            id: id.clone(),
            bundle,
            spec,
            rootfs: Vec::new(),
            stdio: work.stdio(),
        };
        let result = drive(sandbox.as_ref(), req, &work, args.tty).await;
        // Whatever happened: nothing of the sandbox may stay.
        if let Err(e) = sandbox.delete(&id, None).await {
            tracing::debug!("delete {id}: {e}");
        }
        let down = sandbox.shutdown().await;
        if cfg.mode == Mode::Runc {
            remove_runc_parents(cfg);
        }
        let code = result?;
        down.with_context(|| format!("shut down sandbox {id}"))?;
        Ok(code)
    });
    // The blocking read of our stdin may never return: do not wait for it.
    rt.shutdown_background();
    out
}

/// The sandbox of the configured mode.
fn sandbox(cfg: &Config, id: &str, pod_dir: &Path, sink: EventSink) -> Result<Arc<dyn Sandbox>> {
    Ok(match cfg.mode {
        Mode::Runc => Arc::new(husk_shim::runc::RuncSandbox::new(
            &cfg.runc,
            spec::NAMESPACE,
            pod_dir.to_path_buf(),
            sink,
        )?),
        Mode::Vm => vm_sandbox(cfg, id, sink)?,
    })
}

/// runc leaves the parents it made: `<runc root>/husk-run` and the
/// `/husk-run` cgroups. Removed when no other `husk run` uses them.
fn remove_runc_parents(cfg: &Config) {
    let _ = std::fs::remove_dir(cfg.runc.root.join(spec::NAMESPACE));
    let Ok(mounts) = husk_shim::vm::mountinfo::read_self() else {
        return;
    };
    // Every cgroup mount, the hybrid host's unified one included (runc uses it).
    let cgroup_mounts = mounts.iter().filter(|m| {
        matches!(m.fs_type.as_str(), "cgroup" | "cgroup2")
            && m.mount_point.starts_with("/sys/fs/cgroup")
    });
    for m in cgroup_mounts {
        // rmdir of a cgroup fails while it has children: then it is in use.
        let _ = std::fs::remove_dir(m.mount_point.join(spec::NAMESPACE));
    }
}

/// The microVM sandbox: the first create boots the pod's VM.
fn vm_sandbox(cfg: &Config, id: &str, sink: EventSink) -> Result<Arc<dyn Sandbox>> {
    Ok(Arc::new(husk_shim::vm::VmSandbox::new(cfg, id, sink)?))
}

/// Create, attach stdio, start, wait (forwarding signals); returns the exit code.
async fn drive(sb: &dyn Sandbox, req: CreateRequest, io: &fifo::Fifos, tty: bool) -> Result<i32> {
    let id = req.id.clone();
    // Installed first: a signal during create/start is handled (after
    // start) instead of killing us with the container left behind.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigwinch = signal(SignalKind::window_change())?;
    // Our output ends are open before the sandbox opens its ends.
    let stdout = fifo::open_output(&io.stdout)?;
    let mut outputs = vec![tokio::spawn(async move {
        fifo::copy_out(stdout, tokio::io::stdout()).await.map(drop)
    })];
    if let Some(stderr) = &io.stderr {
        let stderr = fifo::open_output(stderr)?;
        outputs.push(tokio::spawn(async move {
            fifo::copy_out(stderr, tokio::io::stderr()).await.map(drop)
        }));
    }

    sb.create(req).await.context("create the container")?;
    let _raw = if tty { tty::RawMode::enter() } else { None };
    if tty {
        if let Some((w, h)) = tty::window_size() {
            sb.resize_pty(&id, None, w, h).await.ok();
        }
    }
    sb.start(&id).await.context("start the container")?;
    // Only now: the sandbox's reader must be there before our writer opens.
    if let Some(stdin) = fifo::open_stdin(&io.stdin).await? {
        tokio::spawn(fifo::copy_in(tokio::io::stdin(), stdin));
    }

    let mut forwarded = false;
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 86400));
    tokio::pin!(deadline);
    let wait = sb.wait(&id, None);
    tokio::pin!(wait);
    let status = loop {
        let sig = tokio::select! {
            st = &mut wait => break st.context("wait for the container")?,
            _ = sigint.recv() => libc::SIGINT,
            _ = sigterm.recv() => libc::SIGTERM,
            _ = sigwinch.recv(), if tty => {
                if let Some((w, h)) = tty::window_size() {
                    sb.resize_pty(&id, None, w, h).await.ok();
                }
                continue;
            }
            _ = &mut deadline => libc::SIGKILL,
        };
        if forwarded || sig == libc::SIGKILL {
            eprintln!("husk: killing container {id}");
            sb.kill(&id, None, libc::SIGKILL as u32, true).await.ok();
        } else {
            sb.kill(&id, None, sig as u32, false).await.ok();
            forwarded = true;
            deadline.as_mut().reset(tokio::time::Instant::now() + GRACE);
        }
    };
    for task in outputs {
        if tokio::time::timeout(DRAIN, task).await.is_err() {
            tracing::debug!("output of {id} did not end after exit");
        }
    }
    Ok(i32::try_from(status.code).unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["c1", "a.b_c-d", &"x".repeat(64)] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(valid_id(&default_id()));
    }
}
