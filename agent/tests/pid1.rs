//! The agent as PID 1: inside fresh pid, mount (private) and uts
//! namespaces on the host, it mounts the base filesystems, reaps orphans,
//! applies the sandbox hostname, and Shutdown's reboot(RB_AUTOBOOT) ends the pid
//! namespace (the kernel kills a namespace init that calls reboot with
//! SIGHUP), which is how the VM's i8042 reset looks from inside.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use husk_agent_api::pb;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn pid1_mounts_reaps_orphans_sets_hostname_and_shutdown_reboots() {
    if !requirements_met()
        || !husk_testutil::require(
            husk_testutil::find_on_path("unshare").is_some(),
            "unshare (util-linux)",
        )
    {
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-agent-pid1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    let sock = dir.join("agent.sock");
    // The agent mounts cgroup2 in its namespace: on this v1 host that is the
    // controller-less unified hierarchy, where it may only create dirs.
    let cgroup_parent = format!("husk-test-pid1-{}", std::process::id());
    make_busybox_rootfs(&dir.join("share/orph/rootfs"));
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--uts",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--shared-dir")
        .arg(dir.join("share"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-parent")
        .arg(&cgroup_parent)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("agent socket", || dir.join("agent.sock.stdio").exists());
    let mut c = husk_agent_api::connect::connect(&format!("unix:{}", sock.display()))
        .await
        .unwrap();
    c.version(pb::VersionRequest {}).await.unwrap();
    // The agent is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let agent: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{agent}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "agent is PID 1 in its namespace: {nspid}"
    );
    let mi = std::fs::read_to_string(format!("/proc/{agent}/mountinfo")).unwrap();
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        let found = mi.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap_or(0);
            f.get(4) == Some(&target) && f.get(sep + 1) == Some(&fstype)
        });
        assert!(found, "{fstype} not mounted at {target}:\n{mi}");
    }
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    c.create_sandbox(pb::CreateSandboxRequest {
        hostname: "pid1-test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let out = Command::new("nsenter")
        .args(["-t", &agent.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pid1-test");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    // Orphans re-parented to PID 1 are reaped: a container without its own
    // pid namespace leaves a background child behind when its shell exits.
    let mut spec = spec(&["sh", "-c", "sleep 0.3 & exit 0"]);
    let mut linux = spec.linux().clone().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    c.create_container(pb::CreateContainerRequest {
        container_id: "orph".into(),
        oci_spec_json: json(&spec),
        rootfs: "orph/rootfs".into(),
        stdio: None,
    })
    .await
    .unwrap();
    start(&mut c, "orph").await;
    assert_eq!(wait(&mut c, "orph", "").await.exit_code, 0);
    let children = format!("/proc/{agent}/task/{agent}/children");
    let orphan_seen = std::fs::read_to_string(&children).unwrap();
    assert!(
        !orphan_seen.trim().is_empty(),
        "the sleep should be the agent's child now"
    );
    // A zombie stays in the children list until reaped.
    wait_for("orphan reaped", || {
        std::fs::read_to_string(&children)
            .unwrap()
            .trim()
            .is_empty()
    });
    remove(&mut c, "orph").await;
    c.shutdown(pb::Empty {}).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = unshare.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "agent did not reboot");
        std::thread::sleep(Duration::from_millis(20));
    };
    // reboot(RB_AUTOBOOT) in a pid namespace: its init dies of SIGHUP, which
    // unshare passes on.
    eprintln!("agent namespace ended: {st:?}");
    assert!(
        st.signal() == Some(libc::SIGHUP) || st.code() == Some(128 + libc::SIGHUP),
        "{st:?}"
    );
    let _ =
        std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup/unified").join(&cgroup_parent));
    let _ = std::fs::remove_dir_all(&dir);
}
