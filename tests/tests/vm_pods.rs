//! microVM pods (issue 5) end to end: husk in vm mode under real containerd
//! 1.6 and 2.x, real KVM, husk-vmm, virtiofsd, guest kernel and agent.
//!
//! A guest boot costs 10-90 s on the project's emulating KVM, so each test
//! groups many checks on one VM, and the tests run one at a time:
//! - `ctr_run_in_a_vm`: guest kernel release, exec, kill, exit codes (1 boot);
//! - `cri_pod_in_one_vm`: two containers in one VM, ExecSync, volume, stats,
//!   update, OOM, logs, then the normal teardown (1 boot);
//! - `vmm_killed`: kill -9 husk-vmm of a two-container pod (1 boot);
//! - `shim_killed`: kill -9 the shim, then delete as containerd does (1 boot);
//! - `missing_kernel` and `vm_never_answers`: RunPodSandbox fails naming the
//!   cause, within the configured timeout (no full boot).
//!
//! Every test ends with the harness's leftover check (processes naming the
//! pod or container ids, among them husk-vmm and virtiofsd; mounts; the pod
//! directory under husk's state root; cgroups).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use husk_e2e::case::VM_CALL_TIMEOUT;
use husk_e2e::cmd::poll;
use husk_e2e::cri::{container_config, pod_config, Cri};
use husk_e2e::{vm, vm_matrix, Case};
use k8s_cri::v1::{
    ContainerConfig, ContainerState, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
};

const IMAGE: &str = "localhost/busybox:local";
/// Marks readiness after installing its traps, then idles without forking
/// (each fork+exec costs seconds of emulated kernel time in the guest).
const SERVER: &str = "echo started; trap 'exit 42' USR1; trap 'exit 0' TERM; \
                      echo ready > /tmp/ready; sleep 3600 & wait";

/// A directory removed (with what is in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host_release() -> Result<String> {
    let out = std::process::Command::new("uname").arg("-r").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `ctr task ls` status of `id`, if it is listed.
fn task_status(case: &Case, id: &str) -> Result<Option<String>> {
    let out = case.ctr("default").run(&["task", "ls"])?.ok()?;
    Ok(out.stdout.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == id).then(|| f[2].to_string())
    }))
}

/// The `exit_status` of a `ctr events` `/tasks/exit` line (0 when absent:
/// the JSON leaves zero values out).
fn exit_status(event_line: &str) -> Result<u64> {
    let json = &event_line[event_line.find('{').context("no JSON in event")?..];
    let v: serde_json::Value = serde_json::from_str(json).context("event JSON")?;
    Ok(v["exit_status"].as_u64().unwrap_or(0))
}

/// Pod and container namespace options as kubelet sets them for a v1 pod:
/// a PID namespace per container.
fn own_pid_namespace() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    })
}

fn vm_pod_config(case: &mut Case, log_dir: Option<&Path>) -> PodSandboxConfig {
    let parent = case.cgroup_parent();
    let mut cfg = pod_config(&case.unique("pod"), &parent);
    if let Some(d) = log_dir {
        cfg.log_directory = d.display().to_string();
    }
    if let Some(linux) = cfg.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: own_pid_namespace(),
            ..Default::default()
        });
    }
    cfg
}

/// A busybox container running `command` in its own PID namespace, logging
/// to `<name>.log` in the pod's log directory.
fn vm_container(
    name: &str,
    command: &[&str],
    resources: Option<LinuxContainerResources>,
) -> ContainerConfig {
    let mut c = container_config(name, "", resources);
    c.command = command.iter().map(|s| s.to_string()).collect();
    c.log_path = format!("{name}.log");
    if let Some(linux) = c.linux.as_mut() {
        linux.security_context = Some(LinuxContainerSecurityContext {
            namespace_options: own_pid_namespace(),
            ..Default::default()
        });
    }
    c
}

/// Creates and starts `cfg` in `pod`, tracked for the leftover check.
fn start(
    case: &mut Case,
    cri: &Cri,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    cfg: &ContainerConfig,
) -> Result<String> {
    let id = cri
        .create_container(pod, cfg, pod_cfg)
        .with_context(|| format!("CreateContainer {:?}", cfg.metadata))?;
    case.track(&id);
    cri.start_container(&id)?;
    Ok(id)
}

fn wait_state(cri: &Cri, id: &str, state: ContainerState, timeout: Duration) -> Result<()> {
    poll(timeout, &format!("container {id} {state:?}"), || {
        Ok((cri.container_status(id)?.state == state as i32).then_some(()))
    })
}

