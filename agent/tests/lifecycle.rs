//! Running containers: exec, signals, tty, OOM, freezer, stats, removal.

mod common;

use std::time::Duration;

use common::*;
use husk_agent_api::pb;
use husk_agent_api::stdio::StreamKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

fn process(args: &[&str], terminal: bool) -> Vec<u8> {
    let mut p = spec(args).process().clone().unwrap();
    p.set_terminal(Some(terminal));
    serde_json::to_vec(&p).unwrap()
}

async fn exec(
    c: &mut husk_agent_api::pb::agent_client::AgentClient<tonic::transport::Channel>,
    id: &str,
    eid: &str,
    args: &[&str],
    stdio: pb::Stdio,
) -> u32 {
    c.exec_process(pb::ExecProcessRequest {
        container_id: id.into(),
        exec_id: eid.into(),
        process_json: process(args, stdio.terminal),
        stdio: Some(stdio),
    })
    .await
    .unwrap_or_else(|e| panic!("exec {eid}: {e}"))
    .into_inner()
    .pid
}

/// Starts `sleep 1000` (or `args`) as container `id` and returns its pid.
async fn running(
    agent: &Agent,
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    id: &str,
    args: &[&str],
) -> u32 {
    let mut s = spec(args);
    if let Some(mut r) = s.root().clone() {
        r.set_readonly(Some(false));
        s.set_root(Some(r));
    }
    let rootfs = agent.rootfs(id);
    let pid = create(agent, c, id, &s, &rootfs, false).await;
    start(c, id).await;
    pid
}

#[tokio::test]
async fn exec_sees_the_same_namespaces() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let pid = running(&agent, &mut c, "ex", &["sleep", "1000"]).await;
    let stdio = pb::Stdio {
        stdout: true,
        ..Default::default()
    };
    let script = "for n in pid mnt uts ipc; do readlink /proc/self/ns/$n; done; hostname; cat /proc/1/cmdline";
    exec(&mut c, "ex", "e1", &["sh", "-c", script], stdio).await;
    let out = String::from_utf8(read_all(agent.open("ex", "e1", StreamKind::Stdout).await).await)
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    for (i, ns) in ["pid", "mnt", "uts", "ipc"].iter().enumerate() {
        let init = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_eq!(
            lines[i],
            init.to_str().unwrap(),
            "{ns} namespace differs: {out}"
        );
    }
    assert_eq!(lines[4], "husk-test");
    assert_eq!(lines[5], "sleep\u{0}1000\u{0}");
    assert_eq!(wait(&mut c, "ex", "e1").await.exit_code, 0);
    // An exited exec is forgotten on request; its id can be used again.
    let preq = || pb::ProcessRequest {
        container_id: "ex".into(),
        exec_id: "e1".into(),
    };
    c.delete_process(preq()).await.unwrap();
    let gone = c.wait_process(preq()).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    exec(&mut c, "ex", "e1", &["sleep", "100"], pb::Stdio::default()).await;
    let busy = c.delete_process(preq()).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    remove(&mut c, "ex").await;
}

#[tokio::test]
async fn signals_reach_the_process() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let s = spec(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    let rootfs = agent.rootfs("sig");
    create(&agent, &mut c, "sig", &s, &rootfs, false).await;
    let mut out = agent.open("sig", "", StreamKind::Stdout).await;
    start(&mut c, "sig").await;
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ready\n");
    let sig = |signal| pb::SignalProcessRequest {
        container_id: "sig".into(),
        exec_id: String::new(),
        signal,
        all: false,
    };
    c.signal_process(sig(libc::SIGTERM as u32)).await.unwrap();
    let exit = wait(&mut c, "sig", "").await;
    assert_eq!(exit.exit_code, 7);
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"got-term\n");
    // A second container dies of SIGKILL: 128 + 9, signal reported.
    running(&agent, &mut c, "sig2", &["sleep", "1000"]).await;
    let mut k = sig(libc::SIGKILL as u32);
    k.container_id = "sig2".into();
    c.signal_process(k).await.unwrap();
    let exit = wait(&mut c, "sig2", "").await;
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (137, 9, false)
    );
    // `all` reaches every process of the container's cgroup.
    let pid3 = running(
        &agent,
        &mut c,
        "sig3",
        &["sh", "-c", "sleep 1000 & sleep 1000"],
    )
    .await;
    let mut all = sig(libc::SIGKILL as u32);
    all.container_id = "sig3".into();
    all.all = true;
    c.signal_process(all).await.unwrap();
    assert_eq!(wait(&mut c, "sig3", "").await.exit_code, 137);
    // The background sleep died too: the cgroup empties.
    let mut left = vec![pid3];
    for _ in 0..100 {
        let req = pb::ContainerRequest {
            container_id: "sig3".into(),
        };
        left = c.list_processes(req).await.unwrap().into_inner().pids;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left.is_empty(), "still in the cgroup: {left:?}");
    remove(&mut c, "sig").await;
    remove(&mut c, "sig2").await;
    remove(&mut c, "sig3").await;
}

