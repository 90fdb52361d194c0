//! Agent-level requests: Version/Health, CreateSandbox in host mode, exec
//! errors, Shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use husk_agent_api::pb;
use tonic::Code;

#[tokio::test]
async fn version_health_and_sandbox_settings() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    assert_eq!(
        v.kernel_release,
        String::from_utf8(uname.stdout).unwrap().trim()
    );
    assert!(
        c.health(pb::HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .serving
    );
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    c.create_sandbox(pb::CreateSandboxRequest {
        hostname: "pod-a".into(),
        hosts: "127.0.0.1 localhost\n".into(),
        resolv_conf: "nameserver 10.0.0.1\n".into(),
        realtime_ns: 1,
        cgroup_parent: "pod-a".into(),
    })
    .await
    .unwrap();
    // Host mode: the host's hostname and clock are untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    assert!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > 1_000_000
    );
    let state = agent.dir.join("state");
    assert_eq!(
        std::fs::read_to_string(state.join("resolv.conf")).unwrap(),
        "nameserver 10.0.0.1\n"
    );
    // Containers now go below <agent parent>/pod-a.
    let rootfs = agent.rootfs("p1");
    create(&agent, &mut c, "p1", &spec(&["true"]), &rootfs, false).await;
    let nested = agent.cgroup_file("pids", "pod-a/p1", "pids.max");
    assert!(nested.exists(), "{} missing", nested.display());
    remove(&mut c, "p1").await;
    let bad = c
        .create_sandbox(pb::CreateSandboxRequest {
            cgroup_parent: "../escape".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let _ = std::fs::remove_dir(agent.cgroup_file("memory", "pod-a", ""));
    for ctl in ["pids", "cpu", "cpuacct", "freezer", "blkio"] {
        let _ = std::fs::remove_dir(agent.cgroup_file(ctl, "pod-a", ""));
    }
}

#[tokio::test]
async fn missing_program_fails_start_and_exec() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let rootfs = agent.rootfs("np");
    create(
        &agent,
        &mut c,
        "np",
        &spec(&["no-such-program"]),
        &rootfs,
        false,
    )
    .await;
    let e = c
        .start_container(pb::ContainerRequest {
            container_id: "np".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no-such-program"), "{e}");
    remove(&mut c, "np").await;
    let rootfs = agent.rootfs("np2");
    create(
        &agent,
        &mut c,
        "np2",
        &spec(&["sleep", "100"]),
        &rootfs,
        false,
    )
    .await;
    start(&mut c, "np2").await;
    let mut p = spec(&["nope"]).process().clone().unwrap();
    p.set_cwd("/".into());
    let e = c
        .exec_process(pb::ExecProcessRequest {
            container_id: "np2".into(),
            exec_id: "x".into(),
            process_json: serde_json::to_vec(&p).unwrap(),
            stdio: None,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("nope"), "{e}");
    // The failed exec left no trace: the id can be used again.
    let mut ok = spec(&["true"]).process().clone().unwrap();
    ok.set_cwd("/".into());
    c.exec_process(pb::ExecProcessRequest {
        container_id: "np2".into(),
        exec_id: "x".into(),
        process_json: serde_json::to_vec(&ok).unwrap(),
        stdio: None,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "np2", "x").await.exit_code, 0);
    remove(&mut c, "np2").await;
}

#[tokio::test]
async fn shutdown_removes_containers_and_exits() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let rootfs = agent.rootfs("sd");
    let pid = create(
        &agent,
        &mut c,
        "sd",
        &spec(&["sleep", "1000"]),
        &rootfs,
        false,
    )
    .await;
    start(&mut c, "sd").await;
    c.shutdown(pb::Empty {}).await.unwrap();
    let agent_pid = agent.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The agent is our child: it is a zombie (State Z) once it has exited.
    loop {
        let st = std::fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap_or_default();
        if st.is_empty() || st.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container survived"
    );
    assert!(
        !agent.cgroup_file("pids", "sd", "").exists(),
        "cgroup survived"
    );
    assert!(!agent.sock.exists(), "socket left behind");
}
