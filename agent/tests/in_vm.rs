//! husk-agent as PID 1 of a real microVM, end to end: husk-vmm (hybrid
//! vsock, virtio-fs) + virtiofsd (default namespace sandbox) + the guest
//! kernel and initrd, set up the way the shim's VmSandbox does it. One boot
//! serves the whole happy path (a boot takes 10-90 s on an emulating KVM).
//!
//! Needs root, /dev/kvm, virtiofsd, busybox-static, husk-vmm
//! (`cargo build -p husk-vmm`, or HUSK_VMM) and the guest image
//! (`guest-image/build.sh`: HUSK_GUEST_KERNEL / HUSK_GUEST_INITRD, else
//! target/guest/). The initrd must hold this worktree's agent: rebuild it
//! with `guest-image/build.sh --initrd-only` after changing the agent.

mod common;
#[path = "common/vm.rs"]
mod vm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{make_busybox_rootfs, requirements_met};
use husk_agent_api::connect::open_stdio;
use husk_agent_api::pb::{self, agent_client::AgentClient};
use husk_agent_api::stdio::{StreamHeader, StreamKind};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// From husk-vmm's spawn to the agent's first answer, at most.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Any single step inside the running guest, at most.
const STEP: Duration = Duration::from_secs(120);

type Client = AgentClient<Channel>;

/// The capabilities containerd gives a container by default.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The spec `ctr run` produces (containerd's default Linux spec), running
/// `args`, plus `extra` mounts, a memory limit and optionally a cgroup
/// namespace (what the CRI plugin adds on cgroup v2).
fn ctr_spec(args: &[&str], extra: Vec<Value>, memory: i64, cgroupns: bool) -> Vec<u8> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    mounts.extend(extra);
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "network"}),
    ];
    if cgroupns {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let spec = json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS,
                             "permitted": DEFAULT_CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "",
        "mounts": mounts,
        "linux": {
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": memory}
            },
            "cgroupsPath": "/default/ctr",
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    });
    serde_json::to_vec(&spec).unwrap()
}

fn process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {"bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS,
                         "permitted": DEFAULT_CAPS},
        "noNewPrivileges": true
    }))
    .unwrap()
}

struct Pod {
    vm: vm::Vm,
    stdio: String,
    images: std::path::PathBuf,
}

impl Pod {
    /// A busybox rootfs made on the host and bind-mounted at
    /// `<id>/rootfs` in the share after virtiofsd started.
    fn rootfs(&mut self, id: &str) -> String {
        let img = self.images.join(id);
        make_busybox_rootfs(&img);
        self.vm.bind_into_share(&img, &format!("{id}/rootfs"));
        format!("{id}/rootfs")
    }

    async fn open(&self, id: &str, exec: &str, kind: StreamKind) -> UnixStream {
        let h = StreamHeader {
            container_id: id.into(),
            exec_id: exec.into(),
            kind,
        };
        step(open_stdio(&self.stdio, &h))
            .await
            .unwrap_or_else(|e| panic!("open {kind:?} of {id}/{exec}: {e}"))
    }
}

/// Bounds one step in the guest.
async fn step<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("step in the guest timed out")
}

async fn read_all(mut s: UnixStream) -> String {
    let mut v = Vec::new();
    step(s.read_to_end(&mut v)).await.unwrap();
    String::from_utf8_lossy(&v).into_owned()
}

fn creq(id: &str) -> pb::ContainerRequest {
    pb::ContainerRequest {
        container_id: id.into(),
    }
}

fn preq(id: &str, exec: &str) -> pb::ProcessRequest {
    pb::ProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
    }
}

async fn wait(c: &mut Client, id: &str, exec: &str) -> pb::WaitProcessResponse {
    step(c.wait_process(preq(id, exec)))
        .await
        .unwrap_or_else(|e| panic!("wait {id}/{exec}: {e}"))
        .into_inner()
}

async fn create(c: &mut Client, id: &str, spec: Vec<u8>, rootfs: &str, stdio: pb::Stdio) {
    step(c.create_container(pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: spec,
        rootfs: rootfs.into(),
        stdio: Some(stdio),
    }))
    .await
    .unwrap_or_else(|e| panic!("create {id}: {e}"));
}

async fn start(c: &mut Client, id: &str) {
    step(c.start_container(creq(id)))
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e}"));
}