#[tokio::test]
async fn tty_exec_gets_a_pty_and_resize() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    running(&agent, &mut c, "tty", &["sleep", "1000"]).await;
    let stdio = pb::Stdio {
        terminal: true,
        stdin: true,
        stdout: true,
        rows: 24,
        cols: 80,
        ..Default::default()
    };
    let script =
        "test -t 0 && test -t 1 && echo is-a-tty; tty; stty size; read x; stty size; echo bye";
    exec(&mut c, "tty", "t1", &["sh", "-c", script], stdio).await;
    let mut tty = agent.open("tty", "t1", StreamKind::Tty).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        let n = tty.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "tty closed early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    c.resize_tty(pb::ResizeTtyRequest {
        container_id: "tty".into(),
        exec_id: "t1".into(),
        rows: 50,
        cols: 132,
    })
    .await
    .unwrap();
    tty.write_all(b"go\n").await.unwrap();
    loop {
        let n = tty.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&seen);
    assert!(out.contains("is-a-tty"), "{out}");
    // The pty comes from the container's own devpts instance.
    assert!(out.contains("/dev/pts/0\r\n"), "tty name: {out}");
    assert!(out.contains("50 132"), "resize not seen: {out}");
    // A pty turns \n into \r\n: proof the output went through a terminal.
    assert!(out.contains("bye\r\n"), "{out}");
    assert_eq!(wait(&mut c, "tty", "t1").await.exit_code, 0);
    remove(&mut c, "tty").await;
}

