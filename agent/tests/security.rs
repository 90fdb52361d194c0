//! The spec's security settings reach the process: user, capabilities,
//! no_new_privs, rlimits, seccomp, masked and read-only paths, read-only
//! root, user namespace.

mod common;

use common::*;

#[tokio::test]
async fn identity_caps_nnp_rlimits_and_readonly_paths_apply() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let script = "id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ulimit -n; \
                  wc -c < /proc/timer_list; ls /proc/acpi | wc -l; touch /x 2>/dev/null && echo root-rw || echo root-ro; \
                  (echo h > /proc/sys/kernel/hostname) 2>/dev/null && echo sys-rw || echo sys-ro";
    let mut s = spec(&["sh", "-c", script]);
    let mut p = s.process().clone().unwrap();
    let user: oci_spec::runtime::User =
        serde_json::from_str(r#"{"uid":1000,"gid":1000,"additionalGids":[5,7]}"#).unwrap();
    p.set_user(user);
    s.set_process(Some(p));
    let r = run(&agent, &mut c, "sec", &s).await;
    let out = r.out();
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[0..3], ["1000", "1000", "1000 5 7"], "{out}");
    // Default spec caps: AUDIT_WRITE(29), KILL(5), NET_BIND_SERVICE(10); as
    // with runc they apply to a non-root user too.
    assert!(l.contains(&"CapBnd:\t0000000020000420"), "{out}");
    assert!(l.contains(&"CapEff:\t0000000020000420"), "{out}");
    assert!(l.contains(&"NoNewPrivs:\t1"), "{out}");
    assert!(l.contains(&"1024"), "RLIMIT_NOFILE from the spec: {out}");
    assert_eq!(
        &l[7..9],
        ["0", "0"],
        "/proc/timer_list and /proc/acpi are masked: {out}"
    );
    assert!(l.contains(&"root-ro") && l.contains(&"sys-ro"), "{out}");
    remove(&mut c, "sec").await;
}

#[tokio::test]
async fn seccomp_profile_blocks_listed_syscalls() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let mut s = spec(&[
        "sh",
        "-c",
        "mkdir /tmp/d && echo made || echo blocked; echo alive",
    ]);
    let sc: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(sc));
    s.set_linux(Some(linux));
    // /tmp as a tmpfs so mkdir would succeed without the filter.
    let tmp: oci_spec::runtime::Mount = serde_json::from_str(
        r#"{"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid"]}"#,
    )
    .unwrap();
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(tmp);
    s.set_mounts(Some(mounts));
    let r = run(&agent, &mut c, "scmp", &s).await;
    assert_eq!(
        r.out(),
        "blocked\nalive\n",
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"));
    remove(&mut c, "scmp").await;
}

#[tokio::test]
async fn user_namespace_maps_ids() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let mut s = spec(&["sh", "-c", "cat /proc/self/uid_map; id -u; cat /tmp/marker"]);
    let mut linux = s.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.push(serde_json::from_str(r#"{"type":"user"}"#).unwrap());
    linux.set_namespaces(Some(ns));
    let map: Vec<oci_spec::runtime::LinuxIdMapping> =
        serde_json::from_str(r#"[{"containerID":0,"hostID":200000,"size":65536}]"#).unwrap();
    linux.set_uid_mappings(Some(map.clone()));
    linux.set_gid_mappings(Some(map));
    s.set_linux(Some(linux));
    // A bind mount from the share works in a user namespace too (onto a
    // directory the image has: the unmapped host root owns the rootfs).
    std::fs::create_dir_all(agent.share.join("userns/mounts/0")).unwrap();
    std::fs::write(agent.share.join("userns/mounts/0/marker"), "bind-ok\n").unwrap();
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        serde_json::from_str(
            r#"{"destination":"/tmp","type":"bind","source":"userns/mounts/0","options":["rbind","ro"]}"#,
        )
        .unwrap(),
    );
    s.set_mounts(Some(mounts));
    let r = run(&agent, &mut c, "userns", &s).await;
    let out = r.out();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "200000", "65536", "0", "bind-ok"],
        "{out} / {}",
        String::from_utf8_lossy(&r.stderr)
    );
    remove(&mut c, "userns").await;
}

#[tokio::test]
async fn symlinks_in_the_image_cannot_reach_the_host() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    // The image's /dev is an absolute symlink naming a host directory;
    // mounts, device nodes and /dev links must land inside the rootfs.
    let host_dir = agent.dir.join("host-side");
    std::fs::create_dir_all(&host_dir).unwrap();
    let rootfs = agent.rootfs("sym");
    let root = agent.rootfs_path("sym");
    std::fs::remove_dir(root.join("dev")).unwrap();
    std::os::unix::fs::symlink(&host_dir, root.join("dev")).unwrap();
    // The same absolute path exists inside the image, where it must resolve.
    let inside = root.join(host_dir.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    let mut s = spec(&["sh", "-c", "ls /dev/null /dev/ptmx >/dev/null && echo ok"]);
    s.set_hostname(None);
    create(&agent, &mut c, "sym", &s, &rootfs, false).await;
    let out = agent
        .open("sym", "", husk_agent_api::stdio::StreamKind::Stdout)
        .await;
    start(&mut c, "sym").await;
    assert_eq!(read_all(out).await, b"ok\n");
    assert_eq!(wait(&mut c, "sym", "").await.exit_code, 0);
    remove(&mut c, "sym").await;
    let left: Vec<_> = std::fs::read_dir(&host_dir).unwrap().collect();
    assert!(left.is_empty(), "the container wrote to the host: {left:?}");
}
