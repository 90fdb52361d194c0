//! The `husk` CLI as a user runs it: exit codes, output, files left behind.
//! `husk run` is exercised in runc mode here (real runc, real container);
//! in vm mode it drives the same `Sandbox` calls against a microVM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_testutil::{find_on_path, is_root, require};

const HUSK: &str = env!("CARGO_BIN_EXE_husk");

fn husk(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(HUSK);
    c.arg("--config").arg(config).args(args);
    c
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn env(mode: &str, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("husk.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"{mode}\"\nstate_root = \"{}\"\n[runc]\nroot = \"{}\"\n{extra}",
            state.display(),
            state.join("runc").display()
        ),
    )
    .unwrap();
    Env { dir, config, state }
}

/// A busybox rootfs (Debian's busybox-static is a static binary).
fn busybox_rootfs(dir: &Path) -> Option<PathBuf> {
    let bb = find_on_path("busybox")?;
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for app in ["sh", "echo", "cat", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    Some(root)
}

/// One `husk run` at a time: they share the `/husk-run` parent cgroup,
/// whose removal is checked.
fn run_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn runc_ready() -> bool {
    require(is_root(), "root")
        && require(find_on_path("runc").is_some(), "runc")
        && require(
            find_on_path("busybox").is_some(),
            "busybox (busybox-static)",
        )
}

fn cgroup_exists(rel: &str) -> bool {
    ["memory", "unified", "pids", ""].iter().any(|h| {
        Path::new("/sys/fs/cgroup")
            .join(h)
            .join(rel)
            .join("cgroup.procs")
            .exists()
    })
}

/// Force-deletes the runc container `id` if a failed test left it running.
struct RuncGuard {
    root: PathBuf,
    id: String,
}

impl Drop for RuncGuard {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "-f", &self.id])
            .output();
        for h in [
            "memory", "cpu", "pids", "cpuset", "freezer", "devices", "blkio", "cpuacct",
        ] {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join("husk-run")
                    .join(&self.id),
            );
        }
    }
}

fn guard(e: &Env, id: &str) -> RuncGuard {
    RuncGuard {
        root: e.state.join("runc/husk-run"),
        id: id.to_string(),
    }
}

fn assert_nothing_left(e: &Env, id: &str) {
    assert!(!e.state.join(id).exists(), "pod dir of {id} left");
    assert!(
        !cgroup_exists(&format!("husk-run/{id}")),
        "cgroup of {id} left"
    );
    // The runs are serialised (run_lock), so the shared parent must be gone too.
    assert!(!cgroup_exists("husk-run"), "parent cgroup husk-run left");
    let runc_state = e.state.join("runc/husk-run").join(id);
    assert!(!runc_state.exists(), "runc state of {id} left");
}