/// Runs `cmd` in the container; fails unless it exits 0; returns stdout.
fn exec_ok(cri: &Cri, id: &str, cmd: &[&str]) -> Result<String> {
    let (code, out, err) = cri.exec_sync(id, cmd)?;
    ensure!(code == 0, "{cmd:?} in {id}: exit {code}, {out:?} {err:?}");
    Ok(out)
}

/// The container's own cgroup file `file` as the container sees it (the
/// path in /proc/self/cgroup, "/" with a cgroup namespace).
fn guest_cgroup_file(cri: &Cri, id: &str, file: &str) -> Result<String> {
    let script = format!("p=$(cut -d: -f3 /proc/self/cgroup); cat /sys/fs/cgroup${{p%/}}/{file}");
    Ok(exec_ok(cri, id, &["sh", "-c", &script])?.trim().to_string())
}

/// `ctr run` (foreground) of a VM container: the guest kernel's release,
/// exec with exit codes, a signal through `ctr task kill`, and the exit
/// code of the container as `ctr`'s.
fn ctr_run_in_a_vm(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let id = case.container_id("default");
    let ctr = case.ctr("default");
    let script = format!("uname -r; {SERVER}");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(case.runtime_args());
    args.extend([IMAGE.into(), id.clone(), "sh".into(), "-c".into(), script]);
    let runner = {
        let ctr = ctr.clone();
        thread::spawn(move || ctr.run(&args))
    };
    let t0 = Instant::now();
    let ready = poll(VM_CALL_TIMEOUT, "the VM container to be ready", || {
        if runner.is_finished() {
            bail!("ctr run ended before the container was ready");
        }
        if task_status(case, &id)?.as_deref() != Some("RUNNING") {
            return Ok(None);
        }
        let out = ctr.run(&[
            "task",
            "exec",
            "--exec-id",
            "ready",
            &id,
            "cat",
            "/tmp/ready",
        ])?;
        if out.code != 0 {
            thread::sleep(Duration::from_millis(500));
        }
        Ok((out.code == 0).then_some(()))
    });
    if let Err(e) = ready {
        if runner.is_finished() {
            bail!("{e:#}: {:?}", runner.join());
        }
        return Err(e);
    }
    eprintln!("VM container ready after {:?}", t0.elapsed());

    let vmm = vm::pod_process(case.target, &id, "husk-vmm")?;
    ensure!(vm::alive(vmm), "husk-vmm {vmm} of {id} is not running");

    let out = ctr.run(&["task", "exec", "--exec-id", "uname", &id, "uname", "-r"])?;
    let release = out.stdout.trim().to_string();
    ensure!(out.code == 0, "exec uname -r: {out:?}");
    ensure!(
        release.ends_with("-husk"),
        "guest kernel release {release:?} does not end in -husk"
    );
    ensure!(release != host_release()?, "exec ran on the host kernel");

    let out = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "seven",
        &id,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ])?;
    ensure!(out.code == 7, "exec exit code {} ({out:?})", out.code);
    ensure!(out.stdout == "out\n", "exec stdout {:?}", out.stdout);
    ensure!(out.stderr.contains("err"), "exec stderr {:?}", out.stderr);

    ctr.run(&["task", "kill", "-s", "SIGUSR1", &id])?.ok()?;
    let out = runner
        .join()
        .map_err(|_| anyhow::anyhow!("ctr run thread panicked"))??;
    ensure!(
        out.code == 42,
        "ctr run exit code {} (the trap exits 42): {out:?}",
        out.code
    );
    ensure!(
        out.stdout.lines().next() == Some(release.as_str()),
        "ctr run stdout {:?}, guest release {release:?}",
        out.stdout
    );
    Ok(())
}
vm_matrix!(ctr_run_in_a_vm);

