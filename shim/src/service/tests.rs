//! Task service behaviour against the fake sandbox (and, for bad input,
//! the real runc sandbox): statuses, exit codes, event order, error codes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::ExitSignal;
use tokio::sync::mpsc;

use super::*;
use crate::sandbox::fake::FakeSandbox;

const SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sleep","100"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{}}"#;

struct Fixture {
    svc: Arc<TaskService>,
    fake: Arc<FakeSandbox>,
    events: mpsc::UnboundedReceiver<TaskEvent>,
    exit: Arc<ExitSignal>,
    dir: tempfile::TempDir,
}

fn fixture(config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("husk.toml");
    std::fs::write(&cfg, config).unwrap();
    let fake = Arc::new(FakeSandbox::default());
    let f2 = fake.clone();
    let factory: SandboxFactory = Box::new(move |_cfg, sink| {
        *f2.events.lock().unwrap() = Some(sink);
        Ok(f2.clone() as Arc<dyn Sandbox>)
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let exit = Arc::new(ExitSignal::default());
    let svc = Arc::new(TaskService::new(
        "default",
        Some(cfg),
        factory,
        tx,
        exit.clone(),
    ));
    Fixture {
        svc,
        fake,
        events: rx,
        exit,
        dir,
    }
}

impl Fixture {
    fn bundle(&self, id: &str, spec: &str) -> String {
        let b = self.dir.path().join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), spec).unwrap();
        b.to_str().unwrap().to_string()
    }

    fn create_req(&self, id: &str) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle(id, SPEC),
            ..Default::default()
        }
    }

    async fn next_events(&mut self, n: usize) -> Vec<TaskEvent> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ev = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("event in time")
                .unwrap();
            out.push(ev);
        }
        out
    }
}

fn names(evs: &[TaskEvent]) -> Vec<&'static str> {
    evs.iter().map(|e| e.name()).collect()
}

