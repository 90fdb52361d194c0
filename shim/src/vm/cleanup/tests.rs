use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};

use nix::mount::{mount, MsFlags};

use super::*;
use crate::vm::podcg::test_lock;

fn sleeper() -> Child {
    Command::new("sleep").arg("1000").spawn().unwrap()
}

/// Kills the children and lazily unmounts what is left if a test fails halfway.
struct Guard {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = unmount_all(&self.dir);
    }
}

/// The child died of SIGKILL (or, when another test's reaper collected it
/// first, is at least gone).
pub(crate) fn assert_killed(c: &mut Child) {
    match c.wait() {
        Ok(st) => assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}"),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            assert!(pf::stat(c.id()).is_none(), "{} still there", c.id())
        }
        Err(e) => panic!("wait {}: {e}", c.id()),
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let m = mountinfo::read_self().unwrap();
    mountinfo::under(&m, dir)
        .iter()
        .map(|e| e.mount_point.clone())
        .collect()
}

fn bind(src: &Path, dst: &Path) {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
}

#[test]
fn tears_down_processes_mounts_cgroup_and_dir() {
    if !husk_testutil::require(husk_testutil::is_root(), "root") {
        return;
    }
    let _l = test_lock();
    let base = tempfile::tempdir().unwrap();
    // A space in the path exercises mountinfo's \040 escapes.
    let pod = base.path().join("pod 1");
    let shared = pod.join("shared");
    let rootfs = shared.join("c1/rootfs");
    let nested = shared.join("c1/mounts/0");
    let data = base.path().join("snapshot");
    for d in [&rootfs, &nested, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("keep"), "container data").unwrap();
    let mut g = Guard {
        dir: pod.clone(),
        children: vec![sleeper(), sleeper()],
    };
    // As the shim does it: shared/ is a shared bind of itself, the
    // container rootfs a bind under it, a tmpfs under that.
    bind(&shared, &shared);
    mount(
        None::<&str>,
        &shared,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    bind(&data, &rootfs);
    mount(
        Some("tmpfs"),
        &nested,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    assert_eq!(mounts_under(&pod).len(), 3);

    let (vmm, virtiofsd) = (g.children[0].id(), g.children[1].id());
    write_pidfile(&pod.join("vmm.pid"), vmm).unwrap();
    write_pidfile(&pod.join("virtiofsd.pid"), virtiofsd).unwrap();
    let cg_path = format!("/husk-test-cleanup-{}", std::process::id());
    let cg = PodCgroup::create(&cg_path).unwrap();
    cg.add(vmm).unwrap();
    cg.save(&pod).unwrap();
    std::fs::write(pod.join("console.log"), "boot\n").unwrap();

    let done = teardown_dir(&pod).unwrap();

    assert_eq!(
        done.killed,
        vec![
            ("virtiofsd".to_string(), virtiofsd),
            ("vmm".to_string(), vmm)
        ]
    );
    for c in &mut g.children {
        assert_killed(c);
    }
    g.children.clear();
    assert!(done.unmounted.len() >= 3, "{:?}", done.unmounted);
    assert_eq!(mounts_under(&pod), Vec::<PathBuf>::new());
    assert_eq!(done.cgroup.as_deref(), Some(cg_path.as_str()));
    for d in &cg.dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(done.removed);
    assert!(!pod.exists());
    // The data behind the bind mount survived the removal of the dir.
    assert_eq!(
        std::fs::read_to_string(data.join("keep")).unwrap(),
        "container data"
    );
    assert_eq!(done.to_string().matches("killed").count(), 2);

    // Idempotent: a second run finds nothing.
    assert_eq!(teardown_dir(&pod).unwrap(), Teardown::default());
}

#[test]
fn recycled_pid_is_not_killed() {
    let _l = test_lock();
    let t = tempfile::tempdir().unwrap();
    let pod = t.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    let mut g = Guard {
        dir: pod.clone(),
        children: vec![sleeper()],
    };
    let pid = g.children[0].id();
    let start = pf::stat(pid).unwrap().starttime;
    std::fs::write(pod.join("vmm.pid"), format!("{pid} {}\n", start + 1)).unwrap();

    let done = teardown_dir(&pod).unwrap();
    assert!(done.killed.is_empty());
    assert!(done.removed);
    assert!(
        g.children[0].try_wait().unwrap().is_none(),
        "innocent process was killed"
    );
}

#[test]
fn missing_dir_is_fine_and_bad_pid_file_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    assert_eq!(
        teardown_dir(&t.path().join("nope")).unwrap(),
        Teardown::default()
    );
    std::fs::write(t.path().join("vmm.pid"), "garbage").unwrap();
    let e = teardown_dir(t.path()).unwrap_err();
    assert!(e.to_string().contains("vmm.pid"), "{e}");
    assert!(t.path().exists(), "not removed after an error");
}

#[test]
fn virtiofsds_own_pid_file_is_not_ours() {
    let t = tempfile::tempdir().unwrap();
    let pod = t.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    // virtiofsd writes "<pid>\n" next to its socket; it is not a helper pid file.
    std::fs::write(pod.join("fs.sock.pid"), "12345\n").unwrap();
    teardown_dir(&pod).unwrap();
    assert!(!pod.exists());
}

/// A copy of `bin` named `name` in `dir` (so /proc/<pid>/exe has that name).
fn renamed(bin: &str, dir: &Path, name: &str) -> PathBuf {
    let src = husk_testutil::find_on_path(bin).unwrap();
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    dst
}

#[test]
fn pod_alive_follows_the_owner() {
    let _l = test_lock();
    let t = tempfile::tempdir().unwrap();
    let pod = t.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    assert!(!pod_alive(&t.path().join("missing")));
    assert!(!pod_alive(&pod));

    let shim = renamed("sleep", t.path(), "containerd-shim-husk-v2");
    let mut g = Guard {
        dir: pod.clone(),
        children: vec![Command::new(&shim).arg("1000").spawn().unwrap()],
    };
    let info = |shim_pid| SandboxInfo {
        id: "pod".into(),
        shim_pid,
    };
    write_sandbox(&pod, &info(g.children[0].id())).unwrap();
    assert!(pod_alive(&pod));
    assert_eq!(read_sandbox(&pod), Some(info(g.children[0].id())));

    // This test binary is not a husk shim.
    write_sandbox(&pod, &info(std::process::id())).unwrap();
    assert!(!pod_alive(&pod));

    write_sandbox(&pod, &info(g.children[0].id())).unwrap();
    g.children[0].kill().unwrap();
    assert_killed(&mut g.children[0]);
    assert!(!pod_alive(&pod), "dead shim");
}

#[test]
fn pod_alive_before_sandbox_json_via_the_helpers_parent() {
    let _l = test_lock();
    let t = tempfile::tempdir().unwrap();
    let pod = t.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    // A "husk" process with a helper child, as a shim that is starting up.
    let husk = renamed("sh", t.path(), "husk");
    let mut owner = Command::new(&husk)
        .args([
            "-c",
            "sleep 1000 & echo $! > \"$0\"; wait",
            &pod.join("child").to_string_lossy(),
        ])
        .spawn()
        .unwrap();
    let child_file = pod.join("child");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let child = loop {
        if let Some(pid) = std::fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "helper did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    write_pidfile(&pod.join("vmm.pid"), child).unwrap();
    let alive = pod_alive(&pod);

    owner.kill().unwrap();
    assert_killed(&mut owner);
    // The orphaned helper is now a child of init (or a subreaper): dead pod.
    let orphan_dead_pod = pod_alive(&pod);
    let done = teardown_dir(&pod).unwrap();
    assert!(alive);
    assert!(!orphan_dead_pod);
    assert_eq!(done.killed, vec![("vmm".to_string(), child)]);
}
