//! The shim binary's lifecycle: `start` (spawn or reuse the pod's shim and
//! print its address), `delete` (clean up after a dead shim) and serving.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::reaper::reaper;
use crate::service::{forward, Publisher, SandboxFactory, TaskService, Tasks};

/// Environment variable carrying the `ConfigPath` from `shim start` to the
/// shim server it spawns.
pub const CONFIG_ENV: &str = "HUSK_CONFIG_PATH";
/// The containerd runtime this binary implements.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Options for the containerd-shim crate: the shim reaps its own children
/// ([`crate::reaper`]) and logs through `tracing`.
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_setup_logger: true,
        default_log_level: "info".into(),
        no_reaper: true,
        no_sub_reaper: false,
    }
}

/// The shim that serves one pod's id: the sandbox id for a CRI container of
/// type `container`, else the container's own id.
pub fn grouping(spec_json: &str, id: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(spec_json) else {
        return id.to_string();
    };
    let ann = &v["annotations"];
    match (
        ann[CONTAINER_TYPE_ANNOTATION].as_str(),
        ann[SANDBOX_ID_ANNOTATION].as_str(),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

fn socket_alive(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |err| Error::IoError {
        context: context.to_string(),
        err,
    }
}

/// The containerd-shim crate's view of husk.
pub struct HuskShim {
    flags_id: String,
    namespace: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for HuskShim {
    type T = Tasks;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        HuskShim {
            flags_id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let mut stdin = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut stdin);
        let config_path = crate::options::config_path_from_bytes(&stdin)
            .ok()
            .flatten();
        let spec = std::fs::read_to_string("config.json").unwrap_or_default();
        let group = grouping(&spec, &opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if group != opts.id && socket_alive(&address) {
            std::fs::write("address", &address).map_err(io_err("write address"))?;
            return Ok(address);
        }
        let path = address.strip_prefix("unix://").unwrap_or(&address);
        if Path::new(path).exists() && !socket_alive(&address) {
            let _ = std::fs::remove_file(path);
        }
        let exe = std::env::current_exe().map_err(io_err("current exe"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "-namespace",
            &opts.namespace,
            "-id",
            &group,
            "-address",
            &opts.address,
            "-socket",
            &address,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if opts.debug {
            cmd.arg("-debug");
        }
        if let Some(p) = &config_path {
            cmd.env(CONFIG_ENV, p);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(io_err("spawn shim"))?;
        // The server closes its stdout once it listens.
        let mut out = child.stdout.take().expect("piped");
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
        let _ = containerd_shim::cgroup::adjust_oom_score(child.id());
        std::fs::write("address", &address).map_err(io_err("write address"))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        reaper().start().map_err(io_err("start reaper"))?;
        if let Err(e) = crate::runc::cleanup_bundle(&self.bundle, &self.flags_id).await {
            eprintln!("husk: cleanup of {}: {e}", self.flags_id);
        }
        if let Err(e) = crate::vm::cleanup_bundle(&self.bundle) {
            eprintln!("husk: cleanup of {}: {e}", self.flags_id);
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 137,
            exited_at: Some(crate::service::timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, _crate_publisher: RemotePublisher) -> Tasks {
        let start_config = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let level = Config::load(
            start_config
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_CONFIG_PATH)),
        )
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".into());
        let log = crate::logging::init(&level, self.debug).ok();
        if let Err(e) = reaper().start() {
            tracing::error!("cannot reap children: {e}");
        }
        tracing::info!(
            id = self.flags_id,
            namespace = self.namespace,
            "husk shim serving"
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Our own publisher: the crate's builds protobuf reflection tables
        // for every event (to name its type), which costs the shim memory.
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        forward(rx, Publisher::new(&address, &self.namespace));
        let namespace = self.namespace.clone();
        let sandbox_id = self.flags_id.clone();
        let debug = self.debug;
        let factory: SandboxFactory = Box::new(move |cfg: &Config, sink| {
            // The config's level applies unless containerd asked for debug.
            if let (Some(log), false) = (&log, debug) {
                log.set(&cfg.log_level);
            }
            match cfg.mode {
                crate::config::Mode::Runc => {
                    let dir = cfg.state_root.join(&sandbox_id);
                    let sb = crate::runc::RuncSandbox::new(&cfg.runc, &namespace, dir, sink)?;
                    Ok(Arc::new(sb) as Arc<dyn crate::sandbox::Sandbox>)
                }
                crate::config::Mode::Vm => {
                    let sb = crate::vm::VmSandbox::new(cfg, &sandbox_id, sink)?;
                    Ok(Arc::new(sb) as Arc<dyn crate::sandbox::Sandbox>)
                }
            }
        });
        Tasks(Arc::new(TaskService::new(
            &self.namespace,
            start_config,
            factory,
            tx,
            self.exit.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_containers_group_by_sandbox() {
        let spec = r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"}}"#;
        assert_eq!(grouping(spec, "c1"), "pod1");
        let sandbox = r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}}"#;
        assert_eq!(grouping(sandbox, "pod1"), "pod1");
        assert_eq!(grouping("{}", "c2"), "c2");
        assert_eq!(grouping("not json", "c3"), "c3");
    }
}
