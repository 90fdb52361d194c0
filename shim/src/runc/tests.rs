//! RuncSandbox against the real runc: a busybox container created, started,
//! exec'd into, updated, measured, killed and deleted, leaving nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::cgroups::metrics::Metrics;
use containerd_shim::protos::protobuf::Message;
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder, Process};

use super::*;
use crate::config::RuncConfig;
use crate::sandbox::{CreateRequest, Sandbox, Stdio};

fn spec(id: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2",
  "process":{{"cwd":"/","args":["sleep","100"],"env":["PATH=/bin"],"user":{{"uid":0,"gid":0}}}},
  "root":{{"path":"rootfs"}},
  "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}}],
  "linux":{{"cgroupsPath":"/{id}",
    "namespaces":[{{"type":"pid"}},{{"type":"mount"}},{{"type":"ipc"}},{{"type":"uts"}}]}}}}"#
    )
}

fn bundle(dir: &Path, id: &str) -> std::path::PathBuf {
    let b = dir.join(id);
    let bin = b.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(b.join("rootfs/proc")).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for app in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(app)).unwrap();
    }
    std::fs::write(b.join("config.json"), spec(id)).unwrap();
    b
}

/// Removes the container even when the test fails half-way.
struct Cleanup {
    runc_root: std::path::PathBuf,
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .output();
    }
}

#[tokio::test]
async fn real_container_lifecycle() {
    let have = husk_testutil::is_root()
        && husk_testutil::find_on_path("runc").is_some()
        && Path::new("/bin/busybox").exists();
    if !husk_testutil::require(have, "root, runc and /bin/busybox") {
        return;
    }
    // As in the shim: exec'd processes are re-parented to us, not to init.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let reap = tokio::spawn(async {
        loop {
            crate::reaper::reaper().reap_all();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let id = format!("husk-unit-{}", std::process::id());
    let cfg = RuncConfig {
        root: tmp.path().join("runc"),
        ..Default::default()
    };
    let sink: crate::sandbox::EventSink = Arc::new(|_| {});
    let _cleanup = Cleanup {
        runc_root: cfg.root.join("unit"),
        id: id.clone(),
    };
    let sb = RuncSandbox::new(&cfg, "unit", tmp.path().join("state"), sink).unwrap();
    let b = bundle(tmp.path(), &id);
    let spec = crate::spec::load_spec(&b).unwrap();
    let req = CreateRequest {
        id: id.clone(),
        bundle: b.clone(),
        spec,
        rootfs: vec![],
        stdio: Stdio::default(),
    };
    let pid = sb.create(req.clone()).await.unwrap();
    assert!(pid > 0);
    let again = sb.create(req).await.unwrap_err();
    assert_eq!(
        again.code(),
        containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS
    );
    sb.start(&id).await.unwrap();

    let exec: Process = serde_json::from_str(
        r#"{"cwd":"/","args":["sh","-c","exit 3"],"env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#,
    )
    .unwrap();
    sb.exec(&id, "e1", &exec, &Stdio::default()).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(20), sb.wait(&id, Some("e1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code, 3);
    sb.delete(&id, Some("e1")).await.unwrap();

    let pids = sb.pids(&id).await.unwrap();
    assert_eq!(pids, vec![pid]);

    let limit = 48 * 1024 * 1024;
    let res = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
        .build()
        .unwrap();
    sb.update(&id, &res).await.unwrap();
    let cg = crate::cgroup::CgroupPaths::of_pid(pid).unwrap();
    let mem_dir = cg.controller("memory").unwrap().to_path_buf();
    let file = if crate::cgroup::is_unified() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let got: i64 = std::fs::read_to_string(mem_dir.join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, limit);
    if !crate::cgroup::is_unified() {
        let any = sb.stats(&id).await.unwrap();
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.limit, limit as u64);
        assert_eq!(m.pids.current, 1);
    }

    sb.pause(&id).await.unwrap();
    sb.resume(&id).await.unwrap();
    sb.kill(&id, None, 9, false).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(20), sb.wait(&id, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code, 137);
    sb.delete(&id, None).await.unwrap();
    sb.shutdown().await.unwrap();
    reap.abort();

    assert!(
        !mem_dir.exists(),
        "cgroup {} left behind",
        mem_dir.display()
    );
    assert!(!tmp.path().join("state").exists());
    assert!(!cfg.root.join("unit").join(&id).exists());
    assert!(!b.join(BUNDLE_STATE_FILE).exists());
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err());
}