#[tokio::test]
async fn oom_kill_gives_an_oom_event_and_a_distinct_exit() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let mut events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
    // `tail` keeps a newline-free input in memory: it grows until killed.
    let mut s = spec(&["tail", "/dev/zero"]);
    let res: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"memory":{"limit":33554432,"swap":33554432}}"#).unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_resources(Some(res));
    s.set_linux(Some(linux));
    let rootfs = agent.rootfs("oom");
    create(&agent, &mut c, "oom", &s, &rootfs, false).await;
    start(&mut c, "oom").await;
    let exit = tokio::time::timeout(Duration::from_secs(60), wait(&mut c, "oom", ""))
        .await
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    assert!(exit.oom_killed, "exit must be marked as an OOM kill");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.container_id, "oom");
        assert!(ev.timestamp_ns > 0);
        match ev.kind.unwrap() {
            pb::event::Kind::Oom(_) => kinds.push("oom"),
            pb::event::Kind::Exit(e) => {
                assert!(e.oom_killed && e.exit_code == 137);
                kinds.push("exit")
            }
        }
    }
    assert_eq!(kinds, ["oom", "exit"], "the OOM event comes first");
    let stats = c
        .stats_container(pb::ContainerRequest {
            container_id: "oom".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.oom_kills >= 1);
    remove(&mut c, "oom").await;
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    running(
        &agent,
        &mut c,
        "frz",
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.02; done",
        ],
    )
    .await;
    let count = agent.rootfs_path("frz").join("count");
    // The file is rewritten in place: retry a read that caught it truncated.
    let read = || {
        (0..100)
            .find_map(|_| {
                let v = std::fs::read_to_string(&count)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok();
                if v.is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                v
            })
            .unwrap_or(0)
    };
    // Let it count a few times first, so a pause that stops nothing is seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "counter never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = || pb::ContainerRequest {
        container_id: "frz".into(),
    };
    c.pause_container(req()).await.unwrap();
    let frozen_at = read();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(read(), frozen_at, "counter moved while paused");
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let st =
            std::fs::read_to_string(agent.cgroup_file("freezer", "frz", "freezer.state")).unwrap();
        assert_eq!(st.trim(), "FROZEN");
    }
    c.resume_container(req()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read() <= frozen_at {
        assert!(
            std::time::Instant::now() < deadline,
            "counter did not move after resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove(&mut c, "frz").await;
}

#[tokio::test]
async fn stats_move_when_the_container_works() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    running(
        &agent,
        &mut c,
        "st",
        &["sh", "-c", "while true; do :; done"],
    )
    .await;
    let req = || pb::ContainerRequest {
        container_id: "st".into(),
    };
    let a = c.stats_container(req()).await.unwrap().into_inner();
    // The busy loop burns CPU: usage grows by 100 ms of CPU time (polled,
    // as a loaded host may give it only a share of a core).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let b = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = c.stats_container(req()).await.unwrap().into_inner();
        if b.cpu_usage_ns > a.cpu_usage_ns + 100_000_000 || std::time::Instant::now() > deadline {
            break b;
        }
    };
    assert!(
        b.cpu_usage_ns > a.cpu_usage_ns + 100_000_000,
        "{a:?} -> {b:?}"
    );
    assert!(b.memory_usage > 0);
    assert!(b.pids_current >= 1);
    let pids = c.list_processes(req()).await.unwrap().into_inner().pids;
    assert_eq!(pids.len() as u64, b.pids_current);
    c.update_container(pb::UpdateContainerRequest {
        container_id: "st".into(),
        resources: Some(pb::Resources {
            pids_limit: Some(9),
            memory_limit: Some(200 << 20),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let after = c.stats_container(req()).await.unwrap().into_inner();
    assert_eq!(after.pids_limit, 9);
    assert_eq!(after.memory_limit, 200 << 20);
    remove(&mut c, "st").await;
}

#[tokio::test]
async fn remove_leaves_no_process_mount_or_cgroup() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let pid = running(
        &agent,
        &mut c,
        "rm",
        &["sh", "-c", "sleep 1000 & sleep 1000"],
    )
    .await;
    exec(&mut c, "rm", "x", &["sleep", "1000"], pb::Stdio::default()).await;
    let mut pids = Vec::new();
    for _ in 0..250 {
        pids = c
            .list_processes(pb::ContainerRequest {
                container_id: "rm".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pids;
        if pids.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // sh execs the last command: init is a sleep, plus its child and the exec.
    assert_eq!(pids.len(), 3, "init, its child, exec: {pids:?}");
    let not_forced = c
        .remove_container(pb::RemoveContainerRequest {
            container_id: "rm".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(not_forced.code(), tonic::Code::FailedPrecondition);
    remove(&mut c, "rm").await;
    pids.push(pid);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} still alive"
        );
    }
    for ctl in ["memory", "pids", "cpu", "freezer"] {
        let dir = agent.cgroup_file(ctl, "rm", "");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let rootfs = agent.rootfs_path("rm");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(rootfs.to_str().unwrap()), "mount left behind");
    let gone = c.wait_process(pb::ProcessRequest {
        container_id: "rm".into(),
        exec_id: String::new(),
    });
    assert_eq!(gone.await.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn terminal_container_init_runs_on_its_own_pty() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let mut s = spec(&["sh", "-c", "tty; stty size; exit 4"]);
    let mut p = s.process().clone().unwrap();
    p.set_terminal(Some(true));
    s.set_process(Some(p));
    let rootfs = agent.rootfs("ttyc");
    c.create_container(pb::CreateContainerRequest {
        container_id: "ttyc".into(),
        oci_spec_json: json(&s),
        rootfs,
        stdio: Some(pb::Stdio {
            terminal: true,
            stdout: true,
            rows: 33,
            cols: 99,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let out = agent.open("ttyc", "", StreamKind::Stdout).await;
    start(&mut c, "ttyc").await;
    let out = String::from_utf8(read_all(out).await).unwrap();
    assert_eq!(out, "/dev/pts/0\r\n33 99\r\n");
    assert_eq!(wait(&mut c, "ttyc", "").await.exit_code, 4);
    remove(&mut c, "ttyc").await;
}
