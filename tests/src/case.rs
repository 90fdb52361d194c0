//! One run of a test body against one target: requirements, unique ids, and
//! the after-test check that nothing is left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::cmd;
use crate::cri::Cri;
use crate::ctr::Ctr;
use crate::leftovers;
use crate::target::{Containerd, Target, TEST_RUN_DIR};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How long shims and processes may take to go away after a test.
const SETTLE: Duration = Duration::from_secs(10);

/// Deadline of one `ctr` or CRI call that may boot a microVM: the configured
/// boot timeout (200 s in test-env.sh) plus the rest of the call.
pub const VM_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// microVM tests run one at a time: each guest boot keeps a core busy
/// (emulated kernel code on the project's machines), and parallel boots
/// would only push each other past the boot timeout.
static VM_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// State of one test run: the target, the ids it made, its clients.
pub struct Case {
    /// The containerd and runtime this run is against.
    pub target: Target,
    name: String,
    tokens: Vec<String>,
    ctr_ids: Vec<(String, String)>,
    pods: Vec<String>,
    cgroup_parents: Vec<String>,
    cri: Option<Cri>,
}

/// Runs `body` against `target` unless a requirement is missing (skip
/// locally, fail under `HUSK_REQUIRE_PRIVILEGED=1`), then checks leftovers.
pub fn run(target: Target, name: &str, body: fn(&mut Case) -> Result<()>) {
    if !husk_testutil::require(husk_testutil::is_root(), "root") {
        return;
    }
    if !husk_testutil::require(
        containerd_answers(target.containerd),
        &format!(
            "containerd {} answering at {} (run scripts/test-env.sh up)",
            target.containerd.label(),
            target.containerd.socket().display()
        ),
    ) {
        return;
    }
    if target.runtime.is_husk()
        && !husk_testutil::require(
            husk_shim_installed(),
            "containerd-shim-husk-v2 built and linked at /run/husk-test/bin (cargo build -p husk-shim; scripts/test-env.sh up)",
        )
    {
        return;
    }
    // containerd's own runc shim (the reference) now and then loses the
    // output of a short exec or an event under load; it gets a second try so
    // that its flakes do not fail CI. husk gets exactly one.
    let attempts = if target.runtime.is_husk() { 1 } else { 2 };
    // a failed (panicked) VM test poisons the lock; the next one still runs
    let _one_vm_test = target
        .runtime
        .is_vm()
        .then(|| VM_TESTS.lock().unwrap_or_else(|e| e.into_inner()));
    for attempt in 1..=attempts {
        let mut case = Case::new(target, name);
        let outcome = body(&mut case);
        let left = case.finish(outcome.is_ok());
        let failure = match (outcome, left.is_empty()) {
            (Ok(()), true) => return,
            (Ok(()), false) => format!("[{target}] left behind:\n  {}", left.join("\n  ")),
            (Err(e), _) => format!("[{target}] {e:#}"),
        };
        if attempt == attempts {
            panic!("{failure}");
        }
        eprintln!("reference runtime failed, retrying once: {failure}");
    }
}

fn containerd_answers(c: Containerd) -> bool {
    c.socket().exists()
        && Ctr::new(c, "default")
            .run(&["version"])
            .map(|o| o.code == 0)
            .unwrap_or(false)
}

