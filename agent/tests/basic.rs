//! Container basics through a real husk-agent over a unix socket: output
//! and exit codes, namespaces, cgroup limits, stdin EOF, bulk output.

mod common;

use common::*;
use husk_agent_api::stdio::StreamKind;

#[tokio::test]
async fn output_bytes_and_exit_code_come_back() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let s = spec(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    let r = run(&agent, &mut c, "out", &s).await;
    assert_eq!(r.out(), "hello\n");
    assert_eq!(r.stderr, b"oops\n");
    assert_eq!(r.exit.exit_code, 3);
    assert_eq!(r.exit.signal, 0);
    assert!(!r.exit.oom_killed);
    remove(&mut c, "out").await;
}

#[tokio::test]
async fn container_has_own_pid1_hostname_and_mount_namespace() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let s = spec(&[
        "sh",
        "-c",
        "echo $$; hostname; readlink /proc/self/ns/mnt; readlink /proc/self/ns/uts; ls /",
    ]);
    let r = run(&agent, &mut c, "ns", &s).await;
    let out = r.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "own pid namespace: {out}");
    assert_eq!(lines[1], "husk-test");
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let host_uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
    assert_ne!(lines[2], host_mnt.to_str().unwrap());
    assert_ne!(lines[3], host_uts.to_str().unwrap());
    // The root is the busybox rootfs, not the host's.
    assert!(out.contains("bin") && !out.contains("usr"), "{out}");
    assert_eq!(r.exit.exit_code, 0);
    remove(&mut c, "ns").await;
}

#[tokio::test]
async fn cgroup_gets_memory_and_pids_limits() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let mut s = spec(&["sleep", "100"]);
    let res: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"memory":{"limit":67108864},"pids":{"limit":32}}"#).unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_resources(Some(res));
    s.set_linux(Some(linux));
    let rootfs = agent.rootfs("lim");
    let pid = create(&agent, &mut c, "lim", &s, &rootfs, false).await;
    start(&mut c, "lim").await;
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (mem, pids) = if v2 {
        ("memory.max", "pids.max")
    } else {
        ("memory.limit_in_bytes", "pids.max")
    };
    let rd = |ctl, f| std::fs::read_to_string(agent.cgroup_file(ctl, "lim", f)).unwrap();
    assert_eq!(rd("memory", mem).trim(), "67108864");
    assert_eq!(rd("pids", pids).trim(), "32");
    let procs = rd("pids", "cgroup.procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    remove(&mut c, "lim").await;
}

#[tokio::test]
async fn stdin_eof_is_delivered() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let s = spec(&["sh", "-c", "cat; echo done"]);
    let rootfs = agent.rootfs("in");
    create(&agent, &mut c, "in", &s, &rootfs, true).await;
    let input = agent.open("in", "", StreamKind::Stdin).await;
    let out = agent.open("in", "", StreamKind::Stdout).await;
    start(&mut c, "in").await;
    write_and_close(input, b"abc\nxyz").await;
    assert_eq!(read_all(out).await, b"abc\nxyzdone\n");
    assert_eq!(wait(&mut c, "in", "").await.exit_code, 0);
    remove(&mut c, "in").await;
}

#[tokio::test]
async fn hundred_mib_of_stdout_arrive_complete_and_in_order() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    // 13,000,000 numbered lines: 105,888,897 bytes (> 100 MiB).
    let n: u64 = 13_000_000;
    let s = spec(&["seq", "1", &n.to_string()]);
    let rootfs = agent.rootfs("big");
    create(&agent, &mut c, "big", &s, &rootfs, false).await;
    let out = agent.open("big", "", StreamKind::Stdout).await;
    start(&mut c, "big").await;
    let bytes = read_all(out).await;
    assert!(bytes.len() >= 100 << 20, "only {} bytes", bytes.len());
    let mut expect = 1u64;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: u64 = std::str::from_utf8(line).unwrap().parse().unwrap();
        assert_eq!(v, expect, "line out of order");
        expect += 1;
    }
    assert_eq!(expect, n + 1);
    assert_eq!(wait(&mut c, "big", "").await.exit_code, 0);
    remove(&mut c, "big").await;
}

#[tokio::test]
async fn close_stdin_rpc_delivers_eof_while_attached() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let s = spec(&["sh", "-c", "cat; echo eof-seen"]);
    let rootfs = agent.rootfs("cl");
    create(&agent, &mut c, "cl", &s, &rootfs, true).await;
    let mut input = agent.open("cl", "", StreamKind::Stdin).await;
    let out = agent.open("cl", "", StreamKind::Stdout).await;
    start(&mut c, "cl").await;
    tokio::io::AsyncWriteExt::write_all(&mut input, b"data\n")
        .await
        .unwrap();
    // The bytes are in the agent's socket buffer once write_all returns;
    // CloseStdin passes them on before closing.
    c.close_stdin(husk_agent_api::pb::ProcessRequest {
        container_id: "cl".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    // The socket stays open: EOF came from CloseStdin.
    assert_eq!(read_all(out).await, b"data\neof-seen\n");
    assert_eq!(wait(&mut c, "cl", "").await.exit_code, 0);
    drop(input);
    remove(&mut c, "cl").await;
}

#[tokio::test]
async fn bind_mounts_from_the_share_read_and_write_host_files() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let dir = agent.share.join("bm/mounts/0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.txt"), "from-host\n").unwrap();
    let file = agent.share.join("bm/mounts/1");
    std::fs::write(&file, "").unwrap();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /data/in.txt; echo dir-write > /data/out.txt; echo file-write > /etc/one.txt",
    ]);
    let mounts: Vec<oci_spec::runtime::Mount> = serde_json::from_str(
        r#"[{"destination":"/data","type":"bind","source":"bm/mounts/0","options":["rbind","rw"]},
            {"destination":"/etc/one.txt","type":"bind","source":"bm/mounts/1","options":["bind"]}]"#,
    )
    .unwrap();
    let mut all = s.mounts().clone().unwrap_or_default();
    all.extend(mounts);
    s.set_mounts(Some(all));
    let r = run(&agent, &mut c, "bm", &s).await;
    assert_eq!(
        r.exit.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(r.out(), "from-host\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "dir-write\n"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "file-write\n");
    remove(&mut c, "bm").await;
}