/// A CRI pod (handler `husk`) with two containers in one VM, each in its own
/// PID namespace; ExecSync, a volume, stats, a resource update, an OOM kill
/// and logs; then StopPodSandbox/RemovePodSandbox as kubelet does.
fn cri_pod_in_one_vm(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let cri = case.cri()?;
    let logs = TempDir::new(&case.unique("logs"))?;
    let volume = TempDir::new(&case.unique("vol"))?;
    std::fs::write(volume.0.join("from-host"), "from the host\n")?;
    let pod_cfg = vm_pod_config(case, Some(&logs.0));
    let t0 = Instant::now();
    let pod = cri.run_pod(&pod_cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);
    eprintln!("RunPodSandbox took {:?}", t0.elapsed());

    let limit = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let mut app_cfg = vm_container("app", &["sh", "-c", SERVER], Some(limit));
    app_cfg.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: volume.0.display().to_string(),
        ..Default::default()
    }];
    let app = start(case, &cri, &pod, &pod_cfg, &app_cfg)?;
    let sleeper_cfg = vm_container("sleeper", &["sleep", "3600"], None);
    let sleeper = start(case, &cri, &pod, &pod_cfg, &sleeper_cfg)?;
    for id in [&app, &sleeper] {
        wait_state(&cri, id, ContainerState::ContainerRunning, VM_CALL_TIMEOUT)?;
    }
    eprintln!("both containers running after {:?}", t0.elapsed());

    // one VM for the pod
    let vmms = vm::pids_of("husk-vmm", &pod);
    ensure!(vmms.len() == 1, "husk-vmm processes of pod {pod}: {vmms:?}");
    for id in [&app, &sleeper] {
        let own = vm::pids_of("husk-vmm", id);
        ensure!(own.is_empty(), "container {id} got its own VM: {own:?}");
    }
    // the pod's host processes are in its cgroup (under the pod's cgroup
    // parent) in every hierarchy
    let parent = pod_cfg
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let helpers = [
        ("shim", vm::shim_pid(&pod)?),
        ("husk-vmm", vm::pod_process(case.target, &pod, "husk-vmm")?),
        (
            "virtiofsd",
            vm::pod_process(case.target, &pod, "virtiofsd")?,
        ),
    ];
    for (what, pid) in helpers {
        let cgroups = vm::cgroups_of(pid)?;
        let outside: Vec<_> = cgroups
            .iter()
            .filter(|(_, path)| !path.starts_with(&format!("{parent}/")))
            .collect();
        ensure!(
            !cgroups.is_empty() && outside.is_empty(),
            "{what} ({pid}) is outside the pod cgroup under {parent}: {outside:?}"
        );
    }
    let boot_ids: Vec<String> = [&app, &sleeper]
        .iter()
        .map(|id| exec_ok(&cri, id, &["cat", "/proc/sys/kernel/random/boot_id"]))
        .collect::<Result<_>>()?;
    ensure!(
        boot_ids[0] == boot_ids[1] && !boot_ids[0].trim().is_empty(),
        "boot ids differ: {boot_ids:?}"
    );
    ensure!(
        boot_ids[0].trim() != vm::host_boot_id()?,
        "containers run on the host's kernel (boot id {})",
        boot_ids[0].trim()
    );

    // each in its own PID namespace, where it is PID 1
    let ns: Vec<String> = [&app, &sleeper]
        .iter()
        .map(|id| exec_ok(&cri, id, &["readlink", "/proc/self/ns/pid"]))
        .collect::<Result<_>>()?;
    ensure!(
        ns[0] != ns[1] && ns[0].starts_with("pid:["),
        "PID namespaces {ns:?}"
    );
    let init = exec_ok(&cri, &app, &["cat", "/proc/1/cmdline"])?;
    ensure!(init.starts_with("sh\0-c\0"), "app's PID 1: {init:?}");
    let init = exec_ok(&cri, &sleeper, &["cat", "/proc/1/cmdline"])?;
    ensure!(init.starts_with("sleep\0"), "sleeper's PID 1: {init:?}");

    // ExecSync output and exit code
    let (code, out, err) = cri.exec_sync(&app, &["sh", "-c", "echo out; echo err >&2; exit 7"])?;
    ensure!(
        (code, out.as_str(), err.as_str()) == (7, "out\n", "err\n"),
        "ExecSync: {code} {out:?} {err:?}"
    );

    // the volume, both ways
    let seen = exec_ok(
        &cri,
        &app,
        &[
            "sh",
            "-c",
            "cat /data/from-host && echo from the guest > /data/from-guest",
        ],
    )?;
    ensure!(
        seen == "from the host\n",
        "host file in the guest: {seen:?}"
    );
    let written = std::fs::read_to_string(volume.0.join("from-guest"))
        .context("the file the container wrote to the volume")?;
    ensure!(
        written == "from the guest\n",
        "guest file on the host: {written:?}"
    );

    // stats
    let stats = cri.container_stats(&app)?;
    let ws = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .context("no memory working set")?
        .value;
    ensure!(ws > 0 && ws < 64 << 20, "working set {ws}");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .context("no cpu usage")?
        .value;
    ensure!(cpu > 0, "cpu usage 0");

    // resources: the guest cgroup follows UpdateContainerResources
    let max = guest_cgroup_file(&cri, &app, "memory.max")?;
    ensure!(max == (64u64 << 20).to_string(), "memory.max {max}");
    cri.update_resources(
        &app,
        LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        },
    )?;
    let max = guest_cgroup_file(&cri, &app, "memory.max")?;
    ensure!(
        max == (96u64 << 20).to_string(),
        "memory.max after update {max}"
    );

    // OOM inside a limit. The guest kernel's reclaim before the OOM kill
    // scans the cgroup's pages in emulated kernel code on the project's
    // machines (about a minute for 32 MiB): a small limit, a long wait.
    // The agent reports the kill twice (wait answer and event stream):
    // containerd must see one TaskOOM.
    let mut events = case.ctr("k8s.io").events()?;
    let hog_cfg = vm_container(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
    );
    let hog = start(case, &cri, &pod, &pod_cfg, &hog_cfg)?;
    wait_state(
        &cri,
        &hog,
        ContainerState::ContainerExited,
        Duration::from_secs(240),
    )?;
    let st = cri.container_status(&hog)?;
    ensure!(
        st.reason == "OOMKilled" && st.exit_code == 137,
        "hog: reason {:?} exit code {}",
        st.reason,
        st.exit_code
    );
    events.wait_for("/tasks/oom", &[&hog], Duration::from_secs(30))?;
    let oom_at = Instant::now();
    cri.remove_container(&hog)?;

    // logs at the CRI log path
    let log = logs.0.join("app.log");
    poll(
        Duration::from_secs(10),
        "app's output in its CRI log",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.contains(" stdout F started").then_some(()))
        },
    )
    .with_context(|| format!("{}", log.display()))?;

    // Give the agent's second report of the kill (wait answer or event
    // stream, seconds apart in a loaded guest) time to arrive.
    thread::sleep(Duration::from_secs(11).saturating_sub(oom_at.elapsed()));
    let ooms = events
        .topics_for(&hog)
        .iter()
        .filter(|t| *t == "/tasks/oom")
        .count();
    ensure!(ooms == 1, "{ooms} TaskOOM events for one OOM kill");

    // SIGTERM reaches the container's trap: exit 0
    cri.stop_container(&app, 30)?;
    let st = cri.container_status(&app)?;
    ensure!(
        st.state == ContainerState::ContainerExited as i32 && st.exit_code == 0,
        "app after StopContainer: state {} exit code {}",
        st.state,
        st.exit_code
    );
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    Ok(())
}
vm_matrix!(cri_pod_in_one_vm);

