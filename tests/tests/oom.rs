//! A memory-limited container that allocates past its limit: containerd
//! gets a TaskOOM event, and the CRI reports the exit as OOMKilled.

use std::time::Duration;

use anyhow::{ensure, Result};
use husk_e2e::cmd::poll;
use husk_e2e::cri::{container_config, pod_config};
use husk_e2e::{matrix, Case};
use k8s_cri::v1::{ContainerState, LinuxContainerResources};

/// dd fills a 256 MiB buffer from /dev/zero: far past a 32 MiB limit.
const HOG: &str =
    "echo allocating; dd if=/dev/zero of=/dev/null bs=256M count=1; echo dd status $?";
const LIMIT: i64 = 32 << 20;

fn oom_event_via_ctr(case: &mut Case) -> Result<()> {
    let id = case.container_id("default");
    let ctr = case.ctr("default");
    let mut events = ctr.events()?;
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--memory-limit".into(),
        LIMIT.to_string(),
    ];
    args.extend(case.runtime_args());
    args.extend([
        "localhost/busybox:local".into(),
        id.clone(),
        "sh".into(),
        "-c".into(),
        HOG.into(),
    ]);
    let out = ctr.run(&args)?;
    // the kernel kills dd (SIGKILL, 128 + 9); sh reports it and exits 0
    ensure!(
        out.stdout == "allocating\ndd status 137\n",
        "stdout {:?}",
        out.stdout
    );
    ensure!(out.code == 0, "exit code {} ({out:?})", out.code);
    let line = events.wait_for("/tasks/oom", &[&id], Duration::from_secs(10))?;
    ensure!(
        line.contains(&format!("\"container_id\":\"{id}\"")),
        "event {line}"
    );
    // the OOM comes before the task's exit
    let topics = events.topics_for(&id);
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    ensure!(
        oom.is_some() && exit.is_some() && oom < exit,
        "event order {topics:?}"
    );
    Ok(())
}
matrix!(oom_event_via_ctr);

fn oom_killed_via_cri(case: &mut Case) -> Result<()> {
    let cri = case.cri()?;
    let parent = case.cgroup_parent();
    let pod_cfg = pod_config(&case.unique("pod"), &parent);
    let pod = cri.run_pod(&pod_cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);
    let limits = LinuxContainerResources {
        memory_limit_in_bytes: LIMIT,
        ..Default::default()
    };
    // exec dd as the container's main process, so the OOM kill ends the container
    let cfg = container_config(
        "hog",
        "exec dd if=/dev/zero of=/dev/null bs=256M count=1",
        Some(limits),
    );
    let id = cri.create_container(&pod, &cfg, &pod_cfg)?;
    case.track(&id);
    cri.start_container(&id)?;
    let st = poll(Duration::from_secs(20), "container exited", || {
        let st = cri.container_status(&id)?;
        Ok((st.state == ContainerState::ContainerExited as i32).then_some(st))
    })?;
    ensure!(
        st.reason == "OOMKilled",
        "reason {:?} exit code {}",
        st.reason,
        st.exit_code
    );
    ensure!(st.exit_code == 137, "exit code {}", st.exit_code);
    cri.remove_container(&id)?;
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    Ok(())
}
matrix!(oom_killed_via_cri);
