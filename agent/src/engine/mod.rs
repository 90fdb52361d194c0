//! The container engine: containers and their processes, keyed by id,
//! driven by the gRPC service and the SIGCHLD reaper.
//!
//! Locking: one std mutex over the tables, never held across an await;
//! slow steps (waiting for a child's setup) run with the lock released.

mod create;
mod lifecycle;
mod reaper;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use husk_agent_api::ids::IdError;
use husk_agent_api::pb;
use seccompiler::BpfProgram;
use tokio::sync::{broadcast, watch};

use crate::cgroup::{CgroupError, CgroupManager};
use crate::share::{Share, ShareError};
use crate::spec::SpecError;
use crate::stdio::{ProcIo, StdioError};
use crate::sys::spawn::{Pending, SpawnError};

pub use reaper::run_reaper;

/// Largest OCI spec / process JSON accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Most containers and execs per container the agent tracks.
const MAX_CONTAINERS: usize = 1024;
const MAX_EXECS: usize = 1024;

/// Engine errors; each maps to one gRPC code (see `service`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid id: {0}")]
    Id(#[from] IdError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("container {0} not found; create it first")]
    NoContainer(String),
    #[error("process {1:?} of container {0} not found")]
    NoProcess(String, String),
    #[error("{0} already exists; pick another id or remove it first")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: u32,
    pub oom_killed: bool,
    pub at_ns: u64,
    /// The cgroup's oom_kill count at the exit.
    pub oom_kills: u64,
}

/// One process (init or exec).
pub(crate) struct Proc {
    pub pid: i32,
    /// The cgroup's oom_kill count when the process started.
    pub oom_base: u64,
    pub io: ProcIo,
    pub exit: watch::Sender<Option<Exit>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

pub(crate) struct Container {
    pub cgroup: String,
    pub status: Status,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// /proc/<pid>/ns names and CLONE_NEW* types the container owns.
    pub namespaces: Vec<(String, libc::c_int)>,
    pub seccomp: Arc<Vec<BpfProgram>>,
    /// The init's sync channel until StartContainer.
    pub pending: Option<Pending>,
    /// oom_kill count already reported.
    pub oom_seen: u64,
    pub oom_task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub(crate) struct Tables {
    pub containers: HashMap<String, Container>,
    /// pid → (container id, exec id or "").
    pub by_pid: HashMap<i32, (String, String)>,
    /// Ids with a CreateContainer in progress.
    pub reserved: std::collections::HashSet<String>,
}

/// Settings fixed at startup.
pub struct EngineConfig {
    pub share_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_parent: String,
    /// Running as the guest's init: may set hostname and clock.
    pub pid1: bool,
}

pub struct Engine {
    pub(crate) share: Share,
    pub(crate) cgroups: Box<dyn CgroupManager>,
    pub(crate) cfg: EngineConfig,
    pub(crate) cgroup_parent: Mutex<String>,
    pub(crate) t: Mutex<Tables>,
    pub(crate) events: broadcast::Sender<pb::Event>,
    /// Receives a value when Shutdown was requested.
    pub shutdown: watch::Sender<bool>,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        cgroups: Box<dyn CgroupManager>,
    ) -> Result<Arc<Self>, EngineError> {
        let share = Share::open(&cfg.share_dir)?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            EngineError::Io(format!("create state dir {}", cfg.state_dir.display()), e)
        })?;
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Engine {
            share,
            cgroups,
            cgroup_parent: Mutex::new(cfg.cgroup_parent.clone()),
            cfg,
            t: Mutex::new(Tables::default()),
            events,
            shutdown: watch::channel(false).0,
        }))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    pub(crate) fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.t.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn emit(&self, container_id: &str, exec_id: &str, kind: pb::event::Kind) {
        let _ = self.events.send(pb::Event {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            timestamp_ns: now_ns(),
            kind: Some(kind),
        });
    }

    /// Ids of all containers (for shutdown).
    pub fn container_ids(&self) -> Vec<String> {
        self.tables().containers.keys().cloned().collect()
    }
}

impl Tables {
    pub(crate) fn container(&mut self, id: &str) -> Result<&mut Container, EngineError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| EngineError::NoContainer(id.to_string()))
    }

    pub(crate) fn proc(&mut self, id: &str, exec: &str) -> Result<&mut Proc, EngineError> {
        let c = self.container(id)?;
        if exec.is_empty() {
            return Ok(&mut c.init);
        }
        c.execs
            .get_mut(exec)
            .ok_or_else(|| EngineError::NoProcess(id.to_string(), exec.to_string()))
    }
}

/// Opens a namespace of a container process (for exec to join).
pub(crate) fn open_ns(pid: i32, name: &str) -> Result<OwnedFd, EngineError> {
    let p = format!("/proc/{pid}/ns/{name}");
    std::fs::File::open(&p)
        .map(Into::into)
        .map_err(|e| EngineError::Io(format!("open {p}"), e))
}