/// kill -9 husk-vmm of a running two-container pod: both containers exit
/// with an error and containerd publishes their TaskExit; the pod's removal
/// leaves nothing.
fn vmm_killed(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let cri = case.cri()?;
    let pod_cfg = vm_pod_config(case, None);
    let pod = cri.run_pod(&pod_cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let cfg = vm_container(name, &["sleep", "3600"], None);
        ids.push(start(case, &cri, &pod, &pod_cfg, &cfg)?);
    }
    for id in &ids {
        wait_state(&cri, id, ContainerState::ContainerRunning, VM_CALL_TIMEOUT)?;
    }
    let vmm = vm::pod_process(case.target, &pod, "husk-vmm")?;
    let virtiofsd = vm::pod_process(case.target, &pod, "virtiofsd")?;
    let mut events = case.ctr("k8s.io").events()?;

    vm::kill9(vmm)?;
    for id in &ids {
        let line = events.wait_for("/tasks/exit", &[id.as_str()], Duration::from_secs(60))?;
        let status = exit_status(&line)?;
        ensure!(
            status != 0,
            "{id} exited with status 0 after its VM died: {line}"
        );
        wait_state(
            &cri,
            id,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )?;
        let st = cri.container_status(id)?;
        ensure!(st.exit_code != 0, "{id}: CRI exit code 0 after its VM died");
    }

    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    poll(
        Duration::from_secs(30),
        "husk-vmm and virtiofsd gone",
        || Ok((!vm::alive(vmm) && !vm::alive(virtiofsd)).then_some(())),
    )?;
    ensure!(
        !vm::pod_dir(case.target, &pod).exists(),
        "pod directory left"
    );
    Ok(())
}
vm_matrix!(vmm_killed);

