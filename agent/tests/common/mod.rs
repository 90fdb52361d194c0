//! Shared helpers of the agent's host tests: a busybox rootfs in a temp
//! share, a husk-agent process on unix sockets, OCI specs, stdio streams.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent_api::connect::{connect, open_stdio};
use husk_agent_api::pb::{self, agent_client::AgentClient};
use husk_agent_api::stdio::{StreamHeader, StreamKind};
use oci_spec::runtime::Spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::Channel;

pub const BUSYBOX: &str = "/bin/busybox";

/// True when the host can run these tests (root, busybox-static, cgroups).
pub fn requirements_met() -> bool {
    husk_testutil::require(husk_testutil::is_root(), "root")
        && husk_testutil::require(
            Path::new(BUSYBOX).exists(),
            "busybox-static (/bin/busybox; apt-get install busybox-static)",
        )
}

/// A running agent over a temp share; shut down and cleaned on drop.
pub struct Agent {
    pub dir: PathBuf,
    pub share: PathBuf,
    pub sock: PathBuf,
    pub stdio: String,
    pub cgroup_parent: String,
    child: Option<Child>,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(Command::new(env!("CARGO_BIN_EXE_husk-agent")))
    }

    /// The agent in a new, empty network namespace of its own (util-linux
    /// `unshare --net` execs it, so `pid()` is the agent's).
    pub fn start_in_new_netns() -> Agent {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", env!("CARGO_BIN_EXE_husk-agent")]);
        Agent::start_with(cmd)
    }

    /// `cmd` runs the agent; the agent's arguments are appended.
    fn start_with(mut cmd: Command) -> Agent {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("husk-agent-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let sock = dir.join("agent.sock");
        let cgroup_parent = format!("husk-test-{tag}");
        let child = cmd
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--shared-dir")
            .arg(&share)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn husk-agent");
        let stdio = format!("unix:{}.stdio", sock.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&format!("{}.stdio", sock.display())).exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not create its sockets"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            dir,
            share,
            sock,
            stdio,
            cgroup_parent,
            child: Some(child),
        }
    }

    /// PID of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub async fn client(&self) -> AgentClient<Channel> {
        connect(&format!("unix:{}", self.sock.display()))
            .await
            .expect("connect")
    }

    /// A busybox rootfs at share/<name>/rootfs; returns its share-relative path.
    pub fn rootfs(&self, name: &str) -> String {
        let root = self.share.join(name).join("rootfs");
        make_busybox_rootfs(&root);
        format!("{name}/rootfs")
    }

    pub fn rootfs_path(&self, name: &str) -> PathBuf {
        self.share.join(name).join("rootfs")
    }

    /// The v1 or v2 directory of a controller file of a container's cgroup.
    pub fn cgroup_file(&self, controller: &str, id: &str, file: &str) -> PathBuf {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(controller)
        };
        base.join(&self.cgroup_parent).join(id).join(file)
    }

    pub async fn open(&self, id: &str, exec: &str, kind: StreamKind) -> UnixStream {
        let h = StreamHeader {
            container_id: id.into(),
            exec_id: exec.into(),
            kind,
        };
        open_stdio(&self.stdio, &h)
            .await
            .expect("open stdio stream")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the agent removes its containers and exits.
            // SAFETY: kill with the pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        for ctl in ["", "memory", "pids", "cpu", "cpuacct", "freezer", "blkio"] {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(ctl)
                    .join(&self.cgroup_parent),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// /bin/busybox plus one symlink per applet (`busybox --install -s` style).
pub fn make_busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

/// A default OCI spec running `args` with PATH=/bin.
pub fn spec(args: &[&str]) -> Spec {
    let mut s = Spec::default();
    let mut p = s.process().clone().unwrap();
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    p.set_env(Some(vec!["PATH=/bin".into(), "HOME=/root".into()]));
    p.set_terminal(Some(false));
    s.set_process(Some(p));
    s.set_hostname(Some("husk-test".into()));
    s
}

pub fn json(s: &Spec) -> Vec<u8> {
    serde_json::to_vec(s).unwrap()
}

pub fn pipes(stdin: bool) -> Option<pb::Stdio> {
    Some(pb::Stdio {
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    })
}

pub async fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.unwrap();
    v
}

/// What a run of a container returned.
pub struct Ran {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: pb::WaitProcessResponse,
}

impl Ran {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Create, attach stdout/stderr, start, collect output, wait.
pub async fn run(agent: &Agent, c: &mut AgentClient<Channel>, id: &str, s: &Spec) -> Ran {
    let rootfs = agent.rootfs(id);
    create(agent, c, id, s, &rootfs, false).await;
    let out = agent.open(id, "", StreamKind::Stdout).await;
    let err = agent.open(id, "", StreamKind::Stderr).await;
    start(c, id).await;
    let (stdout, stderr) = tokio::join!(read_all(out), read_all(err));
    let exit = wait(c, id, "").await;
    Ran {
        stdout,
        stderr,
        exit,
    }
}

pub async fn create(
    agent: &Agent,
    c: &mut AgentClient<Channel>,
    id: &str,
    s: &Spec,
    rootfs: &str,
    stdin: bool,
) -> u32 {
    let _ = agent;
    c.create_container(pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: json(s),
        rootfs: rootfs.into(),
        stdio: pipes(stdin),
    })
    .await
    .unwrap_or_else(|e| panic!("create {id}: {e}"))
    .into_inner()
    .pid
}

pub async fn start(c: &mut AgentClient<Channel>, id: &str) {
    c.start_container(pb::ContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("start {id}: {e}"));
}

pub async fn wait(c: &mut AgentClient<Channel>, id: &str, exec: &str) -> pb::WaitProcessResponse {
    c.wait_process(pb::ProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn remove(c: &mut AgentClient<Channel>, id: &str) {
    c.remove_container(pb::RemoveContainerRequest {
        container_id: id.into(),
        force: true,
    })
    .await
    .unwrap_or_else(|e| panic!("remove {id}: {e}"));
}

pub async fn write_and_close(mut s: UnixStream, data: &[u8]) {
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
}
