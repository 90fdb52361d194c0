//! The CRI path as kubelet drives it, with the runtime handler of the target
//! (`husk-runc` for husk, `runc` for the reference).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use husk_e2e::cmd::poll;
use husk_e2e::cri::{container_config, pod_config};
use husk_e2e::{matrix, Case};
use k8s_cri::v1::{ContainerState, LinuxContainerResources};

/// Runs until SIGTERM, then exits 0.
const SERVER: &str =
    "echo started > /tmp/started; trap 'exit 0' TERM; while true; do sleep 0.1; done";

fn cgroup_value(controller: &str, parent: &str, id: &str, file: &str) -> Result<String> {
    let p = format!("/sys/fs/cgroup/{controller}{parent}/{id}/{file}");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| p.clone())?
        .trim()
        .to_string())
}

fn pod_lifecycle(case: &mut Case) -> Result<()> {
    let cri = case.cri()?;
    let parent = case.cgroup_parent();
    let pod_cfg = pod_config(&case.unique("pod"), &parent);
    let pod = cri.run_pod(&pod_cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);

    let limits = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        ..Default::default()
    };
    let cfg = container_config("app", SERVER, Some(limits));
    let id = cri
        .create_container(&pod, &cfg, &pod_cfg)
        .context("CreateContainer")?;
    case.track(&id);
    cri.start_container(&id)?;
    poll(Duration::from_secs(10), "container running", || {
        Ok(
            (cri.container_status(&id)?.state == ContainerState::ContainerRunning as i32)
                .then_some(()),
        )
    })?;

    let (code, stdout, _) = cri.exec_sync(&id, &["cat", "/tmp/started"])?;
    ensure!(
        code == 0 && stdout == "started\n",
        "ExecSync: {code} {stdout:?}"
    );
    let (code, stdout, stderr) =
        cri.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"])?;
    ensure!(
        code == 7 && stdout == "out\n" && stderr == "err\n",
        "ExecSync: {code} {stdout:?} {stderr:?}"
    );

    let stats = cri.container_stats(&id)?;
    ensure!(
        stats.attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str()),
        "stats for {:?}",
        stats.attributes
    );
    let mem = stats.memory.context("no memory stats")?;
    let ws = mem.working_set_bytes.context("no working set")?.value;
    ensure!(ws > 0 && ws < 64 << 20, "working set {ws}");
    let cpu = stats.cpu.context("no cpu stats")?;
    ensure!(
        cpu.usage_core_nano_seconds.context("no cpu usage")?.value > 0,
        "cpu usage 0"
    );

    ensure!(
        cgroup_value("memory", &parent, &id, "memory.limit_in_bytes")? == (64u64 << 20).to_string()
    );
    ensure!(cgroup_value("cpu", &parent, &id, "cpu.shares")? == "512");
    cri.update_resources(
        &id,
        LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_shares: 256,
            ..Default::default()
        },
    )?;
    let mem = cgroup_value("memory", &parent, &id, "memory.limit_in_bytes")?;
    ensure!(
        mem == (96u64 << 20).to_string(),
        "memory limit after update: {mem}"
    );
    let shares = cgroup_value("cpu", &parent, &id, "cpu.shares")?;
    ensure!(shares == "256", "cpu shares after update: {shares}");

    cri.stop_container(&id, 10)?;
    let st = cri.container_status(&id)?;
    ensure!(
        st.state == ContainerState::ContainerExited as i32,
        "state {}",
        st.state
    );
    ensure!(
        st.exit_code == 0,
        "exit code {} (reason {})",
        st.exit_code,
        st.reason
    );
    cri.remove_container(&id)?;
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    Ok(())
}
matrix!(pod_lifecycle);

/// Shim processes (of the target's shim binary) whose command line names `token`.
fn shims_naming(case: &Case, token: &str) -> Vec<u32> {
    let bin = case.target.runtime.shim_binary_name();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        if !exe.to_string_lossy().ends_with(bin) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(token) {
            pids.push(pid);
        }
    }
    pids
}

/// Parent pids of the processes in container `id`'s cgroup whose parent is
/// outside it (the container's init).
fn init_parents(id: &str) -> Vec<u32> {
    let in_cgroup = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.contains(id))
            .unwrap_or(false)
    };
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || !in_cgroup(&pid) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        if !in_cgroup(&ppid) {
            parents.extend(ppid.parse::<u32>());
        }
    }
    parents
}

fn two_containers_share_one_shim(case: &mut Case) -> Result<()> {
    let cri = case.cri()?;
    let parent = case.cgroup_parent();
    let pod_cfg = pod_config(&case.unique("pod"), &parent);
    let pod = cri.run_pod(&pod_cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let id = cri.create_container(&pod, &container_config(name, SERVER, None), &pod_cfg)?;
        case.track(&id);
        cri.start_container(&id)?;
        ids.push(id);
    }
    for id in &ids {
        let (code, out, _) = cri.exec_sync(id, &["cat", "/tmp/started"])?;
        ensure!(code == 0 && out == "started\n", "{id}: {code} {out:?}");
    }
    let pod_shims = shims_naming(case, &pod);
    ensure!(pod_shims.len() == 1, "shims of the pod: {pod_shims:?}");
    for id in &ids {
        let own = shims_naming(case, id);
        ensure!(own.is_empty(), "container {id} got its own shim {own:?}");
    }
    // each container's init process is a child of that one shim
    for id in &ids {
        let inits = init_parents(id);
        ensure!(
            inits == pod_shims,
            "{id}: parents of its init {inits:?}, pod shim {pod_shims:?}"
        );
    }
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    Ok(())
}
matrix!(two_containers_share_one_shim);