#[test]
fn run_copies_stdio_and_returns_the_exit_code() {
    if !runc_ready() {
        return;
    }
    let _l = run_lock();
    let e = env("runc", "");
    let rootfs = busybox_rootfs(e.dir.path()).unwrap();
    let id = format!("cli-run-{}", std::process::id());
    let _g = guard(&e, &id);
    let mut child = husk(&e.config, &["run", "--rootfs"])
        .arg(&rootfs)
        .args([
            "--id",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; cat; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nfrom stdin\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
    assert_nothing_left(&e, &id);
}

#[test]
fn empty_stdin_is_eof_in_the_container() {
    if !runc_ready() {
        return;
    }
    let _l = run_lock();
    let e = env("runc", "");
    let rootfs = busybox_rootfs(e.dir.path()).unwrap();
    let id = format!("cli-null-{}", std::process::id());
    let _g = guard(&e, &id);
    let child = husk(&e.config, &["run", "--rootfs"])
        .arg(&rootfs)
        .args(["--id", &id, "--", "sh", "-c", "cat; echo eof"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "eof\n");
    assert_eq!(out.status.code(), Some(0));
    assert_nothing_left(&e, &id);
}

fn wait_output(mut child: std::process::Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("husk run did not exit in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn term(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Waits until the container printed its first line (it runs).
fn wait_started(child: &mut std::process::Child) {
    use std::io::BufRead;
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
}

#[test]
fn sigterm_is_forwarded_and_a_second_one_kills() {
    if !runc_ready() {
        return;
    }
    let _l = run_lock();
    let e = env("runc", "");
    let rootfs = busybox_rootfs(e.dir.path()).unwrap();

    // The container handles SIGTERM itself.
    let id = format!("cli-term-{}", std::process::id());
    let _g = guard(&e, &id);
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    let mut child = husk(&e.config, &["run", "--rootfs"])
        .arg(&rootfs)
        .args(["--id", &id, "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_started(&mut child);
    term(child.id());
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-term\n");
    assert_eq!(out.status.code(), Some(7));
    assert_nothing_left(&e, &id);

    // PID 1 without a handler ignores SIGTERM: the second one kills it.
    let id = format!("cli-kill-{}", std::process::id());
    let _g2 = guard(&e, &id);
    let mut child = husk(&e.config, &["run", "--rootfs"])
        .arg(&rootfs)
        .args(["--id", &id, "--", "sh", "-c", "echo ready; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_started(&mut child);
    term(child.id());
    std::thread::sleep(Duration::from_millis(500));
    term(child.id());
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("killing container"));
    assert_nothing_left(&e, &id);
}

#[test]
fn run_refuses_bad_input_before_touching_anything() {
    let e = env("runc", "");
    let out = husk(
        &e.config,
        &["run", "--rootfs", "/nonexistent", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let out = husk(
        &e.config,
        &["run", "--rootfs", "/", "--id", "a/b", "--", "true"],
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid id"));
    assert!(!e.state.exists());
}

#[test]
fn check_fails_with_the_fix() {
    let e = env(
        "vm",
        "[vm]\nkernel = \"/nonexistent/vmlinux\"\nvmm = \"/nonexistent/husk-vmm\"\n",
    );
    let containerd = e.dir.path().join("containerd.toml");
    std::fs::write(&containerd, "version = 2\n").unwrap();
    let out = husk(&e.config, &["check", "--containerd-config"])
        .arg(&containerd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL kernel      /nonexistent/vmlinux"),
        "{text}"
    );
    assert!(text.contains("fix: run guest-image/build.sh"), "{text}");
    assert!(text.contains("FAIL husk-vmm"), "{text}");
    assert!(text.contains("FAIL containerd"), "{text}");
    assert!(text.contains("runtimes.husk]"), "{text}");
    assert!(text.contains("OK   state_root"), "{text}");

    // With the snippet in place the containerd line passes.
    std::fs::write(
        &containerd,
        format!(
            "version = 2\n{}",
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/containerd-1.6.toml")
            )
            .unwrap()
        ),
    )
    .unwrap();
    let out = husk(&e.config, &["check", "--containerd-config"])
        .arg(&containerd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK   containerd"), "{text}");
}

#[test]
fn cleanup_removes_dead_pods_and_keeps_live_ones() {
    let e = env("vm", "");
    let dead = e.state.join("dead-pod");
    std::fs::create_dir_all(dead.join("shared/c1/rootfs")).unwrap();
    std::fs::write(
        dead.join("sandbox.json"),
        r#"{"id":"dead-pod","shim_pid":0}"#,
    )
    .unwrap();
    std::fs::write(dead.join("console.log"), "boot\n").unwrap();
    // Alive: this pod's "shim" is a running program named husk.
    let alive = e.state.join("live-pod");
    std::fs::create_dir_all(&alive).unwrap();
    let fake_husk = e.dir.path().join("husk");
    std::fs::copy(find_on_path("sleep").unwrap(), &fake_husk).unwrap();
    // The copy may be "text file busy" for a moment if a parallel test forked.
    let mut owner = (0..50)
        .find_map(|_| match Command::new(&fake_husk).arg("100").spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            r => Some(r.unwrap()),
        })
        .expect("fake husk stays text-file-busy");
    std::fs::write(
        alive.join("sandbox.json"),
        format!(r#"{{"id":"live-pod","shim_pid":{}}}"#, owner.id()),
    )
    .unwrap();

    let out = husk(&e.config, &["cleanup"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("removed: {}", dead.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("in use:  {}", alive.display())),
        "{text}"
    );
    assert!(!dead.exists());
    assert!(alive.exists());
}

#[test]
fn logs_prints_the_console_or_lists_pods() {
    let e = env("vm", "");
    let pod = e.state.join("pod1");
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(pod.join("console.log"), "[    0.000000] Linux version\n").unwrap();
    let out = husk(&e.config, &["logs", "pod1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"[    0.000000] Linux version\n");
    let out = husk(&e.config, &["logs", "pod2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no pod pod2") && err.contains("pods: pod1"),
        "{err}"
    );
}

fn repo_file(env: &str, rel: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel));
    p.is_file().then_some(p)
}

/// `HUSK_VMM`, else husk-vmm next to the husk binary (`cargo build -p husk-vmm`).
fn vmm_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_VMM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let p = Path::new(HUSK).parent()?.join("husk-vmm");
    p.is_file().then_some(p)
}

/// `husk run` in vm mode: one real microVM (husk-vmm, virtiofsd, the guest
/// kernel and agent) runs the container; stdio, exit code, and nothing of
/// the pod is left afterwards.
#[test]
fn run_in_a_microvm() {
    let kernel = repo_file("HUSK_GUEST_KERNEL", "target/guest/vmlinux");
    let initrd = repo_file("HUSK_GUEST_INITRD", "target/guest/initrd.cpio");
    let vmm = vmm_binary();
    let virtiofsd = find_on_path("virtiofsd").or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/virtiofsd");
        p.is_file().then_some(p)
    });
    if !(require(is_root(), "root")
        && require(husk_testutil::kvm_available(), "/dev/kvm")
        && require(kernel.is_some(), "guest kernel (guest-image/build.sh)")
        && require(initrd.is_some(), "guest initrd (guest-image/build.sh)")
        && require(vmm.is_some(), "husk-vmm (cargo build -p husk-vmm)")
        && require(virtiofsd.is_some(), "virtiofsd")
        && require(find_on_path("busybox").is_some(), "busybox"))
    {
        return;
    }
    let e = env(
        "vm",
        &format!(
            "[vm]\nkernel = {:?}\ninitrd = {:?}\nvmm = {:?}\nvirtiofsd = {:?}\nboot_timeout_secs = 300\n",
            kernel.unwrap(),
            initrd.unwrap(),
            vmm.unwrap(),
            virtiofsd.unwrap()
        ),
    );
    let rootfs = busybox_rootfs(e.dir.path()).unwrap();
    let id = format!("cli-vm-{}", std::process::id());
    let _l = run_lock();
    let t0 = Instant::now();
    let mut child = husk(&e.config, &["run", "--rootfs"])
        .arg(&rootfs)
        .args([
            "--id",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; cat; exit 5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = wait_output(child, Duration::from_secs(540));
    eprintln!("husk run in a microVM took {:?}", t0.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\nfrom stdin\n",
        "{stderr}"
    );
    assert_eq!(stderr, "err\n");
    assert_eq!(out.status.code(), Some(5));
    assert!(!e.state.join(&id).exists(), "pod dir left");
    assert!(!cgroup_exists(&format!("husk-run/{id}")), "pod cgroup left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "mount of the pod left");
    let procs = Command::new("pgrep").args(["-f", &id]).output().unwrap();
    assert!(
        procs.stdout.is_empty(),
        "process of the pod left: {:?}",
        procs.stdout
    );
}