fn code(e: ServiceError) -> (Code, String) {
    match ttrpc::Error::from(e) {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn lifecycle_reports_exit_code_and_events_in_order() {
    let mut f = fixture("mode = \"runc\"");
    let pid = f.svc.create(f.create_req("c1")).await.unwrap().pid;
    let st = f
        .svc
        .state(&StateRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::CREATED);
    f.svc
        .start(StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    f.fake.exit("c1", None, 3);
    let w = f
        .svc
        .wait(&WaitRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(w.exit_status, 3);
    let st = f
        .svc
        .state(&StateRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    assert_eq!(st.exit_status, 3);
    let d = f
        .svc
        .delete(DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 3));
    let evs = f.next_events(4).await;
    assert_eq!(names(&evs), ["create", "start", "exit", "delete"]);
    match &evs[2] {
        TaskEvent::Exit(e) => assert_eq!((e.id.as_str(), e.pid, e.exit_status), ("c1", pid, 3)),
        _ => unreachable!(),
    }
    assert_eq!(f.fake.calls(), ["create c1", "start c1", "delete c1 None"]);
    // Shutdown with nothing left ends the shim.
    assert!(f.svc.shutdown_if_idle().await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), f.exit.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn second_create_with_same_id_is_already_exists() {
    let f = fixture("");
    f.svc.create(f.create_req("dup")).await.unwrap();
    let (c, msg) = code(f.svc.create(f.create_req("dup")).await.unwrap_err());
    assert_eq!(c, Code::ALREADY_EXISTS);
    assert!(msg.contains("dup"), "{msg}");
    assert_eq!(f.fake.calls(), ["create dup"]);
}

#[tokio::test]
async fn exec_lifecycle() {
    let mut f = fixture("");
    f.svc.create(f.create_req("c")).await.unwrap();
    f.svc
        .start(StartRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let spec = Any {
        value: br#"{"cwd":"/","args":["echo","hi"],"user":{"uid":0,"gid":0}}"#.to_vec(),
        ..Default::default()
    };
    let req = ExecProcessRequest {
        id: "c".into(),
        exec_id: "e1".into(),
        spec: Some(spec.clone()).into(),
        ..Default::default()
    };
    f.svc.exec(req.clone()).unwrap();
    let (c, _) = code(f.svc.exec(req).unwrap_err());
    assert_eq!(c, Code::ALREADY_EXISTS);
    let pid = f
        .svc
        .start(StartRequest {
            id: "c".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .pid;
    f.fake.exit("c", Some("e1"), 5);
    let w = f
        .svc
        .wait(&WaitRequest {
            id: "c".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(w.exit_status, 5);
    let d = f
        .svc
        .delete(DeleteRequest {
            id: "c".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 5));
    let evs = f.next_events(5).await;
    assert_eq!(
        names(&evs),
        ["create", "start", "exec-added", "exec-started", "exit"]
    );
    match &evs[4] {
        TaskEvent::Exit(e) => assert_eq!(
            (e.container_id.as_str(), e.id.as_str(), e.exit_status),
            ("c", "e1", 5)
        ),
        _ => unreachable!(),
    }
    let bad = ExecProcessRequest {
        id: "c".into(),
        exec_id: "e2".into(),
        spec: Some(Any {
            value: b"{".to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    assert_eq!(code(f.svc.exec(bad).unwrap_err()).0, Code::INVALID_ARGUMENT);
}

#[tokio::test]
async fn oom_is_published_before_the_exit() {
    let mut f = fixture("");
    f.svc.create(f.create_req("m")).await.unwrap();
    f.svc
        .start(StartRequest {
            id: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    f.fake.oom("m");
    f.fake.exit("m", None, 137);
    let evs = f.next_events(4).await;
    assert_eq!(names(&evs), ["create", "start", "oom", "exit"]);
}

#[tokio::test]
async fn pause_resume_kill_and_running_delete() {
    let mut f = fixture("");
    f.svc.create(f.create_req("p")).await.unwrap();
    let (c, _) = code(f.svc.set_paused("p", true).await.unwrap_err());
    assert_eq!(
        c,
        Code::FAILED_PRECONDITION,
        "a created container cannot be paused"
    );
    f.svc
        .start(StartRequest {
            id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    f.svc.set_paused("p", true).await.unwrap();
    let st = f
        .svc
        .state(&StateRequest {
            id: "p".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::PAUSED);
    f.svc.set_paused("p", false).await.unwrap();
    let (c, _) = code(
        f.svc
            .delete(DeleteRequest {
                id: "p".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::FAILED_PRECONDITION);
    f.svc
        .kill(KillRequest {
            id: "p".into(),
            signal: 9,
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let pids = f
        .svc
        .pids(&PidsRequest {
            id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [1001, 1002]
    );
    let evs = f.next_events(4).await;
    assert_eq!(names(&evs), ["create", "start", "paused", "resumed"]);
    assert!(f.fake.calls().contains(&"kill p None 9 true".to_string()));
    // Shutdown while a container is left keeps the shim.
    assert!(!f.svc.shutdown_if_idle().await.unwrap());
}

#[tokio::test]
async fn unknown_container_is_not_found() {
    let f = fixture("");
    let (c, msg) = code(
        f.svc
            .state(&StateRequest {
                id: "nope".into(),
                ..Default::default()
            })
            .unwrap_err(),
    );
    assert_eq!(c, Code::NOT_FOUND);
    assert!(msg.contains("nope"));
}

#[tokio::test]
async fn malformed_spec_and_bad_ids_are_invalid_argument() {
    let f = fixture("");
    let req = CreateTaskRequest {
        id: "bad".into(),
        bundle: f.bundle("bad", "{\"ociVersion\": 1"),
        ..Default::default()
    };
    let (c, msg) = code(f.svc.create(req).await.unwrap_err());
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(msg.contains("config.json"), "{msg}");
    let mut req = f.create_req("x");
    req.id = "../escape".into();
    assert_eq!(
        code(f.svc.create(req).await.unwrap_err()).0,
        Code::INVALID_ARGUMENT
    );
    assert!(f.fake.calls().is_empty());
}

#[tokio::test]
async fn missing_explicit_config_is_failed_precondition() {
    let f = fixture("");
    let mut req = f.create_req("c");
    // runtimeoptions.v1.Options { config_path = "/nonexistent/husk.toml" }
    let path = b"/nonexistent/husk.toml";
    let mut value = vec![0x12, path.len() as u8];
    value.extend_from_slice(path);
    req.options = Some(Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    })
    .into();
    let (c, msg) = code(f.svc.create(req).await.unwrap_err());
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(msg.contains("/nonexistent/husk.toml"), "{msg}");
}

/// A service over the real runc sandbox, with a polling reaper.
fn runc_fixture(config: &str) -> (Fixture, tokio::task::JoinHandle<()>) {
    let mut f = fixture(config);
    let state = f.dir.path().join("state");
    let factory: SandboxFactory = Box::new(move |cfg: &crate::config::Config, sink| {
        let sb = crate::runc::RuncSandbox::new(&cfg.runc, "test", state.clone(), sink)?;
        Ok(Arc::new(sb) as Arc<dyn Sandbox>)
    });
    let (tx, rx) = mpsc::unbounded_channel();
    f.svc = Arc::new(TaskService::new(
        "test",
        Some(f.dir.path().join("husk.toml")),
        factory,
        tx,
        f.exit.clone(),
    ));
    f.events = rx;
    let reap = tokio::spawn(async {
        loop {
            crate::reaper::reaper().reap_all();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (f, reap)
}

#[tokio::test]
async fn missing_runc_binary_is_failed_precondition_naming_it() {
    let (f, reap) = runc_fixture("[runc]\nbinary = \"/nonexistent/bin/runc\"\n");
    let (c, msg) = code(f.svc.create(f.create_req("r")).await.unwrap_err());
    reap.abort();
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(msg.contains("/nonexistent/bin/runc"), "{msg}");
    assert!(
        !f.dir.path().join("state").exists(),
        "nothing may be left behind"
    );
}

#[tokio::test]
async fn missing_rootfs_is_not_found_and_leaves_nothing() {
    if !husk_testutil::require(
        husk_testutil::find_on_path("runc").is_some(),
        "runc on PATH",
    ) {
        return;
    }
    let (f, reap) = runc_fixture("");
    let runc_root = f.dir.path().join("runc");
    let cfg = format!("[runc]\nroot = \"{}\"\n", runc_root.display());
    std::fs::write(f.dir.path().join("husk.toml"), cfg).unwrap();
    let req = CreateTaskRequest {
        id: "nofs".into(),
        bundle: f.bundle("nofs", &SPEC.replace("\"rootfs\"", "\"missing-rootfs\"")),
        ..Default::default()
    };
    let bundle = req.bundle.clone();
    let (c, msg) = code(f.svc.create(req).await.unwrap_err());
    reap.abort();
    assert_eq!(c, Code::NOT_FOUND);
    assert!(msg.contains("missing-rootfs"), "{msg}");
    assert!(!f.dir.path().join("state").join("nofs").exists());
    assert!(!Path::new(&bundle)
        .join(crate::runc::BUNDLE_STATE_FILE)
        .exists());
    assert!(!runc_root.join("test/nofs").exists());
}