/// kill -9 the shim of a running VM container: containerd notices, runs
/// `containerd-shim-husk-v2 delete` in the bundle, and the user's
/// `ctr task delete` / `ctr container delete` leave nothing of the pod.
fn shim_killed(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let id = case.container_id("default");
    let ctr = case.ctr("default");
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    args.extend(case.runtime_args());
    args.extend([
        IMAGE.into(),
        id.clone(),
        "sh".into(),
        "-c".into(),
        "sleep 3600 & wait".into(),
    ]);
    ctr.run(&args)?.ok()?;
    poll(Duration::from_secs(30), "task running", || {
        Ok((task_status(case, &id)?.as_deref() == Some("RUNNING")).then_some(()))
    })?;
    let shim = vm::shim_pid(&id)?;
    let vmm = vm::pod_process(case.target, &id, "husk-vmm")?;
    let virtiofsd = vm::pod_process(case.target, &id, "virtiofsd")?;
    let mut events = ctr.events()?;

    vm::kill9(shim)?;
    events.wait_for("/tasks/exit", &[&id], Duration::from_secs(60))?;
    poll(Duration::from_secs(30), "the task to stop", || {
        Ok((task_status(case, &id)?.as_deref() != Some("RUNNING")).then_some(()))
    })?;
    // as a user would: the task may already be gone (containerd deleted it
    // when it cleaned up after the dead shim)
    let _ = ctr.run(&["task", "delete", &id])?;
    ctr.run(&["container", "delete", &id])?.ok()?;
    poll(
        Duration::from_secs(30),
        "husk-vmm and virtiofsd gone",
        || Ok((!vm::alive(vmm) && !vm::alive(virtiofsd)).then_some(())),
    )?;
    ensure!(
        !vm::pod_dir(case.target, &id).exists(),
        "pod directory left"
    );
    Ok(())
}
vm_matrix!(shim_killed);

/// A RunPodSandbox with `handler` must fail within `deadline`; returns
/// (message, time taken), and checks that it left no husk process, mount
/// or pod directory.
fn failed_pod(case: &mut Case, handler: &str, deadline: Duration) -> Result<(String, Duration)> {
    let root = case.target.husk_state_root();
    let socket = case.target.containerd.socket();
    let before = vm::pieces(&root, &socket);
    // the call's own deadline: a hung RunPodSandbox fails the test, not CI
    let cri = Cri::connect_with_timeout(&socket, deadline)?;
    let pod_cfg = vm_pod_config(case, None);
    let name = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let t0 = Instant::now();
    let result = cri.run_pod(&pod_cfg, handler);
    let took = t0.elapsed();
    // whatever happened, the CRI must not keep the pod
    if let Some(pod) = cri.pods_named(&name)?.into_iter().next() {
        // tracked: the case's cleanup (through its CRI client) removes it
        case.cri()?;
        case.track_pod(&pod);
        bail!("RunPodSandbox with handler {handler} left pod {pod} ({result:?})");
    }
    let msg = match result {
        Ok(pod) => bail!("RunPodSandbox with handler {handler} succeeded: {pod}"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("RunPodSandbox with {handler} failed after {took:?}: {msg}");
    let left = || vm::new_pieces(&before, &vm::pieces(&root, &socket));
    let settled = poll(
        Duration::from_secs(30),
        "the failed pod's pieces to go",
        || Ok(left().is_empty().then_some(())),
    );
    if settled.is_err() {
        bail!("the failed pod left:\n  {}", left().join("\n  "));
    }
    Ok((msg, took))
}

/// husk-nokernel (kernel = /nonexistent/vmlinux): RunPodSandbox fails at
/// once with a message naming the kernel path.
fn missing_kernel(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let (msg, took) = failed_pod(case, "husk-nokernel", Duration::from_secs(60))?;
    ensure!(
        msg.contains("/nonexistent/vmlinux"),
        "message does not name the kernel: {msg}"
    );
    ensure!(took < Duration::from_secs(30), "took {took:?}: {msg}");
    Ok(())
}
vm_matrix!(missing_kernel);

/// husk-noboot (the agent listens on another vsock port, boot timeout 15 s):
/// RunPodSandbox fails after the timeout, not much later, naming it.
fn vm_never_answers(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let config = case.target.containerd.dir().join("husk-noboot.toml");
    let text = std::fs::read_to_string(&config).context("scripts/test-env.sh up")?;
    let secs: u64 = vm::setting(&text, "boot_timeout_secs")
        .and_then(|s| s.parse().ok())
        .context("boot_timeout_secs in husk-noboot.toml")?;
    let timeout = Duration::from_secs(secs);
    let (msg, took) = failed_pod(case, "husk-noboot", timeout + Duration::from_secs(90))?;
    ensure!(
        took >= timeout && took <= timeout + Duration::from_secs(45),
        "failed after {took:?}, boot timeout {timeout:?}: {msg}"
    );
    let lower = msg.to_lowercase();
    ensure!(
        lower.contains("time") && msg.contains(&secs.to_string()),
        "message does not name the {secs} s boot timeout: {msg}"
    );
    Ok(())
}
vm_matrix!(vm_never_answers);
