//! Untrusted requests: each bad one gets InvalidArgument / NotFound /
//! AlreadyExists and changes nothing.

mod common;

use common::*;
use husk_agent_api::pb;
use tonic::Code;

fn req(id: &str, rootfs: &str, spec_json: Vec<u8>) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: spec_json,
        rootfs: rootfs.into(),
        stdio: None,
    }
}

#[tokio::test]
async fn bad_requests_are_rejected_and_change_nothing() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    let good = json(&spec(&["true"]));
    let rootfs = agent.rootfs("ok");
    // Symlinks in the share that lead out of it.
    std::os::unix::fs::symlink("/", agent.share.join("escape")).unwrap();
    std::fs::create_dir_all(agent.share.join("nested")).unwrap();
    std::os::unix::fs::symlink("../../..", agent.share.join("nested/up")).unwrap();
    let outside = std::env::temp_dir().display().to_string();
    let mut bind_out = spec(&["true"]);
    let m: oci_spec::runtime::Mount = serde_json::from_str(
        r#"{"destination":"/host","type":"bind","source":"/etc","options":["rbind"]}"#,
    )
    .unwrap();
    let mut mounts = bind_out.mounts().clone().unwrap();
    mounts.push(m);
    bind_out.set_mounts(Some(mounts));
    let cases: Vec<(&str, pb::CreateContainerRequest)> = vec![
        ("id with /", req("a/b", &rootfs, good.clone())),
        ("id ..", req("..", &rootfs, good.clone())),
        ("empty id", req("", &rootfs, good.clone())),
        ("id too long", req(&"x".repeat(200), &rootfs, good.clone())),
        ("rootfs with ..", req("c1", "ok/../../x", good.clone())),
        ("rootfs outside share", req("c1", &outside, good.clone())),
        (
            "symlink escaping share",
            req("c1", "escape/tmp", good.clone()),
        ),
        (
            "relative symlink escaping share",
            req("c1", "nested/up/tmp", good.clone()),
        ),
        (
            "bind source outside share",
            req("c1", &rootfs, json(&bind_out)),
        ),
        ("not json", req("c1", &rootfs, b"{nope".to_vec())),
        ("spec too large", req("c1", &rootfs, vec![b' '; 2 << 20])),
    ];
    for (what, r) in cases {
        let id = r.container_id.clone();
        let e = c.create_container(r).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
        if husk_agent_api::ids::validate_id(&id).is_ok() {
            assert!(
                !agent.cgroup_file("memory", &id, "").exists(),
                "{what}: cgroup created"
            );
            let e = c
                .list_processes(pb::ContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{what}: container registered");
        }
    }
    // Unknown container.
    let e = c
        .start_container(pb::ContainerRequest {
            container_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .signal_process(pb::SignalProcessRequest {
            container_id: "ghost".into(),
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Duplicate create: the first container is untouched.
    let pid = create(&agent, &mut c, "ok", &spec(&["true"]), &rootfs, false).await;
    let e = c
        .create_container(req("ok", &rootfs, good.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    start(&mut c, "ok").await;
    let exit = wait(&mut c, "ok", "").await;
    assert_eq!(exit.exit_code, 0, "first container (pid {pid}) still works");
    remove(&mut c, "ok").await;
}

#[tokio::test]
async fn concurrent_creates_of_one_id_give_exactly_one_container() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let c = agent.client().await;
    let rootfs = agent.rootfs("race");
    let with_pids = |n: i64| {
        let mut s = spec(&["true"]);
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_str(&format!(r#"{{"pids":{{"limit":{n}}}}}"#)).unwrap();
        let mut linux = s.linux().clone().unwrap();
        linux.set_resources(Some(res));
        s.set_linux(Some(linux));
        json(&s)
    };
    let (mut a, mut b) = (c.clone(), c.clone());
    let (ra, rb) = tokio::join!(
        a.create_container(req("race", &rootfs, with_pids(11))),
        b.create_container(req("race", &rootfs, with_pids(22)))
    );
    let (winner, loser) = match (ra, rb) {
        (Ok(_), Err(e)) => (11, e),
        (Err(e), Ok(_)) => (22, e),
        other => panic!("exactly one create must win: {other:?}"),
    };
    assert_eq!(loser.code(), Code::AlreadyExists);
    let max = std::fs::read_to_string(agent.cgroup_file("pids", "race", "pids.max")).unwrap();
    assert_eq!(
        max.trim(),
        winner.to_string(),
        "the loser changed the winner's cgroup"
    );
    let mut c = c;
    remove(&mut c, "race").await;
}
