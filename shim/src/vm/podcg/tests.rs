use super::*;

const V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:32 / /mnt/memory-again rw - cgroup cgroup rw,memory
51 31 0:32 / /sys/fs/cgroup/memory2 rw - cgroup cgroup rw,memory
";

#[test]
fn v1_hierarchies_once_each_without_unified() {
    let hs = hierarchies(&mountinfo::parse(V1));
    let got: Vec<(&str, Vec<&str>)> = hs
        .iter()
        .map(|h| {
            (
                h.mount_point.to_str().unwrap(),
                h.controllers.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/sys/fs/cgroup/cpu,cpuacct", vec!["cpu", "cpuacct"]),
            ("/sys/fs/cgroup/cpuset", vec!["cpuset"]),
            ("/sys/fs/cgroup/memory", vec!["memory"]),
            ("/sys/fs/cgroup/systemd", vec!["name=systemd"]),
        ]
    );
}

#[test]
fn v2_host_uses_the_unified_hierarchy() {
    let mi = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let hs = hierarchies(&mountinfo::parse(mi));
    assert_eq!(
        hs,
        vec![Hierarchy {
            mount_point: "/sys/fs/cgroup".into(),
            controllers: vec![]
        }]
    );
    assert!(hierarchies(&[]).is_empty());
}

#[test]
fn cgroupfs_paths_and_systemd_refusal() {
    assert_eq!(
        relative_path("/default/c1").unwrap(),
        Path::new("default/c1")
    );
    assert_eq!(
        relative_path("k8s.io/abc").unwrap(),
        Path::new("k8s.io/abc")
    );
    assert_eq!(
        relative_path("/kubepods/besteffort/pod1/abc").unwrap(),
        Path::new("kubepods/besteffort/pod1/abc")
    );
    let e = relative_path("system.slice:cri-containerd:abc").unwrap_err();
    assert!(matches!(e, PodCgroupError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("SystemdCgroup = false"), "{e}");
    for bad in ["/a/../b", "/", "", "a:b"] {
        let e = relative_path(bad).unwrap_err();
        assert!(
            matches!(e, PodCgroupError::InvalidPath { .. }),
            "{bad}: {e}"
        );
    }
}

fn fake(root: &Path, names: &[&str]) -> Vec<Hierarchy> {
    names
        .iter()
        .map(|n| {
            std::fs::create_dir_all(root.join(n)).unwrap();
            Hierarchy {
                mount_point: root.join(n),
                controllers: vec![n.to_string()],
            }
        })
        .collect()
}

#[test]
fn creates_saves_and_removes_only_its_own_dirs() {
    let t = tempfile::tempdir().unwrap();
    let hs = fake(t.path(), &["memory", "pids"]);
    std::fs::create_dir(t.path().join("memory/kubepods")).unwrap();
    let path = "/kubepods/pod1";
    let cg = PodCgroup::create_in(&hs, path, &relative_path(path).unwrap()).unwrap();
    assert!(cg.created);
    assert_eq!(
        cg.dirs,
        vec![
            t.path().join("memory/kubepods/pod1"),
            t.path().join("pids/kubepods/pod1")
        ]
    );
    assert_eq!(
        cg.created_dirs,
        vec![
            t.path().join("memory/kubepods/pod1"),
            t.path().join("pids/kubepods"),
            t.path().join("pids/kubepods/pod1"),
        ]
    );
    let pod = tempfile::tempdir().unwrap();
    cg.save(pod.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod.path().join("cgroup.json")).unwrap()).unwrap();
    assert_eq!(json["path"], "/kubepods/pod1");
    assert_eq!(json["created"], true);
    let loaded = PodCgroup::load(pod.path()).unwrap().unwrap();
    assert_eq!(loaded, cg);

    loaded.remove().unwrap();
    assert!(
        t.path().join("memory/kubepods").is_dir(),
        "pre-existing dir kept"
    );
    assert!(!t.path().join("memory/kubepods/pod1").exists());
    assert!(!t.path().join("pids/kubepods").exists());
    loaded.remove().unwrap(); // idempotent
}

#[test]
fn shared_parent_stays_while_a_sibling_uses_it() {
    let t = tempfile::tempdir().unwrap();
    let hs = fake(t.path(), &["memory"]);
    let a = PodCgroup::create_in(&hs, "/husk-run/a", Path::new("husk-run/a")).unwrap();
    let b = PodCgroup::create_in(&hs, "/husk-run/b", Path::new("husk-run/b")).unwrap();
    assert_eq!(a.created_dirs.len(), 2);
    assert_eq!(b.created_dirs.len(), 1);
    a.remove().unwrap();
    assert!(t.path().join("memory/husk-run/b").is_dir());
    assert!(!t.path().join("memory/husk-run/a").exists());
    b.remove().unwrap();
    assert!(
        t.path().join("memory/husk-run").is_dir(),
        "b did not create it"
    );
}

#[test]
fn existing_cgroup_is_not_created_and_not_removed() {
    let t = tempfile::tempdir().unwrap();
    let hs = fake(t.path(), &["memory"]);
    std::fs::create_dir_all(t.path().join("memory/default/c1")).unwrap();
    let cg = PodCgroup::create_in(&hs, "/default/c1", Path::new("default/c1")).unwrap();
    assert!(!cg.created);
    cg.remove().unwrap();
    assert!(t.path().join("memory/default/c1").is_dir());
}

#[test]
fn add_writes_procs_and_leftover_processes_are_named() {
    let t = tempfile::tempdir().unwrap();
    let hs = fake(t.path(), &["memory"]);
    let cg = PodCgroup::create_in(&hs, "/p", Path::new("p")).unwrap();
    cg.add(4242).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("memory/p/cgroup.procs")).unwrap(),
        "4242\n"
    );
    assert_eq!(cg.pids(), vec![4242]);
    let e = cg.remove().unwrap_err();
    match &e {
        PodCgroupError::Busy { pids, .. } => assert_eq!(pids, &vec![4242]),
        other => panic!("unexpected {other}"),
    }
    assert!(e.to_string().contains("4242"), "{e}");
}

