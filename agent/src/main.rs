//! husk-agent: PID 1 in the guest (or an ordinary process on a host for
//! tests): a small container engine behind a gRPC API.
//!
//! ```text
//! husk-agent [--listen vsock:1024|unix:PATH] [--stdio-listen vsock:1025|unix:PATH]
//!            [--shared-dir DIR] [--state-dir DIR] [--cgroup-root DIR]
//!            [--cgroup-parent NAME] [--init]
//! ```

mod cgroup;
mod engine;
mod listen;
mod net;
mod pid1;
mod service;
mod share;
mod spec;
mod stdio;
mod sys;

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_agent_api::pb::agent_server::AgentServer;
use husk_agent_api::{GRPC_VSOCK_PORT, STDIO_VSOCK_PORT};

use engine::{Engine, EngineConfig};
use listen::ListenAddr;

/// The kernel release (`uname -r`).
pub(crate) fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct we pass, which lives for the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: on success the kernel NUL-terminates `release` within the array.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

struct Args {
    listen: ListenAddr,
    stdio_listen: ListenAddr,
    shared_dir: PathBuf,
    state_dir: PathBuf,
    cgroup_root: PathBuf,
    cgroup_parent: String,
    init: bool,
}

fn parse_args(pid1: bool) -> anyhow::Result<Args> {
    let mut listen = None;
    let mut stdio_listen = None;
    let mut shared_dir = PathBuf::from(pid1::SHARED_DIR);
    let mut state_dir = PathBuf::from("/run/husk");
    let mut cgroup_root = PathBuf::from("/sys/fs/cgroup");
    let mut cgroup_parent = "husk".to_string();
    let mut init = pid1;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse().map_err(anyhow::Error::msg)?),
            "--stdio-listen" => stdio_listen = Some(val()?.parse().map_err(anyhow::Error::msg)?),
            "--shared-dir" => shared_dir = val()?.into(),
            "--state-dir" => state_dir = val()?.into(),
            "--cgroup-root" => cgroup_root = val()?.into(),
            "--cgroup-parent" => cgroup_parent = val()?,
            "--init" => init = true,
            // The kernel passes unknown command-line words to init: ignore them as PID 1.
            _ if pid1 => {}
            other => bail!("unknown argument {other:?}; see the usage in the source header"),
        }
    }
    let listen = listen.unwrap_or(ListenAddr::Vsock(GRPC_VSOCK_PORT));
    let stdio_listen = stdio_listen.unwrap_or_else(|| match &listen {
        ListenAddr::Unix(p) => ListenAddr::Unix(PathBuf::from(format!("{}.stdio", p.display()))),
        ListenAddr::Vsock(_) => ListenAddr::Vsock(STDIO_VSOCK_PORT),
    });
    for comp in cgroup_parent.split('/') {
        husk_agent_api::ids::validate_id(comp).context("--cgroup-parent")?;
    }
    Ok(Args {
        listen,
        stdio_listen,
        shared_dir,
        state_dir,
        cgroup_root,
        cgroup_parent,
        init,
    })
}

fn main() {
    eprintln!(
        "husk-agent {} started: kernel {}",
        env!("CARGO_PKG_VERSION"),
        kernel_release()
    );
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(pid1) {
        eprintln!("husk-agent: {e:#}");
        if pid1 {
            // PID 1 must never exit: the kernel would panic. Power off instead.
            pid1::power_off();
        }
        std::process::exit(1);
    }
}

/// Opens /dev/null on any of fds 0..2 that is closed (an init started
/// without /dev/console), so no socket or pipe of the agent lands there
/// and is later clobbered by a child's dup2 onto 0..2.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open returns the lowest free fd, which is `fd` here
            // because the lower ones are open; it stays open for good.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

fn run(pid1: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let args = parse_args(pid1)?;
    if args.init {
        pid1::init_mounts();
    }
    ensure_std_fds();
    sys::spawn::init().context("open /proc/self/ns/pid; is /proc mounted?")?;
    // One thread: clone(2) of container processes relies on it (see sys).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let cgroups = cgroup::detect(&args.cgroup_root)?;
    tracing::info!(cgroup = cgroups.version(), "cgroup hierarchy");
    let engine = Engine::new(
        EngineConfig {
            share_dir: args.shared_dir.clone(),
            state_dir: args.state_dir.clone(),
            cgroup_parent: args.cgroup_parent.clone(),
            pid1: args.init,
        },
        cgroups,
    )
    .with_context(|| format!("shared dir {}", args.shared_dir.display()))?;
    tokio::spawn(engine::run_reaper(engine.clone()));
    let grpc =
        listen::bind(&args.listen).with_context(|| format!("listen on {:?}", args.listen))?;
    let stdio = listen::bind(&args.stdio_listen)
        .with_context(|| format!("listen on {:?}", args.stdio_listen))?;
    tokio::spawn(listen::serve_stdio(engine.clone(), stdio));
    tracing::info!(grpc = ?args.listen, stdio = ?args.stdio_listen, "serving");
    let term = engine.clone();
    tokio::spawn(async move {
        // SIGTERM (host mode) shuts down like the Shutdown RPC.
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            term.shutdown.send_replace(true);
        }
    });
    let mut shut = engine.shutdown.subscribe();
    let svc = service::AgentService {
        engine: engine.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(AgentServer::new(svc))
        .serve_with_incoming(grpc);
    // Not a graceful shutdown: open client connections must not keep the
    // agent alive.
    tokio::select! {
        r = server => r.context("grpc server")?,
        _ = shut.wait_for(|s| *s) => {
            // Let the Shutdown reply go out first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for id in engine.container_ids() {
        if let Err(e) = engine.remove(&id, true).await {
            tracing::warn!(container = id, error = %e, "remove at shutdown");
        }
    }
    for a in [&args.listen, &args.stdio_listen] {
        if let ListenAddr::Unix(p) = a {
            let _ = std::fs::remove_file(p);
        }
    }
    if args.init {
        pid1::power_off();
    }
    Ok(())
}