fn out_err() -> pb::Stdio {
    pb::Stdio {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// Collects the Events stream in the background.
fn collect_events(mut stream: tonic::Streaming<pb::Event>) -> Arc<Mutex<Vec<pb::Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(ev)) = stream.next().await {
            s2.lock().unwrap().push(ev);
        }
    });
    seen
}

/// Events of container `id` as ("oom" | "exit:<code>:<oom>") in order.
fn events_of(seen: &Mutex<Vec<pb::Event>>, id: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|e| e.container_id == id && e.exec_id.is_empty())
        .map(|e| match e.kind.as_ref().unwrap() {
            pb::event::Kind::Oom(_) => "oom".to_string(),
            pb::event::Kind::Exit(x) => format!("exit:{}:{}", x.exit_code, x.oom_killed),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_containers_in_a_real_microvm() {
    if !requirements_met() || !husk_testutil::require(husk_testutil::kvm_available(), "/dev/kvm") {
        return;
    }
    let (kernel, initrd) = (vm::guest_kernel(), vm::guest_initrd());
    let (vmm, fsd) = (vm::vmm_binary(), vm::virtiofsd());
    if !husk_testutil::require(
        kernel.is_some() && initrd.is_some(),
        "guest image (guest-image/build.sh; HUSK_GUEST_KERNEL/HUSK_GUEST_INITRD)",
    ) || !husk_testutil::require(
        vmm.is_some(),
        "husk-vmm (cargo build -p husk-vmm, or HUSK_VMM)",
    ) || !husk_testutil::require(fsd.is_some(), "virtiofsd (cargo install virtiofsd)")
    {
        return;
    }
    let vm = vm::Vm::boot(
        "main",
        &vmm.unwrap(),
        &fsd.unwrap(),
        &kernel.unwrap(),
        &initrd.unwrap(),
    );
    let stdio = format!("hybrid-vsock:{}:1025", vm.vsock.display());
    let images = vm.dir.join("images");
    let mut pod = Pod { vm, stdio, images };

    // 1. The agent answers over husk-vmm's hybrid vsock.
    let (mut c, version, ready) = pod.vm.agent(BOOT_TIMEOUT).await;
    eprintln!(
        "agent ready {:.1} s after husk-vmm spawn: {version:?}",
        ready.as_secs_f64()
    );
    assert!(
        version.kernel_release.ends_with("-husk"),
        "{version:?}\n{}",
        pod.vm.logs()
    );
    assert!(
        step(c.health(pb::HealthRequest {}))
            .await
            .unwrap()
            .into_inner()
            .serving
    );
    let events = collect_events(
        step(c.events(pb::EventsRequest {}))
            .await
            .unwrap()
            .into_inner(),
    );
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    step(c.create_sandbox(pb::CreateSandboxRequest {
        hostname: "husk-vm-pod".into(),
        hosts: "127.0.0.1 localhost husk-vm-pod\n".into(),
        resolv_conf: "nameserver 127.0.0.1\n".into(),
        realtime_ns: now_ns,
        cgroup_parent: "pod1".into(),
    }))
    .await
    .unwrap();

    // 2. A ctr-style container: output, hostname, clock, a bind-mounted
    //    share file written from the guest, exit code.
    let rootfs = pod.rootfs("c1");
    let host_file = pod.vm.dir.join("images/c1-out.txt");
    std::fs::write(&host_file, b"").unwrap();
    pod.vm.bind_into_share(&host_file, "c1/mounts/0");
    let bind = json!({"destination": "/data/out.txt", "type": "bind",
                      "source": "c1/mounts/0", "options": ["rbind", "rw"]});
    let script = "uname -r; cat /proc/sys/kernel/random/boot_id; hostname; date +%s; \
                  echo written-in-guest > /data/out.txt; echo to-stderr >&2; exit 3";
    let t = Instant::now();
    create(
        &mut c,
        "c1",
        ctr_spec(&["sh", "-c", script], vec![bind], 64 << 20, false),
        &rootfs,
        out_err(),
    )
    .await;
    let created = t.elapsed();
    let out = pod.open("c1", "", StreamKind::Stdout).await;
    let err = pod.open("c1", "", StreamKind::Stderr).await;
    let t_start = Instant::now();
    start(&mut c, "c1").await;
    eprintln!(
        "c1: CreateContainer {:.1} s, StartContainer {:.1} s",
        created.as_secs_f64(),
        t_start.elapsed().as_secs_f64()
    );
    let (out, err) = tokio::join!(read_all(out), read_all(err));
    let exit = wait(&mut c, "c1", "").await;
    eprintln!("c1 ran in {:.1} s: {out:?}", t.elapsed().as_secs_f64());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "stdout {out:?} stderr {err:?}");
    assert!(lines[0].ends_with("-husk"), "uname -r: {out}");
    assert_eq!(lines[1].len(), 36, "boot_id: {out}");
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(lines[1], host_boot.trim(), "boot_id is the guest's");
    // A container that asked for a uts namespace but no hostname gets the
    // sandbox's hostname (the default spec says "").
    assert_eq!(lines[2], "husk-vm-pod");
    let guest_now: u64 = lines[3].parse().unwrap();
    assert!(
        guest_now.abs_diff(now_ns / 1_000_000_000) < 600,
        "guest clock was set: {guest_now} vs {}",
        now_ns / 1_000_000_000
    );
    assert_eq!(err, "to-stderr\n");
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, 0, false)
    );
    assert_eq!(
        std::fs::read_to_string(&host_file).unwrap(),
        "written-in-guest\n"
    );
    step(c.remove_container(pb::RemoveContainerRequest {
        container_id: "c1".into(),
        force: false,
    }))
    .await
    .unwrap();
    // The container is gone in the guest: the shim unmounts its rootfs and
    // bind source on the host; the pod goes on (see unmount_from_share).
    pod.vm.unmount_from_share("c1/mounts/0").unwrap();
    pod.vm.unmount_from_share("c1/rootfs").unwrap();

    // 3. A long-running container with a cgroup namespace (CRI on v2).
    let rootfs = pod.rootfs("c2");
    create(
        &mut c,
        "c2",
        ctr_spec(&["sleep", "100000"], vec![], 128 << 20, true),
        &rootfs,
        pb::Stdio::default(),
    )
    .await;
    start(&mut c, "c2").await;

    // exec with pipes, exit code, DeleteProcess.
    let t = Instant::now();
    step(c.exec_process(pb::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        process_json: process_json(
            &[
                "sh",
                "-c",
                "id -u; cat /sys/fs/cgroup/memory.max; echo oops >&2; exit 5",
            ],
            false,
        ),
        stdio: Some(out_err()),
    }))
    .await
    .unwrap();
    let (out, err) = tokio::join!(
        async { read_all(pod.open("c2", "e1", StreamKind::Stdout).await).await },
        async { read_all(pod.open("c2", "e1", StreamKind::Stderr).await).await }
    );
    assert_eq!(out, format!("0\n{}\n", 128 << 20), "stderr {err:?}");
    assert_eq!(err, "oops\n");
    assert_eq!(wait(&mut c, "c2", "e1").await.exit_code, 5);
    step(c.delete_process(preq("c2", "e1"))).await.unwrap();
    eprintln!("exec round trip {:.1} s", t.elapsed().as_secs_f64());

    // Bulk bytes both ways through husk-vmm's vsock: 2 MiB into stdin
    // (half-close = EOF), ~2.7 MB out of stdout, complete and in order
    // (both far beyond the muxer's 256 KiB window and the 1 MiB pipes).
    let t = Instant::now();
    step(c.exec_process(pb::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "b1".into(),
        process_json: process_json(&["sh", "-c", "wc -c; seq 1 400000"], false),
        stdio: Some(pb::Stdio {
            stdin: true,
            stdout: true,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let mut stdin = pod.open("c2", "b1", StreamKind::Stdin).await;
    let stdout = pod.open("c2", "b1", StreamKind::Stdout).await;
    let feed = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..32 {
            stdin.write_all(&chunk).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
    });
    let out = read_all(stdout).await;
    step(feed).await.unwrap();
    let mut want = format!("{}\n", 2 << 20);
    for i in 1..=400_000 {
        want.push_str(&i.to_string());
        want.push('\n');
    }
    assert!(
        out == want,
        "bulk output differs: {} bytes, want {}",
        out.len(),
        want.len()
    );
    assert_eq!(wait(&mut c, "c2", "b1").await.exit_code, 0);
    step(c.delete_process(preq("c2", "b1"))).await.unwrap();
    eprintln!(
        "2 MiB in + {} bytes out in {:.1} s",
        want.len(),
        t.elapsed().as_secs_f64()
    );

    // A terminal exec: pty, resize.
    step(c.exec_process(pb::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "t1".into(),
        process_json: process_json(
            &["sh", "-c", "tty; stty size; read x; stty size; echo bye-$x"],
            true,
        ),
        stdio: Some(pb::Stdio {
            terminal: true,
            stdin: true,
            stdout: true,
            rows: 24,
            cols: 80,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let mut tty = pod.open("c2", "t1", StreamKind::Tty).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        let n = step(tty.read(&mut buf)).await.unwrap();
        assert!(n > 0, "tty closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    step(c.resize_tty(pb::ResizeTtyRequest {
        container_id: "c2".into(),
        exec_id: "t1".into(),
        rows: 50,
        cols: 132,
    }))
    .await
    .unwrap();
    // Half-close: the shell reads "go" and EOF, its output still comes back.
    tty.write_all(b"go\n").await.unwrap();
    tty.shutdown().await.unwrap();
    loop {
        let n = step(tty.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("/dev/pts/0\r\n"), "{text}");
    assert!(text.contains("50 132\r\n"), "{text}");
    assert!(text.contains("bye-go\r\n"), "{text}");
    assert_eq!(wait(&mut c, "c2", "t1").await.exit_code, 0);
    step(c.delete_process(preq("c2", "t1"))).await.unwrap();

    // Pids, stats, update.
    let pids = step(c.list_processes(creq("c2")))
        .await
        .unwrap()
        .into_inner()
        .pids;
    assert_eq!(pids.len(), 1, "only the init sleeps: {pids:?}");
    let stats = step(c.stats_container(creq("c2")))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert!(stats.memory_usage > 0, "{stats:?}");
    assert_eq!(stats.memory_limit, 128 << 20, "{stats:?}");
    assert_eq!(stats.pids_current, 1, "{stats:?}");
    step(c.update_container(pb::UpdateContainerRequest {
        container_id: "c2".into(),
        resources: Some(pb::Resources {
            memory_limit: Some(96 << 20),
            pids_limit: Some(50),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let stats = step(c.stats_container(creq("c2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.memory_limit, stats.pids_limit), (96 << 20, 50));

    // Pause/Resume: a busy loop's CPU time stands still while frozen.
    let rootfs = pod.rootfs("c4");
    create(
        &mut c,
        "c4",
        ctr_spec(
            &["sh", "-c", "while :; do :; done"],
            vec![],
            32 << 20,
            false,
        ),
        &rootfs,
        pb::Stdio::default(),
    )
    .await;
    start(&mut c, "c4").await;
    let cpu = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            step(c.stats_container(creq("c4")))
                .await
                .unwrap()
                .into_inner()
                .cpu_usage_ns
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu(&mut c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cpu(&mut c).await > before, "the busy loop runs");
    step(c.pause_container(creq("c4"))).await.unwrap();
    let frozen = cpu(&mut c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cpu(&mut c).await, frozen, "CPU time grew while paused");
    step(c.resume_container(creq("c4"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cpu(&mut c).await > frozen,
        "the loop runs again after resume"
    );
    step(c.remove_container(pb::RemoveContainerRequest {
        container_id: "c4".into(),
        force: true,
    }))
    .await
    .unwrap();

    // 4. OOM: a small limit, a growing process; event and exit say so.
    let rootfs = pod.rootfs("c3");
    create(
        &mut c,
        "c3",
        ctr_spec(&["tail", "/dev/zero"], vec![], 16 << 20, false),
        &rootfs,
        pb::Stdio::default(),
    )
    .await;
    start(&mut c, "c3").await;
    let exit = wait(&mut c, "c3", "").await;
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (137, 9, true),
        "{}",
        pod.vm.logs()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_of(&events, "c3").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events_of(&events, "c3"), ["oom", "exit:137:true"]);
    assert_eq!(events_of(&events, "c1"), ["exit:3:false"]);

    // 5. Remove everything, then Shutdown: the VM resets, husk-vmm exits 0.
    for id in ["c2", "c3"] {
        step(c.remove_container(pb::RemoveContainerRequest {
            container_id: id.into(),
            force: true,
        }))
        .await
        .unwrap_or_else(|e| panic!("remove {id}: {e}"));
    }
    let gone = step(c.wait_process(preq("c2", ""))).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    step(c.shutdown(pb::Empty {})).await.unwrap();
    let code = pod.vm.wait_vmm(Duration::from_secs(60));
    assert_eq!(code, Some(0), "husk-vmm exit\n{}", pod.vm.logs());
    assert!(
        pod.vm.wait_virtiofsd(Duration::from_secs(20)),
        "virtiofsd exits with its vhost-user peer\n{}",
        pod.vm.logs()
    );
    eprintln!(
        "whole pod life {:.1} s",
        pod.vm.spawned.elapsed().as_secs_f64()
    );
}