#[test]
fn missing_or_corrupt_state() {
    let pod = tempfile::tempdir().unwrap();
    assert_eq!(PodCgroup::load(pod.path()).unwrap(), None);
    std::fs::write(pod.path().join("cgroup.json"), "{").unwrap();
    let e = PodCgroup::load(pod.path()).unwrap_err();
    assert!(e.to_string().contains("cgroup.json"), "{e}");
}

fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

#[test]
fn real_cgroup_with_a_process() {
    if !husk_testutil::require(husk_testutil::is_root(), "root") {
        return;
    }
    let _l = test_lock();
    let path = format!("/husk-test-podcg-{}/pod", std::process::id());
    let cg = PodCgroup::create(&path).unwrap();
    assert!(cg.created);
    assert!(cg.dirs.iter().all(|d| d.join("cgroup.procs").is_file()));
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    cg.add(child.id()).unwrap();
    let now = cgroup_of(child.id());
    assert!(now.contains(&path), "{now}");
    assert_eq!(cg.pids(), vec![child.id()]);

    let e = cg.remove().unwrap_err();
    assert!(
        matches!(e, PodCgroupError::Busy { ref pids, .. } if pids == &vec![child.id()]),
        "{e}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    cg.remove().unwrap();
    for d in &cg.created_dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
}

#[test]
fn shim_enters_and_leaves() {
    if !husk_testutil::require(husk_testutil::is_root(), "root") {
        return;
    }
    let _l = test_lock();
    let before = cgroup_of(std::process::id());
    let path = format!("/husk-test-podcg-self-{}", std::process::id());
    let mut cg = PodCgroup::create(&path).unwrap();
    cg.enter_self().unwrap();
    let inside = cgroup_of(std::process::id());
    let left = cg.leave_self();
    let removed = cg.remove();
    assert!(inside.contains(&path), "{inside}");
    left.unwrap();
    removed.unwrap();
    assert_eq!(cgroup_of(std::process::id()), before);
    assert!(!cg.shim_origin.is_empty());
}

#[test]
fn shim_leaves_even_without_a_recorded_origin() {
    if !husk_testutil::require(husk_testutil::is_root(), "root") {
        return;
    }
    let _l = test_lock();
    let before = cgroup_of(std::process::id());
    let path = format!("/husk-test-podcg-noorigin-{}", std::process::id());
    let mut cg = PodCgroup::create(&path).unwrap();
    // As saved to cgroup.json before entering: no origin in the state.
    let saved = cg.clone();
    cg.enter_self().unwrap();
    let left = saved.leave_self();
    let removed = saved.remove();
    // Back where we were, whatever happened above.
    cg.leave_self().unwrap();
    left.unwrap();
    removed.unwrap();
    assert_eq!(cgroup_of(std::process::id()), before);
}