fn husk_shim_installed() -> bool {
    let p = std::path::Path::new(TEST_RUN_DIR).join("bin/containerd-shim-husk-v2");
    // metadata() follows the symlink to the built binary.
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

impl Case {
    fn new(target: Target, name: &str) -> Self {
        Case {
            target,
            name: name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(14)
                .collect(),
            tokens: Vec::new(),
            ctr_ids: Vec::new(),
            pods: Vec::new(),
            cgroup_parents: Vec::new(),
            cri: None,
        }
    }

    /// A fresh, unique id for a container in `namespace`; it is cleaned up
    /// and checked for leftovers after the test.
    pub fn container_id(&mut self, namespace: &str) -> String {
        let id = self.unique("c");
        self.ctr_ids.push((namespace.to_string(), id.clone()));
        self.tokens.push(id.clone());
        id
    }

    /// A unique name (not tracked), e.g. for CRI metadata names.
    pub fn unique(&self, what: &str) -> String {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cd = match self.target.containerd {
            Containerd::V16 => "16",
            Containerd::V2 => "2",
        };
        let rt = match self.target.runtime {
            crate::Runtime::RuncV2 => "r",
            crate::Runtime::HuskRunc => "h",
            crate::Runtime::HuskVm => "v",
        };
        format!(
            "husk-e2e-{}-{cd}{rt}-{what}{}-{n}",
            self.name,
            std::process::id() % 10000
        )
    }

    /// Adds an id (CRI sandbox or container id) to what must be gone afterwards.
    pub fn track(&mut self, token: &str) {
        self.tokens.push(token.to_string());
    }

    /// `ctr` for this target's containerd in `namespace` (with a deadline
    /// that covers a guest boot in vm mode).
    pub fn ctr(&self, namespace: &str) -> Ctr {
        let ctr = Ctr::new(self.target.containerd, namespace);
        if self.target.runtime.is_vm() {
            ctr.with_timeout(VM_CALL_TIMEOUT)
        } else {
            ctr
        }
    }

    /// `ctr run` flags that select this target's runtime.
    pub fn runtime_args(&self) -> Vec<String> {
        self.target.ctr_runtime_args()
    }

    /// The CRI client for this target's containerd.
    pub fn cri(&mut self) -> Result<Cri> {
        if self.cri.is_none() {
            let socket = self.target.containerd.socket();
            self.cri = Some(if self.target.runtime.is_vm() {
                Cri::connect_with_timeout(&socket, VM_CALL_TIMEOUT)?
            } else {
                Cri::connect(&socket)?
            });
        }
        Ok(self.cri.clone().expect("set above"))
    }

    /// Records a pod sandbox for cleanup and leftover checks.
    pub fn track_pod(&mut self, sandbox_id: &str) {
        self.pods.push(sandbox_id.to_string());
        self.track(sandbox_id);
    }

    /// A pod cgroup parent (as kubelet would create), removed after the test.
    pub fn cgroup_parent(&mut self) -> String {
        let p = format!("/{}", self.unique("pod"));
        self.cgroup_parents.push(p.clone());
        p
    }

    /// Checks leftovers (when the body passed) and cleans up; returns the
    /// leftovers found.
    fn finish(&mut self, body_ok: bool) -> Vec<String> {
        let roots = self.target.state_roots();
        let mut left = Vec::new();
        if body_ok {
            let tokens = self.tokens.clone();
            // a VM pod's teardown also stops husk-vmm and virtiofsd and
            // unmounts its shared directory
            let settle = if self.target.runtime.is_vm() {
                SETTLE * 3
            } else {
                SETTLE
            };
            let settled = cmd::poll(settle, "leftovers to go away", || {
                let found = leftovers::find(&tokens, &roots);
                Ok(found.is_empty().then_some(()))
            });
            if settled.is_err() {
                left = leftovers::find(&tokens, &roots);
            }
        }
        self.cleanup();
        for p in &self.cgroup_parents {
            left.extend(leftovers::remove_cgroup_parent(p));
        }
        left
    }

    /// Best-effort removal of everything the test may have created.
    fn cleanup(&mut self) {
        if let Some(cri) = &self.cri {
            for pod in &self.pods {
                let _ = cri.stop_pod(pod);
                let _ = cri.remove_pod(pod);
            }
        }
        for (ns, id) in &self.ctr_ids {
            let ctr = self.target.containerd;
            let c = Ctr::new(ctr, ns);
            if matches!(c.run(&["task", "kill", "-a", "-s", "SIGKILL", id]), Ok(o) if o.code == 0) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.run(&["task", "delete", "-f", id]);
            let _ = c.run(&["container", "delete", id]);
        }
    }
}
